"""Decoders built from the encoder's feature contract (channels and reductions per level).

Each decoder maps a list of feature maps (finest first) to class logits at the finest level's
resolution; the segmentor resizes to the input. DeepLabV3+ lives beside this one when added.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from fusescope.models.registry import DECODERS
from fusescope.nn.layers import conv_bn_relu


class LightDecoder(nn.Module):
    """FPN-style: 1x1 laterals, top-down sum with upsampling, one 3x3 fuse, 1x1 classifier."""

    def __init__(
        self, channels: list[int], num_classes: int, width: int = 96, dropout: float = 0.1
    ):
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.fuse = conv_bn_relu(width, width)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = self.laterals[-1](features[-1])
        for lateral, feat in zip(
            reversed(self.laterals[:-1]), reversed(features[:-1]), strict=True
        ):
            x = lateral(feat) + F.interpolate(
                x, size=feat.shape[-2:], mode="bilinear", align_corners=False
            )
        return self.classifier(self.dropout(self.fuse(x)))


@DECODERS.register("light")
def light(
    channels: list[int],
    reductions: list[int],
    num_classes: int,
    width: int = 96,
    dropout: float = 0.1,
) -> nn.Module:
    return LightDecoder(channels, num_classes, width=width, dropout=dropout)


def build_decoder(
    spec: str | dict, channels: list[int], reductions: list[int], num_classes: int
) -> nn.Module:
    """`spec` is a decoder name or a dict {name: ..., **options} from the model config."""
    if isinstance(spec, str):
        name, options = spec, {}
    else:
        options = dict(spec)
        name = options.pop("name", "light")
    return DECODERS.build(
        name,
        options,
        where="model.decoder",
        channels=list(channels),
        reductions=list(reductions),
        num_classes=num_classes,
    )
