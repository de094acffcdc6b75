"""One spec per class: its label entry (name, id, colour, cue), the parts it is built from,
its painter and how a scene places it. Adding a class is one section here plus its entry in
`SPECS` (or `THERMAL_SPECS`).

Specs are listed in the order `sample_scene` places them, which is the order of its random
draws (changing it changes every frame: bump `GENERATOR_VERSION`). Placement runs in stages:
a `floor` class draws how many to try and then places them before the next class; the `wall`
classes draw all their counts first and are then placed in turn, so the wall items of a scene
share one budget of wall space. The `thermal` classes (`THERMAL_SPECS`: warm patches only the
thermal image shows) exist only in scenes sampled for the thermal modality; they are placed
last, from the frame's own thermal stream, so every other class and draw is the same with or
without them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from fusescope.data.meta import ClassInfo
from fusescope.data.synthetic.layout import Site, place_against_wall, place_floor, place_wall
from fusescope.data.synthetic.paint import (
    cell_hash,
    column,
    decal_flat,
    fill,
    luma,
    paint_fabric,
    paint_flat,
    random_color,
    saturated_color,
    wood,
    wood_color,
)
from fusescope.data.synthetic.parts import (
    Decal,
    Solid,
    box,
    face_decal,
    room_plane,
    wall_rot,
    yaw_rot,
)
from fusescope.data.synthetic.scene import CEILING, FACE_AXIS, FLOOR, Room, Scene, SceneObject

Parts = tuple[list[Solid], list[Decal]]
PartBuilder = Callable[[SceneObject, Room], Parts]
Placer = Callable[[Site], SceneObject | None]


@dataclass(frozen=True)
class ClassSpec:
    """Everything the generator knows about one class.

    Attributes:
        name, id, color, cue: the class's entry in meta.json (`cue`: the modality that alone
            identifies it: `both`, `geometry` (depth), `appearance` (RGB) or `thermal`).
        parts: object -> its solids and decals; None for the room's faces (`room_parts`).
        count: how many objects of the class a scene tries to place (draws from the stream).
        place: one object at a free visible spot, or None if none was found; None for a class
            placed by its pair's placer or by `sample_room`.
        stage: `floor`, `wall` or `thermal` (see the module docstring).
        pair: the class that only the other modality tells apart from this one; swapping one
            for the other on a scene object is a valid edit.
    """

    name: str
    id: int
    color: tuple[int, int, int]
    cue: str
    parts: PartBuilder | None = None
    count: Callable[[np.random.Generator], int] | None = None
    place: Placer | None = None
    stage: str = "floor"
    pair: str | None = None

    @property
    def info(self) -> ClassInfo:
        return ClassInfo(self.name, self.id, self.color, self.cue)


def _object_id(obj: SceneObject) -> int:
    return CLASS_ID[obj.cls]


# --------------------------------------------------------------------------------------------
# The room: floor, wall, ceiling (six planes, painted per surface kind)


def _paint_floor(p: np.ndarray, n: np.ndarray, prm: dict) -> np.ndarray:
    u, v = p[0], p[2]
    if prm["kind"] == "planks":
        return wood(u, v, prm)
    if prm["kind"] == "tiles":
        iu, iv = np.floor(u / prm["tile"]), np.floor(v / prm["tile"])
        checker = (iu + iv) % 2
        color = column(prm["color"]) * (1 - checker) + column(prm["color2"]) * checker
        fu, fv = (u / prm["tile"]) % 1, (v / prm["tile"]) % 1
        grout = (np.minimum(fu, 1 - fu) < 0.03) | (np.minimum(fv, 1 - fv) < 0.03)
        return np.where(grout, column(prm["grout"]), color)
    # carpet: fine, uniform speckle
    speck = cell_hash(np.floor(u * 60), np.floor(v * 60), prm["seed"])
    return column(prm["color"]) * (0.9 + 0.2 * speck)


def _paint_wall(p: np.ndarray, n: np.ndarray, prm: dict) -> np.ndarray:
    along = p[2] if abs(n[0, 0]) > 0.5 else p[0]  # a plane's normal is constant
    tone = np.ones_like(along)
    if prm["stripes"] > 0:
        tone = np.where((along / prm["stripes"]) % 1 < 0.5, 1.0, 0.88)
    speck = cell_hash(np.floor(along * 40), np.floor(p[1] * 40), prm["seed"])
    return column(prm["color"]) * (tone * (0.97 + 0.06 * speck))


def room_parts(room: Room) -> list[Solid]:
    """The room's six faces, in face order (`scene.FLOOR`, `CEILING`, the four walls)."""
    parts = []
    for face in range(len(FACE_AXIS)):
        if face == FLOOR:
            name, prm, paint = "floor", room.floor, partial(_paint_floor, prm=room.floor)
        elif face == CEILING:
            name, prm, paint = "ceiling", room.ceiling, partial(paint_flat, prm=room.ceiling)
        else:
            name, prm, paint = "wall", room.wall, partial(_paint_wall, prm=room.wall)
        parts.append(room_plane(room, face, CLASS_ID[name], prm["ir"], paint))
    return parts


