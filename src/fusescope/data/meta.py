"""`meta.json`: what a data folder holds (classes, cue types, modalities, units, camera).

Every data folder fusescope reads, synthetic or prepared from official files, has the same layout:

    ROOT/meta.json
    ROOT/<modality>/<id>.png     one sub-folder per modality named in meta.json (text: <id>.txt)
    ROOT/label/<id>.png          uint8 class ids, `ignore_index` (255) = not labelled (absent
                                 when `classes` is empty: translation data sets have no label)
    ROOT/labels.json             classification data: {id: [class names]} (`task: classification`)
    ROOT/splits/<split>.txt      one sample id per line (train.txt, val.txt, test.txt)

Modality kinds say how a file becomes a float tensor:
    color  8-bit RGB; photometric augmentation applies to it alone.
    image  any other 8- or 16-bit image (HHA, normals, infrared, Cityscapes disparity); C = 1
           or 3; decoded to [0, 1] by its bit depth.
    depth  uint16 PNG; value * `scale` = metres; 0 = invalid (a hole).
    text   one UTF-8 file per sample (`fusescope.data.text`); no channels.

`task` says what a sample is labelled with: `segmentation` (the default: `label/` maps) or
`classification` (`labels.json`; `multi_label` true: any number of classes per sample, false:
exactly one). A segmentation folder serves frame classification as it is
(`fusescope.data.classification`).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fusescope.errors import FusescopeError
from fusescope.io import atomic_path, is_plain_name, read_json, write_json

# normal: a surface-normal map, 8-bit (n + 1) / 2 per axis (x right, y down, z forward); an
# image whose x axis changes sign when the image is mirrored
MODALITY_KINDS = ("color", "image", "normal", "depth", "text")
# appearance: only the image (RGB, a poster) identifies the class; geometry: only depth; text:
# only the text; both: either modality does
CUES = ("appearance", "geometry", "text", "both")
TASKS = ("segmentation", "classification")
LABEL_DIR = "label"
LABELS_FILE = "labels.json"


@dataclass(frozen=True)
class ClassInfo:
    name: str
    id: int
    color: tuple[int, int, int]
    cue: str | None = None  # only the known-answer benchmark declares cues


@dataclass(frozen=True)
class ModalitySpec:
    kind: str
    channels: int  # 0 for text
    scale: float | None = None  # depth only: metres per stored unit (0.001 for millimetres)
    units: str | None = None


@dataclass
class DatasetMeta:
    name: str
    classes: list[ClassInfo]
    modalities: dict[str, ModalitySpec]
    ignore_index: int = 255
    intrinsics: dict[str, float] | None = None  # fx, fy, cx, cy in pixels
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def task(self) -> str:
        """`segmentation` (label maps) or `classification` (`labels.json`)."""
        return self.extra.get("task", "segmentation")

    @property
    def multi_label(self) -> bool:
        """Classification: whether a sample may have any number of classes (else exactly one)."""
        return bool(self.extra.get("multi_label", False))

    def cue_groups(self) -> dict[str, list[int]]:
        """Class ids per cue type, for the benchmark's per-group mIoU (empty without cues)."""
        groups: dict[str, list[int]] = {}
        for c in self.classes:
            if c.cue is not None:
                groups.setdefault(c.cue, []).append(c.id)
        return {cue: groups[cue] for cue in CUES if cue in groups}

    def to_dict(self) -> dict[str, Any]:
        d = {
            "name": self.name,
            "classes": [asdict(c) for c in self.classes],
            "modalities": {
                k: {
                    kk: vv
                    for kk, vv in asdict(v).items()
                    if vv is not None and not (v.kind == "text" and kk == "channels")
                }
                for k, v in self.modalities.items()
            },
            "ignore_index": self.ignore_index,
        }
        if self.intrinsics is not None:
            d["intrinsics"] = dict(self.intrinsics)
        d.update(self.extra)
        for c in d["classes"]:
            if c["cue"] is None:
                del c["cue"]
            c["color"] = list(c["color"])
        return d

    def save(self, root: str | os.PathLike) -> None:
        write_json(Path(root) / "meta.json", self.to_dict())


