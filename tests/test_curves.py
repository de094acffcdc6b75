"""Training curves: RUN/curves.png at the end of training, and `fusescope compare`."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import cli_train
from fusescope.cli import main
from fusescope.engine.curves import read_metrics


def test_curves_and_compare(tiny_data, tmp_path, capsys):

    runs = []
    for name, extra in (("a", []), ("b", ["train.lr=1e-3", "train.eval_every=2"])):
        run = tmp_path / name
        assert cli_train(run, tiny_data, "train.max_steps=4", *extra) == 0
        png = run / "curves.png"
        assert png.is_file()
        image = np.asarray(Image.open(png).convert("L"))
        assert image.shape[1] > 3 * image.shape[0] / 2 and image.std() > 5  # drawn, not blank
        runs.append(run)
    series = read_metrics(runs[1])
    assert [s for s, _ in series["loss"]] == [2, 4]
    assert [s for s, _ in series["val_miou"]] == [2]
    assert series["lr"][0][1] == pytest.approx(1e-3 * 1.0)  # end of warmup (2 steps)

    capsys.readouterr()
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, runs), "--out", str(out)]) == 0
    rows = json.loads((out / "compare.json").read_text())
    assert [r["run"] for r in rows] == ["a", "b"]
    evals = [json.loads((r / "eval_val_none.json").read_text())["miou"] for r in runs]
    assert [r["miou"] for r in rows] == pytest.approx(evals)
    assert rows[0]["best_val_miou"] is None and rows[1]["best_val_miou"] is not None
    md = (out / "compare.md").read_text()
    assert "| a | early_concat | 4 |" in md
    assert (out / "curves.png").is_file()

    assert main(["compare", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "not a fusescope run folder" in capsys.readouterr().err