def sample_room(rng: np.random.Generator) -> Room:
    """The room's size and its floor, wall and ceiling paint."""
    kind = str(rng.choice(["planks", "tiles", "carpet"]))
    floor_color = wood_color(rng, rng.random() < 0.5) if kind == "planks" else random_color(rng)
    floor = {
        "kind": kind,
        "color": floor_color,
        "color2": random_color(rng),
        "grout": random_color(rng),
        "tile": float(rng.uniform(0.3, 0.6)),
        "plank": float(rng.uniform(0.1, 0.2)),
        "grain": float(rng.uniform(20, 50)),
        "seed": int(rng.integers(2**31)),
    }
    floor["ir"] = max(luma(floor["color"]), 0.12)
    wall_color = [
        float(v) for v in np.clip(rng.uniform(0.45, 0.95) * rng.uniform(0.75, 1, 3), 0, 1)
    ]
    wall = {
        "color": wall_color,
        "seed": int(rng.integers(2**31)),
        "stripes": float(rng.uniform(0.1, 0.3)) if rng.random() < 0.3 else 0.0,
        "ir": max(luma(wall_color), 0.15),
    }
    ceiling = {"color": [float(rng.uniform(0.85, 0.97))] * 3, "ir": 0.8}
    return Room(
        float(rng.uniform(3.5, 6.5)),
        float(rng.uniform(4.0, 6.5)),
        float(rng.uniform(2.5, 3.1)),
        floor,
        wall,
        ceiling,
    )


FLOOR_CLASS = ClassSpec("floor", 0, (128, 64, 128), "both")
WALL_CLASS = ClassSpec("wall", 1, (70, 70, 70), "both")
CEILING_CLASS = ClassSpec("ceiling", 2, (190, 190, 160), "both")


# --------------------------------------------------------------------------------------------
# Bed: against a wall; frame, headboard, mattress and pillow, seen by both modalities


def _bed_parts(obj: SceneObject, room: Room) -> Parts:
    w, length, h = obj.size  # h: headboard height; the bed extends along local +z from the wall
    rot, prm, cls = yaw_rot(obj.yaw), obj.paint, _object_id(obj)
    frame, mattress = 0.28, 0.2
    frame_paint = partial(paint_flat, prm={"color": prm["frame"]})
    sheet = partial(paint_fabric, prm=prm)
    pillow = partial(paint_flat, prm={"color": prm["pillow"]})
    parts = [
        box(
            obj,
            rot,
            (0, frame / 2, length / 2),
            (w / 2, frame / 2, length / 2),
            cls,
            "both",
            frame_paint,
        ),
        box(obj, rot, (0, h / 2, 0.03), (w / 2, h / 2, 0.03), cls, "both", frame_paint),
        box(
            obj,
            rot,
            (0, frame + mattress / 2, length / 2 + 0.03),
            (w / 2 - 0.03, mattress / 2, length / 2 - 0.03),
            cls,
            "both",
            sheet,
        ),
        box(
            obj,
            rot,
            (0, frame + mattress + 0.06, 0.3),
            (w / 2 - 0.12, 0.06, 0.18),
            cls,
            "both",
            pillow,
        ),
    ]
    return parts, []


