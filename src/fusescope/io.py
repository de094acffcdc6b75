"""Reading and writing files safely: clear errors on bad files, atomic writes.

Every file fusescope writes goes through `atomic_path`: it is written to a temporary name in the
same folder and renamed into place, so a crash or a bad input never leaves a half-written file.
The temporary file gets the mode a plain `open()` would give (0666 less the umask) before it is
renamed, so results are as readable to others as any file the user writes; a full disk is a
one-line error naming the file, and the previous version of the file stays in place.

Temporary files and folders are locked (`flock`) by the process writing them, so a later command
can tell the leftovers of a killed process (unlocked) from a write in progress (locked) and remove
only the former (`remove_stale_temps`). Locks this process holds are closed in forked children
(DataLoader workers, process pools): a lock dies with the process that took it, never lingers in
a child that outlives it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
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
# the longest file name a sample id, modality or split may give: 255 bytes (NAME_MAX) less room
# for the suffixes written after it (".png", "_overlay.png") and atomic_path's temporary name
MAX_NAME_BYTES = 200

try:
    import fcntl
except ImportError:  # not POSIX: no locks (and no stale-temp detection)
    fcntl = None

# file descriptors holding a flock of this process: closed in forked children, so that a child
# (a DataLoader worker) never keeps a lock alive after its parent died
_HELD_LOCKS: set[int] = set()


def _close_inherited_locks() -> None:
    # closing the child's copy keeps the parent's lock (flock belongs to the open file
    # description, released when its last descriptor closes)
    for fd in list(_HELD_LOCKS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


def try_lock(fd: int) -> bool:
    """Take an exclusive `flock` on `fd` without waiting; True if taken (it is then released by
    `release_lock`, or by the kernel when this process ends, and never held by forked
    children). Always True where there are no locks."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    _HELD_LOCKS.add(fd)
    return True


def release_lock(fd: int) -> None:
    """Close a descriptor locked by `try_lock` (which releases the lock)."""
    _HELD_LOCKS.discard(fd)
    with contextlib.suppress(OSError):
        os.close(fd)


def cannot_write_error(path: Path, err: OSError) -> FusescopeError:
    """The one-line error for an output that cannot be created where it was asked for."""
    if err.errno in (errno.EEXIST, errno.ENOTDIR) and err.filename:
        why = f"{err.filename} is a file, not a folder"
    elif err.errno == errno.EISDIR:
        why = "it is a folder"
    else:
        why = err.strerror or type(err).__name__
    return FusescopeError(f"{path}: cannot write it here ({why})")


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
    if n >= 2**30:
        return f"{n / 2**30:.1f} GB"
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


