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

On other block families the same two operations act where their roles are:

* transformer blocks (ViT, MiT, Swin): the unit is the attention: the shuffle acts on the first
  norm's output (the attention's input, `norm_out`), and the shifted channels, shifted on the
  token grid (a ViT's class token is neither shifted nor receives anything), are added to the
  attention branch's output (`attn_out`), followed by the second shuffle;
* the U-Net translator's levels: one stride-2 conv changes both width and size, so both act on
  the level's output (`stage_out`): the channels T..C are exchanged and the other modalities'
  first T channels, pixel-shifted, are added (levels with a norm, 2..D-1, by default).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fusescope.errors import OptionError
from fusescope.models.core import FusionOp, mean_of_others
from fusescope.models.registry import FUSION_OPS
from fusescope.models.sites import ForwardScope, FusionPoint, Where


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


def shuffle_channels(x: Tensor, keep: int, dim: int = 2) -> Tensor:
    """Maps (B, M, C, H, W) (`dim=2`) or tokens (B, M, N, C) (`dim=-1`): each modality keeps its
    first `keep` channels and takes the rest from the other modality (the mean of the others
    for M > 2)."""
    kept, rest = x.split([keep, x.shape[dim] - keep], dim=dim)
    return torch.cat([kept, mean_of_others(rest)], dim=dim)


def shifted_tokens(x4: Tensor, keep: int, grid: tuple[int, int]) -> Tensor:
    """Tokens (B, M, P + h*w, C) -> what each modality receives, (B, M, P + h*w, keep): the
    other modalities' first `keep` channels shifted on the token grid (prefix tokens: 0)."""
    B, M, N, _ = x4.shape
    h, w = grid
    prefix = N - h * w
    maps = x4[:, :, prefix:, :keep].reshape(B * M, h, w, keep).permute(0, 3, 1, 2)
    moved = pixel_shift(maps).permute(0, 2, 3, 1).reshape(B, M, h * w, keep)
    return F.pad(mean_of_others(moved), (0, 0, prefix, 0))


class AsymmetricFusion(FusionOp):
    """AsymFusion at one unit (parameter-free); `shuffle` switches both shuffles, `shift` the
    shift. `level=True`: both at one site, a U-Net level's output (see the module docstring).

    The shifted unit input travels from the first site to the second in the forward's scope
    (`ForwardScope.carry`), never in the op: nothing outlives the forward."""

    uses_scope = True

    def __init__(
        self, point: FusionPoint, shuffle: bool = True, shift: bool = True, level: bool = False
    ):
        super().__init__()
        channels = point.channels
        if level and channels < 5:
            raise OptionError(f"AsymFusion needs >= 5 channels at a level, got {channels}")
        if not level and point.in_channels is not None and point.in_channels != channels:
            raise OptionError(
                f"{point.name}: pixel shift adds the conv input to its output, "
                f"which needs equal widths ({point.in_channels} != {channels})"
            )
        self.shuffle = shuffle
        self.shift = shift
        self.level = level
        self.reduction = point.reduction
        self.split = shuffle_split(channels)

    def forward(self, x: Tensor, site: str, scope: ForwardScope) -> Tensor:
        T, maps = self.split, x.dim() == 5  # maps (B, M, C, H, W) or tokens (B, M, N, C)
        dim = 2 if maps else -1
        if self.level:  # a U-Net level's output: shuffle, then add the others' shifted channels
            out = shuffle_channels(x, T, dim) if self.shuffle else x
            if self.shift:
                out = out + F.pad(self.incoming(x, scope), (0, 0, 0, 0, 0, x.shape[2] - T))
            return out
        if site in ("conv_in", "norm_out"):  # the unit's input
            if self.shift:
                scope.carry[self] = self.incoming(x, scope)
            return shuffle_channels(x, T, dim) if self.shuffle else x
        incoming = scope.carry.pop(self, None)  # at the unit's output
        if incoming is not None:
            before, after = (
                (incoming.shape[-2:], x.shape[-2:]) if maps else (incoming.shape[2], x.shape[2])
            )
            if before != after:
                raise ValueError(f"pixel shift: the unit changed the size {before} -> {after}")
            # the channels after T receive nothing
            pad = (0, 0, 0, 0, 0, x.shape[2] - T) if maps else (0, x.shape[-1] - T)
            x = x + F.pad(incoming, pad)
        return shuffle_channels(x, T, dim) if self.shuffle else x

    def incoming(self, x: Tensor, scope: ForwardScope) -> Tensor:
        """What each modality receives: the other modalities' first T channels, shifted."""
        T = self.split
        if x.dim() == 4:
            return shifted_tokens(x, T, scope.grid(self.reduction))
        M = x.shape[1]
        shifted = pixel_shift(x[:, :, :T].flatten(0, 1)).unflatten(0, (-1, M))
        return mean_of_others(shifted)  # (B, M, T, H, W)


def _check_asym(shuffle: bool = True, shift: bool = True, **_) -> None:
    if not (shuffle or shift):
        raise OptionError("asymfusion needs shuffle or shift (use name: multistream for neither)")


# the unit's two sites per block family; a U-Net level has one
ASYM_SITES = {
    "cnn": ("conv_in", "act_out"),
    "transformer": ("norm_out", "attn_out"),
    "level": ("stage_out",),
}


@FUSION_OPS.register(
    "asymfusion",
    check=_check_asym,
    paper="AsymFusion: Asymmetric Multi-layer Fusion (Wang et al., ACM MM 2020)",
)
def asymfusion(
    model,
    *,
    shuffle: bool = True,
    shift: bool = True,
    stages: list[int] | None = None,
) -> None:
    """AsymFusion: `shuffle` and `shift` switch the two operations (shuffle-only, shift-only,
    both) in the last block of each of `stages` (default: every stage; on the U-Net the levels
    with a norm)."""
    encoder = model.encoder
    family = encoder.block_family
    if family not in ASYM_SITES:
        raise OptionError(
            f"asymfusion needs blocks with known sites; this {encoder.family or 'encoder'} has none"
        )
    level = family == "level"
    if level and stages is None:  # the levels with a norm (CEN code's conv2..conv7)
        stages = [p.stage for p in encoder.points(Where(("norm_out",)))]
    where = Where(
        ASYM_SITES[family],
        stages=tuple(stages) if stages is not None else None,
        blocks="all" if level else "last",
    )
    encoder.insert(where, lambda point: AsymmetricFusion(point, shuffle, shift, level=level))
