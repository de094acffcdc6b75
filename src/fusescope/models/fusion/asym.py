"""AsymFusion: channel shuffle and pixel shift between modality streams (Wang et al., CVPR 2020).

Where: the spatial unit of the last block of each stage (ResNet BasicBlock: conv1-bn1-act1,
Bottleneck: conv2-bn2-act2, EfficientNet: the depthwise conv and its BN-act).

* Channel shuffle, on the unit's conv input (C channels, T = 4*floor(C/5)): each modality keeps
  its own first T channels and takes the remaining C-T from the other modality; the shuffled
  tensor feeds the conv (the residual shortcut keeps the unshuffled input).
* Pixel shift: each modality's own first T input channels, in 4 groups of T/4 shifted one pixel
  up / left / right / down (zero padded; the other C-T channels are zero), are added to the
  *other* modality's output after the unit's conv-BN-activation.

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

from fusescope.models.multistream import FusionPoint, MultiStreamSegmentor, Where, mean_of_others
from fusescope.models.registry import FUSION_METHODS


def shuffle_split(channels: int) -> int:
    """T = 4 * floor(C / 5): how many leading channels a modality keeps (the authors' rule)."""
    return 4 * (channels // 5)


def pixel_shift(x: Tensor) -> Tensor:
    """Shift 4 equal channel groups of `(N, T, H, W)` one pixel up / left / right / down.

    "Up" moves content up: `out[h, w] = x[h + 1, w]`, the last row becomes 0 (zero padding);
    likewise left `x[h, w + 1]`, right `x[h, w - 1]`, down `x[h - 1, w]`.
    """
    N, T, H, W = x.shape
    if T % 4:
        raise ValueError(f"pixel shift needs a channel count divisible by 4, got {T}")
    g = T // 4
    p = F.pad(x, (1, 1, 1, 1))  # (N, T, H+2, W+2); x[h, w] is p[h+1, w+1]
    return torch.cat(
        [
            p[:, 0 * g : 1 * g, 2 : H + 2, 1 : W + 1],  # up
            p[:, 1 * g : 2 * g, 1 : H + 1, 2 : W + 2],  # left
            p[:, 2 * g : 3 * g, 1 : H + 1, 0:W],  # right
            p[:, 3 * g : 4 * g, 0:H, 1 : W + 1],
        ],
        1,
    )  # down


class AsymmetricFusion(nn.Module):
    """Shuffle at `conv_in`, shift-and-add at `act_out` of one spatial unit (parameter-free)."""

    def __init__(self, point: FusionPoint, shuffle: bool = True, shift: bool = True):
        super().__init__()
        if point.in_channels != point.channels:
            raise ValueError(
                f"{point.name}: pixel shift adds the conv input to its output, "
                f"which needs equal widths ({point.in_channels} != {point.channels})"
            )
        self.shuffle = shuffle
        self.shift = shift
        self.split = shuffle_split(point.in_channels)
        self._pending: Tensor | None = None

    def forward(self, x5: Tensor, site: str) -> Tensor:
        T = self.split
        if site == "conv_in":  # x5: (M, B, C, H, W), the conv's input
            if self.shift:
                M, B, C, H, W = x5.shape
                shifted = pixel_shift(x5[:, :, :T].reshape(M * B, T, H, W)).view(M, B, T, H, W)
                # what modality m receives: the other modalities' shifted channels
                self._pending = mean_of_others(shifted)
            if self.shuffle:
                x5 = torch.cat([x5[:, :, :T], mean_of_others(x5[:, :, T:])], dim=2)
            return x5
        if site == "act_out" and self._pending is not None:  # x5: the unit's output
            incoming, self._pending = self._pending, None
            if incoming.shape[-2:] != x5.shape[-2:]:
                raise ValueError(
                    f"pixel shift: conv changed the size {tuple(incoming.shape[-2:])}"
                    f" -> {tuple(x5.shape[-2:])}"
                )
            # (M, B, T, H, W) -> (M, B, C, H, W): the channels after T receive nothing
            return x5 + F.pad(incoming, (0, 0, 0, 0, 0, x5.shape[2] - T))
        return x5


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
        raise ValueError("asymfusion needs shuffle or shift (use name: multistream for neither)")
    model = MultiStreamSegmentor(
        modalities, in_channels, num_classes, backbone, pretrained, decoder, shared=shared
    )
    model.encoder.insert(
        Where(("conv_in", "act_out"), stages=tuple(stages), blocks="last"),
        lambda point: AsymmetricFusion(point, shuffle, shift),
    )
    return model