def _require(d: dict, key: str, where: str) -> Any:
    if key not in d:
        raise FusescopeError(f"{where}: missing key {key!r}")
    return d[key]


def _integer(value: Any, where: str, low: int, high: int | None = None) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise FusescopeError(f"{where}: expected an integer {bound}, got {value!r}")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise FusescopeError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def meta_from_dict(d: dict[str, Any], where: str = "meta.json") -> DatasetMeta:
    """Validate and convert a parsed meta.json; errors name the file and the key.

    Modality names become folder names under the data root, so each must be a plain name (no
    separator, not `..`): no meta.json can point fusescope outside its data folder.
    """
    if not isinstance(d, dict):
        raise FusescopeError(f"{where}: expected a JSON object")
    task = d.get("task", "segmentation")
    if task not in TASKS:
        raise FusescopeError(f"{where}: task {task!r} is not one of {', '.join(TASKS)}")
    if not isinstance(d.get("multi_label", False), bool):
        raise FusescopeError(
            f"{where}: multi_label must be true or false, got {d['multi_label']!r}"
        )
    raw_classes = _require(d, "classes", where)
    if not isinstance(raw_classes, list):
        raise FusescopeError(f"{where}: 'classes' must be a list")
    classes = []
    for i, c in enumerate(raw_classes):
        here = f"{where}: classes[{i}]"
        if not isinstance(c, dict):
            raise FusescopeError(f"{here}: expected an object with name, id, color")
        cid = _require(c, "id", here)
        if isinstance(cid, bool) or cid != i:
            raise FusescopeError(f"{here}: class ids must be 0..K-1 in order, got id {cid!r}")
        # classes of a classification data set need no colour: they are never drawn as a map
        color = (
            c.get("color", _default_color(i))
            if task == "classification"
            else _require(c, "color", here)
        )
        if not (isinstance(color, list | tuple) and len(color) == 3):
            raise FusescopeError(f"{here}: color must be [r, g, b]")
        color = tuple(_integer(v, f"{here}.color", 0, 255) for v in color)
        cue = c.get("cue")
        if cue is not None and cue not in CUES:
            raise FusescopeError(f"{here}: cue {cue!r} is not one of {', '.join(CUES)}")
        name = _require(c, "name", here)
        if not isinstance(name, str | int | float) or isinstance(name, bool):
            raise FusescopeError(f"{here}: name must be a string, got {name!r}")
        classes.append(ClassInfo(str(name), i, color, cue))
    if task == "classification" and len({c.name for c in classes}) != len(classes):
        # labels.json names classes, so a name must say which one
        dup = next(c.name for c in classes if [k.name for k in classes].count(c.name) > 1)
        raise FusescopeError(f"{where}: class name {dup!r} appears twice")
    if not classes and task == "classification":
        raise FusescopeError(f"{where}: 'classes' is empty")
    # otherwise an empty class list is a data set without labels (image translation: Taskonomy)
    raw_modalities = _require(d, "modalities", where)
    if not isinstance(raw_modalities, dict) or not raw_modalities:
        raise FusescopeError(
            f"{where}: 'modalities' must be a non-empty object {{name: {{kind, channels, ...}}}}"
        )
    modalities = {}
    for name, spec in raw_modalities.items():
        here = f"{where}: modalities.{name}"
        if not is_plain_name(name):
            raise FusescopeError(
                f"{where}: modality name {name!r} must be a folder name inside "
                f"the data folder, not a path (no / or \\, not . or ..)"
            )
        if not isinstance(spec, dict):
            raise FusescopeError(f"{here}: expected an object with kind and channels")
        kind = _require(spec, "kind", here)
        if kind not in MODALITY_KINDS:
            raise FusescopeError(f"{here}: kind {kind!r} is not one of {', '.join(MODALITY_KINDS)}")
        if name == LABEL_DIR:
            raise FusescopeError(f"{here}: 'label' is reserved for the label folder")
        if kind == "text":
            if spec.get("channels", 0) != 0:
                raise FusescopeError(f"{here}: a text modality has no channels")
            modalities[name] = ModalitySpec("text", 0)
            continue
        channels = _integer(_require(spec, "channels", here), f"{here}.channels", 1)
        allowed = {"depth": (1,), "normal": (3,)}.get(kind, (1, 3))
        if channels not in allowed:
            raise FusescopeError(
                f"{here}: {channels} channels; a {kind} modality has "
                f"{' or '.join(map(str, allowed))}"
            )
        scale = spec.get("scale")
        if kind == "depth" and not (
            isinstance(scale, int | float)
            and not isinstance(scale, bool)
            and math.isfinite(scale)
            and scale > 0
        ):
            raise FusescopeError(f"{here}: depth needs a positive 'scale' (metres per unit)")
        if kind != "depth":
            scale = None  # only depth has units
        units = spec.get("units")
        if units is not None and not isinstance(units, str):
            raise FusescopeError(f"{here}: units must be a string, got {units!r}")
        modalities[name] = ModalitySpec(
            kind, channels, float(scale) if scale is not None else None, units
        )
    ignore_index = _integer(d.get("ignore_index", 255), f"{where}: ignore_index", 0, 255)
    if ignore_index < len(classes):
        raise FusescopeError(f"{where}: ignore_index {ignore_index} collides with a class id")
    intrinsics = d.get("intrinsics")
    if intrinsics is not None and not (
        isinstance(intrinsics, dict)
        and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in intrinsics.values()
        )
    ):
        raise FusescopeError(f"{where}: intrinsics must be an object of numbers (fx, fy, cx, cy)")
    name = d.get("name", "dataset")
    if not isinstance(name, str):
        raise FusescopeError(f"{where}: name must be a string, got {name!r}")
    known = {"name", "classes", "modalities", "ignore_index", "intrinsics"}
    return DatasetMeta(
        name=name,
        classes=classes,
        modalities=modalities,
        ignore_index=ignore_index,
        intrinsics=intrinsics,
        extra={k: v for k, v in d.items() if k not in known},
    )


