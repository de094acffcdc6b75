"""What every official-format converter shares: all-or-nothing output and class colours.

A converter writes into a hidden sibling folder of the output and renames it into place only when
every file is written, so a bad input file (found on frame 700 of 1449) never leaves a half-made
data folder that a later training run would silently use. The hidden folder is locked while it
is written; one that a killed converter left behind is removed by the next converter writing
the same output.

Only a fusescope data folder (one with a `meta.json`) or an empty folder is ever replaced, and
never a folder that is, contains or is inside one of the converter's inputs: `--overwrite` with
`--out` pointing at the release, at a folder above it, or at any other folder of the user's
cannot delete it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from fusescope.errors import FusescopeError
from fusescope.io import read_image, remove_stale_temps, temp_folder

# what a converter that met a link leading out of its input tells the user
FOLLOW_HINT = "pass --follow-symlinks to read what it points to"


def is_data_folder(path: Path) -> bool:
    """Whether `path` holds a fusescope data folder (a `meta.json` object with modalities)."""
    meta = path / "meta.json"
    if not meta.is_file():
        return False
    try:
        content = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and "modalities" in content


def check_output_folder(
    out: str | os.PathLike, overwrite: bool = False, inputs: Iterable = ()
) -> None:
    """Refuse an output folder that a converter must not write: one that is, contains or is
    inside an input (paths resolved), a file, an existing folder without `overwrite`, or a
    non-empty folder that is not a fusescope data folder. Call it before reading the inputs.

    Raises:
        FusescopeError: naming the folder and why.
    """
    out = Path(out)
    real_out = out.resolve()
    for given in inputs:
        if given is None:
            continue
        real = Path(given).resolve()
        if real_out == real or real in real_out.parents or real_out in real.parents:
            raise FusescopeError(
                f"--out {out} is, contains or is inside the input {given}; write the data "
                f"folder apart from what it is made from"
            )
    if not (out.exists() or out.is_symlink()):
        return
    if not out.is_dir():
        raise FusescopeError(f"--out {out} is a file, not a folder")
    if not overwrite:
        raise FusescopeError(f"{out}: output folder exists (pass overwrite to replace it)")
    if any(out.iterdir()) and not is_data_folder(out):
        raise FusescopeError(
            f"{out}: not a fusescope data folder (no meta.json); refusing to replace it: "
            f"choose another --out, or empty it first"
        )


@contextlib.contextmanager
def staged_output(
    out: str | os.PathLike, overwrite: bool = False, inputs: Iterable = ()
) -> Iterator[Path]:
    """Yield an empty temporary folder beside `out`; it becomes `out` if the block succeeds.

    Args:
        out: the data folder to write.
        overwrite: replace an existing `out` (a fusescope data folder or an empty folder).
        inputs: the files and folders the output is made from (`check_output_folder`).

    Raises:
        FusescopeError: `out` must not be written (`check_output_folder`), or its folder
            cannot be created.
    """
    out = Path(out)
    check_output_folder(out, overwrite, inputs)
    remove_stale_temps(out.parent, [out.name])  # what a killed run of this command left
    with temp_folder(out.parent, f".{out.name}.tmp-") as tmp:
        yield tmp
        if out.exists() or out.is_symlink():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)


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
