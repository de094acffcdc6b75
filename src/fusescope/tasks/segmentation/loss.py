"""Segmentation's supervised loss: cross-entropy over labelled pixels on a model's main,
per-stream and aux-head logits, summed with its aux losses by the tasks' one aggregator."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from fusescope.tasks.base import aggregate_loss


def label_weight(label: Tensor, ignore_index: int, class_weights: Tensor | None) -> Tensor:
    """Sum of the per-pixel weights cross-entropy averages over (the count of labelled pixels
    without class weights)."""
    valid = label != ignore_index
    if class_weights is None:
        return valid.sum().float()
    return class_weights[label.clamp(max=len(class_weights) - 1)][valid].sum()


def total_loss(
    out: dict,
    label: Tensor,
    ignore_index: int,
    per_modality_weight: float = 1.0,
    class_weights: Tensor | None = None,
    denominator: Tensor | None = None,
    aux_scale: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Cross-entropy on `logits`, weighted cross-entropy on each `per_modality` and `aux_logits`
    output, plus every (already weighted) aux loss. Returns the total and its detached parts for
    logging.

    Args:
        denominator: what to divide the summed cross-entropy by. None: this batch's own
            `label_weight` (the usual mean). The engine passes the global batch's weight over
            all micro-batches and processes (divided by the process count, which DDP's gradient
            averaging multiplies back), so the loss is the same however the batch is split.
        aux_scale: factor on aux losses (1 / gradient-accumulation steps, as each micro-batch
            adds them).
    """
    if denominator is None:
        denominator = label_weight(label, ignore_index, class_weights)
    denominator = denominator.clamp(min=1e-6)

    def ce(logits: Tensor) -> Tensor:
        return (
            F.cross_entropy(
                logits.float(),
                label,
                weight=class_weights,
                ignore_index=ignore_index,
                reduction="sum",
            )
            / denominator
        )

    parts = {"ce": ce(out["logits"])}
    for name, logits in out.get("per_modality", {}).items():
        parts[f"ce_{name}"] = per_modality_weight * ce(logits)
    for name, (logits, weight) in out.get("aux_logits", {}).items():
        parts[name] = weight * ce(logits)
    return aggregate_loss(parts, out, aux_scale)
