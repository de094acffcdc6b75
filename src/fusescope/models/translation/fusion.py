"""Fusion ops for the U-Net translator's encoder levels, where the segmentation ops do not fit
as they are. (CEN's `ChannelExchange` and the baselines' `AlignFusion` run unchanged; see
`methods.py`.)

* `LevelShuffleShift`: AsymFusion's channel shuffle and pixel shift. In a ResNet they act inside
  a residual unit whose conv keeps the width and size (shuffle feeds the conv, the shifted input
  is added to its output). A U-Net level is one stride-2 conv that changes both, so here both act
  on the level's output: the channels T..C are exchanged between modalities (the mean of the
  others for M > 2) and the other modalities' first T channels, pixel-shifted in 4 groups, are
  added, with T = 4 * floor(C / 5) as in the authors' code.
* `instance_normed`: the baselines' concat / self-attention ops end in a BatchNorm; translation
  nets train with batch 1, where batch statistics are those of one image, so their norm becomes
  an instance norm (pix2pix's), or none at the innermost level, whose 1x1 map (U-Net-256) has no
  instance statistics either (the U-Net itself has no norm there).
* `AverageFusion`: CEN Table 4's extra "Average" baseline, the modalities' mean.
* `LatentFlowFusion`: MANGO's flow on the encoder features of one level (two modalities).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusescope.errors import OptionError
from fusescope.models.flow import MangoFlow, nll_per_dim
from fusescope.models.fusion.asym import pixel_shift, shuffle_channels, shuffle_split
from fusescope.models.fusion.mango import Mango
from fusescope.models.multistream import ForwardScope, mean_of_others


class LevelShuffleShift(nn.Module):
    """AsymFusion at a U-Net level's output (B, M, C, H, W); parameter-free."""

    def __init__(self, channels: int, shuffle: bool = True, shift: bool = True):
        super().__init__()
        if channels < 5:
            raise OptionError(f"AsymFusion needs >= 5 channels at a level, got {channels}")
        self.split = shuffle_split(channels)
        self.shuffle, self.shift = shuffle, shift

    def forward(self, x5: Tensor, site: str) -> Tensor:
        T, M, C = self.split, x5.shape[1], x5.shape[2]
        out = shuffle_channels(x5, T) if self.shuffle else x5
        if self.shift:
            shifted = pixel_shift(x5[:, :, :T].flatten(0, 1)).unflatten(0, (-1, M))
            # what modality m receives: the other modalities' shifted channels, on its first T
            out = out + F.pad(mean_of_others(shifted), (0, 0, 0, 0, 0, C - T))
        return out


def instance_normed(op: nn.Module, norm: bool = True) -> nn.Module:
    """`op` with every BatchNorm2d replaced by an affine InstanceNorm2d of the same width
    (`norm=False`: by nothing)."""
    for name, child in op.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(
                op,
                name,
                nn.InstanceNorm2d(child.num_features, affine=True) if norm else nn.Identity(),
            )
        else:
            instance_normed(child, norm)
    return op


class AverageFusion(nn.Module):
    """The modalities' mean added to every stream (parameter-free)."""

    def fuse(self, x5: Tensor) -> Tensor:  # (B, M, C, H, W) -> (B, C, H, W)
        return x5.mean(1)

    def forward(self, x5: Tensor, site: str) -> Tensor:
        return x5 + self.fuse(x5).unsqueeze(1)


class LatentFlowFusion(nn.Module):
    """MANGO's latent flow at one encoder level of two streams.

    Each modality's level feature is projected to `width` channels by a 1x1 conv and an instance
    norm without affine (scale-free tokens: a jointly trained encoder cannot shrink them to drive
    the NLL down, the role of the segmentation model's affine-free BatchNorm, which batch 1
    cannot have), pooled to a fixed `grid`, and flattened to tokens `[A tokens, B tokens]`; the
    flow G maps them to Z (in float32). Z, back on the grid, is projected to the level's width,
    resized to the level's size and added to both streams (the fused feature every stream
    carries on with, as the baselines' keep-streams setting). The NLL per dimension under a
    standard normal prior, times `nll_weight`, is the aux loss `flow_nll`.
    """

    uses_scope = True

    def __init__(
        self,
        channels: int,
        *,
        width: int,
        grid: Sequence[int],
        blocks: int,
        partitions: Sequence[str],
        coupling: bool,
        attn_dim: int,
        hidden: int,
        nll_weight: float,
        log_scale_bound: float,
    ):
        super().__init__()
        if len(grid) != 2 or min(grid) < 1:
            raise OptionError(f"grid must be [rows, cols] of positive ints, got {list(grid)}")
        if nll_weight < 0:
            raise OptionError(f"nll_weight must be >= 0, got {nll_weight}")
        self.grid = tuple(int(g) for g in grid)
        self.nll_weight = nll_weight
        self.to_tokens = nn.Sequential(
            nn.Conv2d(channels, width, 1), nn.InstanceNorm2d(width, affine=False)
        )
        self.flow = MangoFlow(
            width,
            blocks,
            2 * self.grid[0] * self.grid[1],
            partitions=tuple(partitions),
            coupling=coupling,
            attn_dim=attn_dim,
            hidden=hidden,
            log_scale_bound=log_scale_bound,
        )
        self.from_latent = nn.Conv2d(2 * width, channels, 1)

    def forward(self, x5: Tensor, site: str, scope: ForwardScope) -> Tensor:
        B, M, C, H, W = x5.shape
        tokens = F.adaptive_avg_pool2d(self.to_tokens(x5.flatten(0, 1)), self.grid)
        # (B*2, D, r, c) -> (B, 2, D, r*c) -> (B, 2*r*c, D): modality A's tokens first
        tokens = tokens.flatten(2).unflatten(0, (B, M)).transpose(2, 3).flatten(1, 2)
        with torch.autocast(device_type=x5.device.type, enabled=False):
            z, log_prob = self.flow.log_prob(tokens.float())
        nll = nll_per_dim(log_prob, tokens.shape[1] * tokens.shape[2]).mean()
        scope.add_loss("flow_nll", self.nll_weight * nll)
        fused = self.from_latent(Mango._tokens_to_map(z, self.grid).to(x5.dtype))
        fused = F.interpolate(fused, size=(H, W), mode="bilinear", align_corners=False)
        return x5 + fused.unsqueeze(1)
