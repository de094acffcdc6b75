"""`fusescope bench known-answer` on a tiny folder: its table is what evaluating each run gives."""

import json

import pytest
import torch

from conftest import TINY_MODEL, write_folder_dataset
from fusescope.bench.known_answer import run_benchmark
from fusescope.engine.evaluate import evaluate_run


@pytest.mark.slow
def test_known_answer_rows_are_each_runs_own_evaluation(tmp_path):
    data = write_folder_dataset(tmp_path / "data")
    out = tmp_path / "bench"
    before = torch.get_num_threads()
    rows = run_benchmark(
        ["rgb_only", "early_concat"],
        out,
        steps=2,
        data_root=data,
        extra=[o for o in TINY_MODEL if "max_steps" not in o],
        threads=1,
    )
    assert torch.get_num_threads() == before  # the fixed count ends with the benchmark
    assert [r["method"] for r in rows] == ["rgb_only", "early_concat"]
    saved = json.loads((out / "results.json").read_text())
    table = (out / "results.md").read_text()
    for row in rows:
        again = evaluate_run(out / row["method"], split="test")
        assert row["miou"] == pytest.approx(again["miou"], abs=1e-12)
        assert row["per_class_iou"] == pytest.approx(again["per_class_iou"], abs=1e-12)
        assert row["params_m"] > 0 and row["train_s"] > 0
        assert f"{100 * row['miou']:5.1f}" in table and row["method"] in table
        # each run trained with the fixed count, and says so
        assert row["threads"] == 1
        assert json.loads((out / row["method"] / "run.json").read_text())["torch_threads"] == 1
    assert [r["miou"] for r in saved] == [r["miou"] for r in rows]  # results.json: the rows


@pytest.mark.parametrize(
    "argv,message",
    [
        (["demo", "--fusion", "foo"], "no config 'foo'"),
        (["bench", "known-answer", "rgb_only", "foo"], "no config 'foo'"),
        (["demo", "--backbone", "nope"], "unknown backbone 'nope'"),
        (["bench", "known-answer", "rgb_only", "cen", "--set", "model.mode=swap"], "mode"),
    ],
)
def test_every_name_is_checked_before_any_training(tmp_path, capsys, argv, message):
    """A bad name in the last config (or an option of one) is refused before the first model
    trains or the data is generated: nothing is written."""
    from fusescope.cli import main

    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fusescope: error: ") and message in err and "\n" not in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_demo_trains_and_draws_on_its_fixed_thread_count(tmp_path, monkeypatch):
    """`fusescope demo` fixes torch's CPU threads (the table's digits depend on them) to
    DEMO_DEFAULTS["threads"], or to --threads; the figure's predictions run on it too."""
    from fusescope.bench import DEMO_DEFAULTS, known_answer
    from fusescope.cli import main

    seen = []

    def fake_benchmark(configs, out, threads=None, **kwargs):
        seen.append(("benchmark", threads))
        return [{"run": str(out / c), "method": c, "miou": 0.5} for c in configs]

    def fake_figure(run_dirs, labels, out):
        seen.append(("figure", torch.get_num_threads()))

    monkeypatch.setattr(known_answer, "run_benchmark", fake_benchmark)
    monkeypatch.setattr(known_answer, "prediction_figure", fake_figure)
    before = torch.get_num_threads()
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    fixed = DEMO_DEFAULTS["threads"]
    assert seen == [("benchmark", fixed), ("figure", fixed)]
    seen.clear()
    assert main(["demo", "--out", str(tmp_path / "demo"), "--threads", "1"]) == 0
    assert seen == [("benchmark", 1), ("figure", 1)]
    assert torch.get_num_threads() == before
