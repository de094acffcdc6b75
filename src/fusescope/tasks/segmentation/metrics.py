"""Confusion-matrix segmentation metrics: pixel accuracy, mean accuracy, mIoU, per-class IoU.

The matrix is accumulated on the tensors' device (one bincount per update, no host sync) and can
be summed across processes before `compute`. A class absent from both predictions and targets
has an undefined IoU: it is reported as NaN (None in JSON) and left out of the means.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class SegMetrics:
    """Accumulates a (K, K) confusion matrix (rows: target, columns: prediction)."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device: str | None = None):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add integer predictions and targets of any (equal) shape."""
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        if self.confusion.device != pred.device:
            self.confusion = self.confusion.to(pred.device)
        k = self.num_classes
        keep = target != self.ignore_index
        idx = target[keep].long() * k + pred[keep].long()
        self.confusion += torch.bincount(idx, minlength=k * k).reshape(k, k)

    def reset(self) -> None:
        self.confusion.zero_()

    def compute(self) -> dict:
        return metrics_from_confusion(self.confusion)


def metrics_from_confusion(confusion: Tensor) -> dict:
    cm = confusion.double().cpu()
    tp = cm.diag()
    per_target = cm.sum(1)
    per_pred = cm.sum(0)
    union = per_target + per_pred - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
    acc = torch.where(per_target > 0, tp / per_target.clamp(min=1), torch.full_like(tp, math.nan))
    total = cm.sum()
    return {
        "miou": _nanmean(iou),
        "pixel_acc": float(tp.sum() / total) if total > 0 else math.nan,
        "mean_acc": _nanmean(acc),
        "per_class_iou": iou.tolist(),
        "per_class_acc": acc.tolist(),
    }


def group_miou(per_class_iou: list[float], groups: dict[str, list[int]]) -> dict[str, float]:
    """Mean IoU over each group's classes (the benchmark's cue groups)."""
    return {
        name: _nanmean(torch.tensor([per_class_iou[i] for i in ids], dtype=torch.float64))
        for name, ids in groups.items()
    }


def _nanmean(x: Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else math.nan
