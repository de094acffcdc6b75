"""Writing a data set: frames to PNG files, splits and meta.json, all or nothing."""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from fusescope.console import progress_bar
from fusescope.data.generators import Generator, register_generator
from fusescope.data.meta import LABEL_DIR, DatasetMeta, ModalitySpec, write_split
from fusescope.data.prepare import staged_output
from fusescope.data.synthetic.classes import CLASSES, THERMAL_CLASSES
from fusescope.data.synthetic.rendering import (
    EDGE_SCALE,
    RGB_GAIN,
    SHADE_RANGE,
    TEXTURE_RANGE,
    render_frame,
)
from fusescope.data.synthetic.scene import Frame, intrinsics
from fusescope.data.synthetic.sensor import DEPTH_SCALE
from fusescope.data.synthetic.thermal import NETD, THERMAL_SCALE
from fusescope.engine.memory import check_fits
from fusescope.errors import FusescopeError
from fusescope.io import check_disk_space, write_png

GENERATOR_VERSION = 1
IGNORE_INDEX = 255

MODALITIES: dict[str, ModalitySpec] = {
    "rgb": ModalitySpec("color", 3),
    "depth": ModalitySpec("depth", 1, DEPTH_SCALE, "mm"),
    "texture": ModalitySpec("color", 3),
    "shade": ModalitySpec("image", 1),
    "normal": ModalitySpec("normal", 3),
    "edge": ModalitySpec("image", 1),
    "thermal": ModalitySpec("thermal", 1, THERMAL_SCALE, "0.01 K"),
}
"""Every modality the generator can write, in the order it writes them. A data set with
thermal also has the thermal-only classes (`classes.THERMAL_SPECS`)."""
DEFAULT_MODALITIES = ("rgb", "depth")


def frame_id(index: int) -> str:
    return f"{index:06d}"


def check_modalities(
    modalities: Iterable[str] | None, where: str = "synthetic data"
) -> tuple[str, ...]:
    """The modalities to write, in `MODALITIES` order (None: rgb and depth).

    Raises:
        FusescopeError: none, or a name the generator does not make (the message starts with
            `where`).
    """
    if modalities is None:
        return DEFAULT_MODALITIES
    if isinstance(modalities, str):
        modalities = [modalities]
    wanted = list(modalities)
    unknown = [m for m in wanted if m not in MODALITIES]
    if unknown or not wanted:
        raise FusescopeError(
            f"{where}: unknown modality {unknown[0]!r}; known: {', '.join(MODALITIES)}"
            if unknown
            else f"{where}: no modality to write; known: {', '.join(MODALITIES)}"
        )
    return tuple(m for m in MODALITIES if m in wanted)


def write_frame(
    root: Path, index: int, frame: Frame, modalities: Iterable[str] = DEFAULT_MODALITIES
) -> None:
    """The PNG files of one frame: each modality's and the label."""
    name = f"{frame_id(index)}.png"
    for m in modalities:
        write_png(root / m / name, getattr(frame, m), compress_level=1)
    write_png(root / LABEL_DIR / name, frame.label, compress_level=1)


DEFAULT_SPLITS = (0.7, 0.15, 0.15)  # train, val, test shares


def planned(
    num: int,
    seed: int,
    size: tuple[int, int],
    modalities: Iterable[str] | None = None,
    splits: tuple[float, float, float] = DEFAULT_SPLITS,
) -> tuple[DatasetMeta, dict[str, int]]:
    """What `generate` would write, without writing it: the meta.json and the frames per
    split (`fusescope train --dry-run` on data that does not exist yet)."""
    _check_args(num, seed, (int(size[0]), int(size[1])), splits)
    meta = dataset_meta(num, seed, (int(size[0]), int(size[1])), splits, modalities)
    counts = _split_counts(num, splits)
    return meta, dict(zip(("train", "val", "test"), counts, strict=True))


def _split_counts(num: int, splits: tuple[float, float, float]) -> list[int]:
    """Frames per split by largest remainder; every split with a positive share gets one."""
    shares = np.asarray(splits, dtype=np.float64) / sum(splits)
    counts = np.floor(shares * num).astype(int)
    order = np.argsort(-(shares * num - counts), kind="stable")
    counts[order[: num - counts.sum()]] += 1
    for i in np.flatnonzero((shares > 0) & (counts == 0)):
        donor = int(counts.argmax())
        counts[donor] -= 1
        counts[i] += 1
    return [int(c) for c in counts]


