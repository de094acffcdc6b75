"""Classification metrics (torchmetrics): multi-label F1 with a threshold chosen on validation,
per-cue-group F1, and accuracy / mean class accuracy for single-label data.

Multi-label (MM-IMDB genres, the known-answer posters, RGB-D "which classes are in the frame"):
a label is predicted when sigmoid(logit) > threshold. MANGO Table 3 reports micro- and macro-F1;
weighted- and samples-F1 are the other averages MM-IMDB papers use. The threshold is one number
for all classes, the one that maximises micro-F1 on the validation split (`choose_threshold`),
then applied unchanged to the test split, so the test split never tunes anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    binary_f1_score,
    multiclass_accuracy,
    multilabel_f1_score,
)

# candidate thresholds (the validation split picks one)
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))
AVERAGES = ("micro", "macro", "weighted")


def multilabel_f1(probs: Tensor, targets: Tensor, threshold: float) -> dict[str, float]:
    """Micro, macro, weighted and samples F1 (in [0, 1]) of `probs > threshold`.

    Args:
        probs: (N, K) probabilities.
        targets: (N, K) multi-hot (0 / 1).
    """
    num = probs.shape[1]
    target = targets.round().long()
    out = {
        f"{avg}_f1": float(multilabel_f1_score(probs, target, num, threshold, average=avg))
        for avg in AVERAGES
    }
    # samples F1: per sample over its K labels, then the mean (a sample with neither a true nor
    # a predicted label scores 0, as scikit-learn's default does)
    preds = (probs > threshold).long()
    out["samples_f1"] = float(binary_f1_score(preds, target, multidim_average="samplewise").mean())
    return out


def per_class_f1(probs: Tensor, targets: Tensor, threshold: float) -> list[float]:
    """F1 of every class (K,) at `threshold`."""
    f1 = multilabel_f1_score(
        probs, targets.round().long(), probs.shape[1], threshold, average="none"
    )
    return [float(v) for v in f1]


def choose_threshold(
    probs: Tensor, targets: Tensor, candidates: Sequence[float] = THRESHOLDS
) -> float:
    """The candidate threshold with the highest micro-F1 (the smallest among ties)."""
    scores = [multilabel_f1(probs, targets, t)["micro_f1"] for t in candidates]
    return float(candidates[max(range(len(scores)), key=lambda i: (scores[i], -i))])


def cue_group_f1(per_class: Sequence[float], cues: Sequence[str | None]) -> dict[str, float]:
    """Mean per-class F1 over each cue group (`appearance`, `text`, `both`, ...): the classes
    whose `cue` names it. Classes without a cue are left out; groups without classes too."""
    groups: dict[str, list[float]] = {}
    for f1, cue in zip(per_class, cues, strict=True):
        if cue:
            groups.setdefault(str(cue), []).append(f1)
    return {cue: sum(v) / len(v) for cue, v in sorted(groups.items())}


def single_label_scores(logits: Tensor, targets: Tensor) -> dict[str, float]:
    """Accuracy and mean class accuracy (classes absent from `targets` left out of the mean)."""
    num = logits.shape[1]
    preds = logits.argmax(1)
    per_class = multiclass_accuracy(preds, targets, num, average="none")
    present = torch.bincount(targets, minlength=num) > 0
    return {
        "accuracy": float((preds == targets).float().mean()),
        "mean_class_accuracy": float(per_class[present].mean()) if present.any() else math.nan,
    }
