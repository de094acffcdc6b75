"""Reading and writing files safely: clear errors on bad files, atomic writes.

Every file fusescope writes goes through `atomic_path`: it is written to a temporary name in the
same folder and renamed into place, so a crash or a bad input never leaves a half-written file.
The temporary file gets the mode a plain `open()` would give (0666 less the umask) before it is
renamed, so results are as readable to others as any file the user writes; a full disk is a
one-line error naming the file, and the previous version of the file stays in place.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from fusescope.errors import FusescopeError

_UMASK_LOCK = threading.Lock()
# no space, or over quota: the same thing for the user
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def current_umask() -> int:
    """The process umask (read by setting and restoring it: POSIX has no read-only call)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def give_default_mode(path: str | os.PathLike, folder: bool = False) -> None:
    """Give a file made by `mkstemp` (0600) or a folder made by `mkdtemp` (0700) the mode that
    `open()` / `mkdir()` would have given it under the current umask."""
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


def _size(n: float) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.1f} kB"


def disk_full_error(path: Path, written: int = 0, needed: int | None = None) -> FusescopeError:
    """The one-line error for a full disk: the file, the space it needed, what was free."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    need = (
        f"it needs about {_size(needed)}"
        if needed
        else f"{_size(written)} were written before the disk filled"
    )
    has = f", {_size(free)} free" if free is not None else ""
    return FusescopeError(
        f"{path}: no space left on the device while writing it ({need}{has}); "
        f"the previous file, if any, is unchanged"
    )


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike, suffix: str | None = None, size_hint: int | None = None
) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    Args:
        path: the file to write.
        suffix: the temporary file's suffix (some writers pick the format from it).
        size_hint: bytes the file is expected to take, for the message if the disk is full.

    Raises:
        FusescopeError: the disk (or quota) is full; `path` keeps its previous content.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=path.parent
        )
        os.close(fd)
        tmp = Path(tmp)
        give_default_mode(tmp)
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        if err.errno not in _DISK_FULL:
            raise
        written = tmp.stat().st_size if tmp is not None and tmp.exists() else 0
        raise disk_full_error(path, written, size_hint) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def remove_stale_temps(folder: str | os.PathLike, names: list[str]) -> list[Path]:
    """Delete the temporary files `atomic_path` left beside `folder/<name>` when its process was
    killed (`.<name>.<8 random characters><suffix>`). Call it only where no other process can
    be writing these files (e.g. under the run folder's lock). Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    patterns = [re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}[^/]*") for name in names]
    removed = []
    for entry in folder.iterdir():
        if entry.is_file() and any(p.fullmatch(entry.name) for p in patterns):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def is_plain_name(value: Any) -> bool:
    """Whether `value` names one file or folder inside its parent: not empty, no separator, no
    control character, not `.` or `..`, so joining it to a folder can never leave that folder
    (and an error message naming it stays one line)."""
    return (
        isinstance(value, str)
        and value not in ("", ".", "..")
        and not re.search(r"[/\\\x00-\x1f\x7f]", value)
    )


def json_safe(obj: Any) -> Any:
    """JSON has no NaN or infinity: undefined values (a class absent from the data) become null,
    NumPy scalars plain Python numbers, recursively."""
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FusescopeError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FusescopeError(f"{path}: not valid JSON ({err})") from None


def write_png(path: str | os.PathLike, array: np.ndarray, compress_level: int = 6) -> None:
    """Write uint8 (H,W) / (H,W,3) or uint16 (H,W) arrays as PNG, atomically.

    `compress_level` (zlib, 0-9) trades size for speed: generated data sets use 1, which writes
    several times faster for ~10% larger files.
    """
    if array.dtype == np.uint16:
        image = Image.fromarray(array)  # mode "I;16"
    elif array.dtype == np.uint8:
        image = Image.fromarray(array)
    else:
        raise TypeError(f"write_png takes uint8 or uint16 arrays, got {array.dtype}")
    with atomic_path(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG", compress_level=compress_level)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file to a NumPy array, keeping 16-bit depth as uint16.

    Raises:
        FusescopeError: the file is missing, truncated or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise FusescopeError(f"{path}: file not found")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L"):
                return np.array(image, dtype=np.uint16)
            if image.mode == "I":
                array = np.array(image)
                if array.min() < 0 or array.max() > 65535:
                    raise FusescopeError(f"{path}: 32-bit image with values outside uint16")
                return array.astype(np.uint16)
            if image.mode in ("P", "L"):
                return np.array(image.convert("L") if image.mode == "L" else image)
            if image.mode == "RGBA":
                image = image.convert("RGB")
            return np.array(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise FusescopeError(f"{path}: cannot read image ({err})") from None


def write_label_png(
    path: str | os.PathLike, label: np.ndarray, colors: list[tuple[int, int, int]]
) -> None:
    """Write class ids as a palette PNG: pixel values stay the ids, viewers show the colours."""
    image = Image.fromarray(label.astype(np.uint8), mode="P")
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(colors)] = np.asarray(colors, dtype=np.uint8)
    image.putpalette(palette.reshape(-1).tolist())
    with atomic_path(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG")
