"""DeepLabV3+ decoder (Chen et al., ECCV 2018), built from the encoder's feature contract.

ASPP runs on the coarsest feature map (the last in the list), its output is upsampled to the
finest map (the first), concatenated with a 1x1-reduced copy of it (the "low-level" features) and
refined by two 3x3 convs before the 1x1 classifier. Logits come out at the finest level's
resolution; the segmentor resizes them to the input.

Atrous rates. The paper's rates (6, 12, 18) are for an output stride of 16. fusescope's encoders
are not dilated (stride 32 at the last level), so by default the rates are scaled by
16 / reduction: (3, 6, 9) at stride 32. Pass `rates` to fix them.

Auxiliary head. A decoder returns logits only; it cannot return losses. With `aux: true` the
decoder also owns an FCN head (3x3 conv-BN-ReLU, dropout, 1x1 classifier; the SA-Gate authors' aux
head) on level `aux_level` (default: the last) and exposes `decoder.aux_logits(features)`. A model
that wants the auxiliary loss:

    1. builds its decoder spec with `with_aux(spec)` (turns on `aux` for decoders that have one),
    2. in `forward`, passes `aux_logits(self.decoder, features, weight, size)` as the output's
       `aux_logits` (an empty dict when not training or when the decoder has no aux head); the
       engine supervises them like the main logits (see `models/segmentor.py`).

Only build the head when it is used: an unused head holds parameters that get no gradient (DDP
complains) and inflates parameter counts in benchmarks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusescope.errors import OptionError
from fusescope.models.registry import DECODERS
from fusescope.models.segmentor import AuxLogits, resize_to
from fusescope.nn.layers import conv_bn_relu


class ImagePooling(nn.Module):
    """ASPP's image-level branch: global average pool, 1x1 conv, broadcast back.

    No BatchNorm here (unlike the paper): on a 1x1 map BN sees one value per channel and image,
    so training with batch size 1 would fail; a bias does the same job.
    """

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = F.relu(self.conv(x.mean(dim=(2, 3), keepdim=True)))  # (B, C, 1, 1)
        return pooled.expand(-1, -1, *x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1 + one 3x3 conv per rate + image pooling, projected."""

    def __init__(self, cin: int, width: int, rates: list[int], dropout: float):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(cin, width, 1)] + [conv_bn_relu(cin, width, 3, r) for r in rates]
        )
        self.pooling = ImagePooling(cin, width)
        self.project = nn.Sequential(
            conv_bn_relu(width * (len(rates) + 2), width, 1), nn.Dropout2d(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        outs = [branch(x) for branch in self.branches] + [self.pooling(x)]
        return self.project(torch.cat(outs, dim=1))


class FCNHead(nn.Module):
    """Auxiliary classifier on one feature level: 3x3 conv-BN-ReLU (C/4), dropout, 1x1."""

    def __init__(self, cin: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        hidden = max(cin // 4, 8)
        self.block = nn.Sequential(
            conv_bn_relu(cin, hidden), nn.Dropout2d(dropout), nn.Conv2d(hidden, num_classes, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class DeepLabV3Plus(nn.Module):
    """ASPP on `features[-1]`, low-level features from `features[0]`.

    Args:
        channels: channels of each feature level (finest first), from `feature_info`.
        reductions: stride of each level w.r.t. the input.
        num_classes: output classes.
        width: channels of ASPP and of the refinement convs (paper: 256).
        low_level_width: channels the low-level features are reduced to (paper: 48).
        rates: atrous rates; None scales (6, 12, 18) by 16 / reductions[-1].
        dropout: dropout after the ASPP projection and before the classifier.
        aux: also build the auxiliary FCN head (see the module docstring).
        aux_level: which feature level the auxiliary head reads.
    """

    def __init__(
        self,
        channels: list[int],
        reductions: list[int],
        num_classes: int,
        width: int = 256,
        low_level_width: int = 48,
        rates: list[int] | None = None,
        dropout: float = 0.1,
        aux: bool = False,
        aux_level: int = -1,
    ):
        super().__init__()
        if len(channels) < 2:
            raise OptionError(f"deeplabv3plus needs at least two feature levels, got {channels}")
        if rates is None:
            rates = default_rates(reductions[-1])
        if not rates or any(int(r) < 1 for r in rates):
            raise OptionError(f"deeplabv3plus rates must be positive integers, got {rates}")
        if not -len(channels) <= aux_level < len(channels):
            raise OptionError(f"aux_level {aux_level} is not a level of {len(channels)}")
        self.rates = [int(r) for r in rates]
        self.aspp = ASPP(channels[-1], width, self.rates, dropout)
        self.reduce = conv_bn_relu(channels[0], low_level_width, 1)
        self.refine = nn.Sequential(
            conv_bn_relu(width + low_level_width, width),
            conv_bn_relu(width, width),
            nn.Dropout2d(dropout),
        )
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self.aux_level = aux_level
        self.aux_head = FCNHead(channels[aux_level], num_classes) if aux else None

    def forward(self, features: list[Tensor]) -> Tensor:
        low = self.reduce(features[0])  # (B, low_level_width, H/4, W/4)
        high = resize_to(self.aspp(features[-1]), low.shape[-2:])  # (B, width, H/4, W/4)
        return self.classifier(self.refine(torch.cat([high, low], dim=1)))

    @property
    def has_aux(self) -> bool:
        return self.aux_head is not None

    def aux_logits(self, features: list[Tensor]) -> Tensor:
        """Auxiliary logits at the resolution of level `aux_level`."""
        if self.aux_head is None:
            raise RuntimeError("this deeplabv3plus decoder was built without aux: true")
        return self.aux_head(features[self.aux_level])


def default_rates(reduction: int) -> list[int]:
    """The paper's (6, 12, 18) at output stride 16, scaled to this encoder's last stride."""
    return [max(1, round(r * 16 / reduction)) for r in (6, 12, 18)]


@DECODERS.register("deeplabv3plus")
def deeplabv3plus(
    channels: list[int],
    reductions: list[int],
    num_classes: int,
    width: int = 256,
    low_level_width: int = 48,
    rates: list[int] | None = None,
    dropout: float = 0.1,
    aux: bool = False,
    aux_level: int = -1,
) -> nn.Module:
    return DeepLabV3Plus(
        channels,
        reductions,
        num_classes,
        width=width,
        low_level_width=low_level_width,
        rates=list(rates) if rates is not None else None,
        dropout=dropout,
        aux=aux,
        aux_level=aux_level,
    )


def with_aux(spec: str | dict) -> str | dict:
    """The decoder spec with its auxiliary head turned on, if that decoder has one.

    A spec that sets `aux` itself is left alone, so a user can still switch it off.
    """
    name = spec if isinstance(spec, str) else spec.get("name", "light")
    if name != "deeplabv3plus":
        return spec
    if isinstance(spec, str):
        return {"name": spec, "aux": True}
    return spec if "aux" in spec else {**spec, "aux": True}


def supports_aux(decoder: nn.Module) -> bool:
    return bool(getattr(decoder, "has_aux", False))


def aux_logits(
    decoder: nn.Module,
    features: list[Tensor],
    weight: float,
    size: tuple[int, int],
) -> dict[str, AuxLogits]:
    """`{"aux_head": AuxLogits(logits, weight)}` while training with an aux head; else `{}`.

    Args:
        decoder: a decoder that may expose `aux_logits` (see `supports_aux`).
        features: the feature list the decoder read.
        weight: the loss weight the engine applies (the SA-Gate authors use 0.2).
        size: the label's (H, W); aux logits are upsampled to it.
    """
    if weight <= 0 or not decoder.training or not supports_aux(decoder):
        return {}
    return {"aux_head": AuxLogits(resize_to(decoder.aux_logits(features), size), weight)}
