"""What every official-format converter shares: all-or-nothing output and class colours.

A converter writes into a hidden sibling folder of the output and renames it into place only when
every file is written, so a bad input file (found on frame 700 of 1449) never leaves a half-made
data folder that a later training run would silently use.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fusescope.errors import FusescopeError
from fusescope.io import give_default_mode, read_image


@contextlib.contextmanager
def staged_output(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside `out`; it becomes `out` if the block succeeds.

    Raises:
        FusescopeError: `out` exists and `overwrite` is False.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FusescopeError(f"{out}: output folder exists (pass overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    give_default_mode(tmp, folder=True)  # mkdtemp makes it 0700; the data set is for others too
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def palette(n: int) -> list[tuple[int, int, int]]:
    """`n` distinct colours: the PASCAL VOC bit-interleaved palette, skipping black (index 0)."""
    colors = []
    for i in range(1, n + 1):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors.append((r, g, b))
    return colors


def lookup_table(
    mapping: dict[int, int] | np.ndarray, size: int = 256, fill: int = 255
) -> np.ndarray:
    """A uint8 table `t` with `t[src] = dst`, `fill` for every unmapped value."""
    table = np.full(size, fill, dtype=np.uint8)
    items = mapping.items() if isinstance(mapping, dict) else enumerate(mapping)
    for src, dst in items:
        table[src] = dst
    return table


def read_checked(
    path: Path, channels: int | None = None, shape: tuple[int, int] | None = None
) -> np.ndarray:
    """`read_image` plus a check of the channel count and of the (H, W) size."""
    a = read_image(path)
    c = 1 if a.ndim == 2 else a.shape[2]
    if channels is not None and c != channels:
        raise FusescopeError(f"{path}: expected {channels} channel(s), got {c}")
    if shape is not None and a.shape[:2] != tuple(shape):
        raise FusescopeError(f"{path}: size {a.shape[:2]} differs from the image's {shape}")
    return a
