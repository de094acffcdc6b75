"""Dissection of a classifier on a known answer: a hand-built model whose `shape` label comes
from the image alone and whose `word` label from the text alone; the drop-one-modality
contribution, CKA and Grad-CAM must say so."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fusescope.cli import main
from fusescope.config import load_config
from fusescope.data.meta import load_meta, write_split
from fusescope.dissect.classification import dissect_classifier, write_classification_report
from fusescope.errors import FusescopeError
from fusescope.io import write_json, write_png
from fusescope.models.classification.base import Classifier, Encoded
from fusescope.tasks import task_of


def write_known_answer(root: Path) -> Path:
    """16 samples: `shape` (appearance cue) = a red square on the image, `word` (text cue) =
    the word zebra in the text; every combination, with filler words."""
    write_json(
        root / "meta.json",
        {
            "name": "known",
            "task": "classification",
            "multi_label": True,
            "classes": [
                {"name": "shape", "id": 0, "cue": "appearance"},
                {"name": "word", "id": 1, "cue": "text"},
            ],
            "modalities": {"img": {"kind": "color", "channels": 3}, "txt": {"kind": "text"}},
        },
    )
    labels, ids = {}, []
    rng = np.random.default_rng(0)
    for i in range(16):
        sid = f"{i:03d}"
        shape, word = bool(i % 2), bool(i // 2 % 2)
        image = rng.integers(0, 60, (8, 8, 3)).astype(np.uint8)
        if shape:
            image[2:6, 2:6, 0] = 250
        write_png(root / "img" / f"{sid}.png", image)
        words = ["the", "film", "is", "long"][: 1 + i % 4] + (["zebra"] if word else ["horse"])
        (root / "txt").mkdir(parents=True, exist_ok=True)
        (root / "txt" / f"{sid}.txt").write_text(" ".join(words), encoding="utf-8")
        labels[sid] = [n for n, on in (("shape", shape), ("word", word)) if on]
        ids.append(sid)
    write_json(root / "labels.json", labels)
    for split in ("train", "val", "test"):
        write_split(root, split, ids)
    return root


class ListConv(nn.Conv2d):
    """A 1x1 conv that returns its map in a list, as timm feature encoders do."""

    def forward(self, x):
        return [super().forward(x)]


class ImageMax(nn.Module):
    dim = 1

    def __init__(self):
        super().__init__()
        self.encoder = ListConv(3, 1, 1)  # the red channel, a map Grad-CAM can read
        with torch.no_grad():
            self.encoder.weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1))
            self.encoder.bias.zero_()

    def forward(self, x, mask=None):
        feature = self.encoder(x)[-1]  # (B, 1, H, W)
        return Encoded(feature.flatten(2).transpose(1, 2), None, feature.amax((2, 3)))


class HasWord(nn.Module):
    dim = 1

    def __init__(self, word_id):
        super().__init__()
        self.word_id = word_id
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, ids, mask):
        hit = ((ids == self.word_id) & mask).float()  # (B, L)
        return Encoded(hit[..., None], mask, self.scale * hit.amax(1, keepdim=True))


class Oracle(Classifier):
    def __init__(self, word_id, red_cut):
        super().__init__(["img", "txt"], 2)
        self.branches = nn.ModuleDict({"img": ImageMax(), "txt": HasWord(word_id)})
        self.red_cut = red_cut

    def forward(self, batch):
        enc = self.encode(batch)
        logits = torch.cat(
            [8 * (enc["img"].pooled - self.red_cut), 8 * (enc["txt"].pooled - 0.5)], dim=1
        )
        return self.output(logits)


class FakeRun:
    def __init__(self, root):
        self.path = root
        self.cfg = load_config(
            None,
            [
                "task=classification",
                f"data.root={root}",
                "data.modalities=[img,txt]",
                "data.vocab_min_count=1",
            ],
        )
        task = task_of(self.cfg)
        self.stats = task.normalisation_stats(self.cfg)
        self.meta = load_meta(root)
        vocab = self.stats["txt"]["vocab"]
        # the red square's normalised value, halfway between the noise and 250
        mean, std = self.stats["img"]["mean"][0], self.stats["img"]["std"][0]
        self.model = Oracle(vocab.index("zebra"), ((150 / 255) - mean) / std).eval()


def test_contribution_cka_and_gradcam_find_the_known_answer(tmp_path):
    run = FakeRun(write_known_answer(tmp_path / "data"))
    result = dissect_classifier(run, split="test", batch_size=5)
    assert result["f1"] == [1.0, 1.0]  # the oracle is right with both modalities
    by = result["f1_drop_by_cue"]
    assert by["img"]["appearance"] > 0.3 and by["img"]["text"] == 0.0
    assert by["txt"]["text"] > 0.3 and by["txt"]["appearance"] == 0.0
    assert result["verdicts"] == {"appearance": "comes from img", "text": "comes from txt"}
    names, cka = result["cka"]["names"], np.array(result["cka"]["matrix"])
    assert names == ["img", "txt", "logits"]
    assert abs(cka[0, 1]) < 0.3 < cka[0, 2]  # independent labels: unlike features
    cams = {ex["cue"]: ex for ex in result["gradcam"]}
    # the image branch looks at the red square for `shape`; `word` has nothing on the image
    assert cams["appearance"]["energy"] > 0 and cams["text"]["energy"] == 0
    square = cams["appearance"]["maps"][:, 2:6, 2:6].mean()
    assert square > cams["appearance"]["maps"].mean()
    index = write_classification_report(result, tmp_path / "report")
    assert "comes from txt" in index.read_text() and (tmp_path / "report/results.json").exists()
    # F1 at eval's headline threshold by default, or at the one chosen on validation
    assert result["threshold"] == 0.5 and "published" in result["threshold_from"]
    tuned = dissect_classifier(run, split="test", batch_size=5, threshold="tuned")
    assert 0 < tuned["threshold"] < 1 and tuned["threshold_from"] == "chosen on split val"
    with pytest.raises(FusescopeError, match="in \\(0, 1\\) or 'tuned'"):
        dissect_classifier(run, split="test", batch_size=5, threshold=1.5)


def test_dissect_cli_needs_three_segmentation_runs_or_one(tmp_path, capsys):
    missing = str(tmp_path / "none")
    assert main(["dissect", missing, missing, "--out", missing]) == 2
    assert "RUN_RGB RUN_DEPTH RUN_JOINT" in capsys.readouterr().err
