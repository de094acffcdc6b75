"""`meta.json`: what a data folder holds (classes, cue types, modalities, units, camera).

Every data folder fusescope reads, synthetic or prepared from official files, has the same layout:

    ROOT/meta.json
    ROOT/<modality>/<id>.png     one sub-folder per modality named in meta.json
    ROOT/label/<id>.png          uint8 class ids, `ignore_index` (255) = not labelled
    ROOT/splits/<split>.txt      one sample id per line (train.txt, val.txt, test.txt)

Modality kinds say how a file becomes a float tensor:
    color  8-bit RGB; photometric augmentation applies to it alone.
    image  any other 8-bit image (HHA, normals, infrared); C = 1 or 3.
    depth  uint16 PNG; value * `scale` = metres; 0 = invalid (a hole).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fusescope.errors import FusescopeError
from fusescope.io import read_json, write_json

MODALITY_KINDS = ("color", "image", "depth")
CUES = ("appearance", "geometry", "both")
LABEL_DIR = "label"


@dataclass(frozen=True)
class ClassInfo:
    name: str
    id: int
    color: tuple[int, int, int]
    cue: str | None = None  # only the known-answer benchmark declares cues


@dataclass(frozen=True)
class ModalitySpec:
    kind: str
    channels: int
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
            "modalities": {k: {kk: vv for kk, vv in asdict(v).items() if vv is not None}
                           for k, v in self.modalities.items()},
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


def meta_from_dict(d: dict[str, Any], where: str = "meta.json") -> DatasetMeta:
    """Validate and convert a parsed meta.json; errors name the file and the key."""
    if not isinstance(d, dict):
        raise FusescopeError(f"{where}: expected a JSON object")
    classes = []
    for i, c in enumerate(_require(d, "classes", where)):
        here = f"{where}: classes[{i}]"
        if not isinstance(c, dict):
            raise FusescopeError(f"{here}: expected an object with name, id, color")
        cid = _require(c, "id", here)
        if cid != i:
            raise FusescopeError(f"{here}: class ids must be 0..K-1 in order, got id {cid}")
        color = _require(c, "color", here)
        if not (isinstance(color, list | tuple) and len(color) == 3):
            raise FusescopeError(f"{here}: color must be [r, g, b]")
        cue = c.get("cue")
        if cue is not None and cue not in CUES:
            raise FusescopeError(f"{here}: cue {cue!r} is not one of {', '.join(CUES)}")
        classes.append(ClassInfo(str(_require(c, "name", here)), int(cid),
                                 tuple(int(v) for v in color), cue))
    if not classes:
        raise FusescopeError(f"{where}: 'classes' is empty")
    modalities = {}
    for name, spec in _require(d, "modalities", where).items():
        here = f"{where}: modalities.{name}"
        kind = _require(spec, "kind", here)
        if kind not in MODALITY_KINDS:
            raise FusescopeError(f"{here}: kind {kind!r} is not one of {', '.join(MODALITY_KINDS)}")
        if name == LABEL_DIR:
            raise FusescopeError(f"{here}: 'label' is reserved for the label folder")
        scale = spec.get("scale")
        if kind == "depth" and not (isinstance(scale, int | float) and scale > 0):
            raise FusescopeError(f"{here}: depth needs a positive 'scale' (metres per unit)")
        modalities[name] = ModalitySpec(kind, int(_require(spec, "channels", here)),
                                        float(scale) if scale is not None else None,
                                        spec.get("units"))
    ignore_index = int(d.get("ignore_index", 255))
    if ignore_index < len(classes):
        raise FusescopeError(f"{where}: ignore_index {ignore_index} collides with a class id")
    known = {"name", "classes", "modalities", "ignore_index", "intrinsics"}
    return DatasetMeta(name=str(d.get("name", "dataset")), classes=classes,
                       modalities=modalities, ignore_index=ignore_index,
                       intrinsics=d.get("intrinsics"),
                       extra={k: v for k, v in d.items() if k not in known})


def load_meta(root: str | os.PathLike) -> DatasetMeta:
    path = Path(root) / "meta.json"
    if not Path(root).is_dir():
        raise FusescopeError(f"{root}: data folder not found")
    return meta_from_dict(read_json(path), where=str(path))


def read_split(root: str | os.PathLike, split: str) -> list[str]:
    path = Path(root) / "splits" / f"{split}.txt"
    if not path.is_file():
        available = sorted(p.stem for p in (Path(root) / "splits").glob("*.txt"))
        raise FusescopeError(f"{path}: split file not found (available: {available or 'none'})")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise FusescopeError(f"{path}: split is empty")
    return ids


def write_split(root: str | os.PathLike, split: str, ids: list[str]) -> None:
    from fusescope.io import atomic_path

    with atomic_path(Path(root) / "splits" / f"{split}.txt") as tmp:
        tmp.write_text("".join(f"{i}\n" for i in ids))
