"""The data set over the folder layout (docs/architecture.md): any aligned modalities.

Files are checked when the data set is built (every modality and the label present for every
id of the split, nothing extra, one file per id, every file inside the data folder), and each
sample is checked as it is read (sizes agree, dtypes and units are plausible, label ids in
range), so bad data stops with the file named.

A symbolic link in the data folder that leads outside it is refused: a data folder from
elsewhere could otherwise make training read (and a text vocabulary, saved in run.json, copy)
any file of the machine. Link the data folder itself instead, or copy the files in.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from fusescope.data.kinds import IMAGE_EXTENSIONS, kind_of
from fusescope.data.meta import (
    LABEL_DIR,
    LABELS_FILE,
    DatasetMeta,
    ModalitySpec,
    load_meta,
    read_split,
)
from fusescope.errors import FusescopeError
from fusescope.io import outside_root, read_image

EXTENSIONS = IMAGE_EXTENSIONS


def extensions(meta: DatasetMeta, name: str) -> tuple[str, ...]:
    """The file extensions of folder `name` (a modality or the label folder)."""
    spec = meta.modalities.get(name)
    return kind_of(spec).extensions if spec is not None else EXTENSIONS


def find_file(folder: Path, sample_id: str, exts: tuple[str, ...] = EXTENSIONS) -> Path | None:
    for ext in exts:
        path = folder / f"{sample_id}{ext}"
        if path.is_file():
            return path
    return None


def files_by_stem(folder: Path, exts: tuple[str, ...] = EXTENSIONS) -> dict[str, Path]:
    """`{stem: file}` of the files in `folder` with one of `exts` (any case).

    Raises:
        FusescopeError: two files share a stem (`0001.png` and `0001.jpg`): which one is the
            frame is not for fusescope to guess.
    """
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in exts:
            continue
        if path.stem in found:
            raise FusescopeError(
                f"{folder}: two files for {path.stem}: {found[path.stem].name} and {path.name}; "
                f"keep one"
            )
        found[path.stem] = path
    return found


def check_inside(
    path: Path, root: Path, way_out: str = "copy the file in, or link the whole folder"
) -> None:
    """Refuse a file whose real location (symbolic links followed) is outside `root`.

    Raises:
        FusescopeError: naming the file, where it leads and `way_out`.
    """
    real = outside_root(path, root)
    if real is not None:
        raise FusescopeError(
            f"{path}: a symbolic link leading outside {root} (to {real}); files are read "
            f"only inside it: {way_out}"
        )


def load_modality(path: str | os.PathLike, name: str, spec: ModalitySpec) -> np.ndarray:
    """Read one image modality file into float32 (C, H, W) in its kind's natural units (8-bit
    images in [0, 1], depth in metres, thermal in kelvin; `fusescope.data.kinds`).

    Raises:
        FusescopeError: wrong dtype or channel count, or implausible units.
    """
    array = read_image(path)
    check_modality_array(array, path, name, spec)
    return kind_of(spec).decode(array, spec)


def check_modality_array(
    array: np.ndarray, path: str | os.PathLike, name: str, spec: ModalitySpec
) -> None:
    """The checks every reader of a modality file makes (training, evaluation, `data inspect`):
    dtype, channels and, for a scaled kind (depth), plausible units.

    Raises:
        FusescopeError: naming the file and what is wrong with it.
    """
    kind_of(spec).check(array, path, name, spec)


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
    stems = []
    for name in folders:
        folder = root / name
        if not folder.is_dir():
            raise FusescopeError(f"{folder}: folder missing for '{name}'")
        exts = extensions(meta, name)
        present = files_by_stem(folder, exts)
        missing = [i for i in ids if i not in present]
        if missing:
            raise FusescopeError(
                f"{folder}: {len(missing)} file(s) of the split missing, e.g. {missing[0]}{exts[0]}"
            )
        files[name] = {i: present[i] for i in ids}
        # the folder's real place once, then only the files that are links themselves
        check_inside(folder, root)
        for path in files[name].values():
            if path.is_symlink():
                check_inside(path, root)
        stems.append(set(present))
    # a file present for one modality but not another is a broken pairing
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
            if m in self.meta.modalities and kind_of(self.meta.modalities[m]).tokens
        ]
        if texts:
            raise FusescopeError(
                f"{self.root / 'meta.json'}: {texts[0]!r} is a "
                f"{self.meta.modalities[texts[0]].kind} modality; text serves classification "
                f"(task: classification)"
            )
        self.files = check_folder(self.root, self.meta, self.modalities, self.ids)
        self.transform = transform
        self.normalize = normalize
        self.corruption = corruption
        self.seed = seed

    def __len__(self) -> int:
        return len(self.ids)

    def load_raw(self, index: int) -> dict:
        """The sample in natural units (images in [0,1], depth in metres, ...), checked."""
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
