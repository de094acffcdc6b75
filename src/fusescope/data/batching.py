"""Batching: the global-batch sampler and the collate function every loader uses.

The engine (training, evaluation, prediction) and dissection all batch samples here, so no
module imports a training loop to get a collate function.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import default_collate

from fusescope.data.kinds import MASK_SUFFIX
from fusescope.errors import FusescopeError


class GlobalBatchSampler:
    """Yields this process's share of each global batch, forever, from a given position.

    Global batch t holds positions [t*B, (t+1)*B) of an endless stream made of per-epoch
    permutations (seeded by (seed, epoch); the last partial batch of an epoch is dropped).
    Items are (epoch, index) pairs, which seed each sample's augmentation.
    """

    def __init__(
        self, n: int, batch_size: int, rank: int, world_size: int, seed: int, start: int = 0
    ):
        if batch_size % world_size:
            raise FusescopeError(
                f"train.batch_size={batch_size} must be divisible by the "
                f"number of processes ({world_size})"
            )
        if n < batch_size:
            raise FusescopeError(f"train.batch_size={batch_size} exceeds the {n} training samples")
        self.n, self.batch_size, self.seed, self.start = n, batch_size, seed, start
        self.local = batch_size // world_size
        self.rank = rank

    def __iter__(self):
        per_epoch = (self.n // self.batch_size) * self.batch_size
        pos = self.start
        while True:
            epoch, offset = divmod(pos, per_epoch)
            perm = np.random.default_rng([self.seed, 7, epoch]).permutation(self.n)
            batch = perm[offset : offset + self.batch_size]
            mine = batch[self.rank * self.local : (self.rank + 1) * self.local]
            yield [(epoch, int(i)) for i in mine]
            pos += self.batch_size


def pad_sequences(samples: list[dict]) -> list[dict]:
    """Right-pad every variable-length sequence to the batch's longest.

    A sequence is a key `k` with a partner `k + "_mask"` (a text modality's token ids and its
    bool mask): ids are padded with 0 (`<pad>`), masks with False, so a model that reads only the
    masked-in positions gives each sample the same output in any batch.
    """
    keys = [k for k in samples[0] if f"{k}{MASK_SUFFIX}" in samples[0]]
    if not keys:
        return samples
    out = [dict(s) for s in samples]
    for k in keys:
        length = max(s[k].shape[-1] for s in samples)
        for s in out:
            n = s[k].shape[-1]
            if n < length:
                s[k] = torch.cat([s[k], s[k].new_zeros(length - n)])
                mask = s[f"{k}{MASK_SUFFIX}"]
                s[f"{k}{MASK_SUFFIX}"] = torch.cat([mask, mask.new_zeros(length - n)])
    return out


def collate(samples: list[dict]) -> dict:
    """Stack sample dicts into a batch dict; `id` stays a list of strings; sequences (a key with
    a `<key>_mask` partner, e.g. a text modality) are padded to the batch's longest first."""
    ids = [s.pop("id") for s in samples]
    samples = pad_sequences(samples)
    try:
        batch = default_collate(samples)
    except RuntimeError as err:
        raise FusescopeError(
            f"cannot batch samples {ids[:4]} of different sizes: set "
            f"data.crop_size, or eval.batch_size=1 ({err})"
        ) from None
    batch["id"] = ids
    return batch
