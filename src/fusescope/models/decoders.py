"""Decoders built from the encoder's feature contract (channels and reductions per level).

Each decoder maps a list of feature maps (finest first) to class logits at the finest level's
resolution; the segmentor resizes to the input. `light` and `segformer` are here, `deeplabv3plus`
in `models/deeplab.py`, `refinenet` in `models/refinenet.py`.
"""

from __future__ import annotations

import torch
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


class SegFormerHead(nn.Module):
    """SegFormer's all-MLP head as TokenFusion's and GeminiFusion's code run it: per level a
    linear embedding to `width` channels (on the level's tokens), every level upsampled
    (bilinear) to the finest level's size, concatenated deepest first, a 1x1 conv without bias +
    BatchNorm + ReLU back to `width` (mmcv's ConvModule), Dropout2d and a 1x1 classifier.

    Args:
        channels: each level's channels, finest first.
        num_classes: output classes.
        width: the embedding width (256 in both authors' code; the SegFormer paper's ADE20K
            models use 768 from B1 up).
        dropout: Dropout2d before the classifier (0.1).
    """

    def __init__(
        self, channels: list[int], num_classes: int, width: int = 256, dropout: float = 0.1
    ):
        super().__init__()
        self.embed = nn.ModuleList(nn.Linear(c, width) for c in channels)
        self.fuse = conv_bn_relu(width * len(channels), width, k=1)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, features: list[Tensor]) -> Tensor:
        size = features[0].shape[-2:]
        embedded = []
        for linear, x in zip(self.embed, features, strict=True):
            B, C, H, W = x.shape  # tokens (B, H*W, C) -> linear -> (B, width, H, W)
            y = linear(x.reshape(B, C, H * W).transpose(1, 2)).transpose(1, 2)
            y = y.reshape(B, y.shape[1], H, W)
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            embedded.append(y)
        return self.classifier(self.dropout(self.fuse(torch.cat(embedded[::-1], dim=1))))


@DECODERS.register("segformer")
def segformer(
    channels: list[int],
    reductions: list[int],
    num_classes: int,
    width: int = 256,
    dropout: float = 0.1,
) -> nn.Module:
    return SegFormerHead(channels, num_classes, width=width, dropout=dropout)


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
