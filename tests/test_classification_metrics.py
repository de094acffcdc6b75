"""Classification metrics against an independent NumPy reference and hand-computed cases."""

import math

import numpy as np
import pytest
import torch

from fusescope.tasks.classification.metrics import (
    chance_f1,
    choose_threshold,
    cue_group_f1,
    multilabel_f1,
    per_class_ap,
    per_class_f1,
    single_label_scores,
)


def f1(tp, fp, fn):
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def reference(probs, targets, t):
    """The textbook definitions, written out."""
    p, y = (probs > t).astype(int), targets.astype(int)
    tp = (p & y).sum(0)
    fp = (p & (1 - y)).sum(0)
    fn = ((1 - p) & y).sum(0)
    per = np.array([f1(*c) for c in zip(tp, fp, fn, strict=True)])
    support = y.sum(0)
    samples = [
        f1((pi & yi).sum(), (pi & (1 - yi)).sum(), ((1 - pi) & yi).sum())
        for pi, yi in zip(p, y, strict=True)
    ]
    return {
        "micro_f1": f1(tp.sum(), fp.sum(), fn.sum()),
        "macro_f1": per.mean(),
        "weighted_f1": (per * support).sum() / support.sum(),
        "samples_f1": float(np.mean(samples)),
    }, per


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_f1_matches_the_reference(threshold):
    rng = np.random.default_rng(0)
    targets = (rng.random((40, 6)) < 0.3).astype(np.float32)
    probs = np.clip(targets * 0.5 + rng.random((40, 6)) * 0.6, 0, 1).astype(np.float32)
    ours = multilabel_f1(torch.tensor(probs), torch.tensor(targets), threshold)
    ref, per = reference(probs, targets, threshold)
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key
    assert per_class_f1(torch.tensor(probs), torch.tensor(targets), threshold) == pytest.approx(
        list(per), abs=1e-6
    )


def test_hand_computed_case():
    targets = torch.tensor([[1, 0], [1, 1], [0, 0]], dtype=torch.float32)
    probs = torch.tensor([[0.9, 0.8], [0.2, 0.7], [0.1, 0.1]])
    out = multilabel_f1(probs, targets, 0.5)
    # class 0: tp 1, fn 1 -> 2/3; class 1: tp 1, fp 1 -> 2/3; micro: tp 2, fp 1, fn 1 -> 2/3
    assert out["micro_f1"] == pytest.approx(2 / 3)
    assert out["macro_f1"] == pytest.approx(2 / 3)
    # samples: 2/3 (1 tp, 1 fp), 2/3 (1 tp, 1 fn), 0 (nothing true, nothing predicted)
    assert out["samples_f1"] == pytest.approx(4 / 9)


def test_threshold_is_chosen_on_the_given_split():
    targets = torch.tensor([[1, 0], [0, 1], [1, 1]], dtype=torch.float32)
    # every true label scores 0.3, every false one 0.2: only a threshold in [0.2, 0.3) is perfect
    probs = torch.where(targets > 0, torch.tensor(0.3), torch.tensor(0.2))
    t = choose_threshold(probs, targets)
    assert t == pytest.approx(0.2)
    assert multilabel_f1(probs, targets, t)["micro_f1"] == 1.0
    assert multilabel_f1(probs, targets, 0.5)["micro_f1"] == 0.0


def test_evaluation_tunes_on_val_scores_test_and_heads_with_one_half(monkeypatch):
    """The task's evaluation: the tuned threshold comes from the validation split's outputs
    and is applied unchanged to the test split, whose own best threshold differs; the headline
    F1s are at 0.5 whatever either split prefers."""
    from types import SimpleNamespace

    from fusescope.tasks import classification as task_module

    targets = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=torch.float32)
    # val: true labels at 0.35, false ones at 0.25 (best threshold 0.25..0.35 -> 0.25);
    # test: true labels at 0.75, false at 0.45 (best 0.45..0.75; 0.25 predicts everything)
    split_probs = {
        "val": torch.where(targets > 0, torch.tensor(0.35), torch.tensor(0.25)),
        "test": torch.where(targets > 0, torch.tensor(0.75), torch.tensor(0.45)),
    }

    def predict(model, dataset, *args):
        return torch.logit(split_probs[dataset.split]), targets

    monkeypatch.setattr(task_module, "predict_logits", predict)
    monkeypatch.setattr(
        task_module, "sibling_split", lambda ds, split: SimpleNamespace(split=split)
    )
    cfg = SimpleNamespace(eval=SimpleNamespace(batch_size=4), data=SimpleNamespace(val_split="val"))
    meta = SimpleNamespace(classes=[SimpleNamespace(cue=None)] * 2, class_names=["a", "b"])
    test = SimpleNamespace(split="test")
    result = task_module.TASK.evaluate(None, test, cfg, meta, "cpu", progress=False)
    tuned = result["tuned"]
    assert tuned["chosen_on"] == "val" and tuned["threshold"] == pytest.approx(0.25)
    assert choose_threshold(split_probs["test"], targets) == pytest.approx(0.45)  # not chosen
    probs = split_probs["test"].numpy()
    at_tuned, _ = reference(probs, targets.numpy(), 0.25)
    at_half, _ = reference(probs, targets.numpy(), 0.5)
    assert tuned["micro_f1"] == pytest.approx(at_tuned["micro_f1"])
    assert at_tuned["micro_f1"] < 1.0  # val's threshold predicts every test label
    assert result["threshold"] == 0.5
    assert result["micro_f1"] == pytest.approx(at_half["micro_f1"]) == 1.0
    assert result["macro_f1"] == pytest.approx(at_half["macro_f1"])


def test_cue_groups_and_single_label():
    assert cue_group_f1([1.0, 0.5, 0.0, 0.25], ["image", "text", "text", None]) == {
        "image": 1.0,
        "text": 0.25,
    }
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    targets = torch.tensor([0, 1, 1, 1])
    out = single_label_scores(logits, targets)
    assert out["accuracy"] == pytest.approx(0.5)
    # class 0: 1/1, class 1: 1/3, class 2 absent (left out)
    assert out["mean_class_accuracy"] == pytest.approx((1 + 1 / 3) / 2)


def test_average_precision_and_the_chance_floor():
    targets = torch.tensor([[1, 0], [0, 0], [1, 1], [0, 1]], dtype=torch.float32)
    # class 0 ranked perfectly; class 1: positives at ranks 1 and 4 -> AP (1 + 2/4) / 2
    probs = torch.tensor([[0.9, 0.8], [0.1, 0.7], [0.8, 0.3], [0.2, 0.9]])
    assert per_class_ap(probs, targets) == pytest.approx([1.0, (1 + 2 / 4) / 2])
    assert math.isnan(per_class_ap(probs, torch.zeros(4, 2))[0])  # no positive: undefined
    # predicting every sample: precision p, recall 1 -> 2p / (1 + p)
    assert chance_f1(targets) == pytest.approx([2 * 0.5 / 1.5, 2 * 0.5 / 1.5])
    ones = torch.ones(4, 2)
    assert multilabel_f1(ones, targets, 0.5)["macro_f1"] == pytest.approx(2 * 0.5 / 1.5)
