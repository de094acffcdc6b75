"""Classification metrics (torchmetrics): multi-label F1 at the published threshold 0.5 and at
one tuned on validation, per-cue-group F1, and accuracy / mean class accuracy for single-label
data.

Multi-label (MM-IMDB genres, the known-answer posters, RGB-D "which classes are in the frame"):
a label is predicted when sigmoid(logit) > threshold. MANGO Table 3 reports micro- and macro-F1;
weighted- and samples-F1 are the other averages MM-IMDB papers use. Every published MM-IMDB F1
(GMU, MMBT, MultiBench, DynMM, hence MANGO's table) thresholds the sigmoid at 0.5 on the test
split: that is the headline (`HEADLINE_THRESHOLD`). The tuned alternative is one number for all
classes, the one that maximises micro-F1 on the validation split (`choose_threshold`), applied
unchanged to the split evaluated, so the test split never tunes anything; it is reported beside
the headline, never instead of it (on an undertrained, calibrated model it alone can move F1 by
several points).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    binary_f1_score,
    multiclass_accuracy,
    multilabel_average_precision,
    multilabel_f1_score,
)

# the threshold of every published MM-IMDB F1
HEADLINE_THRESHOLD = 0.5
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


def per_class_ap(probs: Tensor, targets: Tensor) -> list[float]:
    """Average precision of every class (K,): threshold-free; a classifier that knows nothing
    about a class scores its prevalence. NaN for a class without a positive sample."""
    target = targets.round().long()
    ap = multilabel_average_precision(probs, target, probs.shape[1], average="none")
    return [float(v) if target[:, k].any() else math.nan for k, v in enumerate(ap)]


def chance_f1(targets: Tensor) -> list[float]:
    """Per class, the F1 of predicting the class for every sample, 2p / (1 + p) at prevalence
    p: what a label whose cue a model cannot see still scores at a low threshold."""
    p = targets.float().mean(0)
    return [float(v) for v in 2 * p / (1 + p)]


def choose_threshold(
    probs: Tensor, targets: Tensor, candidates: Sequence[float] = THRESHOLDS
) -> float:
    """The candidate threshold with the highest micro-F1 (the smallest among ties)."""
    scores = [multilabel_f1(probs, targets, t)["micro_f1"] for t in candidates]
    return float(candidates[max(range(len(scores)), key=lambda i: (scores[i], -i))])


def cue_group_f1(per_class: Sequence[float], cues: Sequence[str | None]) -> dict[str, float]:
    """Mean of a per-class score (F1, AP, ...) over each cue group (`appearance`, `text`,
    `both`, ...): the classes whose `cue` names it. Classes without a cue or with a NaN score
    are left out; groups without classes too."""
    groups: dict[str, list[float]] = {}
    for f1, cue in zip(per_class, cues, strict=True):
        if cue and not math.isnan(f1):
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