def dataset_meta(
    num: int,
    seed: int,
    size: tuple[int, int],
    splits: tuple[float, float, float],
    modalities: Iterable[str] | None = None,
) -> DatasetMeta:
    """The meta.json of a generated set. The generator entry lists the modalities written and
    the image formation's constants only when more than rgb and depth are written (so a
    default set's meta.json is the same as before the option existed; absent = rgb, depth).
    With thermal, the classes are `THERMAL_CLASSES` (the thermal-only ones after the others)."""
    modalities = check_modalities(modalities)
    thermal = "thermal" in modalities
    generator = {
        "name": "fusescope.data.synthetic",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "num": num,
        "size": list(size),
        "splits": list(splits),
        "frame_seed": "np.random.SeedSequence([seed, index])",
    }
    if modalities != DEFAULT_MODALITIES:
        generator["modalities"] = list(modalities)
        generator["formation"] = {
            "rgb": "round(255 * clip(rgb_gain * texture * shade + noise, 0, 1)), "
            "texture and shade in [0, 1]",
            "rgb_gain": RGB_GAIN,
            "texture_range": TEXTURE_RANGE,
            "shade_range": SHADE_RANGE,
            "normal": "camera frame (x right, y down, z forward), facing the camera, (n + 1) / 2",
            "edge": f"Sobel magnitude of the texture's 8-bit luminance / {EDGE_SCALE:g}",
        }
        if thermal:
            generator["formation"]["thermal"] = (
                f"round((air + surface offset + stratification * (height - room height / 2) "
                f"+ warm patches + {NETD:g} K noise) / {THERMAL_SCALE:g} K), kelvin"
            )
    cue_groups = {
        "appearance": "only RGB identifies the class",
        "geometry": "only depth identifies the class",
        "both": "either modality identifies the class",
    }
    if thermal:
        cue_groups["thermal"] = "only thermal identifies the class"
        cue_groups["both"] = "more than one modality identifies the class"
    return DatasetMeta(
        name="synthetic",
        classes=list(THERMAL_CLASSES if thermal else CLASSES),
        modalities={m: MODALITIES[m] for m in modalities},
        ignore_index=IGNORE_INDEX,
        intrinsics=intrinsics(size),
        extra={"generator": generator, "cue_groups": cue_groups},
    )


def _check_args(
    num: int, seed: int, size: tuple[int, int], splits: tuple[float, float, float]
) -> None:
    if not (isinstance(num, int | np.integer) and num > 0):
        raise FusescopeError(f"synthetic data: num must be a positive integer, got {num!r}")
    if not (isinstance(seed, int | np.integer) and seed >= 0):
        raise FusescopeError(f"synthetic data: seed must be a non-negative integer, got {seed!r}")
    if len(size) != 2 or min(size) < 8:
        raise FusescopeError(f"synthetic data: size must be (height, width) >= 8, got {size!r}")
    if len(splits) != 3 or min(splits) < 0 or not np.isclose(sum(splits), 1.0):
        raise FusescopeError(
            f"synthetic data: splits must be 3 shares summing to 1, got {splits!r}"
        )
    positive = sum(s > 0 for s in splits)
    if num < positive:
        raise FusescopeError(f"synthetic data: num={num} is too few for {positive} splits")


def _render_and_write(job: tuple[str, int, int, tuple[int, int], tuple[str, ...]]) -> int:
    """One frame, rendered and written by a pool worker; returns its index."""
    root, seed, index, size, modalities = job
    write_frame(Path(root), index, render_frame(seed, index, size, modalities), modalities)
    return index


