"""Semantic variance (SVar), eq. 4-6 of "Dissecting RGB-D Learning for Improved Multi-modal
Fusion": how much concept-level semantics a feature F2 gains over a feature F1.

Per concept j, with I1 = IoU_set(c_j; F1), I2 = IoU_set(c_j; F2):

    SVar1_j = (I2 - I1) / max(I2, I1)                      increased / decreased concepts (4)
    SVar2_j = (I2 - I1) / mean_k IoU_set(c_k; F1)          new / vanished concepts (5)
    SVar    = sum_j [a_j SVar1_j + lam (1 - a_j) SVar2_j] / f_j                        (6)

with a_j = 1 iff min(I1, I2) > 0 and f_j the concept's pixel frequency on the probe set,
sum_x |L_j(x)| / (|X_R| S).

Interpretation choices (the paper leaves them open):
- "Present" means Set IoU > `threshold` (default 0, the paper's indicator). A concept absent from
  both features has I2 - I1 = 0 and contributes 0 under either branch.
- The eq. 5 baseline is the mean Set IoU of F1 over the concepts that are scored (finite IoU in
  both features, frequency > 0), i.e. the paper's (1/C) sum_k over the concept set.
- Concepts with a non-finite IoU in either feature or zero frequency (not in the probe set, so
  their Set IoU is undefined) are left out of the sum and reported as "absent".
- SVar is antisymmetric term by term for concepts present in both features (eq. 4 has a symmetric
  denominator); new/vanished terms are not, because eq. 5 divides by the *old* feature's mean.
- Argument order: `semantic_variance(new, old)` is SVar(F2 = new; F1 = old); the paper's
  "A vs. B" rows in Table I are SVar(B; A).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

STATES = ("new", "vanished", "increased", "decreased", "unchanged", "absent")


@dataclass(frozen=True)
class ConceptVariance:
    """One concept's share of SVar(new; old)."""

    index: int
    state: str  # one of STATES
    iou_old: float
    iou_new: float
    frequency: float
    score: float  # a SVar1 + lam (1 - a) SVar2, before dividing by the frequency
    contribution: float  # score / frequency: the concept's term in eq. 6


def _as_vector(x: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"{name}: expected one value per concept, got shape {v.shape}")
    return v


def concept_variance(
    iou_new: Sequence[float] | np.ndarray,
    iou_old: Sequence[float] | np.ndarray,
    frequency: Sequence[float] | np.ndarray,
    lam: float = 2.0,
    threshold: float = 0.0,
) -> list[ConceptVariance]:
    """Per-concept breakdown of SVar(new; old) with each concept's state.

    Args:
        iou_new: Set IoU per concept in the new feature F2.
        iou_old: Set IoU per concept in the old (baseline) feature F1.
        frequency: pixel frequency of each concept on the probe set, in [0, 1].
        lam: weight of new/vanished concepts (the paper's lambda = 2).
        threshold: a concept is present in a feature iff its Set IoU is above this.

    Returns:
        One `ConceptVariance` per concept, in input order.
    """
    new, old = _as_vector(iou_new, "iou_new"), _as_vector(iou_old, "iou_old")
    freq = _as_vector(frequency, "frequency")
    if not new.shape == old.shape == freq.shape:
        raise ValueError(
            f"shapes differ: iou_new {new.shape}, iou_old {old.shape}, frequency {freq.shape}"
        )
    scored = np.isfinite(new) & np.isfinite(old) & (freq > 0)
    baseline = old[scored].mean() if scored.any() else 0.0
    out = []
    for j in range(len(new)):
        i1, i2, f = float(old[j]), float(new[j]), float(freq[j])
        if not scored[j]:
            out.append(ConceptVariance(j, "absent", i1, i2, f, 0.0, 0.0))
            continue
        in1, in2 = i1 > threshold, i2 > threshold
        diff = i2 - i1
        if in1 and in2:
            state = "increased" if diff > 0 else "decreased" if diff < 0 else "unchanged"
            score = diff / max(i1, i2)  # eq. 4
        elif in1 or in2:
            state = "new" if in2 else "vanished"
            # eq. 5; a baseline of 0 means F1 knows no concept at all: every gain is new
            score = lam * diff / baseline if baseline > 0 else lam * np.sign(diff)
        else:
            state, score = "absent", 0.0
        out.append(ConceptVariance(j, state, i1, i2, f, float(score), float(score / f)))
    return out


def semantic_variance(
    iou_new: Sequence[float] | np.ndarray,
    iou_old: Sequence[float] | np.ndarray,
    frequency: Sequence[float] | np.ndarray,
    lam: float = 2.0,
    threshold: float = 0.0,
) -> float:
    """SVar(F2 = new; F1 = old), eq. 6: positive when F2 carries more semantics than F1.

    Args:
        iou_new: Set IoU per concept in F2.
        iou_old: Set IoU per concept in F1.
        frequency: each concept's pixel frequency on the probe set.
        lam: weight of new/vanished concepts (2 in the paper).
        threshold: a concept is present iff its Set IoU is above this (0 in the paper).
    """
    parts = concept_variance(iou_new, iou_old, frequency, lam=lam, threshold=threshold)
    return float(sum(p.contribution for p in parts))
