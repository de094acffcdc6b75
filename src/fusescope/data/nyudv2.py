"""NYU Depth V2 (labelled part) from its official files into the fusescope folder layout.

Inputs, as published:
    nyu_depth_v2_labeled.mat  MATLAB v7.3 (HDF5). MATLAB stores arrays column-major, so h5py sees
                              them transposed: images (N, 3, W, H) uint8, depths and rawDepths
                              (N, W, H) float metres, labels (N, W, H) with 894 classes (0 = none).
    splits.mat                MATLAB v5: trainNdxs (795) and testNdxs (654), 1-based frame numbers.
    classMapping40.mat        MATLAB v5: mapClass (1 x 894, values 1..40), className (40 names).
    class13Mapping.mat        optional, MATLAB v5: classMapping13.labels13 (1 x 40, values 1..13).

Output: rgb/ (uint8), depth/ (filled depth, uint16 mm), raw_depth/ (uint16 mm, 0 = no reading),
label/ (0..39 or 0..12, 255 = void), optional hha/, splits/{train,val,test}.txt, meta.json.
Frame ids are the 1-based frame numbers, zero padded ("0001"), so splits.mat stays readable.
There is no official validation split: val.txt is a copy of test.txt, which is what the
NYUDv2 papers report on (a held-out part of train would change the 795-frame protocol).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fusescope.data.hha import Intrinsics
from fusescope.data.hha import hha as compute_hha
from fusescope.data.meta import ClassInfo, DatasetMeta, ModalitySpec, write_split
from fusescope.data.prepare import check_output_folder, palette, staged_output
from fusescope.errors import FusescopeError
from fusescope.io import write_png

NUM_RAW_CLASSES = 894
# Kinect colour camera, from the NYU toolbox (camera_params.m); the toolbox and the HHA code
# use them with 1-based pixel coordinates.
INTRINSICS = {
    "fx": 518.857901174502,
    "fy": 519.469611121275,
    "cx": 325.582449411190,
    "cy": 253.736166334005,
}
CLASSES_40 = [
    "wall",
    "floor",
    "cabinet",
    "bed",
    "chair",
    "sofa",
    "table",
    "door",
    "window",
    "bookshelf",
    "picture",
    "counter",
    "blinds",
    "desk",
    "shelves",
    "curtain",
    "dresser",
    "pillow",
    "mirror",
    "floor mat",
    "clothes",
    "ceiling",
    "books",
    "refridgerator",
    "television",
    "paper",
    "towel",
    "shower curtain",
    "box",
    "whiteboard",
    "person",
    "night stand",
    "toilet",
    "sink",
    "lamp",
    "bathtub",
    "bag",
    "otherstructure",
    "otherfurniture",
    "otherprop",
]
CLASSES_13 = [
    "bed",
    "books",
    "ceiling",
    "chair",
    "floor",
    "furniture",
    "objects",
    "picture",
    "sofa",
    "table",
    "tv",
    "wall",
    "window",
]
MAT_KEYS = ("images", "depths", "rawDepths", "labels")


def _loadmat(path: Path, what: str) -> dict:
    import scipy.io

    if not path.is_file():
        raise FusescopeError(f"{path}: {what} not found")
    try:
        return scipy.io.loadmat(str(path))
    except NotImplementedError:
        raise FusescopeError(f"{path}: a MATLAB v7.3 file; {what} should be a v5 .mat") from None
    except Exception as err:  # scipy raises ValueError, TypeError, OSError... on bad files
        raise FusescopeError(f"{path}: cannot read {what} ({err})") from None


def _key(d: dict, key: str, path: Path) -> np.ndarray:
    if key not in d:
        found = sorted(k for k in d if not k.startswith("__"))
        raise FusescopeError(f"{path}: missing key {key!r} (found: {found})")
    return d[key]


def _cell_strings(cell: np.ndarray) -> list[str]:
    return [str(np.asarray(c).ravel()[0]) if np.asarray(c).size else "" for c in cell.ravel()]


def read_splits(path: str | os.PathLike, num_frames: int) -> tuple[list[int], list[int]]:
    """1-based train and test frame numbers from splits.mat, checked against `num_frames`."""
    path = Path(path)
    d = _loadmat(path, "split file")
    out = []
    for key in ("trainNdxs", "testNdxs"):
        idx = np.asarray(_key(d, key, path)).ravel()
        if idx.size == 0 or not np.issubdtype(idx.dtype, np.number):
            raise FusescopeError(f"{path}: {key} must be a non-empty list of frame numbers")
        idx = idx.astype(np.int64)
        if idx.min() < 1 or idx.max() > num_frames:
            raise FusescopeError(
                f"{path}: {key} holds frame numbers outside 1..{num_frames} (they are 1-based)"
            )
        out.append(idx.tolist())
    if set(out[0]) & set(out[1]):
        raise FusescopeError(f"{path}: trainNdxs and testNdxs overlap")
    return out[0], out[1]


def read_mapping40(path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """The 894 -> 40 map as a table over raw ids 0..894 (0 and unmapped -> 255) and the names."""
    path = Path(path)
    d = _loadmat(path, "class mapping")
    m = np.asarray(_key(d, "mapClass", path)).ravel()
    if m.size != NUM_RAW_CLASSES:
        raise FusescopeError(
            f"{path}: mapClass has {m.size} entries, expected {NUM_RAW_CLASSES} (one per NYU class)"
        )
    m = m.astype(np.int64)
    if m.min() < 0 or m.max() > 40:
        raise FusescopeError(f"{path}: mapClass values must be in 0..40, got {m.min()}..{m.max()}")
    names = CLASSES_40
    if "className" in d:
        names = _cell_strings(np.asarray(d["className"]))
        if len(names) != 40:
            raise FusescopeError(f"{path}: className has {len(names)} names, expected 40")
    table = np.full(NUM_RAW_CLASSES + 1, 255, dtype=np.uint8)
    table[1:] = np.where(m > 0, m - 1, 255)  # 1-based classes -> 0-based, 0 (none) -> void
    return table, names


def read_mapping13(path: str | os.PathLike) -> np.ndarray:
    """The 40 -> 13 map as a table over 0-based 40-class ids (255 stays 255)."""
    path = Path(path)
    d = _loadmat(path, "13-class mapping")
    s = _key(d, "classMapping13", path)
    try:
        m = np.asarray(s["labels13"][0, 0]).ravel().astype(np.int64)
    except (ValueError, IndexError, KeyError, TypeError):
        raise FusescopeError(f"{path}: classMapping13 has no field 'labels13'") from None
    if m.size != 40 or m.min() < 1 or m.max() > 13:
        raise FusescopeError(f"{path}: classMapping13.labels13 must hold 40 values in 1..13")
    table = np.full(256, 255, dtype=np.uint8)
    table[:40] = m - 1
    return table


def _open_labeled(path: Path):
    import h5py

    if not path.is_file():
        raise FusescopeError(f"{path}: labelled data file not found")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise FusescopeError(
            f"{path}: not a MATLAB v7.3 (HDF5) file or truncated ({err})"
        ) from None
    try:
        _check_labeled(f, path)
    except BaseException:
        f.close()
        raise
    return f


def _check_labeled(f, path: Path) -> None:
    for key in MAT_KEYS:
        if key not in f:
            raise FusescopeError(f"{path}: missing dataset {key!r} (found: {sorted(f.keys())})")
    shape = f["images"].shape
    if len(shape) != 4 or shape[1] != 3 or shape[0] == 0:
        raise FusescopeError(f"{path}: 'images' has shape {shape}, expected (N, 3, W, H)")
    n, _, w, h = shape
    for key in MAT_KEYS[1:]:
        if f[key].shape != (n, w, h):
            raise FusescopeError(f"{path}: {key!r} has shape {f[key].shape}, expected {(n, w, h)}")


def _to_mm(metres: np.ndarray) -> np.ndarray:
    mm = np.rint(np.nan_to_num(metres, nan=0.0) * 1000.0)
    return np.clip(mm, 0, 65535).astype(np.uint16)


def prepare_nyudv2(
    mat: str | os.PathLike,
    splits: str | os.PathLike,
    mapping: str | os.PathLike,
    out: str | os.PathLike,
    *,
    mapping13: str | os.PathLike | None = None,
    hha: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> DatasetMeta:
    """Convert the official NYUDv2 files into a data folder at `out`.

    Args:
        mat: nyu_depth_v2_labeled.mat.
        splits: splits.mat (795 train / 654 test).
        mapping: classMapping40.mat (894 -> 40).
        out: output folder; written beside it and renamed into place at the end.
        mapping13: class13Mapping.mat; given, labels use the 13-class set (894 -> 40 -> 13).
        hha: also write hha/ (from the filled depth, as the public NYUDv2 HHA sets are made).
        overwrite: replace an existing `out`.
        progress: show a progress bar.

    Returns:
        The written meta.

    Raises:
        FusescopeError: a missing, truncated or malformed input file, naming the file and key.
    """
    mat, out = Path(mat), Path(out)
    check_output_folder(out, overwrite, [mat, splits, mapping, mapping13])
    table, names40 = read_mapping40(mapping)
    if mapping13 is not None:
        t13 = read_mapping13(mapping13)
        table = t13[table]
        names = CLASSES_13
    else:
        names = names40
    f = _open_labeled(mat)
    with f:
        n = f["images"].shape[0]
        train, test = read_splits(splits, n)
        colors = palette(len(names))
        modalities = {
            "rgb": ModalitySpec("color", 3),
            "depth": ModalitySpec("depth", 1, 0.001, "mm"),
            "raw_depth": ModalitySpec("depth", 1, 0.001, "mm"),
        }
        if hha:
            modalities["hha"] = ModalitySpec("image", 3)
        meta = DatasetMeta(
            name="nyudv2" if mapping13 is None else "nyudv2-13",
            classes=[ClassInfo(nm, i, colors[i]) for i, nm in enumerate(names)],
            modalities=modalities,
            intrinsics=dict(INTRINSICS),
            extra={
                "intrinsics_origin": 1,
                "source": "nyu_depth_v2_labeled.mat",
                "depth_note": "depth: filled (colorization in-painting); raw_depth: sensor, "
                "0 = no reading",
                "val_split": "copy of test (NYUDv2 has no official validation split)",
            },
        )
        width = max(4, len(str(n)))
        frames = sorted(set(train) | set(test))
        with staged_output(out, overwrite, [mat, splits, mapping, mapping13]) as tmp:
            it = frames
            if progress:
                from fusescope.console import progress_bar

                it = progress_bar(frames, desc="nyudv2")
            for k in it:
                i = k - 1
                fid = f"{k:0{width}d}"
                try:
                    rgb = np.ascontiguousarray(np.asarray(f["images"][i]).transpose(2, 1, 0))
                    depth = np.asarray(f["depths"][i], dtype=np.float64).T
                    raw = np.asarray(f["rawDepths"][i], dtype=np.float64).T
                    lab = np.asarray(f["labels"][i]).T
                except OSError as err:  # a truncated file fails here, on the first missing chunk
                    raise FusescopeError(f"{mat}: cannot read frame {k} ({err})") from None
                if rgb.dtype != np.uint8:
                    raise FusescopeError(f"{mat}: 'images' must be uint8, got {rgb.dtype}")
                lab = lab.astype(np.int64)
                if lab.min() < 0 or lab.max() > NUM_RAW_CLASSES:
                    raise FusescopeError(
                        f"{mat}: frame {k} has label ids outside 0..{NUM_RAW_CLASSES}"
                    )
                write_png(tmp / "rgb" / f"{fid}.png", rgb)
                write_png(tmp / "depth" / f"{fid}.png", _to_mm(depth))
                write_png(tmp / "raw_depth" / f"{fid}.png", _to_mm(raw))
                write_png(tmp / "label" / f"{fid}.png", table[lab])
                if hha:
                    K = Intrinsics(**INTRINSICS)
                    write_png(tmp / "hha" / f"{fid}.png", compute_hha(depth, K))
            write_split(tmp, "train", [f"{k:0{width}d}" for k in train])
            write_split(tmp, "test", [f"{k:0{width}d}" for k in test])
            write_split(tmp, "val", [f"{k:0{width}d}" for k in test])
            meta.save(tmp)
    return meta
