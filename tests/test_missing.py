"""A modality missing: training dropout (never all at once), the fill at inference (zeros after
normalisation, or the method's own ensemble rule), `eval --drop`, `predict` without depth."""

import json

import pytest
import torch

from conftest import TINY_MODEL
from fusescope.cli import main
from fusescope.engine.missing import ModalityAbsent, drop_modalities, dropout_probabilities
from fusescope.errors import FusescopeError
from fusescope.models import build_model

CHANNELS = {"rgb": 3, "depth": 1}


def test_dropout_never_drops_every_modality_and_keeps_its_rates():
    B = 20000
    batch = {
        "rgb": torch.ones(B, 3, 2, 2),
        "depth": torch.ones(B, 1, 2, 2),
        "label": torch.zeros(B, 2, 2, dtype=torch.long),
    }
    out = drop_modalities(batch, {"rgb": 0.6, "depth": 0.6}, ["rgb", "depth"])
    kept_rgb = out["rgb"].flatten(1).amax(1) > 0
    kept_depth = out["depth"].flatten(1).amax(1) > 0
    assert (kept_rgb | kept_depth).all()  # never both gone
    assert torch.equal(out["label"], batch["label"])
    # P(dropped) = p - P(both drawn) / 2 (one of the two is restored, uniformly)
    expected = 0.6 - 0.36 / 2
    assert abs((~kept_rgb).float().mean() - expected) < 0.02
    assert abs((~kept_depth).float().mean() - expected) < 0.02
    # a sample is dropped whole: every pixel and channel, or none
    assert set(out["rgb"].flatten(1).amin(1).unique().tolist()) <= {0.0, 1.0}


def test_dropout_of_one_modality_only():
    B = 20000
    batch = {"rgb": torch.ones(B, 3, 1, 1), "depth": torch.ones(B, 1, 1, 1)}
    out = drop_modalities(
        batch, dropout_probabilities({"depth": 0.5}, ["rgb", "depth"]), ["rgb", "depth"]
    )
    assert (out["rgb"] == 1).all()
    assert abs((out["depth"] == 0).float().mean() - 0.5) < 0.02


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"sonar": 0.2}, "unknown modality 'sonar'"),
        (1.0, r"modality_dropout.rgb must be a probability in \[0, 1\)"),
        ({"depth": -0.1}, "modality_dropout.depth must be a probability"),
        ("lots", "must be a probability"),
    ],
)
def test_bad_dropout_values(spec, message):
    with pytest.raises(FusescopeError, match=message):
        dropout_probabilities(spec, ["rgb", "depth"])


@pytest.mark.parametrize("name", ["multistream", "cen", "late_average"])
def test_ensembles_score_only_the_present_streams(name):
    model = build_model({"name": name}, ["rgb", "depth"], CHANNELS, 4).eval()
    with torch.no_grad():
        if getattr(model, "ensemble", None) is not None:
            model.ensemble.alpha.copy_(torch.tensor([0.3, 2.0]))  # depth weighted heavily
        rgb = torch.randn(2, 3, 32, 40)
        absent = ModalityAbsent(model, ["depth"], CHANNELS)
        got = absent({"rgb": rgb})["logits"]
        full = model({"rgb": rgb, "depth": torch.zeros(2, 1, 32, 40)})
    # the only present stream, whatever alpha says: its weight is renormalised to 1
    assert torch.allclose(got, full["per_modality"]["rgb"], atol=1e-6)
    assert not torch.allclose(got, full["logits"], atol=1e-3)
    assert absent.modalities == ["rgb"]


def test_other_methods_get_zeros_after_normalisation():
    model = build_model({"name": "early_concat"}, ["rgb", "depth"], CHANNELS, 4).eval()
    rgb = torch.randn(2, 3, 32, 40)
    with torch.no_grad():
        got = ModalityAbsent(model, ["depth"], CHANNELS)({"rgb": rgb})["logits"]
        ref = model({"rgb": rgb, "depth": torch.zeros(2, 1, 32, 40)})["logits"]
    assert torch.equal(got, ref)


def test_absent_modality_errors():
    model = build_model({"name": "early_concat"}, ["rgb", "depth"], CHANNELS, 4)
    with pytest.raises(FusescopeError, match="the run has no modality 'hha'"):
        ModalityAbsent(model, ["hha"], CHANNELS)
    with pytest.raises(FusescopeError, match="cannot drop every modality"):
        ModalityAbsent(model, ["rgb", "depth"], CHANNELS)


def test_train_with_dropout_then_eval_and_predict_without_depth(tiny_data, tmp_path, capsys):
    from test_engine import CONFIG

    run = tmp_path / "run"
    common = [
        str(CONFIG),
        f"data.root={tiny_data}",
        "data.synth=null",
        *TINY_MODEL,
        "train.max_steps=2",
    ]
    assert (
        main(
            [
                "train",
                *common,
                "--out",
                str(tmp_path / "bad"),
                "--no-eval",
                "train.modality_dropout={sonar: 0.5}",
            ]
        )
        == 2
    )
    assert "unknown modality 'sonar'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # refused before the run folder is written
    assert (
        main(["train", *common, "--out", str(run), "--no-eval", "train.modality_dropout=0.5"]) == 0
    )
    capsys.readouterr()

    assert main(["eval", str(run), "--split", "test", "--drop", "depth", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["drop"] == ["depth"]
    assert (run / "eval_test_none_no-depth.json").is_file()
    assert main(["eval", str(run), "--drop", "sonar"]) == 2
    assert "the run has no modality 'sonar'" in capsys.readouterr().err

    out = tmp_path / "mask.png"
    assert (
        main(["predict", str(run), "--rgb", str(tiny_data / "rgb/0000.png"), "--out", str(out)])
        == 0
    )
    assert "depth absent: zeros after normalisation" in capsys.readouterr().err
    from fusescope.engine.checkpoint import load_run
    from fusescope.io import read_image
    from fusescope.tasks.segmentation.predict import load_frame

    # the same as the model fed a zero (normalised) depth map
    loaded = load_run(run)
    sample, _ = load_frame(
        loaded, {"rgb": tiny_data / "rgb/0000.png", "depth": tiny_data / "depth/0000.png"}
    )
    with torch.no_grad():
        ref = loaded.model(
            {"rgb": sample["rgb"][None], "depth": torch.zeros_like(sample["depth"])[None]}
        )["logits"]
    assert (read_image(out) == ref.argmax(1)[0].numpy()).all()

    assert (
        main(
            [
                "predict",
                str(run),
                "--rgb",
                str(tiny_data / "rgb/0000.png"),
                "--hha",
                str(tiny_data / "rgb/0000.png"),
                "--out",
                str(tmp_path / "x.png"),
            ]
        )
        == 2
    )
    assert "the run has no modality 'hha'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
