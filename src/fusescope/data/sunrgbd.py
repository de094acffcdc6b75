"""SUN RGB-D (37 classes, official 5285 / 5050 split) into the fusescope folder layout.

The 37-class labels of the official release live in SUNRGBD2Dseg.mat, which needs about 64 GB of
RAM to load; what people download and use instead are the per-image label PNGs extracted from it
(ankurhanda/sunrgbd-meta-data, used by most RGB-D segmentation code), indexed in the same order
as that repository's two path lists. So the input folder is:

    SRC/SUNRGBD/...                     the official SUNRGBD.zip tree; each frame folder holds
                                        image/*.jpg, depth/*.png (raw), depth_bfx/*.png (filled),
                                        intrinsics.txt (3 x 3 camera matrix)
    SRC/sunrgbd_training_images.txt     5285 lines: SUNRGBD/<...>/<frame>/image/<name>.jpg
    SRC/sunrgbd_testing_images.txt      5050 lines, same form
    SRC/labels/img-000001.png ...       37-class labels (0 = unlabelled) from
                                        sunrgbd_train_test_labels.tar.gz: img-000001..005050
                                        are the test list in order, img-005051..010335 the
                                        training list in order

Depth PNGs store millimetres circularly shifted by 3 bits; the SUN toolbox (read3dPoints.m)
decodes `(d >> 3) | (d << 13)` and clips at 8 m: so do we, keeping 0 as "no reading".
Output ids are the label numbers ("000001"); val.txt is a copy of test.txt (no official val).
Intrinsics differ per sensor, so they are written per frame to intrinsics.json. With `hha`, hha/
holds each frame's HHA computed from the depth written to depth/ and the frame's own intrinsics
(`fusescope.data.hha`; as for NYUDv2, the filled depth serves as its own raw depth).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fusescope.data.hha import Intrinsics
from fusescope.data.hha import hha as compute_hha
from fusescope.data.meta import ClassInfo, DatasetMeta, ModalitySpec, write_split
from fusescope.data.prepare import check_output_folder, palette, read_checked, staged_output
from fusescope.errors import FusescopeError
from fusescope.io import write_json, write_png

CLASSES_37 = [
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
    "fridge",
    "tv",
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
]
NUM_TRAIN, NUM_TEST = 5285, 5050
TRAIN_LIST, TEST_LIST = "sunrgbd_training_images.txt", "sunrgbd_testing_images.txt"
MAX_DEPTH_MM = 8000


def decode_depth(d: np.ndarray) -> np.ndarray:
    """SUN RGB-D depth PNG -> millimetres (uint16): circular 3-bit right shift, clip at 8 m."""
    d = np.asarray(d, dtype=np.uint16)
    mm = (d >> 3) | (d << 13)  # uint16 arithmetic: the low 3 bits wrap to the top
    return np.minimum(mm, MAX_DEPTH_MM).astype(np.uint16)


def read_intrinsics(path: Path) -> dict[str, float]:
    """fx, fy, cx, cy from a frame's intrinsics.txt (3 x 3 camera matrix, row-major)."""
    try:
        v = np.array(path.read_text().split(), dtype=np.float64)
    except (OSError, ValueError) as err:
        raise FusescopeError(f"{path}: cannot read the camera matrix ({err})") from None
    if v.size != 9:
        raise FusescopeError(f"{path}: expected a 3 x 3 camera matrix, got {v.size} numbers")
    K = v.reshape(3, 3)
    return {"fx": float(K[0, 0]), "fy": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2])}


def _read_list(path: Path, expected: int | None) -> list[str]:
    if not path.is_file():
        raise FusescopeError(f"{path}: split list not found")
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if expected is not None and len(lines) != expected:
        raise FusescopeError(
            f"{path}: {len(lines)} entries, expected {expected} (the official split)"
        )
    return lines


def _frame_file(root: Path, frame: Path, folder: str, what: str) -> Path:
    files = sorted((root / frame / folder).glob("*.png"))
    if not files:
        raise FusescopeError(f"{root / frame / folder}: no {what} PNG found")
    return files[0]


