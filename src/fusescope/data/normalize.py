"""The normaliser: per-channel mean and std of every modality over the train split.

Depth statistics skip holes. Computed once per run (streaming, one image in memory at a time)
and saved in the run folder, so evaluation and prediction normalise exactly as training did.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from fusescope.data.folder import FolderDataset


def compute_stats(dataset: FolderDataset, progress: bool = False) -> dict[str, dict]:
    """{modality: {"mean": [C floats], "std": [C floats]}} over `dataset` (natural units)."""
    sums: dict[str, np.ndarray] = {}
    sq: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for i in tqdm(range(len(dataset)), desc="statistics", disable=not progress, leave=False):
        raw = dataset.load_raw(i)
        for name in dataset.modalities:
            x = raw[name].astype(np.float64)  # (C, H, W)
            valid = x > 0 if dataset.meta.modalities[name].kind == "depth" else np.ones_like(
                x, dtype=bool)
            sums[name] = sums.get(name, 0) + np.where(valid, x, 0).sum((1, 2))
            sq[name] = sq.get(name, 0) + np.where(valid, x * x, 0).sum((1, 2))
            counts[name] = counts.get(name, 0) + valid.sum((1, 2))
    stats = {}
    for name in dataset.modalities:
        n = np.maximum(counts[name], 1)
        mean = sums[name] / n
        std = np.sqrt(np.maximum(sq[name] / n - mean**2, 0))
        stats[name] = {"mean": mean.tolist(), "std": np.maximum(std, 1e-6).tolist()}
    return stats
