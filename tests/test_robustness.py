"""Robustness curves: the AUC maths on known curves, and the driver with a fake evaluation."""

import json

import numpy as np
import pytest

from fusescope.bench.robustness import (
    RobustnessResult,
    effective_robustness,
    minmax,
    normalized_auc,
    robustness,
    severity_curve,
)
from fusescope.errors import FusescopeError


def test_auc_of_known_curves():
    assert normalized_auc([0.6] * 6) == pytest.approx(0.6)  # flat: its height
    assert normalized_auc([0.5, 0.4, 0.3, 0.2, 0.1, 0.0]) == pytest.approx(0.25)  # a line: half
    # a step after the clean point: trapezoids 0.5*(1+0)/2 over the first fifth, then 0
    assert normalized_auc([1, 0, 0, 0, 0, 0]) == pytest.approx(0.1)
    # uneven severities are rescaled to [0, 1]: area of 1 - x on [0, 1]
    assert normalized_auc([1.0, 0.5, 0.0], [0, 2, 4]) == pytest.approx(0.5)
    assert normalized_auc([1.0, 0.75, 0.0], [0, 1, 4]) == pytest.approx(
        np.trapezoid([1.0, 0.75, 0.0], [0, 0.25, 1])
    )


def test_auc_rejects_bad_input():
    with pytest.raises(ValueError):
        normalized_auc([1.0])
    with pytest.raises(ValueError):
        normalized_auc([1.0, 0.5], [0, 1, 2])
    with pytest.raises(ValueError):
        normalized_auc([1.0, 0.5, 0.2], [0, 2, 1])


def test_effective_robustness():
    ref = [0.5, 0.4, 0.3, 0.2, 0.1, 0.0]
    assert effective_robustness(ref, ref) == pytest.approx(0.0)
    # the same drop from a better clean score is no more robust
    assert effective_robustness([v + 0.2 for v in ref], ref) == pytest.approx(0.0)
    # a flat curve beats the reference by the reference's average drop: 0.5 - 0.25
    assert effective_robustness([0.5] * 6, ref) == pytest.approx(0.25)
    assert effective_robustness(ref, [0.5] * 6) == pytest.approx(-0.25)


def test_minmax():
    assert minmax([0.2, 0.4, 0.3]) == pytest.approx([0.0, 1.0, 0.5])
    assert minmax([0.3]) == [1.0]


def fake_evaluate(curves):
    calls = []

    def evaluate(run_dir, corrupt=None, **kwargs):
        calls.append((str(run_dir), corrupt, kwargs))
        severity = 0 if corrupt is None else int(corrupt.split(":")[1])
        return {"miou": curves[str(run_dir)][severity]}

    return evaluate, calls


def test_driver_with_fake_evaluation(tmp_path):
    curves = {"runs/late": [0.5, 0.4, 0.3, 0.2, 0.1, 0.0], "runs/sagate": [0.6] * 6}
    evaluate, calls = fake_evaluate(curves)
    printed = []
    result = robustness(
        list(curves),
        "depth_noise",
        out=tmp_path,
        evaluate=evaluate,
        echo=printed.append,
        split="test",
    )
    # severity 0 is the clean evaluation; the others pass the spec; extra kwargs pass through
    assert calls[0] == ("runs/late", None, {"split": "test"})
    assert [c[1] for c in calls[:6]] == [None] + [f"depth_noise:{s}" for s in range(1, 6)]
    assert result.runs == ["late", "sagate"]
    assert result.auc == pytest.approx([0.25, 0.6])
    assert result.relative == pytest.approx([0.0, 1.0])
    assert result.effective == pytest.approx([0.0, 0.25])
    table = printed[0]
    assert "late" in table and "sagate" in table and "60.0" in table
    assert (tmp_path / "robustness_depth_noise.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "robustness_depth_noise.json").read_text())
    assert saved["runs"][1]["auc"] == pytest.approx(0.6)


def test_bad_kind_fails_before_any_evaluation():
    evaluate, calls = fake_evaluate({})
    with pytest.raises(FusescopeError, match="depth_noise"):
        robustness(["a"], "fog", evaluate=evaluate, echo=None)
    with pytest.raises(FusescopeError):
        severity_curve("a", "depth_noise", [0, 7], evaluate=evaluate)
    assert calls == []


def test_duplicate_folder_names_use_full_paths():
    result = RobustnessResult.from_curves(
        "rgb_blur", [0, 1], ["a/run", "b/run"], [[0.5, 0.4], [0.5, 0.5]]
    )
    assert "a/run" in result.table()
    evaluate, _ = fake_evaluate({"a/run": [0.5] * 6, "b/run": [0.4] * 6})
    assert robustness(["a/run", "b/run"], "rgb_blur", evaluate=evaluate, echo=None).runs == [
        "a/run",
        "b/run",
    ]