def _default_color(index: int) -> tuple[int, int, int]:
    """A distinct colour per class id (the PASCAL VOC palette, without black)."""
    from fusescope.data.prepare import palette

    return palette(index + 1)[index]


def load_meta(root: str | os.PathLike) -> DatasetMeta:
    path = Path(root) / "meta.json"
    if not Path(root).is_dir():
        raise FusescopeError(f"{root}: data folder not found")
    return meta_from_dict(read_json(path), where=str(path))


def read_split(root: str | os.PathLike, split: str) -> list[str]:
    """The sample ids of `ROOT/splits/<split>.txt`, one per line.

    Raises:
        FusescopeError: the split name is a path, the file is missing, empty or not UTF-8
            text, or an id is not a plain file name (`../x` or `/abs` would read outside
            the data folder).
    """
    if not is_plain_name(split):
        raise FusescopeError(f"split {split!r} must be a plain name, not a path")
    path = Path(root) / "splits" / f"{split}.txt"
    if not path.is_file():
        available = sorted(p.stem for p in (Path(root) / "splits").glob("*.txt"))
        raise FusescopeError(f"{path}: split file not found (available: {available or 'none'})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise FusescopeError(f"{path}: not UTF-8 text ({err})") from None
    ids = []
    for number, line in enumerate(text.splitlines(), 1):
        sample_id = line.strip()
        if not sample_id:
            continue
        if not is_plain_name(sample_id):
            raise FusescopeError(
                f"{path}: line {number}: {sample_id!r} is not a sample id (a "
                f"file name without extension, no / or \\, not . or ..)"
            )
        ids.append(sample_id)
    if not ids:
        raise FusescopeError(f"{path}: split is empty")
    return ids


def write_split(root: str | os.PathLike, split: str, ids: list[str]) -> None:
    with atomic_path(Path(root) / "splits" / f"{split}.txt") as tmp:
        tmp.write_text("".join(f"{i}\n" for i in ids))
