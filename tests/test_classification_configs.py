"""Every config under configs/classification builds, trains 2 steps and evaluates with its own
protocol, on tiny known-answer data made here (posters, and RGB-D rooms classified per frame).
Only what the machine running the tests cannot afford is overridden: the data root (and its
generation), max_steps and the batch sizes."""

import math
import shutil
from pathlib import Path

import pytest

from fusescope.cli import main
from fusescope.config import load_config
from fusescope.data.posters import generate_poster_data
from fusescope.engine.evaluate import evaluate_run
from fusescope.engine.train import train

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.name for p in (ROOT / "configs" / "classification").glob("*.yaml"))


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory):
    base = tmp_path_factory.mktemp("classification")
    posters = base / "posters"
    generate_poster_data(posters, num=24, seed=0, size=(48, 32), progress=False)
    rooms = base / "rooms"
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(rooms),
                "--num",
                "12",
                "--seed",
                "0",
                "--size",
                "32",
                "40",
            ]
        )
        == 0
    )
    return {"posters": posters, "frames": rooms}


def test_every_method_and_task_has_a_config():
    posters = {
        load_config(ROOT / "configs/classification" / c).model.name
        for c in CONFIGS
        if c.startswith("posters")
    }
    frames = {
        load_config(ROOT / "configs/classification" / c).model.name
        for c in CONFIGS
        if c.startswith("frames")
    }
    assert posters == {"unimodal", "late", "ensemble", "concat", "attention", "mango"}
    assert frames == {"unimodal", "early_concat", "late", "cen", "asymfusion"}


@pytest.mark.parametrize("config", CONFIGS)
def test_config_trains_and_evaluates(config, tiny_sets, tmp_path):
    path = ROOT / "configs" / "classification" / config
    shipped = load_config(path)
    assert shipped.task == "classification" and shipped.data.synth is not None
    cfg = load_config(
        path,
        [
            f"data.root={tiny_sets[config.split('_')[0]]}",
            "data.synth=null",
            "train.max_steps=2",
            "train.batch_size=2",
            "train.progress=false",
            "eval.batch_size=4",
        ],
    )
    run = train(cfg, tmp_path / "run")
    try:
        result = evaluate_run(run)  # the config's own split; tuned threshold from its val split
        assert result["split"] == shipped.eval.split == "test"
        assert 0.0 <= result["micro_f1"] <= 1.0 and 0.0 <= result["macro_f1"] <= 1.0
        assert result["threshold"] == 0.5 and math.isfinite(result["tuned"]["threshold"])
        assert result["cue_group_f1"]  # the known-answer data's cue groups are scored
    finally:
        shutil.rmtree(run, ignore_errors=True)