def _place_bed(site: Site) -> SceneObject | None:
    rng = site.rng
    w, length = float(rng.uniform(1.0, 1.8)), float(rng.uniform(1.9, 2.1))
    spot = place_against_wall(site, w, length, 0.5)
    if not spot:
        return None
    face, base, yaw = spot
    paint = {
        "frame": wood_color(rng, rng.random() < 0.5),
        "color": random_color(rng, 0.2),
        "pillow": random_color(rng, 0.8, 1.0),
        "stripe": float(rng.uniform(0.1, 0.4)),
    }
    return SceneObject(
        "bed",
        tuple(base),
        (w, length, float(rng.uniform(0.8, 1.1))),
        yaw,
        face,
        paint,
        max(luma(paint["color"]), 0.15),
    )


BED = ClassSpec(
    "bed",
    4,
    (70, 130, 180),
    "both",
    _bed_parts,
    count=lambda rng: int(rng.random() < 0.35),
    place=_place_bed,
)


# --------------------------------------------------------------------------------------------
# Cabinet: a box against a wall that only depth sees (painted like the wall behind it)


def _cabinet_parts(obj: SceneObject, room: Room) -> Parts:
    w, d, h = obj.size
    rot = yaw_rot(obj.yaw)
    return [
        box(obj, rot, (0, h / 2, d / 2), (w / 2, h / 2, d / 2), _object_id(obj), "depth", None)
    ], []


def _place_cabinet(site: Site) -> SceneObject | None:
    rng = site.rng
    w, d, h = rng.uniform(0.5, 1.2), rng.uniform(0.35, 0.6), rng.uniform(0.7, 2.0)
    spot = place_against_wall(site, w, d, h)
    if not spot:
        return None
    face, base, yaw = spot
    return SceneObject(
        "cabinet",
        tuple(base),
        (float(w), float(d), float(h)),
        yaw,
        face,
        {},
        float(rng.uniform(0.3, 0.9)),
    )


CABINET = ClassSpec(
    "cabinet",
    6,
    (255, 140, 0),
    "geometry",
    _cabinet_parts,
    count=lambda rng: int(rng.integers(0, 3)),
    place=_place_cabinet,
)


# --------------------------------------------------------------------------------------------
# Table: a wooden top on four legs


def _paint_table(p: np.ndarray, n: np.ndarray, prm: dict) -> np.ndarray:
    return wood(p[0], p[2] + p[1], prm)


def _table_parts(obj: SceneObject, room: Room) -> Parts:
    w, d, h = obj.size
    rot, top, leg, cls = yaw_rot(obj.yaw), obj.paint["top"], obj.paint["leg"], _object_id(obj)
    paint = partial(_paint_table, prm=obj.paint)
    parts = [box(obj, rot, (0, h - top / 2, 0), (w / 2, top / 2, d / 2), cls, "both", paint)]
    for sx in (-1, 1):
        for sz in (-1, 1):
            at = (sx * (w / 2 - leg), (h - top) / 2, sz * (d / 2 - leg))
            parts.append(box(obj, rot, at, (leg / 2, (h - top) / 2, leg / 2), cls, "both", paint))
    return parts, []


