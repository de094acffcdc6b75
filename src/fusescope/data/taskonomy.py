"""Taskonomy (per-domain folder layout) into the fusescope folder layout, for image translation.

The input is Taskonomy's public per-domain layout (the full release and the one-building sample
`taskonomy-sample-model-1` that CEN trains on): one folder per domain, one PNG per frame,

    ROOT/rgb/point_<p>_view_<v>_domain_rgb.png                 8-bit RGB
    ROOT/reshading/point_<p>_view_<v>_domain_reshading.png     8-bit shading (1 or 3 equal
                                                               channels; the first is kept)
    ROOT/normal/point_<p>_view_<v>_domain_normal.png           8-bit RGB, 127-centred normals
    ROOT/depth_zbuffer/point_<p>_view_<v>_domain_depth_zbuffer.png
                                                               16-bit, 1/512 m, 65535 = no depth
    ROOT/edge_texture/..._domain_edge_texture.png              16-bit 2D (texture) edges
    ROOT/edge_occlusion/..._domain_edge_occlusion.png          16-bit 3D (occlusion) edges

Output modalities carry the names CEN's paper uses (Table 5: Depth, Normal, Texture, Shade;
the generator's known-answer data uses the same names):

    name     Taskonomy domain   kind   written as
    rgb      rgb                color  8-bit RGB, unchanged
    shade    reshading          image  8-bit, 1 channel, unchanged
    normal   normal             image  8-bit RGB, unchanged (127-centred)
    depth    depth_zbuffer      depth  uint16, scale 1/512 m (unchanged values); 65535 -> 0 (hole)
    texture  edge_texture       image  8-bit: floor(value * 255 / 11355), clipped at 255
    edge     edge_occlusion     image  8-bit: floor(value * 255 / 11584), clipped at 255

CEN's code (yikaiw/CEN, image2image_translation) numbers the domains 0 rgb, 1 normal,
2 reshading, 3 depth_euclidean, 4 depth_zbuffer, 6 edge_occlusion, 7 edge_texture, and its
README calls "--img-types 2 7 0" the Shade + Texture -> RGB run: Shade is `reshading` and
Texture is `edge_texture` (2D texture edges, not an albedo). `edge` is then the other edge domain,
`edge_occlusion`. The CEN code brings both 16-bit edge domains to 8 bits with the same maxima
(11355, 11584), so those are the divisors here. Depth keeps its metric values; `--depth-domain
depth_euclidean` takes the Euclidean distance instead (the paper says "euclidean/zbuffer").

Splits: `train_list` / `val_list` name the frames, one per line, either as a frame id
(`point_407_view_2`) or as any path ending in the frame's file name, such as CEN's own lists
(`{domain}/point_407_view_2_domain_{domain}.png`, 1,000 training and 500 validation frames of the
sample building). Only listed frames are converted. Without lists every frame of the first
modality's domain (`rgb/` when rgb is converted) is converted and split 2:1 into train / val by a
fixed-seed shuffle (CEN's proportions, not CEN's frames). `size` resizes every modality (bilinear;
depth by nearest neighbour, so holes and object borders do not blend), as CEN's 256 x 256 input is
a resize of the 512 x 512 frames.

Output ids are the frame ids. The data set has no label folder and no classes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fusescope.data.folder import check_inside
from fusescope.data.meta import DatasetMeta, ModalitySpec, write_split
from fusescope.data.prepare import FOLLOW_HINT, check_output_folder, staged_output
from fusescope.engine.memory import check_fits
from fusescope.errors import FusescopeError
from fusescope.io import read_image, write_png

DEPTH_UNITS_PER_METRE = 512
DEPTH_MISSING = 65535
# the 16-bit edge maxima the CEN code divides by to reach 8 bits (utils/dataset.py: max_v)
EDGE_MAX = {"edge_texture": 11355, "edge_occlusion": 11584}
DEPTH_DOMAINS = ("depth_zbuffer", "depth_euclidean")
FRAME = re.compile(r"point_(\d+)_view_(\d+)")
# a list line: a frame id, or a path whose file name is <frame>_domain_<domain>.png
LIST_LINE = re.compile(r"(?:.*/)?(point_\d+_view_\d+)(?:_domain_[^/]*\.png)?")
VAL_FRACTION_WITHOUT_LISTS = 1 / 3  # CEN's 1,000 / 500
SPLIT_SEED = 0


@dataclass(frozen=True)
class Domain:
    """How one Taskonomy domain becomes one fusescope modality."""

    folder: str  # the Taskonomy domain (folder and file-name suffix)
    spec: ModalitySpec
    decode: Callable[[np.ndarray, Path], np.ndarray]  # file array -> array written
    nearest: bool = False  # resample by nearest neighbour (depth)
    encoding: str = ""  # for meta.json


def _describe(a: np.ndarray) -> str:
    channels = 1 if a.ndim == 2 else a.shape[2]
    return f"{a.dtype} with {channels} channel(s)"


def _eight_bit(channels: int) -> Callable[[np.ndarray, Path], np.ndarray]:
    def decode(a: np.ndarray, path: Path) -> np.ndarray:
        if (
            a.dtype != np.uint8
            or (a.ndim == 2) != (channels == 1)
            or (a.ndim == 3 and a.shape[2] != channels)
        ):
            raise FusescopeError(
                f"{path}: expected an 8-bit image with {channels} channel(s), got {_describe(a)}"
            )
        return a

    return decode


def _shading(a: np.ndarray, path: Path) -> np.ndarray:
    # reshading is stored with one channel or three equal ones; Taskonomy loaders keep the first
    if a.dtype != np.uint8 or not (a.ndim == 2 or a.shape[2] == 3):
        raise FusescopeError(
            f"{path}: expected an 8-bit image with 1 or 3 channels, got {_describe(a)}"
        )
    return a if a.ndim == 2 else np.ascontiguousarray(a[..., 0])


def _sixteen_bit(a: np.ndarray, path: Path) -> None:
    if a.dtype != np.uint16 or a.ndim != 2:
        raise FusescopeError(f"{path}: expected a 16-bit single-channel PNG, got {_describe(a)}")


def _depth(a: np.ndarray, path: Path) -> np.ndarray:
    _sixteen_bit(a, path)
    return np.where(a == DEPTH_MISSING, 0, a).astype(np.uint16)


def _edges(maximum: int) -> Callable[[np.ndarray, Path], np.ndarray]:
    def decode(a: np.ndarray, path: Path) -> np.ndarray:
        _sixteen_bit(a, path)
        scaled = np.floor(a.astype(np.float64) * (255 / maximum))
        return np.minimum(scaled, 255).astype(np.uint8)

    return decode


def domains(depth_domain: str = "depth_zbuffer") -> dict[str, Domain]:
    """Output modality name -> its Taskonomy domain and encoding (the module docstring's table)."""
    if depth_domain not in DEPTH_DOMAINS:
        raise FusescopeError(
            f"depth domain must be one of {', '.join(DEPTH_DOMAINS)}, got {depth_domain!r}"
        )
    scale = 1 / DEPTH_UNITS_PER_METRE
    return {
        "rgb": Domain("rgb", ModalitySpec("color", 3), _eight_bit(3), encoding="unchanged"),
        "shade": Domain(
            "reshading", ModalitySpec("image", 1), _shading, encoding="unchanged (first channel)"
        ),
        "normal": Domain(
            "normal", ModalitySpec("normal", 3), _eight_bit(3), encoding="unchanged (127-centred)"
        ),
        "depth": Domain(
            depth_domain,
            ModalitySpec("depth", 1, scale, "1/512 m"),
            _depth,
            nearest=True,
            encoding=f"unchanged, {DEPTH_MISSING} (no depth) -> 0",
        ),
        "texture": Domain(
            "edge_texture",
            ModalitySpec("image", 1),
            _edges(EDGE_MAX["edge_texture"]),
            encoding=f"floor(value * 255 / {EDGE_MAX['edge_texture']}), max 255",
        ),
        "edge": Domain(
            "edge_occlusion",
            ModalitySpec("image", 1),
            _edges(EDGE_MAX["edge_occlusion"]),
            encoding=f"floor(value * 255 / {EDGE_MAX['edge_occlusion']}), max 255",
        ),
    }


MODALITIES = tuple(domains())


def frame_file(root: Path, domain: str, frame: str) -> Path:
    return root / domain / f"{frame}_domain_{domain}.png"


def _frame_key(frame: str) -> tuple[int, int]:
    point, view = FRAME.fullmatch(frame).groups()
    return int(point), int(view)


def read_frame_list(path: Path) -> list[str]:
    """The frame ids of a split list (frame ids or paths ending in the frame's file name).

    Raises:
        FusescopeError: the file is missing, empty, has a line that names no frame, or lists a
            frame twice.
    """
    if not path.is_file():
        raise FusescopeError(f"{path}: split list not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise FusescopeError(f"{path}: not UTF-8 text ({err})") from None
    frames: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        match = LIST_LINE.fullmatch(line)
        if match is None:
            raise FusescopeError(
                f"{path}: line {number}: {line[:80]!r} names no Taskonomy frame (expected "
                f"point_<p>_view_<v>, or a path ending in point_<p>_view_<v>_domain_<d>.png)"
            )
        frame = match.group(1)
        if frame in seen:
            raise FusescopeError(
                f"{path}: line {number}: {frame} is listed twice (first on line {seen[frame]})"
            )
        seen[frame] = number
        frames.append(frame)
    if not frames:
        raise FusescopeError(f"{path}: split list is empty")
    return frames


def _all_frames(root: Path, domain: str) -> list[str]:
    folder = root / domain
    pattern = re.compile(rf"(point_\d+_view_\d+)_domain_{re.escape(domain)}\.png")
    found = [m.group(1) for p in folder.iterdir() if (m := pattern.fullmatch(p.name))]
    if len(found) < 2:
        raise FusescopeError(
            f"{folder}: found {len(found)} point_<p>_view_<v>_domain_{domain}.png "
            f"file(s); need at least 2 to make train and val splits"
        )
    return sorted(found, key=_frame_key)


def _splits(
    root: Path, train_list: Path | None, val_list: Path | None, domain: str = "rgb"
) -> tuple[dict[str, list[str]], str]:
    """(split name -> frames, how the split was made)."""
    if (train_list is None) != (val_list is None):
        raise FusescopeError(
            "give both --train-list and --val-list, or neither (then every "
            "frame is converted and split 2:1 at random)"
        )
    if train_list is not None:
        train, val = read_frame_list(Path(train_list)), read_frame_list(Path(val_list))
        both = set(train).intersection(val)
        if both:
            first = next(f for f in val if f in both)
            raise FusescopeError(
                f"{val_list}: {first} is also in the training list {train_list} "
                f"({len(both)} such frames)"
            )
        return {"train": train, "val": val}, (
            f"from the lists {Path(train_list).name} "
            f"({len(train)}) and {Path(val_list).name} "
            f"({len(val)})"
        )
    frames = _all_frames(root, domain)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(frames))
    n_val = max(1, round(len(frames) * VAL_FRACTION_WITHOUT_LISTS))
    val = sorted((frames[i] for i in order[:n_val]), key=_frame_key)
    train = sorted((frames[i] for i in order[n_val:]), key=_frame_key)
    return {"train": train, "val": val}, (
        f"every frame of {domain}/, shuffled with seed {SPLIT_SEED} "
        f"and split 2:1 (CEN's proportions, not CEN's frames)"
    )


def _resize(a: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    h, w = size
    if a.shape[:2] == (h, w):
        return a
    if nearest:  # pixel centres, in NumPy: exact for uint16 and never mixes a hole in
        rows = np.minimum(((np.arange(h) + 0.5) * a.shape[0] / h).astype(np.int64), a.shape[0] - 1)
        cols = np.minimum(((np.arange(w) + 0.5) * a.shape[1] / w).astype(np.int64), a.shape[1] - 1)
        return np.ascontiguousarray(a[rows[:, None], cols[None, :]])
    # PIL's bilinear widens its support when shrinking, so downsampling is antialiased
    return np.asarray(Image.fromarray(a).resize((w, h), Image.Resampling.BILINEAR))


def prepare_taskonomy(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    train_list: str | os.PathLike | None = None,
    val_list: str | os.PathLike | None = None,
    size: Sequence[int] | None = None,
    modalities: Sequence[str] = MODALITIES,
    depth_domain: str = "depth_zbuffer",
    overwrite: bool = False,
    progress: bool = False,
    follow_links: bool = False,
) -> DatasetMeta:
    """Convert Taskonomy's per-domain folders into a data folder (module docstring).

    Args:
        root: folder holding one sub-folder per Taskonomy domain.
        out: output folder; written beside it and renamed into place at the end.
        train_list: frames of the training split (e.g. CEN's `train_domain.txt`).
        val_list: frames of the validation split (e.g. CEN's `val_domain.txt`).
        size: (H, W) to resize every frame to; None keeps the files' size.
        modalities: output modalities to write, from `MODALITIES`.
        depth_domain: the Taskonomy domain written as `depth`.
        overwrite: replace an existing `out`.
        progress: show a progress bar.
        follow_links: read files that symbolic links lead to outside `root` (refused otherwise:
            their content would be copied into `out`).

    Raises:
        FusescopeError: a missing folder, list or frame file, an unreadable file, a file of
            another kind or size than its frame's RGB image, a link leading outside `root`,
            naming it; nothing is written.
    """
    root, out = Path(root), Path(out)
    check_output_folder(out, overwrite, [root, train_list, val_list])
    table = domains(depth_domain)
    unknown = [m for m in modalities if m not in table]
    if unknown or not modalities:
        raise FusescopeError(
            f"unknown modalities {unknown}; choose from {', '.join(table)}"
            if unknown
            else "no modalities to convert"
        )
    if len(set(modalities)) != len(modalities):
        raise FusescopeError(f"modalities listed twice: {list(modalities)}")
    if size is not None:
        if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
            raise FusescopeError(f"size must be two positive integers H W, got {list(size)}")
        size = (int(size[0]), int(size[1]))
        check_fits(8 * size[0] * size[1] * 3, f"--size {size[0]} {size[1]} (one frame)")
    if not root.is_dir():
        raise FusescopeError(f"{root}: input folder not found")
    chosen = {name: table[name] for name in modalities}
    for domain in chosen.values():
        if not (root / domain.folder).is_dir():
            raise FusescopeError(f"{root / domain.folder}: Taskonomy domain folder not found")
    # the first modality sets each frame's size (and, without lists, the frames): rgb when
    # converted
    order = sorted(chosen, key=lambda name: name != "rgb")
    splits, how = _splits(root, train_list, val_list, chosen[order[0]].folder)
    frames = [f for split in splits.values() for f in split]
    for frame in frames:  # every file exists before anything is written
        for domain in chosen.values():
            path = frame_file(root, domain.folder, frame)
            if not path.is_file():
                split = next(s for s, fs in splits.items() if frame in fs)
                raise FusescopeError(f"{path}: file not found (frame {frame} of the {split} split)")
            if not follow_links:
                check_inside(path, root, FOLLOW_HINT)
    meta = DatasetMeta(
        name="taskonomy",
        classes=[],
        modalities={name: chosen[name].spec for name in modalities},
        extra={
            "source": "Taskonomy, per-domain layout",
            "domains": {name: chosen[name].folder for name in modalities},
            "encodings": {name: chosen[name].encoding for name in modalities},
            "split": how,
            "size": list(size) if size is not None else None,
        },
    )
    with staged_output(out, overwrite, [root, train_list, val_list]) as tmp:
        it = frames
        if progress:
            from fusescope.console import progress_bar

            it = progress_bar(frames, desc="taskonomy")
        for frame in it:
            shape = None
            for name in order:
                domain = chosen[name]
                path = frame_file(root, domain.folder, frame)
                array = read_image(path)
                if shape is None:
                    shape, first = array.shape[:2], path
                elif array.shape[:2] != shape:
                    raise FusescopeError(
                        f"{path}: size {array.shape[:2]} differs from {first.name}'s {shape}"
                    )
                array = domain.decode(array, path)
                if size is not None:
                    array = _resize(array, size, domain.nearest)
                write_png(tmp / name / f"{frame}.png", array)
        for split, names in splits.items():
            write_split(tmp, split, names)
        meta.save(tmp)
    return meta
