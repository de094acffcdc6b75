"""The data set over the folder layout (docs/architecture.md): any aligned modalities.

Files are checked when the data set is built (every modality and the label present for every
id of the split, nothing extra), and each sample is checked as it is read (sizes agree, dtypes
and units are plausible, label ids in range), so bad data stops with the file named.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from fusescope.data.meta import (
    LABEL_DIR,
    LABELS_FILE,
    DatasetMeta,
    ModalitySpec,
    load_meta,
    read_split,
)
from fusescope.data.text import TEXT_EXTENSION
from fusescope.errors import FusescopeError
from fusescope.io import read_image

EXTENSIONS = (".png", ".jpg", ".jpeg")
# metric depth outside this range (median over valid pixels) means the scale is wrong
PLAUSIBLE_DEPTH_M = (0.05, 200.0)


def extensions(meta: DatasetMeta, name: str) -> tuple[str, ...]:
    """The file extensions of folder `name` (a modality or the label folder)."""
    spec = meta.modalities.get(name)
    return (TEXT_EXTENSION,) if spec is not None and spec.kind == "text" else EXTENSIONS


def find_file(folder: Path, sample_id: str, exts: tuple[str, ...] = EXTENSIONS) -> Path | None:
    for ext in exts:
        path = folder / f"{sample_id}{ext}"
        if path.is_file():
            return path
    return None


def load_modality(path: str | os.PathLike, name: str, spec: ModalitySpec) -> np.ndarray:
    """Read one modality file into float32 (C, H, W): images in [0, 1], depth in metres.

    Raises:
        FusescopeError: wrong dtype or channel count, or depth in implausible units.
    """
    array = read_image(path)
    check_modality_array(array, path, name, spec)
    if spec.kind == "depth":
        return (array.astype(np.float32) * np.float32(spec.scale))[None]
    x = array[..., None] if array.ndim == 2 else array
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32) / image_range(array)


def image_range(array: np.ndarray) -> float:
    """The value an image file's white has: 255 for 8-bit, 65535 for 16-bit PNGs (e.g. the
    Cityscapes disparity), so every image modality decodes to [0, 1]."""
    return float(np.iinfo(array.dtype).max)


def check_modality_array(
    array: np.ndarray, path: str | os.PathLike, name: str, spec: ModalitySpec
) -> None:
    """The checks every reader of a modality file makes (training, evaluation, `data inspect`):
    dtype, channels and, for depth, plausible units.

    Raises:
        FusescopeError: naming the file and what is wrong with it.
    """
    if spec.kind == "depth":
        if array.dtype != np.uint16:
            raise FusescopeError(
                f"{path}: depth '{name}' must be a 16-bit PNG (value * "
                f"{spec.scale} = metres), got {array.dtype}"
            )
        if array.ndim != 2:
            raise FusescopeError(f"{path}: depth '{name}' must have one channel")
        metres = array.astype(np.float32) * np.float32(spec.scale)
        valid = metres[metres > 0]
        if valid.size:
            median = float(np.median(valid))
            lo, hi = PLAUSIBLE_DEPTH_M
            if not lo <= median <= hi:
                raise FusescopeError(
                    f"{path}: depth '{name}' has median {median:.4g} m with scale {spec.scale} "
                    f"m/unit; expected {lo}-{hi} m: wrong units or scale in meta.json?"
                )
        return
    if array.dtype not in (np.uint8, np.uint16):
        raise FusescopeError(f"{path}: '{name}' must be an 8- or 16-bit image, got {array.dtype}")
    channels = 1 if array.ndim == 2 else array.shape[-1]
    if channels != spec.channels:
        raise FusescopeError(
            f"{path}: '{name}' has {channels} channels, meta.json says {spec.channels}"
        )


def check_label_array(label: np.ndarray, path: str | os.PathLike, meta: DatasetMeta) -> None:
    """A label is a single-channel 8-bit image of class ids or `ignore_index`."""
    if label.ndim != 2 or label.dtype != np.uint8:
        raise FusescopeError(f"{path}: label must be a single-channel 8-bit PNG")
    bad = (label >= meta.num_classes) & (label != meta.ignore_index)
    if bad.any():
        raise FusescopeError(
            f"{path}: label id {int(label[bad].max())} out of range "
            f"(0..{meta.num_classes - 1} or {meta.ignore_index} = ignore)"
        )


def check_folder(
    root: Path, meta: DatasetMeta, modalities: list[str], ids: list[str], with_labels: bool = True
) -> dict[str, dict[str, Path]]:
    """Resolve the file of every (modality, id); errors name what is missing or extra."""
    unknown = [m for m in modalities if m not in meta.modalities]
    if unknown:
        raise FusescopeError(
            f"{root / 'meta.json'}: no modality {unknown}; this data set has "
            f"{sorted(meta.modalities)}"
        )
    folders = list(modalities) + ([LABEL_DIR] if with_labels else [])
    files: dict[str, dict[str, Path]] = {}
    for name in folders:
        folder = root / name
        if not folder.is_dir():
            raise FusescopeError(f"{folder}: folder missing for '{name}'")
        exts = extensions(meta, name)
        present = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in exts}
        missing = [i for i in ids if i not in present]
        if missing:
            raise FusescopeError(
                f"{folder}: {len(missing)} file(s) of the split missing, e.g. {missing[0]}{exts[0]}"
            )
        files[name] = {i: present[i] for i in ids}
    # a file present for one modality but not another is a broken pairing
    stems = [
        set(p.stem for p in (root / n).iterdir() if p.suffix.lower() in extensions(meta, n))
        for n in folders
    ]
    union = set().union(*stems)
    for name, have in zip(folders, stems, strict=True):
        extra = sorted(union - have)
        if extra:
            raise FusescopeError(
                f"{root / name}: no file for id {extra[0]} that other "
                f"modalities have ({len(extra)} such ids): unpaired files"
            )
    return files


class FolderDataset(Dataset):
    """Samples `{modality: float32 (C,H,W), "label": int64 (H,W), "id": str}` of one split.

    Indexing with an int gives the evaluation view (no augmentation); indexing with
    (epoch, index) seeds augmentation from (seed, epoch, index), which makes training
    deterministic and resumable.

    Args:
        root: data folder.
        split: split name (a file `splits/<split>.txt`).
        modalities: modality names to load, in model order.
        transform: joint augmentation `(sample, rng) -> sample` applied before normalisation.
        normalize: `(sample) -> sample` with train statistics; None keeps natural units.
        corruption: `(raw_sample, rng, meta) -> raw_sample` applied first (robustness eval).
        seed: run seed.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        modalities: list[str],
        transform: Callable | None = None,
        normalize: Callable | None = None,
        corruption: Callable | None = None,
        seed: int = 0,
    ):
        self.root = Path(root)
        self.meta = load_meta(self.root)
        self.split = split
        self.modalities = list(modalities)
        self.ids = read_split(self.root, split)
        texts = [
            m
            for m in self.modalities
            if m in self.meta.modalities and self.meta.modalities[m].kind == "text"
        ]
        if texts:
            raise FusescopeError(
                f"{self.root / 'meta.json'}: {texts[0]!r} is a text modality; "
                f"text serves classification (task: classification)"
            )
        self.files = check_folder(self.root, self.meta, self.modalities, self.ids)
        self.transform = transform
        self.normalize = normalize
        self.corruption = corruption
        self.seed = seed

    def __len__(self) -> int:
        return len(self.ids)

    def load_raw(self, index: int) -> dict:
        """The sample in natural units (images in [0,1], depth in metres), checked."""
        sample_id = self.ids[index]
        raw: dict = {"id": sample_id}
        label_path = self.files[LABEL_DIR][sample_id]
        label = read_image(label_path)
        check_label_array(label, label_path, self.meta)
        for name in self.modalities:
            path = self.files[name][sample_id]
            x = load_modality(path, name, self.meta.modalities[name])
            if x.shape[-2:] != label.shape:
                raise FusescopeError(
                    f"{path}: size {x.shape[-2]}x{x.shape[-1]} differs from "
                    f"the label's {label.shape[0]}x{label.shape[1]}"
                )
            raw[name] = x
        raw["label"] = label.astype(np.int64)
        return raw

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (None, key)
        raw = self.load_raw(index)
        if self.corruption is not None:
            raw = self.corruption(raw, np.random.default_rng([self.seed, 1, index]), self.meta)
        sample = {
            k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in raw.items()
        }
        if self.transform is not None and epoch is not None:
            sample = self.transform(sample, np.random.default_rng([self.seed, 0, epoch, index]))
        if self.normalize is not None:
            sample = self.normalize(sample)
        return sample


def fingerprint(root: str | os.PathLike, modalities: list[str], splits: list[str]) -> str:
    """A cheap identity of the data a run saw: meta.json, split files, and every file's name and
    size (not content: hashing gigabytes of images at every start would cost minutes)."""
    root = Path(root)
    h = hashlib.sha256((root / "meta.json").read_bytes())
    meta = load_meta(root)
    if (root / LABELS_FILE).is_file():  # classification labels (a segmentation set has none)
        h.update((root / LABELS_FILE).read_bytes())
    for split in sorted(set(splits)):
        ids = read_split(root, split)
        h.update(f"{split}:{','.join(ids)}".encode())
        for name in [*modalities, LABEL_DIR]:
            exts = extensions(meta, name)
            for i in ids:
                path = find_file(root / name, i, exts)
                h.update(f"{name}/{i}:{path.stat().st_size if path else -1};".encode())
    return h.hexdigest()[:16]