def _place_table(site: Site) -> SceneObject | None:
    rng = site.rng
    w, d = float(rng.uniform(0.8, 1.6)), float(rng.uniform(0.6, 1.0))
    spot = place_floor(site, float(np.hypot(w, d) / 2))
    if not spot:
        return None
    paint = {
        "color": wood_color(rng, rng.random() < 0.5),
        "top": 0.05,
        "leg": float(rng.uniform(0.05, 0.08)),
        "plank": float(rng.uniform(0.1, 0.2)),
        "grain": float(rng.uniform(20, 50)),
        "seed": int(rng.integers(2**31)),
    }
    return SceneObject(
        "table",
        (spot[0], 0.0, spot[1]),
        (w, d, float(rng.uniform(0.68, 0.8))),
        float(rng.uniform(0, np.pi)),
        None,
        paint,
        max(luma(paint["color"]), 0.15),
    )


TABLE = ClassSpec(
    "table",
    3,
    (153, 102, 51),
    "both",
    _table_parts,
    count=lambda rng: int(rng.random() < 0.65),
    place=_place_table,
)


# --------------------------------------------------------------------------------------------
# Pillar: floor to ceiling, square or round, only depth sees it


def _pillar_parts(obj: SceneObject, room: Room) -> Parts:
    w, d, h = obj.size
    if obj.paint["round"]:
        center = np.asarray(obj.position, dtype=np.float32) + np.float32([0, h / 2, 0])
        return [
            Solid(
                "cylinder",
                yaw_rot(0.0),
                center,
                (w / 2, h / 2),
                _object_id(obj),
                "depth",
                obj.ir,
                None,
            )
        ], []
    rot = yaw_rot(obj.yaw)
    return [box(obj, rot, (0, h / 2, 0), (w / 2, h / 2, d / 2), _object_id(obj), "depth", None)], []


def _place_pillar(site: Site) -> SceneObject | None:
    rng = site.rng
    w = float(rng.uniform(0.25, 0.5))
    spot = place_floor(site, w / 2 * 1.42)
    if not spot:
        return None
    return SceneObject(
        "pillar",
        (spot[0], 0.0, spot[1]),
        (w, w, site.room.height),
        float(rng.uniform(0, np.pi)),
        None,
        {"round": bool(rng.random() < 0.5)},
        float(rng.uniform(0.3, 0.9)),
    )


PILLAR = ClassSpec(
    "pillar",
    5,
    (220, 20, 60),
    "geometry",
    _pillar_parts,
    count=lambda rng: int(rng.integers(0, 2)) + int(rng.random() < 0.2),
    place=_place_pillar,
)


# --------------------------------------------------------------------------------------------
# Crate and box: one geometry and infrared reflectance; only the texture tells them apart


