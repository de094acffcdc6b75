"""AsymFusion: channel shuffle and pixel shift between modality streams (Wang et al., ACM MM 2020).

Where: the spatial unit of the last block of each stage (ResNet BasicBlock: conv1-bn1-act1,
Bottleneck: conv2-bn2-act2, EfficientNet: the depthwise conv and its BN-act), as the authors'
code does it (yikaiw/AsymFusion, `Bottleneck` with `use_shuffle` in the last block of a layer).

* Channel shuffle, on the unit's conv input (C channels, T = 4*floor(C/5)): each modality keeps
  its own first T channels and takes the remaining C-T from the other modality; the shuffled
  tensor feeds the conv (the residual shortcut keeps the unshuffled input).
* Pixel shift: each modality's own first T input channels (before the shuffle), in 4 groups of
  floor(C/5) with offsets (dh, dw) = (-1, 0), (0, -1), (0, 1), (1, 0), i.e.
  `out[h, w] = x[h + dh, w + dw]` (zero outside; the other C-T channels are zero), are added to
  the *other* modality's output after the unit's conv-BN-activation.
* Then the channels T..C are shuffled between the modalities once more, so the conv after the
  unit (Bottleneck conv3, BasicBlock conv2, EfficientNet's pointwise conv) sees them exchanged:
  the authors' code does this second shuffle (their reversed `ShiftShuffle`, whose own shift it
  computes and discards).

Both directions run at once (the bidirectional scheme). With M > 2 modalities, "the other
modality" becomes the mean of the other modalities, the rule CEN uses for M > 2 (eq. 6); for
M = 2 this is exactly the paper's swap.

The op keeps the shifted tensor between its two sites of one forward pass (`conv_in` then
`act_out` of the same unit), so the unit must not be re-run in between (e.g. by activation
checkpointing of a part of the block).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusescope.errors import OptionError
from fusescope.models.multistream import (
    ForwardScope,
    FusionPoint,
    MultiStreamSegmentor,
    Where,
    mean_of_others,
)
from fusescope.models.registry import FUSION_METHODS


def shuffle_split(channels: int) -> int:
    """T = 4 * floor(C / 5): how many leading channels a modality keeps (the authors' rule)."""
    return 4 * (channels // 5)


# (dh, dw) of the 4 shift groups, in channel order: out[h, w] = x[h + dh, w + dw]
SHIFT_OFFSETS = ((-1, 0), (0, -1), (0, 1), (1, 0))


def pixel_shift(x: Tensor) -> Tensor:
    """Shift 4 equal channel groups of `(N, T, H, W)` by one pixel each (`SHIFT_OFFSETS`).

    Group g with offset (dh, dw) gives `out[h, w] = x[h + dh, w + dw]`, zero where that falls
    outside the image: group 0 takes each pixel's upper neighbour (`x[h - 1, w]`), then the left,
    right and lower neighbours, as the authors' `ShiftShuffle` positions do.
    """
    T = x.shape[1]
    if T % 4:
        raise ValueError(f"pixel shift needs a channel count divisible by 4, got {T}")
    g = T // 4
    p = F.pad(x, (1, 1, 1, 1))  # (N, T, H+2, W+2); x[h, w] is p[h+1, w+1]

    def window(d: int) -> slice:
        # rows (or columns) 1+d .. H+1+d of the padded map, written without H so that a traced
        # export (ONNX) keeps the image size dynamic
        return slice(1 + d, d - 1 if d < 1 else None)

    return torch.cat(
        [
            p[:, i * g : (i + 1) * g, window(dh), window(dw)]
            for i, (dh, dw) in enumerate(SHIFT_OFFSETS)
        ],
        1,
    )


def shuffle_channels(x5: Tensor, keep: int) -> Tensor:
    """(B, M, C, H, W): each modality keeps its first `keep` channels and takes the rest from
    the other modality (the mean of the others for M > 2)."""
    return torch.cat([x5[:, :, :keep], mean_of_others(x5[:, :, keep:])], dim=2)


class AsymmetricFusion(nn.Module):
    """Shuffle at `conv_in`; shift-and-add, then the second shuffle, at `act_out` of one spatial
    unit (parameter-free). `shuffle` switches both shuffles, `shift` the shift.

    The shifted conv input travels from `conv_in` to `act_out` in the forward's scope
    (`ForwardScope.carry`), never in the op: nothing outlives the forward."""

    uses_scope = True

    def __init__(self, point: FusionPoint, shuffle: bool = True, shift: bool = True):
        super().__init__()
        if point.in_channels != point.channels:
            raise OptionError(
                f"{point.name}: pixel shift adds the conv input to its output, "
                f"which needs equal widths ({point.in_channels} != {point.channels})"
            )
        self.shuffle = shuffle
        self.shift = shift
        self.split = shuffle_split(point.in_channels)

    def forward(self, x5: Tensor, site: str, scope: ForwardScope) -> Tensor:
        T = self.split
        if site == "conv_in":  # x5: (B, M, C, H, W), the conv's input
            if self.shift:
                M = x5.shape[1]
                shifted = pixel_shift(x5[:, :, :T].flatten(0, 1)).unflatten(0, (-1, M))
                # what modality m receives: the other modalities' shifted channels
                scope.carry[self] = mean_of_others(shifted)
            return shuffle_channels(x5, T) if self.shuffle else x5
        if site != "act_out":
            return x5
        incoming = scope.carry.pop(self, None)
        if incoming is not None:  # x5: the unit's output
            if incoming.shape[-2:] != x5.shape[-2:]:
                raise ValueError(
                    f"pixel shift: conv changed the size {tuple(incoming.shape[-2:])}"
                    f" -> {tuple(x5.shape[-2:])}"
                )
            # (B, M, T, H, W) -> (B, M, C, H, W): the channels after T receive nothing
            x5 = x5 + F.pad(incoming, (0, 0, 0, 0, 0, x5.shape[2] - T))
        return shuffle_channels(x5, T) if self.shuffle else x5


@FUSION_METHODS.register("asymfusion")
def asymfusion(
    modalities,
    in_channels,
    num_classes,
    backbone: str = "resnet18",
    pretrained: bool | str = False,
    decoder: str | dict = "light",
    shuffle: bool = True,
    shift: bool = True,
    shared: bool = True,
    stages: list[int] | tuple[int, ...] = (1, 2, 3, 4),
) -> MultiStreamSegmentor:
    """AsymFusion: `shuffle` and `shift` switch the two operations (shuffle-only, shift-only,
    both); `shared` shares the convolutions (the paper's scheme); `stages` where it acts."""
    if not (shuffle or shift):
        raise OptionError("asymfusion needs shuffle or shift (use name: multistream for neither)")
    model = MultiStreamSegmentor(
        modalities, in_channels, num_classes, backbone, pretrained, decoder, shared=shared
    )
    model.encoder.insert(
        Where(("conv_in", "act_out"), stages=tuple(stages), blocks="last"),
        lambda point: AsymmetricFusion(point, shuffle, shift),
    )
    return model
