"""`fusescope train --dry-run`: the plan a training would follow, its checks, and no writes."""

import os
from pathlib import Path

from conftest import TINY_MODEL
from fusescope.cli import main
from fusescope.engine.checkpoint import load_run

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tree(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*"))


def test_dry_run_says_what_training_would_do_and_writes_nothing(tiny_data, tmp_path, capsys):
    config = str(CONFIGS / "synthetic" / "cen.yaml")
    common = [f"data.root={tiny_data}", "data.synth=null", *TINY_MODEL]
    before = tree(tmp_path), tree(tiny_data), sorted(os.listdir(tiny_data.parent))
    run = tmp_path / "run"
    assert main(["train", config, "--out", str(run), *common, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert (tree(tmp_path), tree(tiny_data), sorted(os.listdir(tiny_data.parent))) == before
    assert "resolved config:" in out and "name: cen" in out
    assert f"{run}: new run" in out and "dry run: nothing was written" in out
    line = next(x for x in out.splitlines() if "M parameters" in x)
    planned_m = float(line.split(": ")[2].split(" M")[0])

    assert main(["train", config, "--out", str(run), *common, "--no-eval", "--quiet"]) == 0
    params = sum(p.numel() for p in load_run(run).model.parameters())
    assert planned_m == round(params / 1e6, 2)  # the model the training built
    capsys.readouterr()
    assert main(["train", config, "--out", str(run), *common, "--dry-run"]) == 0
    assert "finished at step 6" in capsys.readouterr().out


def test_dry_run_of_data_to_generate_and_its_refusals(tmp_path, capsys):
    config = str(CONFIGS / "synthetic" / "rgb_only.yaml")
    data = tmp_path / "data"
    synth = ["data.synth.num=40", "data.synth.size=[24,32]"]
    assert (
        main(
            [
                "train",
                config,
                "--out",
                str(tmp_path / "r"),
                f"data.root={data}",
                *synth,
                "--dry-run",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"{data}: would generate 40 frames of 24x32, seed 0" in out
    assert "frames: train 28, val 6" in out and "1 ch" not in out.split("modalities:")[1][:20]
    assert list(tmp_path.iterdir()) == []
    # the checks a real training makes first: a bad model option, a bad config value
    args = ["train", config, "--out", str(tmp_path / "r"), f"data.root={data}", *synth]
    assert main([*args, "model.backbone=nope", "--dry-run"]) == 2
    assert "unknown backbone 'nope'" in capsys.readouterr().err
    assert main([*args, "train.max_steps=0", "--dry-run"]) == 2
    assert "max_steps" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
