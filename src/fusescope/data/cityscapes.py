"""Cityscapes (19 classes) with disparity, from the official folder tree.

Input, as unpacked from the official archives (leftImg8bit_trainvaltest, disparity_trainvaltest,
gtFine_trainvaltest, camera_trainvaltest):

    SRC/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    SRC/disparity/<split>/<city>/<city>_<seq>_<frame>_disparity.png
    SRC/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
    SRC/camera/<split>/<city>/<city>_<seq>_<frame>_camera.json

Disparity PNGs store `256 * d + 1` (0 = invalid); depth in metres is
`baseline * fx / ((p - 1) / 256)` for p > 1 with the frame's baseline and fx from its camera
JSON (p = 1, zero disparity, is "at infinity": stored as a hole). Depth is written in
centimetres (uint16, scale 0.01) because street scenes reach beyond the 65 m of uint16 mm;
farther than 655 m is stored as a hole. `depth_mode="disparity"` writes the disparity PNG
unchanged instead (modality "disparity", kind image, documented units).
Labels: the official labelId -> trainId table; every other id -> 255. Splits: train (2975) and
val (500); the test split has no public labels and is skipped. Ids are the
"<city>_<seq>_<frame>" stems.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from fusescope.data.meta import ClassInfo, DatasetMeta, ModalitySpec, write_split
from fusescope.data.prepare import check_output_folder, lookup_table, read_checked, staged_output
from fusescope.errors import FusescopeError
from fusescope.io import write_json, write_png

# (name, labelId, colour) of the 19 evaluated classes, in trainId order.
CLASSES_19 = [
    ("road", 7, (128, 64, 128)),
    ("sidewalk", 8, (244, 35, 232)),
    ("building", 11, (70, 70, 70)),
    ("wall", 12, (102, 102, 156)),
    ("fence", 13, (190, 153, 153)),
    ("pole", 17, (153, 153, 153)),
    ("traffic light", 19, (250, 170, 30)),
    ("traffic sign", 20, (220, 220, 0)),
    ("vegetation", 21, (107, 142, 35)),
    ("terrain", 22, (152, 251, 152)),
    ("sky", 23, (70, 130, 180)),
    ("person", 24, (220, 20, 60)),
    ("rider", 25, (255, 0, 0)),
    ("car", 26, (0, 0, 142)),
    ("truck", 27, (0, 0, 70)),
    ("bus", 28, (0, 60, 100)),
    ("train", 31, (0, 80, 100)),
    ("motorcycle", 32, (0, 0, 230)),
    ("bicycle", 33, (119, 11, 32)),
]
LABEL_TO_TRAIN = lookup_table({label_id: i for i, (_, label_id, _) in enumerate(CLASSES_19)})
SPLITS = ("train", "val")
DEPTH_SCALE = 0.01  # metres per stored unit


def read_camera(path: Path) -> dict[str, float]:
    """Baseline (m) and intrinsics from a Cityscapes camera JSON."""
    if not path.is_file():
        raise FusescopeError(f"{path}: camera file not found")
    try:
        cam = json.loads(path.read_text())
        ext, intr = cam["extrinsic"], cam["intrinsic"]
        out = {
            "baseline": float(ext["baseline"]),
            "fx": float(intr["fx"]),
            "fy": float(intr["fy"]),
            "cx": float(intr["u0"]),
            "cy": float(intr["v0"]),
        }
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FusescopeError(f"{path}: not valid JSON ({err})") from None
    except (KeyError, TypeError, ValueError) as err:
        raise FusescopeError(
            f"{path}: missing or bad key {err} (need extrinsic.baseline, intrinsic.fx/fy/u0/v0)"
        ) from None
    if out["baseline"] <= 0 or out["fx"] <= 0:
        raise FusescopeError(f"{path}: baseline and fx must be positive")
    return out


def disparity_to_depth(p: np.ndarray, baseline: float, fx: float) -> np.ndarray:
    """Cityscapes disparity PNG values -> depth in metres (float64, 0 = invalid)."""
    p = np.asarray(p, dtype=np.float64)
    d = (p - 1.0) / 256.0
    with np.errstate(divide="ignore"):
        return np.where(p > 1, baseline * fx / np.where(p > 1, d, 1.0), 0.0)


def _frames(src: Path, split: str) -> list[tuple[str, Path]]:
    base = src / "leftImg8bit" / split
    if not base.is_dir():
        raise FusescopeError(f"{base}: folder not found (expected the official leftImg8bit tree)")
    frames = []
    for img in sorted(base.glob("*/*_leftImg8bit.png")):
        frames.append((img.name[: -len("_leftImg8bit.png")], img.parent.name))
    if not frames:
        raise FusescopeError(f"{base}: no *_leftImg8bit.png files")
    return [(stem, Path(split) / city) for stem, city in frames]


def prepare_cityscapes(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    depth_mode: str = "depth",
    splits: tuple[str, ...] = SPLITS,
    overwrite: bool = False,
    progress: bool = False,
) -> DatasetMeta:
    """Convert the official Cityscapes tree into a data folder.

    Args:
        src: the folder holding leftImg8bit/, disparity/, gtFine/ and camera/.
        out: output folder; written beside it and renamed into place at the end.
        depth_mode: "depth" (metric depth from disparity, uint16 cm) or "disparity" (the
            disparity PNG as is).
        splits: which official splits to convert (ones with labels: train, val).
        overwrite: replace an existing `out`.
        progress: show a progress bar.

    Raises:
        FusescopeError: a missing folder or file, naming it.
    """
    src, out = Path(src), Path(out)
    check_output_folder(out, overwrite, [src])
    if depth_mode not in ("depth", "disparity"):
        raise FusescopeError(f"depth_mode must be 'depth' or 'disparity', got {depth_mode!r}")
    for split in splits:
        if split not in SPLITS:
            raise FusescopeError(f"split {split!r}: only {SPLITS} have public labels")
    work = []
    for split in splits:
        for stem, rel in _frames(src, split):
            files = {
                "rgb": src / "leftImg8bit" / rel / f"{stem}_leftImg8bit.png",
                "disp": src / "disparity" / rel / f"{stem}_disparity.png",
                "label": src / "gtFine" / rel / f"{stem}_gtFine_labelIds.png",
                "camera": src / "camera" / rel / f"{stem}_camera.json",
            }
            for f in files.values():
                if not f.is_file():
                    raise FusescopeError(f"{f}: file not found")
            work.append((split, stem, files))
    if depth_mode == "depth":
        depth_spec = {"depth": ModalitySpec("depth", 1, DEPTH_SCALE, "cm")}
    else:
        depth_spec = {
            "disparity": ModalitySpec(
                "image",
                1,
                None,
                "cityscapes disparity png: disparity_px = (v - 1) / 256, 0 = invalid",
            )
        }
    meta = DatasetMeta(
        name="cityscapes",
        classes=[ClassInfo(n, i, c) for i, (n, _, c) in enumerate(CLASSES_19)],
        modalities={"rgb": ModalitySpec("color", 3), **depth_spec},
        extra={
            "intrinsics_file": "intrinsics.json",
            "intrinsics_origin": 0,
            "depth_from": "baseline * fx / ((disparity_png - 1) / 256)",
        },
    )
    cameras: dict[str, dict[str, float]] = {}
    ids: dict[str, list[str]] = {s: [] for s in splits}
    with staged_output(out, overwrite, [src]) as tmp:
        it = work
        if progress:
            from fusescope.console import progress_bar

            it = progress_bar(work, desc="cityscapes")
        for split, stem, files in it:
            rgb = read_checked(files["rgb"], channels=3)
            shape = rgb.shape[:2]
            disp = read_checked(files["disp"], channels=1, shape=shape)
            lab = read_checked(files["label"], channels=1, shape=shape)
            cam = read_camera(files["camera"])
            write_png(tmp / "rgb" / f"{stem}.png", rgb)
            if depth_mode == "depth":
                z = disparity_to_depth(disp, cam["baseline"], cam["fx"])
                units = np.rint(z / DEPTH_SCALE)
                units[units > 65535] = 0  # beyond 655 m: no usable stereo, a hole
                write_png(tmp / "depth" / f"{stem}.png", units.astype(np.uint16))
            else:
                write_png(tmp / "disparity" / f"{stem}.png", disp.astype(np.uint16))
            write_png(tmp / "label" / f"{stem}.png", LABEL_TO_TRAIN[lab.astype(np.uint8)])
            cameras[stem] = cam
            ids[split].append(stem)
        for split, split_ids in ids.items():
            write_split(tmp, split, split_ids)
        write_json(tmp / "intrinsics.json", cameras)
        meta.save(tmp)
    return meta