def check_disk_space(folder: str | os.PathLike, needed: float, what: str) -> None:
    """Refuse to start writing `needed` bytes (an estimate, low rather than high) under `folder`
    (or its nearest existing parent) when the file system has less free space.

    Raises:
        FusescopeError: naming `what` asks for it, the estimate and the free space.
    """
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        return
    if needed > free:
        raise FusescopeError(
            f"{what} needs about {_size(needed)} on disk, {_size(free)} free under {existing}"
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
    if path.exists() and not path.is_file() and not path.is_dir():
        # a device, pipe or socket (/dev/null): renaming a file over it would replace it
        raise FusescopeError(f"{path}: not a regular file; refusing to replace it")
    tmp = None
    fd = None
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(
                prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=path.parent
            )
        except OSError as err:
            if err.errno in _DISK_FULL:
                raise
            raise cannot_write_error(path, err) from None
        try_lock(fd)  # held while the file is written: it is not a killed process's leftover
        tmp = Path(name)
        give_default_mode(tmp)
        yield tmp
        try:
            os.replace(tmp, path)
        except IsADirectoryError as err:
            raise cannot_write_error(path, err) from None
    except OSError as err:
        if err.errno not in _DISK_FULL:
            raise
        written = tmp.stat().st_size if tmp is not None and tmp.exists() else 0
        raise disk_full_error(path, written, size_hint) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if fd is not None:
            release_lock(fd)


def remove_stale_temps(folder: str | os.PathLike, names: list[str]) -> list[Path]:
    """Delete what writers of `folder/<name>` left when their process was killed: temporary
    files of `atomic_path` (`.<name>.<8 random characters><suffix>`) and temporary folders of
    `temp_folder` (`.<name>.tmp-<8>`, `.<name>.raw-<8>`). A temporary that its writer still
    locks is being written right now and is left alone, so this is safe beside a running
    command. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    patterns = [
        re.compile(rf"\.{re.escape(name)}\.(?:tmp-|raw-)?[a-z0-9_]{{8}}[^/]*") for name in names
    ]
    removed = []
    for entry in folder.iterdir():
        if not any(p.fullmatch(entry.name) for p in patterns) or entry.is_symlink():
            continue
        try:
            fd = os.open(entry, os.O_RDONLY | (os.O_DIRECTORY if entry.is_dir() else 0))
        except OSError:
            continue
        try:
            if not try_lock(fd):
                continue  # its writer is alive
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
        finally:
            release_lock(fd)
    return removed


@contextlib.contextmanager
def temp_folder(parent: str | os.PathLike, prefix: str) -> Iterator[Path]:
    """A new folder `parent/<prefix><8 random characters>` with the mode `mkdir` gives, locked
    while the block runs (`remove_stale_temps` leaves it alone) and removed after it, unless
    the block renamed it away (e.g. into place as a finished output).

    Raises:
        FusescopeError: the folder cannot be created there (a file in the path, no
            permission, a read-only or virtual file system), naming it.
    """
    parent = Path(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    except OSError as err:
        if err.errno in _DISK_FULL:
            raise
        raise cannot_write_error(parent / prefix, err) from None
    fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
    try_lock(fd)
    try:
        give_default_mode(tmp, folder=True)  # mkdtemp makes it 0700
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        release_lock(fd)


def check_output_path(value: str | os.PathLike, what: str = "--out") -> Path:
    """Check, before any work, that an output can be written where `value` says: a non-empty
    path whose nearest existing folder can be written in (no file in the way, not a virtual or
    read-only file system) and whose names fit the file system. Nothing is left behind.

    Raises:
        FusescopeError: naming the option and what is in the way.
    """
    if not str(value).strip():
        raise FusescopeError(f"{what} is empty; give a file or folder to write")
    path = Path(value)
    for part in path.parts:
        if len(os.fsencode(part)) > 255:
            raise FusescopeError(
                f"{what} {str(path)[:60]}...: a name in it is longer than 255 bytes"
            )
    existing = path.parent
    while not (existing.exists() or existing.is_symlink()) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise FusescopeError(f"{what} {path}: {existing} is a file, not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=".fusescope-probe-", dir=existing)
    except OSError as err:
        raise FusescopeError(
            f"{what} {path}: cannot write in {existing} ({err.strerror or err})"
        ) from None
    os.rmdir(probe)
    return path


def is_regular_file(path: str | os.PathLike) -> bool:
    """Whether `path` is (or links to) a regular file: not a device, pipe or socket, whose
    reading might never end (a link to /dev/zero)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def outside_root(path: str | os.PathLike, root: str | os.PathLike) -> Path | None:
    """Where `path` really is, if that is outside the folder `root` (a symbolic link, of the
    file or of a folder on its way, leading out); None if it stays inside."""
    real = Path(os.path.realpath(path))
    base = Path(os.path.realpath(root))
    return None if real == base or base in real.parents else real


def is_plain_name(value: Any) -> bool:
    """Whether `value` names one file or folder inside its parent: not empty, no separator, no
    control character, not `.` or `..`, so joining it to a folder can never leave that folder
    (and an error message naming it stays one line); valid UTF-8 of at most `MAX_NAME_BYTES`
    bytes, so the files named after it can be created."""
    if not (
        isinstance(value, str)
        and value not in ("", ".", "..")
        and not re.search(r"[/\\\x00-\x1f\x7f]", value)
    ):
        return False
    try:
        return len(value.encode("utf-8")) <= MAX_NAME_BYTES
    except UnicodeEncodeError:  # a lone surrogate: no file can be named with it
        return False


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
    except Image.DecompressionBombError as err:
        raise FusescopeError(f"{path}: {decompression_bomb_message(err)}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise FusescopeError(f"{path}: cannot read image ({err})") from None


def decompression_bomb_message(err: Exception) -> str:
    """Pillow refused to decode an image whose header declares more pixels than it allows
    (`Image.MAX_IMAGE_PIXELS` x 2): a decompression bomb, or a scan far larger than fusescope
    handles. Pillow's message has the pixel count."""
    found = re.search(r"\((\d+) pixels\)", str(err))
    count = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    return (
        f"image of {count}, more than the {2 * (Image.MAX_IMAGE_PIXELS or 0):,} that are "
        f"decoded (a decompression bomb, or a frame far larger than a model can take); "
        f"resize it first"
    )


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
