"""Training curves: RUN/curves.png at the end of training, and `fusescope compare`."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import cli_train
from fusescope.cli import main
from fusescope.engine.curves import read_metrics

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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
    assert [r["mIoU (%)"] for r in rows] == pytest.approx([100 * e for e in evals])
    assert rows[0]["best val miou"] is None and rows[1]["best val miou"] is not None
    md = (out / "compare.md").read_text()
    assert "| a | early_concat | 4 |" in md and f"| {100 * evals[0]:.4g} |" in md
    assert (out / "curves.png").is_file()

    assert main(["compare", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "not a fusescope run folder" in capsys.readouterr().err


def _train(config, run, data, *overrides):
    args = ["train", str(CONFIGS / config), "--out", str(run), f"data.root={data}"]
    assert main([*args, "data.synth=null", "--quiet", *overrides]) == 0
    return run


TRANSLATION_TINY = [
    "model.depth=3",
    "model.width=4",
    "model.disc_width=4",
    "train.batch_size=2",
    "train.max_steps=2",
    "eval.batch_size=4",
]
CLASSIFICATION_TINY = [
    "train.batch_size=4",
    "train.max_steps=2",
    "eval.batch_size=8",
    "model.text_dim=16",
    "model.text_layers=1",
    "model.text_heads=2",
]


@pytest.mark.slow
def test_compare_shows_each_tasks_own_metrics_and_refuses_a_mix(tiny_data, tmp_path, capsys):
    from fusescope.data.posters import generate_poster_data
    from translation_helpers import write_translation_dataset

    tr_data = write_translation_dataset(tmp_path / "tr", n=8, size=(32, 32))
    tr_runs = [
        _train(f"translation/{c}.yaml", tmp_path / c, tr_data, *TRANSLATION_TINY, *extra)
        for c, extra in (("cen", ["train.eval_every=1", "train.max_steps=4"]), ("early_concat", []))
    ]
    out = tmp_path / "cmp_tr"
    assert main(["compare", *map(str, tr_runs), "--out", str(out)]) == 0
    rows = json.loads((out / "compare.json").read_text())
    for run, row in zip(tr_runs, rows, strict=True):
        scores = json.loads((run / "eval_val_none.json").read_text())["per_target"]["rgb"]
        assert row["rgb L1"] == pytest.approx(scores["l1"])
        assert row["rgb PSNR (dB)"] == pytest.approx(scores["psnr"])
        assert row["rgb SSIM"] == pytest.approx(scores["ssim"])
        assert row["rgb FID"] == pytest.approx(scores["fid"])
        assert row["rgb KID x100"] == pytest.approx(scores["kid"])
    table = (out / "compare.md").read_text().split("\n\n", 1)[1]
    assert all(line.split("| val |")[1].count("n/a") == 0 for line in table.splitlines()[2:])
    val_l1 = [v for _, v in read_metrics(tr_runs[0])["val_l1"]]
    assert len(set(val_l1)) >= 2 and rows[0]["best val l1"] == min(val_l1)  # lower is better

    posters = tmp_path / "posters"
    generate_poster_data(posters, num=24, seed=0, size=(48, 32), progress=False)
    cls_runs = [
        _train(f"classification/{c}.yaml", tmp_path / c, posters, *CLASSIFICATION_TINY)
        for c in ("posters_late", "posters_concat")
    ]
    out = tmp_path / "cmp_cls"
    assert main(["compare", *map(str, cls_runs), "--out", str(out)]) == 0
    rows = json.loads((out / "compare.json").read_text())
    for run, row in zip(cls_runs, rows, strict=True):
        result = json.loads((run / "eval_val_none.json").read_text())
        assert row["micro-F1 (%)"] == pytest.approx(100 * result["micro_f1"])
        assert row["macro-F1 (%)"] == pytest.approx(100 * result["macro_f1"])
        assert row["mAP (%)"] == pytest.approx(100 * result["map"])
        for cue, f1 in result["cue_group_f1"].items():
            assert row[f"{cue} F1 (%)"] == pytest.approx(100 * f1)
    table = (out / "compare.md").read_text().split("\n\n", 1)[1]
    assert all(line.split("| val |")[1].count("n/a") == 0 for line in table.splitlines()[2:])

    seg = tmp_path / "seg"
    assert cli_train(seg, tiny_data, "train.max_steps=2") == 0
    capsys.readouterr()
    mixed = tmp_path / "cmp_mixed"
    assert main(["compare", str(seg), str(tr_runs[0]), "--out", str(mixed)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fusescope: error: fusescope compare takes runs of one task")
    assert "seg (segmentation)" in err and "cen (translation)" in err and "\n" not in err
    assert not mixed.exists()
