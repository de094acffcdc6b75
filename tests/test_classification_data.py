"""Classification data: labels.json, single / multi-label targets, text samples, statistics from
the train split, and frame classification from segmentation label maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fusescope.config import load_config
from fusescope.data import classification as cls
from fusescope.data.batching import collate
from fusescope.data.folder import FolderDataset, fingerprint
from fusescope.data.meta import write_split
from fusescope.errors import FusescopeError
from fusescope.io import write_json, write_png

CLASSES = ["red", "green", "blue"]
TEXTS = {
    "a": "A red apple.",
    "b": "Green grass, green leaves.",
    "c": "The blue sea",
    "d": "red and blue",
    "e": "green",
}
LABELS = {"a": ["red"], "b": ["green"], "c": ["blue"], "d": ["red", "blue"], "e": ["green"]}


def write_classification(
    root: Path, labels=None, texts=None, multi_label=True, splits=None
) -> Path:
    """A folder with an image `img` (the sample's classes as colour channels) and a text."""
    labels = LABELS if labels is None else labels
    texts = TEXTS if texts is None else texts
    write_json(
        root / "meta.json",
        {
            "name": "tiny-cls",
            "task": "classification",
            "multi_label": multi_label,
            "classes": [{"name": n, "id": i} for i, n in enumerate(CLASSES)],
            "modalities": {"img": {"kind": "color", "channels": 3}, "txt": {"kind": "text"}},
        },
    )
    for sid in texts:
        image = np.zeros((6, 4, 3), np.uint8)
        for name in labels.get(sid, []):
            if name in CLASSES:
                image[..., CLASSES.index(name)] = 200
        write_png(root / "img" / f"{sid}.png", image)
        (root / "txt").mkdir(parents=True, exist_ok=True)
        (root / "txt" / f"{sid}.txt").write_text(texts[sid], encoding="utf-8")
    write_json(root / "labels.json", labels)
    for name, ids in (splits or {"train": ["a", "b", "c"], "val": ["d", "e"]}).items():
        write_split(root, name, ids)
    return root


def config(root, *extra):
    return load_config(
        None, [f"data.root={root}", "data.modalities=[img,txt]", "data.vocab_min_count=1", *extra]
    )


def test_samples_hold_images_token_ids_masks_and_multi_hot_targets(tmp_path):
    root = write_classification(tmp_path / "d")
    cfg = config(root)
    stats = cls.normalisation_stats(cfg.data)
    # the vocabulary comes from the train split only (a, b, c): "and" (val only) is unknown
    vocab = stats["txt"]["vocab"]
    assert vocab[:4] == ["<pad>", "<unk>", ".", "green"] and "and" not in vocab  # 2 each
    assert set(vocab[4:]) == {",", "a", "red", "apple", "grass", "leaves", "the", "blue", "sea"}
    assert stats["img"]["mean"] == pytest.approx([200 / 255 / 3] * 3)
    ds = cls.eval_dataset(cfg.data, "val", stats)
    d = ds[0]
    assert set(d) == {"img", "txt", "txt_mask", "target", "id"} and d["id"] == "d"
    assert d["target"].tolist() == [1.0, 0.0, 1.0] and d["target"].dtype == torch.float32
    ids = {t: i for i, t in enumerate(vocab)}
    assert d["txt"].tolist() == [ids["red"], 1, ids["blue"]] and d["txt"].dtype == torch.int64
    assert d["txt_mask"].all() and d["img"].shape == (3, 6, 4)
    batch = collate([ds[0], ds[1]])
    assert batch["txt"].shape == (2, 3) and batch["txt_mask"].tolist() == [
        [True] * 3,
        [True, False, False],
    ]
    assert batch["target"].tolist() == [[1, 0, 1], [0, 1, 0]]


def test_max_tokens_cuts_text(tmp_path):
    cfg = config(write_classification(tmp_path / "d"), "data.max_tokens=2")
    stats = cls.normalisation_stats(cfg.data)
    assert cls.eval_dataset(cfg.data, "train", stats)[1]["txt"].shape == (2,)


def test_training_view_augments_images_only(tmp_path):
    cfg = config(write_classification(tmp_path / "d"), "data.crop_size=[4,4]")
    stats = cls.normalisation_stats(cfg.data)
    ds = cls.train_dataset(cfg.data, stats, seed=0)
    a, b = ds[(0, 2)], ds[(0, 2)]
    assert a["img"].shape == (3, 4, 4) and torch.equal(a["img"], b["img"])
    plain = cls.eval_dataset(cfg.data, "train", stats)[2]
    for k in ("txt", "txt_mask", "target"):
        assert torch.equal(a[k], plain[k])


def test_single_label_targets_are_class_ids(tmp_path):
    labels = {k: v[:1] for k, v in LABELS.items()}
    cfg = config(write_classification(tmp_path / "d", labels=labels, multi_label=False))
    stats = cls.normalisation_stats(cfg.data)
    ds = cls.eval_dataset(cfg.data, "val", stats)
    assert not ds.multi_label
    assert ds[0]["target"].dtype == torch.int64 and ds[0]["target"].item() == 0
    assert collate([ds[0], ds[1]])["target"].tolist() == [0, 1]


@pytest.mark.parametrize(
    "labels, multi, message",
    [
        ({**LABELS, "d": ["red", "purple"]}, True, "sample d: class 'purple' is not in"),
        ({k: v for k, v in LABELS.items() if k != "e"}, True, "no labels for sample e"),
        ({**LABELS, "e": "green"}, True, "sample e: expected a list of class names"),
        (LABELS, False, "sample d: 2 classes; a single-label"),
    ],
)
def test_bad_labels_name_the_file_and_the_sample(tmp_path, labels, multi, message):
    root = write_classification(tmp_path / "d", labels=labels, multi_label=multi)
    with pytest.raises(FusescopeError, match=message) as err:
        cls.ClassificationFolderDataset(root, "val", ["img", "txt"])
    assert str(root / "labels.json") in str(err.value)


def test_bad_sample_files_name_the_file(tmp_path):
    root = write_classification(tmp_path / "d")
    (root / "txt" / "b.txt").write_bytes(b"")
    (root / "img" / "c.png").write_bytes(b"not a png")
    ds = cls.ClassificationFolderDataset(root, "train", ["img", "txt"])
    with pytest.raises(FusescopeError, match=r"b\.txt: empty text"):
        ds.load_raw(1)
    with pytest.raises(FusescopeError, match=r"c\.png: cannot read image"):
        ds.load_raw(2)
    (root / "txt" / "a.txt").unlink()
    with pytest.raises(FusescopeError, match=r"txt: 1 file\(s\) of the split missing, e.g. a\.txt"):
        cls.ClassificationFolderDataset(root, "train", ["img", "txt"])


def test_text_needs_a_vocabulary_and_serves_no_segmentation(tmp_path):
    root = write_classification(tmp_path / "d")
    ds = cls.ClassificationFolderDataset(root, "train", ["img", "txt"])
    assert ds.load_raw(0)["txt"] == "A red apple."
    with pytest.raises(FusescopeError, match="'txt': no tokenizer"):
        ds[0]
    with pytest.raises(FusescopeError, match="'txt' is a text modality"):
        FolderDataset(root, "train", ["img", "txt"])


def test_fingerprint_covers_labels_and_texts(tmp_path):
    root = write_classification(tmp_path / "d")
    before = fingerprint(root, ["img", "txt"], ["train"])
    (root / "txt" / "a.txt").write_text("A red apple!!", encoding="utf-8")  # other size
    after_text = fingerprint(root, ["img", "txt"], ["train"])
    labels = json.loads((root / "labels.json").read_text())
    labels["a"] = ["green"]
    write_json(root / "labels.json", labels)
    assert len({before, after_text, fingerprint(root, ["img", "txt"], ["train"])}) == 3


def test_frame_classes_known_answer():
    label = np.full((10, 10), 255, np.uint8)
    label[:5] = 0  # 50 pixels
    label[5:7, :3] = 2  # 6 pixels
    label[9, 9] = 1  # 1 pixel
    assert cls.frame_classes(label, 4, 6).tolist() == [True, False, True, False]
    assert cls.frame_classes(label, 4, 1).tolist() == [True, True, True, False]
    assert cls.frame_classes(label, 4, 7).tolist() == [True, False, False, False]


def test_frame_classification_on_a_segmentation_folder(tiny_data):
    """The segmentation folder serves as it is: targets are the classes each label map holds
    (at least min_pixels of them), multi-label, checked against the label PNGs."""
    from fusescope.io import read_image

    cfg = load_config(None, [f"data.root={tiny_data}", "data.min_pixels=1"])
    stats = cls.normalisation_stats(cfg.data)
    ds = cls.eval_dataset(cfg.data, "train", stats)
    assert ds.multi_label and ds.from_label_maps
    for i in range(len(ds)):
        sample = ds[i]
        label = read_image(tiny_data / "label" / f"{sample['id']}.png")
        expected = [float((label == c).any()) for c in range(3)]
        assert sample["target"].tolist() == expected
        assert set(sample) == {"rgb", "depth", "target", "id"}
    assert np.array_equal(
        ds.targets(), np.stack([ds[i]["target"].numpy() > 0 for i in range(len(ds))])
    )
    # every frame of this data set has about 130 pixels of class 1: a higher bar drops it
    high = cls.eval_dataset(
        load_config(None, [f"data.root={tiny_data}", "data.min_pixels=1000"]).data, "train", stats
    )
    assert high.targets()[:, 1].sum() == 0 and high.targets()[:, 0].all()


def test_inspect_a_classification_folder(tmp_path):
    from fusescope.data.stats import inspect

    root = write_classification(tmp_path / "d")
    lines = []
    result = inspect(root, "train", samples=tmp_path / "sheet.png", print_fn=lines.append)
    assert result["splits"] == {"train": 3, "val": 2}
    assert result["samples_per_class"] == [1, 1, 1]
    # a: 4 tokens, b: 6, c: 3; "." and "green" are the tokens seen twice
    assert result["modalities"]["txt"] == {
        "tokens_mean": pytest.approx(13 / 3),
        "tokens_max": 6,
        "vocabulary_min_count_2": 4,
    }
    assert lines[0].startswith("tiny-cls: 3 classes (multi-label)")
    assert (tmp_path / "sheet.png").stat().st_size > 0


def test_frame_targets_follow_the_training_crop(tiny_data):
    """A training view's target is the set of classes in its own (cropped) label map: the same
    transform applied to the label alone gives it."""
    from fusescope.data.transforms import TrainTransform
    from fusescope.io import read_image

    cfg = load_config(
        None,
        [
            f"data.root={tiny_data}",
            "data.min_pixels=1",
            "data.crop_size=[8,8]",
            "data.scale_range=[1,1]",
        ],
    )
    stats = cls.normalisation_stats(cfg.data)
    ds = cls.train_dataset(cfg.data, stats, seed=3)
    crop = TrainTransform({}, crop_size=(8, 8), scale_range=(1, 1), ignore_index=255)
    differs = 0
    for index in range(len(ds)):
        sample = ds[(2, index)]
        label = torch.from_numpy(read_image(tiny_data / "label" / f"{ds.ids[index]}.png"))
        view = crop({"label": label.long()}, np.random.default_rng([3, 0, 2, index]))["label"]
        expected = cls.frame_classes(view.numpy(), 3, 1).astype(np.float32)
        assert sample["target"].tolist() == expected.tolist() and "label" not in sample
        assert sample["rgb"].shape == (3, 8, 8)
        differs += expected.tolist() != cls.frame_classes(label.numpy(), 3, 1).tolist()
    assert differs >= 2  # the crop does cut classes out