def prepare_sunrgbd(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    depth_source: str = "depth_bfx",
    raw_depth: bool = True,
    hha: bool = False,
    check_split_sizes: bool = True,
    overwrite: bool = False,
    progress: bool = False,
) -> DatasetMeta:
    """Convert SUN RGB-D (official tree + extracted 37-class labels) into a data folder.

    Args:
        src: input folder in the layout of the module docstring.
        out: output folder; written beside it and renamed into place at the end.
        depth_source: frame sub-folder used for `depth/`: "depth_bfx" (filled, the usual
            choice for HHA and fusion baselines) or "depth" (raw).
        raw_depth: also write the raw depth to `raw_depth/`.
        hha: also write `hha/`, the HHA of `depth/` with each frame's intrinsics (slower).
        check_split_sizes: require the official 5285 / 5050 list lengths.
        overwrite: replace an existing `out`.
        progress: show a progress bar.

    Raises:
        FusescopeError: a missing list, frame file or label, naming it.
    """
    src, out = Path(src), Path(out)
    check_output_folder(out, overwrite, [src])
    if depth_source not in ("depth_bfx", "depth"):
        raise FusescopeError(f"depth_source must be 'depth_bfx' or 'depth', got {depth_source!r}")
    if not src.is_dir():
        raise FusescopeError(f"{src}: input folder not found")
    test = _read_list(src / TEST_LIST, NUM_TEST if check_split_sizes else None)
    train = _read_list(src / TRAIN_LIST, NUM_TRAIN if check_split_sizes else None)
    # (label number, image path, split): test first, as in the label archive
    entries = [(i + 1, p, "test") for i, p in enumerate(test)]
    entries += [(len(test) + i + 1, p, "train") for i, p in enumerate(train)]
    for k, p, _ in entries:  # fail before writing anything when a file is missing
        for need in (src / p, src / "labels" / f"img-{k:06d}.png"):
            if not need.is_file():
                raise FusescopeError(f"{need}: file not found")
    table = np.full(256, 255, dtype=np.uint8)
    table[1:38] = np.arange(37)  # 1..37 -> 0..36, 0 (unlabelled) and anything else -> 255
    colors = palette(37)
    modalities = {"rgb": ModalitySpec("color", 3), "depth": ModalitySpec("depth", 1, 0.001, "mm")}
    if raw_depth:
        modalities["raw_depth"] = ModalitySpec("depth", 1, 0.001, "mm")
    if hha:
        modalities["hha"] = ModalitySpec("image", 3)
    meta = DatasetMeta(
        name="sunrgbd",
        classes=[ClassInfo(n, i, colors[i]) for i, n in enumerate(CLASSES_37)],
        modalities=modalities,
        extra={
            "intrinsics_file": "intrinsics.json",
            "intrinsics_origin": 1,
            "depth_source": depth_source,
            "max_depth_m": MAX_DEPTH_MM / 1000,
            "val_split": "copy of test (SUN RGB-D has no official validation split)",
        },
    )
    intrinsics: dict[str, dict[str, float]] = {}
    with staged_output(out, overwrite, [src]) as tmp:
        it = entries
        if progress:
            from fusescope.console import progress_bar

            it = progress_bar(entries, desc="sunrgbd")
        for k, p, _ in it:
            fid = f"{k:06d}"
            frame = Path(p).parent.parent  # SUNRGBD/.../<frame>/image/<name>.jpg
            rgb = read_checked(src / p, channels=3)
            shape = rgb.shape[:2]
            lab = read_checked(src / "labels" / f"img-{k:06d}.png", channels=1, shape=shape)
            dpath = _frame_file(src, frame, depth_source, depth_source)
            depth = decode_depth(read_checked(dpath, channels=1, shape=shape))
            write_png(tmp / "rgb" / f"{fid}.png", rgb)
            write_png(tmp / "depth" / f"{fid}.png", depth)
            if raw_depth:
                rpath = _frame_file(src, frame, "depth", "raw depth")
                write_png(
                    tmp / "raw_depth" / f"{fid}.png",
                    decode_depth(read_checked(rpath, channels=1, shape=shape)),
                )
            write_png(tmp / "label" / f"{fid}.png", table[lab])
            intrinsics[fid] = read_intrinsics(src / frame / "intrinsics.txt")
            if hha:  # the toolbox's intrinsics count pixels from 1, as the HHA code does
                metres = depth.astype(np.float64) / 1000.0
                write_png(
                    tmp / "hha" / f"{fid}.png", compute_hha(metres, Intrinsics(**intrinsics[fid]))
                )
        write_split(tmp, "train", [f"{k:06d}" for k, _, s in entries if s == "train"])
        write_split(tmp, "test", [f"{k:06d}" for k, _, s in entries if s == "test"])
        write_split(tmp, "val", [f"{k:06d}" for k, _, s in entries if s == "test"])
        write_json(tmp / "intrinsics.json", intrinsics)
        meta.save(tmp)
    return meta