def generate(
    out: str | os.PathLike,
    num: int,
    seed: int = 0,
    size: tuple[int, int] = (120, 160),
    splits: tuple[float, float, float] = DEFAULT_SPLITS,
    progress: bool = True,
    workers: int = 1,
    modalities: Iterable[str] | None = DEFAULT_MODALITIES,
) -> DatasetMeta:
    """Write the known-answer benchmark to `out` in the folder layout of `docs/architecture.md`.

    The data set is built in a temporary sibling folder and renamed onto `out` at the end
    (`fusescope.data.prepare.staged_output`), so `out` either holds the complete data set or
    does not exist. Ids are `000000`, `000001`, ...; splits are consecutive runs of ids (frames
    are independent, so any run is a random sample).

    Args:
        out: the folder to create; it must not exist or be empty.
        num: number of frames.
        seed: frame `i` is drawn from `np.random.SeedSequence([seed, i])`.
        size: (height, width) in pixels.
        splits: train, val and test shares.
        progress: show a progress bar.
        workers: processes rendering and writing frames; the bytes written do not depend on it
            (every frame is a function of (seed, index) alone and has its own files).
        modalities: which of `MODALITIES` to write (None: rgb and depth). The extra ones draw
            no random number: rgb, depth and labels are the same bytes whichever are written.

    Returns:
        The data set's metadata, as written to `out/meta.json`.

    Raises:
        FusescopeError: `out` exists and is not an empty folder, or an argument is invalid.
    """
    out = Path(out)
    size = (int(size[0]), int(size[1]))
    _check_args(num, seed, size, splits)
    modalities = check_modalities(modalities)
    if not (isinstance(workers, int | np.integer) and workers >= 1):
        raise FusescopeError(f"synthetic data: workers must be a positive integer, got {workers!r}")
    # what the settings ask for, before anything is allocated or written: a frame's ray casting
    # takes ~200 bytes per pixel (measured; 100 is the bound used), and the PNGs at least half
    # a byte per pixel and modality
    pixels = size[0] * size[1]
    check_fits(100 * pixels * min(workers, num), f"size {size[0]}x{size[1]} (rendering a frame)")
    check_disk_space(
        out.parent,
        0.5 * pixels * (len(modalities) + 1) * num,
        f"{num} frames of {size[0]}x{size[1]}",
    )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FusescopeError(
            f"{out}: already exists and is not empty; remove it or choose another folder"
        )
    meta = dataset_meta(num, seed, size, splits, modalities)
    # overwrite: `out` is at most an empty folder here (checked above)
    with staged_output(out, overwrite=True) as tmp:
        for sub in (*modalities, LABEL_DIR, "splits"):
            (tmp / sub).mkdir()
        bar = progress_bar(
            total=num, desc=f"synthetic -> {out.name}", unit="frame", disable=not progress
        )
        with bar:
            if workers == 1:
                for index in range(num):
                    frame = render_frame(seed, index, size, extra=modalities)
                    write_frame(tmp, index, frame, modalities)
                    bar.update()
            else:
                # spawn, not fork: the caller may hold threads (torch) that fork would copy.
                jobs = [(str(tmp), seed, index, size, modalities) for index in range(num)]
                with multiprocessing.get_context("spawn").Pool(workers) as pool:
                    for _ in pool.imap_unordered(_render_and_write, jobs, chunksize=4):
                        bar.update()
        ids = [frame_id(i) for i in range(num)]
        start = 0
        for name, count in zip(("train", "val", "test"), _split_counts(num, splits), strict=True):
            write_split(tmp, name, ids[start : start + count])
            start += count
        meta.save(tmp)
    return meta


def frames_per_second(
    num: int = 200, size: tuple[int, int] = (120, 160), seed: int = 0, write: bool = True
) -> float:
    """Frames generated per second in this process (rendering and, if `write`, PNG encoding)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for sub in (*DEFAULT_MODALITIES, LABEL_DIR):
            (root / sub).mkdir()
        start = time.perf_counter()
        for index in range(num):
            frame = render_frame(seed, index, size, extra=())
            if write:
                write_frame(root, index, frame)
        return num / (time.perf_counter() - start)


# `data.synth` with `kind: rooms` (the default): this generator, its options checked and compared


def _generate_from_spec(root: Path, spec, progress: bool) -> None:
    generate(
        root,
        num=spec.num,
        seed=spec.seed,
        size=tuple(spec.size),
        progress=progress,
        workers=2,
        modalities=None if spec.get("modalities") is None else list(spec.modalities),
    )


LABELLING_MODALITIES = ("thermal",)
"""Modalities whose data sets have more classes (thermal: the classes only it can see)."""


def _missing_modalities(record, spec) -> list[str]:
    """A folder with more modalities than asked is the same data (the extra ones draw no random
    number), unless an extra one brings classes of its own (thermal); one without a modality
    asked for is not. A record without `modalities` wrote the default ones."""
    have = record.get("modalities", list(DEFAULT_MODALITIES))
    asked = check_modalities(spec.get("modalities"), "data.synth.modalities")
    missing = [m for m in asked if m not in have]
    diff = [f"no modality {', '.join(missing)} here (it has {', '.join(have)})"] if missing else []
    for m in LABELLING_MODALITIES:
        if m in have and m not in asked:
            diff.append(
                f"its labels hold the {m}-only classes (generated with {m}), which "
                f"data.synth.modalities does not ask for"
            )
    return diff


ROOMS = register_generator(
    Generator(
        kind="rooms",
        version=GENERATOR_VERSION,
        record="fusescope.data.synthetic",
        generate=_generate_from_spec,
        check=lambda spec: check_modalities(spec.get("modalities"), "data.synth.modalities"),
        differences=_missing_modalities,
    )
)
"""The known-answer RGB-D rooms (`data.synth.kind: rooms`, the default)."""
