"""A memory check before anything is allocated: one batch of inputs alone must fit."""

from __future__ import annotations

import os

from omegaconf import DictConfig

from fusescope.errors import FusescopeError


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_batch_memory(cfg: DictConfig, meta, frame: tuple[int, int], world_size: int = 1) -> None:
    """Refuse a crop or rescale so large that one batch of inputs alone (a lower bound of what
    a step needs) exceeds this machine's memory, before anything is allocated."""
    t, d = cfg.train, cfg.data
    total = physical_memory()
    if total is None:
        return
    per_pixel = 4 * sum(meta.modalities[m].channels for m in d.modalities) + 8  # float32, int64
    top = max(d.scale_range)
    resized = (round(frame[0] * top), round(frame[1] * top))
    crop = tuple(d.crop_size) if d.crop_size else tuple(frame)
    one = max(resized[0], crop[0]) * max(resized[1], crop[1]) * per_pixel  # before the crop
    batch = t.batch_size * t.grad_accum // world_size * crop[0] * crop[1] * per_pixel
    needed = one + batch
    if needed > total:
        raise FusescopeError(
            f"data.crop_size={list(crop)} (frames {frame[0]}x{frame[1]}, data.scale_range up to "
            f"{top}) with train.batch_size={t.batch_size} x grad_accum={t.grad_accum}: one batch "
            f"of inputs alone needs {needed / 2**30:.1f} GiB, more than this machine's "
            f"{total / 2**30:.1f} GiB of memory; lower them"
        )
