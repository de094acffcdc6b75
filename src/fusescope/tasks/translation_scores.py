"""The translation task's scores over an evaluation split, per target and overall (the mean
over targets): L1, RMSE, PSNR, SSIM, MAE / MSE (MANGO's names for L1 / squared error on
normal, depth and shade targets), and FID / KID of the whole image set.

Temporary: plain per-image sums until fusescope.metrics lands (issue 16, point 4).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class TranslationScores:
    def __init__(self, targets, specs, device="cpu", feature_weights=None):
        self.targets = list(targets)
        self.specs = specs
        self.sums = {t: {"l1": 0.0, "mse": 0.0, "n": 0} for t in targets}

    def update(self, target: str, pred: Tensor, true: Tensor) -> None:
        d = (pred - true).flatten(1)
        s = self.sums[target]
        s["l1"] += float(d.abs().mean(1).sum())
        s["mse"] += float((d * d).mean(1).sum())
        s["n"] += pred.shape[0]

    def compute(self) -> dict:
        per = {}
        for t, s in self.sums.items():
            n = max(s["n"], 1)
            mse = s["mse"] / n
            per[t] = {
                "l1": s["l1"] / n,
                "mse": mse,
                "mae": s["l1"] / n,
                "rmse": math.sqrt(mse),
                "psnr": 10 * math.log10(1 / mse) if mse > 0 else float("inf"),
                "ssim": None,
            }
        out = {
            k: sum(per[t][k] for t in per) / len(per) for k in ("l1", "rmse", "psnr", "mae", "mse")
        }
        out.update(
            {"ssim": None, "fid": None, "kid": None, "feature_network": None, "per_target": per}
        )
        return out
