"""RefineNet decoder as the CEN and AsymFusion authors' code builds it, from the encoder's levels.

Both papers run "RefineNet (ResNet-101)"; their code (yikaiw/CEN, yikaiw/AsymFusion, built on
V. Nekrasov's PyTorch RefineNet) uses this decoder, and CEN Table 2's 118.1 M parameters for the
uni-modal ResNet-101 model are this decoder (75.6 M) plus the encoder (42.5 M). Coarsest level
first, each level runs one refine block:

    dimred    3x3 conv, level channels -> width (512 at the coarsest level, 256 below)
    adapt     2 residual conv units (RCU: ReLU, 3x3 conv + bias, ReLU, 3x3 conv, + shortcut)
    joint     3x3 conv (every level but the coarsest), then + the coarser level upsampled
    ReLU
    crp       chained residual pooling, 4 stages: top = conv3x3(maxpool5x5/1(top)); x += top
    out       3 RCUs
    to_finer  3x3 conv to the next level's width (every level but the finest), upsampled
              bilinearly (align_corners, as the authors) to the next level's size

then dropout and a 3x3 classifier with bias. Dropout (p = 0.5, element-wise) also acts on the two
coarsest encoder features before the decoder reads them. There is no normalisation layer, so in a
multi-stream model (shared convolutions, private BNs) the whole decoder is shared by the
modalities, as the authors' `ModuleParallel` shares it.

One detail of the authors' code is kept on purpose: their RCU applies an in-place ReLU to its
input, which is also the tensor the shortcut holds, so the shortcut carries ReLU(x), not x.

The "light-weight" RefineNet by the same author (1x1 convs, no RCUs) is a different network
(~3 M decoder parameters); it is not the one these papers' code runs.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from fusescope.errors import OptionError
from fusescope.models.registry import DECODERS


def conv3x3(cin: int, cout: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=bias)


class ResidualConvUnit(nn.Module):
    """`blocks` x (ReLU, 3x3 conv with bias, ReLU, 3x3 conv, + ReLU(input))."""

    def __init__(self, width: int, blocks: int):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Sequential(conv3x3(width, width, bias=True), nn.ReLU(), conv3x3(width, width))
            for _ in range(blocks)
        )

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = F.relu(x)  # the shortcut takes the rectified input, as in the authors' code
            x = x + conv(x)
        return x


class ChainedResidualPooling(nn.Module):
    """`stages` x (5x5 max pool stride 1, 3x3 conv), each stage's output summed into the input."""

    def __init__(self, width: int, stages: int):
        super().__init__()
        self.pool = nn.MaxPool2d(5, stride=1, padding=2)
        self.convs = nn.ModuleList(conv3x3(width, width) for _ in range(stages))

    def forward(self, x: Tensor) -> Tensor:
        top = x
        for conv in self.convs:
            top = conv(self.pool(top))
            x = x + top
        return x


class RefineBlock(nn.Module):
    """One level of the decoder (see the module docstring).

    Args:
        cin: channels of this encoder level.
        width: working channels of this level.
        finer_width: width of the next finer level (None: this is the finest level).
        has_coarser: a coarser level's output is added here (False: the coarsest level).
        crp_stages, adapt_blocks, out_blocks: the authors' 4, 2 and 3.
    """

    def __init__(
        self,
        cin: int,
        width: int,
        finer_width: int | None,
        has_coarser: bool,
        crp_stages: int,
        adapt_blocks: int,
        out_blocks: int,
    ):
        super().__init__()
        self.dimred = conv3x3(cin, width)
        self.adapt = ResidualConvUnit(width, adapt_blocks)
        self.joint = conv3x3(width, width) if has_coarser else None
        self.crp = ChainedResidualPooling(width, crp_stages)
        self.out = ResidualConvUnit(width, out_blocks)
        self.to_finer = conv3x3(width, finer_width) if finer_width is not None else None

    def forward(self, feature: Tensor, coarser: Tensor | None) -> Tensor:
        x = self.adapt(self.dimred(feature))
        if self.joint is not None:
            x = self.joint(x) + coarser
        x = self.out(self.crp(F.relu(x)))
        return self.to_finer(x) if self.to_finer is not None else x


class RefineNetDecoder(nn.Module):
    """RefineNet over every encoder level (finest first in `channels`).

    Args:
        channels: channels of each feature level, from the encoder's `feature_info`.
        num_classes: output classes.
        width: working channels of every level but the coarsest (authors: 256).
        top_width: working channels of the coarsest level (authors: 512).
        crp_stages: pooling stages per chained residual pooling block (authors: 4).
        adapt_blocks: RCUs after each level's dimension reduction (authors: 2).
        out_blocks: RCUs after each chained residual pooling (authors: 3).
        dropout: element-wise dropout on the two coarsest features and before the classifier.
    """

    def __init__(
        self,
        channels: list[int],
        num_classes: int,
        width: int = 256,
        top_width: int = 512,
        crp_stages: int = 4,
        adapt_blocks: int = 2,
        out_blocks: int = 3,
        dropout: float = 0.5,
    ):
        super().__init__()
        if not channels:
            raise OptionError("refinenet needs at least one feature level")
        widths = [width] * (len(channels) - 1) + [top_width]
        self.levels = nn.ModuleList(
            RefineBlock(
                channels[i],
                widths[i],
                widths[i - 1] if i > 0 else None,
                has_coarser=i < len(channels) - 1,
                crp_stages=crp_stages,
                adapt_blocks=adapt_blocks,
                out_blocks=out_blocks,
            )
            for i in range(len(channels))
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = conv3x3(widths[0], num_classes, bias=True)

    def forward(self, features: list[Tensor]) -> Tensor:
        n = len(features)
        coarser = None
        for i in reversed(range(n)):
            feat = self.dropout(features[i]) if i >= n - 2 else features[i]
            x = self.levels[i](feat, coarser)
            if i > 0:
                coarser = F.interpolate(
                    x, size=features[i - 1].shape[-2:], mode="bilinear", align_corners=True
                )
        return self.classifier(self.dropout(x))


@DECODERS.register("refinenet")
def refinenet(
    channels: list[int],
    reductions: list[int],
    num_classes: int,
    width: int = 256,
    top_width: int = 512,
    crp_stages: int = 4,
    adapt_blocks: int = 2,
    out_blocks: int = 3,
    dropout: float = 0.5,
) -> nn.Module:
    return RefineNetDecoder(
        channels,
        num_classes,
        width=width,
        top_width=top_width,
        crp_stages=crp_stages,
        adapt_blocks=adapt_blocks,
        out_blocks=out_blocks,
        dropout=dropout,
    )