def _face_coords(p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal and vertical coordinates on the face of a box (top faces: x and z)."""
    along = np.where(np.abs(n[0]) > 0.5, p[2], p[0])
    return along, np.where(np.abs(n[1]) > 0.5, p[2], p[1])


def _paint_crate(p: np.ndarray, n: np.ndarray, prm: dict) -> np.ndarray:
    """Wooden crate: horizontal slats with dark gaps and a dark frame around every face."""
    q = np.abs(p / np.asarray(prm["half"], dtype=np.float32)[:, None])  # (3, M) in [0, 1]
    edge = np.where(np.abs(n) > 0.5, 0.0, q).max(axis=0) > 0.82  # the face's own border
    along, up = _face_coords(p, n)
    gap = (up / prm["slat"]) % 1 < 0.12
    grain = 1 + 0.08 * np.sin(along * 40 + 3 * np.sin(up * 17))
    return column(prm["wood"]) * (np.where(edge, 0.62, np.where(gap, 0.45, 1.0)) * grain)


def _paint_box(p: np.ndarray, n: np.ndarray, prm: dict) -> np.ndarray:
    """Cardboard box: plain brown, a tape band over the top and down two faces, a printed mark."""
    half = prm["half"]
    tape = (np.abs(p[0]) < 0.18 * half[0]) & (np.abs(n[0]) < 0.5)
    mark = (np.abs(n[0]) > 0.5) & (np.abs(p[2]) < 0.3 * half[2])
    mark &= np.abs(p[1] - 0.2 * half[1]) < 0.25 * half[1]
    color = np.where(tape, column(prm["tape"]), column(prm["cardboard"]))
    return np.where(mark, column(prm["ink"]), color)


def _carton_parts(obj: SceneObject, room: Room, painter) -> Parts:
    w, d, h = obj.size
    half = (w / 2, h / 2, d / 2)
    paint = partial(painter, prm={**obj.paint, "half": half})
    return [box(obj, yaw_rot(obj.yaw), (0, h / 2, 0), half, _object_id(obj), "both", paint)], []


def _place_crate_or_box(site: Site) -> SceneObject | None:
    rng = site.rng
    w, d, h = (float(v) for v in rng.uniform(0.3, 0.6, 3))
    spot = place_floor(site, float(np.hypot(w, d) / 2))
    if not spot:
        return None
    # Both textures' parameters are sampled whatever the class, so a swap is a pure edit.
    paint = {
        "wood": wood_color(rng, True),
        "slat": float(rng.uniform(0.08, 0.15)),
        "cardboard": [float(v) for v in np.array([0.66, 0.5, 0.32]) * rng.uniform(0.85, 1.1)],
        "tape": random_color(rng, 0.75, 0.9),
        "ink": random_color(rng, 0.05, 0.3),
    }
    cls = "crate" if rng.random() < 0.5 else "box"
    return SceneObject(
        cls,
        (spot[0], 0.0, spot[1]),
        (w, d, h),
        float(rng.uniform(0, np.pi)),
        None,
        paint,
        float(rng.uniform(0.35, 0.8)),
    )


CRATE = ClassSpec(
    "crate",
    10,
    (189, 183, 107),
    "appearance",
    partial(_carton_parts, painter=_paint_crate),
    count=lambda rng: int(rng.integers(0, 5)),
    place=_place_crate_or_box,
    pair="box",
)
BOX = ClassSpec(  # placed by the crate's placer
    "box",
    11,
    (255, 215, 0),
    "appearance",
    partial(_carton_parts, painter=_paint_box),
    pair="crate",
)


# --------------------------------------------------------------------------------------------
# Rug: a patterned decal on the floor (does not block other floor objects)


def _paint_rug(q: np.ndarray, prm: dict) -> np.ndarray:
    if prm["pattern"] == "stripes":
        inner = (q[0] * prm["repeat"]) % 1 < 0.5
    else:  # diamonds
        inner = ((np.abs(q[0]) + np.abs(q[1])) * prm["repeat"]) % 1 < 0.5
    color = np.where(inner, column(prm["color2"]), column(prm["color"]))
    return np.where(np.maximum(np.abs(q[0]), np.abs(q[1])) > 0.85, column(prm["border"]), color)


def _rug_parts(obj: SceneObject, room: Room) -> Parts:
    w, h, _ = obj.size
    return [], [
        face_decal(obj, (w / 2, h / 2), _object_id(obj), partial(_paint_rug, prm=obj.paint))
    ]


def _place_rug(site: Site) -> SceneObject | None:
    rng = site.rng
    w, d = float(rng.uniform(1.2, 2.4)), float(rng.uniform(0.9, 1.8))
    spot = place_floor(site, float(max(w, d) / 2), blocks=False)
    if not spot:
        return None
    paint = {
        "color": saturated_color(rng),
        "color2": saturated_color(rng),
        "border": random_color(rng),
        "pattern": str(rng.choice(["stripes", "diamonds"])),
        "repeat": float(rng.uniform(1.5, 4)),
    }
    return SceneObject("rug", (spot[0], 0.0, spot[1]), (w, d, 0.0), 0.0, FLOOR, paint)


RUG = ClassSpec(
    "rug",
    8,
    (148, 0, 211),
    "appearance",
    _rug_parts,
    count=lambda rng: int(rng.random() < 0.5),
    place=_place_rug,
)


# --------------------------------------------------------------------------------------------
# Window: a glowing decal on a wall (sky and frame), unaffected by the room's light


def _paint_window(q: np.ndarray, prm: dict) -> np.ndarray:
    sky = np.minimum(column(prm["sky"]) * (0.75 + 0.25 * q[1]) + 0.125 * (1 + q[1]), 1.0)
    frame = np.maximum(np.abs(q[0]), np.abs(q[1])) > 0.88
    frame |= np.abs(q[0]) < 0.05
    if prm["transom"]:
        frame |= np.abs(q[1] - 0.3) < 0.05
    return np.where(frame, column(prm["frame"]), sky)


def _window_parts(obj: SceneObject, room: Room) -> Parts:
    w, h, _ = obj.size
    paint = partial(_paint_window, prm=obj.paint)
    return [], [face_decal(obj, (w / 2, h / 2), _object_id(obj), paint, emissive=True)]


def _place_window(site: Site) -> SceneObject | None:
    rng = site.rng
    hu, hv, height = rng.uniform(0.4, 0.8), rng.uniform(0.4, 0.7), (1.3, 1.9)
    spot = place_wall(site, float(hu), float(hv), height)
    if not spot:
        return None
    face, position = spot
    paint = {
        "sky": [float(rng.uniform(0.45, 0.7)), float(rng.uniform(0.65, 0.85)), 1.0],
        "frame": random_color(rng, 0.75, 1.0) if rng.random() < 0.7 else wood_color(rng, False),
        "transom": bool(rng.random() < 0.5),
    }
    return SceneObject("window", position, (2 * hu, 2 * hv, 0.0), 0.0, face, paint)


WINDOW = ClassSpec(
    "window",
    9,
    (0, 191, 255),
    "appearance",
    _window_parts,
    count=lambda rng: int(rng.random() < 0.55),
    place=_place_window,
    stage="wall",
)


# --------------------------------------------------------------------------------------------
# Poster: a decal on a wall, a few saturated shapes on a background with a border


def _paint_poster(q: np.ndarray, prm: dict) -> np.ndarray:
    color = fill(prm["background"], q.shape[1])
    for (cu, cv, su, sv), c, round_ in prm["shapes"]:
        du, dv = (q[0] - cu) / su, (q[1] - cv) / sv
        inside = du * du + dv * dv < 1 if round_ else (np.abs(du) < 1) & (np.abs(dv) < 1)
        color[:, inside] = column(c)
    color[:, np.maximum(np.abs(q[0]), np.abs(q[1])) > 0.92] = column(prm["border"])
    return color


def _poster_parts(obj: SceneObject, room: Room) -> Parts:
    w, h, _ = obj.size
    paint = partial(_paint_poster, prm=obj.paint)
    return [], [face_decal(obj, (w / 2, h / 2), _object_id(obj), paint)]


def _place_poster(site: Site) -> SceneObject | None:
    rng = site.rng
    hu, hv, height = rng.uniform(0.2, 0.5), rng.uniform(0.25, 0.6), (1.1, 1.9)
    spot = place_wall(site, float(hu), float(hv), height)
    if not spot:
        return None
    face, position = spot
    shapes = [
        (
            (
                float(rng.uniform(-0.5, 0.5)),
                float(rng.uniform(-0.5, 0.5)),
                float(rng.uniform(0.15, 0.5)),
                float(rng.uniform(0.15, 0.5)),
            ),
            saturated_color(rng),
            bool(rng.random() < 0.5),
        )
        for _ in range(int(rng.integers(2, 5)))
    ]
    paint = {
        "background": random_color(rng),
        "border": random_color(rng, 0.85, 1.0),
        "shapes": shapes,
    }
    return SceneObject("poster", position, (2 * hu, 2 * hv, 0.0), 0.0, face, paint)


POSTER = ClassSpec(
    "poster",
    7,
    (0, 200, 100),
    "appearance",
    _poster_parts,
    count=lambda rng: int(rng.integers(0, 3)),
    place=_place_poster,
    stage="wall",
)


# --------------------------------------------------------------------------------------------
# Sign and dome: one flat disc painted on the wall (RGB) and a camouflaged relief (depth): a
# thin flat plate for the sign, a spherical cap of the same radius for the dome, so RGB sees
# the two identically and only depth tells them apart.


def _wall_disc(obj: SceneObject) -> Decal:
    radius = obj.size[0]
    paint = partial(decal_flat, prm=obj.paint)
    return face_decal(obj, (radius, radius), _object_id(obj), paint, disc=True)


def _sign_parts(obj: SceneObject, room: Room) -> Parts:
    radius, thick = obj.size[0], obj.paint["plate"]
    rot = wall_rot(obj.face)
    center = np.asarray(obj.position, dtype=np.float32) + rot[:, 1] * (thick / 2)
    plate = Solid(
        "cylinder", rot, center, (radius, thick / 2), _object_id(obj), "depth", obj.ir, None
    )
    return [plate], [_wall_disc(obj)]


def _dome_parts(obj: SceneObject, room: Room) -> Parts:
    radius, _, relief = obj.size
    big_r = (radius**2 + relief**2) / (2 * relief)
    wall_point = np.asarray(obj.position, dtype=np.float32)
    cap = Solid(
        "cap",
        wall_rot(obj.face),
        wall_point,
        (big_r, big_r - relief),
        _object_id(obj),
        "depth",
        obj.ir,
        None,
    )
    return [cap], [_wall_disc(obj)]


def _place_sign_or_dome(site: Site) -> SceneObject | None:
    rng = site.rng
    hu = hv = rng.uniform(0.18, 0.38)
    spot = place_wall(site, float(hu), float(hv), (0.9, 2.0))
    if not spot:
        return None
    face, position = spot
    paint = {"color": saturated_color(rng), "plate": float(rng.uniform(0.05, 0.08))}
    relief = float(rng.uniform(0.5, 0.8) * hu)
    cls = "sign" if rng.random() < 0.5 else "dome"
    return SceneObject(
        cls,
        position,
        (float(hu), float(hu), relief),
        0.0,
        face,
        paint,
        float(rng.uniform(0.35, 0.9)),
    )


SIGN = ClassSpec(
    "sign",
    12,
    (255, 105, 180),
    "geometry",
    _sign_parts,
    count=lambda rng: int(rng.integers(0, 4)),
    place=_place_sign_or_dome,
    stage="wall",
    pair="dome",
)
DOME = ClassSpec(  # placed by the sign's placer
    "dome",
    13,
    (0, 128, 128),
    "geometry",
    _dome_parts,
    stage="wall",
    pair="sign",
)


# --------------------------------------------------------------------------------------------
# Floor heating and heating pipe: warm patches that only the thermal image shows. They have no
# paint (RGB sees the floor or wall they warm) and no relief (depth sees the surface), so
# only thermal can find them; the thermal image sees the room through the RGB-visible surface,
# so it is as blind to the camouflaged solids as RGB, and as blind to the decals as depth.
# An object's `temperature` is the excess over the surface it warms (kelvin, at its centre).


def _paint_warmth(q: np.ndarray, prm: dict) -> np.ndarray:
    """Warmest along the middle, `edge` x the excess at the border (heat spreads sideways)."""
    across = q[prm["across"]]
    return np.float32(prm["excess"]) * (1 - (1 - prm["edge"]) * across * across)


def _warm_patch_parts(obj: SceneObject, room: Room) -> Parts:
    w, h, _ = obj.size
    paint = partial(_paint_warmth, prm={**obj.paint, "excess": obj.temperature})
    return [], [face_decal(obj, (w / 2, h / 2), _object_id(obj), paint, seen_by="thermal")]


def _overlaps_a_rug(site: Site, x: float, z: float, hu: float, hv: float) -> bool:
    return any(
        o.cls == "rug"
        and abs(x - o.position[0]) < hu + o.size[0] / 2 + 0.05
        and abs(z - o.position[2]) < hv + o.size[1] / 2 + 0.05
        for o in site.placed
    )


def _place_floor_heating(site: Site) -> SceneObject | None:
    rng = site.rng
    hu, hv = float(rng.uniform(0.4, 0.9)), float(rng.uniform(0.4, 0.8))
    excess = float(rng.uniform(3.0, 6.0))
    for _ in range(3):  # a rug shows its own label there: keep clear of rugs
        spot = place_floor(site, float(np.hypot(hu, hv)), blocks=False)
        if spot and not _overlaps_a_rug(site, spot[0], spot[1], hu, hv):
            paint = {"across": 0, "edge": 0.6}
            position = (spot[0], 0.0, spot[1])
            return SceneObject(
                "floor_heating",
                position,
                (2 * hu, 2 * hv, 0.0),
                0.0,
                FLOOR,
                paint,
                temperature=excess,
            )
    return None


FLOOR_HEATING = ClassSpec(
    "floor_heating",
    14,
    (255, 69, 0),
    "thermal",
    _warm_patch_parts,
    count=lambda rng: int(rng.random() < 0.6),
    place=_place_floor_heating,
    stage="thermal",
)


def _place_heating_pipe(site: Site) -> SceneObject | None:
    rng = site.rng
    hu, hv = float(rng.uniform(0.04, 0.08)), float(rng.uniform(0.5, 1.0))
    spot = place_wall(site, hu, hv, (0.6, 1.6))
    if not spot:
        return None
    face, position = spot
    paint = {"across": 0, "edge": 0.3}  # a narrow pipe: its heat falls off faster sideways
    excess = float(rng.uniform(6.0, 14.0))
    return SceneObject(
        "heating_pipe", position, (2 * hu, 2 * hv, 0.0), 0.0, face, paint, temperature=excess
    )


HEATING_PIPE = ClassSpec(
    "heating_pipe",
    15,
    (178, 34, 34),
    "thermal",
    _warm_patch_parts,
    count=lambda rng: int(rng.integers(0, 3)),
    place=_place_heating_pipe,
    stage="thermal",
)


# --------------------------------------------------------------------------------------------
# The table of classes

SPECS: tuple[ClassSpec, ...] = (
    FLOOR_CLASS, WALL_CLASS, CEILING_CLASS,
    BED, CABINET, TABLE, PILLAR, CRATE, BOX, RUG,
    WINDOW, POSTER, SIGN, DOME,
)  # fmt: skip
"""Every class of every frame, in placement order (the order of `sample_scene`'s random draws)."""
THERMAL_SPECS: tuple[ClassSpec, ...] = (FLOOR_HEATING, HEATING_PIPE)
"""The classes only the thermal image shows: in scenes sampled for thermal, placed last."""

BY_NAME: dict[str, ClassSpec] = {s.name: s for s in (*SPECS, *THERMAL_SPECS)}
CLASSES: tuple[ClassInfo, ...] = tuple(s.info for s in sorted(SPECS, key=lambda s: s.id))
"""The classes of a data set without thermal (ids 0..13)."""
THERMAL_CLASSES: tuple[ClassInfo, ...] = (
    *CLASSES,
    *(s.info for s in sorted(THERMAL_SPECS, key=lambda s: s.id)),
)
"""The classes of a data set with thermal: the same ids, then the thermal-only classes."""
CLASS_ID: dict[str, int] = {c.name: c.id for c in THERMAL_CLASSES}
PAIRS: dict[str, str] = {s.name: s.pair for s in SPECS if s.pair is not None}
"""Classes that only one modality tells apart; swapping one for the other is a valid scene edit."""


def scene_parts(scene: Scene) -> Parts:
    """All solids (the room's six faces first) and decals of a scene."""
    solids, decals = room_parts(scene.room), []
    for obj in scene.objects:
        spec = BY_NAME.get(obj.cls)
        if spec is None or spec.parts is None:
            known = sorted(s.name for s in SPECS if s.parts is not None)
            raise ValueError(f"unknown object class {obj.cls!r}; known: {known}")
        s, d = spec.parts(obj, scene.room)
        solids += s
        decals += d
    return solids, decals
