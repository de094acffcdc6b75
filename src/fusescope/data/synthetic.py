"""The known-answer RGB-D benchmark: procedural rooms ray cast in NumPy to RGB, depth and labels.

Every class declares the modality that alone identifies it (`cue`): `both` (room structure,
tables, beds), `geometry` (objects RGB cannot see or cannot tell apart) and `appearance` (objects
depth cannot see or cannot tell apart). Models and dissection tools must rediscover these cues,
so the renderer makes them exact rather than approximate.

How cue isolation is made exact. A scene is a list of objects; each object is built from *parts*
and each part is seen by `both` modalities, only by `depth` or only by `rgb`:

- `depth` parts are solids painted exactly like what lies behind them (pillars, cabinets, the
  relief of round signs and domes). The RGB image is cast with these parts absent, so the
  pixels behind show through, shaded with the *background's* normals: no shading, silhouette or
  shadow betrays them (there are no shadows at all, for that reason).
- `rgb` parts are decals painted flat on a room surface (posters, rugs, windows, the disc of a
  round sign or dome). They have no relief, and the depth image is cast with them absent; depth
  sensor drop-outs depend on the infrared reflectance of the *surface under* the decal, never on
  the decal's colour.
- Pairs that only one modality can tell apart share everything but the deciding part: a wooden
  crate and a cardboard box have the same box geometry and infrared reflectance and differ only
  in texture (`appearance`); a round sign and a dome have the same flat disc painted on the wall
  and differ only in relief, a thin flat plate or a spherical cap (`geometry`).

`render(scene, drop=("geometry",))` renders a scene without its depth-only parts and
`render(scene, drop=("appearance",))` without its rgb-only parts; swapping a pair is
`dataclasses.replace(obj, cls=PAIRS[obj.cls])` on a scene object. The tests use both.

Sensor noise (RGB noise, depth noise growing with z^2, depth holes) is drawn from a per-frame
random stream (`Scene.sensor_seed`) as whole-image fields, before and independently of what the
scene holds, so removing an object changes the noisy images exactly where the clean ones change.
The cue-isolation tests therefore compare the final, noisy, quantised images byte for byte.

Each frame is seeded from `np.random.SeedSequence([seed, index])`: frames are independent of each
other and of the order they are made in, and the same arguments give the same bytes.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from fusescope.data.meta import ClassInfo, DatasetMeta, ModalitySpec, write_split
from fusescope.errors import FusescopeError
from fusescope.io import give_default_mode, write_png

GENERATOR_VERSION = 1
IGNORE_INDEX = 255
HORIZONTAL_FOV_DEG = 62.0  # a Kinect-like field of view
DEPTH_SCALE = 0.001  # metres per stored unit (uint16 millimetres)

CLASSES: tuple[ClassInfo, ...] = (
    ClassInfo("floor", 0, (128, 64, 128), "both"),
    ClassInfo("wall", 1, (70, 70, 70), "both"),
    ClassInfo("ceiling", 2, (190, 190, 160), "both"),
    ClassInfo("table", 3, (153, 102, 51), "both"),
    ClassInfo("bed", 4, (70, 130, 180), "both"),
    ClassInfo("pillar", 5, (220, 20, 60), "geometry"),
    ClassInfo("cabinet", 6, (255, 140, 0), "geometry"),
    ClassInfo("poster", 7, (0, 200, 100), "appearance"),
    ClassInfo("rug", 8, (148, 0, 211), "appearance"),
    ClassInfo("window", 9, (0, 191, 255), "appearance"),
    ClassInfo("crate", 10, (189, 183, 107), "appearance"),
    ClassInfo("box", 11, (255, 215, 0), "appearance"),
    ClassInfo("sign", 12, (255, 105, 180), "geometry"),
    ClassInfo("dome", 13, (0, 128, 128), "geometry"),
)
CLASS_ID: dict[str, int] = {c.name: c.id for c in CLASSES}
PAIRS: dict[str, str] = {"crate": "box", "box": "crate", "sign": "dome", "dome": "sign"}
"""Classes that only one modality tells apart; swapping one for the other is a valid scene edit."""

DROPPABLE = {"geometry": "depth", "appearance": "rgb"}
"""`render(drop=...)` names: a cue group -> the parts only that cue's modality sees."""

# Room faces, in part order: the room is six inward-facing planes.
FLOOR, CEILING, WALL_X0, WALL_X1, WALL_Z0, WALL_Z1 = range(6)
_WALLS = (WALL_X0, WALL_X1, WALL_Z0, WALL_Z1)
# (axis, sign of the inward normal) per face; the plane sits at 0 or at the room's extent.
_FACE_AXIS = ((1, 1.0), (1, -1.0), (0, 1.0), (0, -1.0), (2, 1.0), (2, -1.0))
# World axes spanning each face's (u, v) texture coordinates, in metres.
_FACE_UV = ((0, 2), (0, 2), (2, 1), (2, 1), (0, 1), (0, 1))
_EPS = 1e-4


# --------------------------------------------------------------------------------------------
# Scene description (editable dataclasses)


@dataclass
class Camera:
    """A pinhole camera; `rotation` maps camera axes (x right, y down, z forward) to the world."""

    height: int
    width: int
    fx: float
    fy: float
    cx: float
    cy: float
    position: np.ndarray  # (3,) metres, world frame: y up, room spans [0, W] x [0, H] x [0, D]
    rotation: np.ndarray  # (3, 3) columns: right, down, forward in world coordinates

    @property
    def intrinsics(self) -> dict[str, float]:
        return {"fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy}


@dataclass
class Room:
    width: float  # x extent, metres
    depth: float  # z extent
    height: float  # y extent
    floor: dict[str, Any]  # paint parameters per surface
    wall: dict[str, Any]
    ceiling: dict[str, Any]

    def extent(self, axis: int) -> float:
        return (self.width, self.height, self.depth)[axis]


@dataclass
class SceneObject:
    """One object; its parts (solids and decals) are built from `cls` at render time.

    `position` is the footprint centre on the floor for floor objects, the point on the wall
    for wall-mounted ones (`face` set), or the point on the wall the object backs onto for
    cabinets and beds. `size` is (width, depth, height) for solids and (width, height, relief)
    for wall items, metres.
    """

    cls: str
    position: tuple[float, float, float]
    size: tuple[float, float, float]
    yaw: float = 0.0
    face: int | None = None
    paint: dict[str, Any] = field(default_factory=dict)
    ir: float = 0.6  # infrared reflectance seen by the depth sensor


@dataclass
class Scene:
    camera: Camera
    room: Room
    objects: list[SceneObject]
    light: np.ndarray  # (3,) point light position
    light_power: float
    ambient: float
    exposure: float  # < 0.5 for dim scenes
    rgb_noise: float  # std of additive RGB noise, in [0, 1] units
    depth_noise: float  # depth noise std = depth_noise * z^2 (metres)
    sensor_seed: int  # the sensor noise stream; independent of what the scene holds


@dataclass
class Frame:
    rgb: np.ndarray  # uint8 (H, W, 3)
    depth: np.ndarray  # uint16 (H, W) millimetres, 0 = hole
    label: np.ndarray  # uint8 (H, W) class ids


# --------------------------------------------------------------------------------------------
# Parts and ray intersection. Points, directions and normals are component-major (3, M) arrays,
# so every coordinate is one contiguous row and dot products are three multiply-adds.

Painter = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class _Solid:
    shape: str  # "plane" | "box" | "cylinder" | "cap"
    rot: np.ndarray  # (3, 3) float32, local -> world; columns are the local axes
    center: np.ndarray  # (3,) float32, world position of the local origin
    dims: tuple[float, ...]
    cls: int
    seen_by: str  # "both" or "depth" (camouflaged)
    ir: float
    paint: Painter | None  # (local points (3,M), local normals (3,M)) -> albedo (3,M)


@dataclass(frozen=True)
class _Decal:
    host: int  # room face it is painted on
    center: tuple[float, float]  # face (u, v), metres
    half: tuple[float, float]
    disc: bool
    cls: int
    paint: Callable[[np.ndarray], np.ndarray]  # coordinates in [-1, 1]^2 (2,M) -> albedo (3,M)
    emissive: bool = False  # windows glow: unaffected by the room's lighting


def _yaw_rot(yaw: float) -> np.ndarray:
    """Local -> world rotation about the vertical: local +z points to (sin yaw, 0, cos yaw)."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=np.float32)


def _wall_rot(face: int) -> np.ndarray:
    """Local frame on a wall: local y is the inward normal (relief grows along +y)."""
    axis, sign = _FACE_AXIS[face]
    n = np.zeros(3)
    n[axis] = sign
    a = np.array([n[2], 0.0, -n[0]])  # horizontal tangent
    return np.stack([a, n, np.cross(a, n)], axis=1).astype(np.float32)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _intersect(s: _Solid, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Ray parameter t of the first hit for rays o + t d, inf on a miss. o (3,), d (3,M)."""
    if s.shape == "plane":
        axis, value = int(s.dims[0]), s.dims[1]
        with np.errstate(divide="ignore"):
            t = (value - o[axis]) / d[axis]
        return np.where(t > _EPS, t, np.inf)
    o = s.rot.T @ (o - s.center)  # into the local frame
    d = s.rot.T @ d
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if s.shape == "box":
            near = np.full(d.shape[1], -np.inf, dtype=np.float32)
            far = np.full(d.shape[1], np.inf, dtype=np.float32)
            for axis, h in enumerate(s.dims):
                t1 = (-h - o[axis]) / d[axis]
                t2 = (h - o[axis]) / d[axis]
                near = np.maximum(near, np.minimum(t1, t2))
                far = np.minimum(far, np.maximum(t1, t2))
            return np.where((near <= far) & (near > _EPS), near, np.inf)
        if s.shape == "cylinder":  # along local y, radius r, half height hh, with caps
            r, hh = s.dims
            a = d[0] * d[0] + d[2] * d[2]
            b = 2 * (o[0] * d[0] + o[2] * d[2])
            c = o[0] ** 2 + o[2] ** 2 - r * r
            disc = b * b - 4 * a * c
            ts = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
            y = o[1] + ts * d[1]
            ts = np.where((disc >= 0) & (ts > _EPS) & (np.abs(y) <= hh), ts, np.inf)
            # From outside, only the cap on the origin's side can be met before the side wall.
            tc = (np.copysign(hh, o[1]) - o[1]) / d[1]
            x, z = o[0] + tc * d[0], o[2] + tc * d[2]
            tc = np.where((tc > _EPS) & (x * x + z * z <= r * r), tc, np.inf)
            return np.minimum(ts, tc)
        if s.shape == "cap":  # sphere of radius R centred at local (0, -c, 0), kept where y >= 0
            big_r, c = s.dims
            oc = o + np.array([0.0, c, 0.0], dtype=np.float32)
            a = _dot(d, d)
            b = 2 * _dot(d, oc)
            disc = b * b - 4 * a * (oc @ oc - big_r * big_r)
            t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
            y = o[1] + t * d[1]
            return np.where((disc >= 0) & (t > _EPS) & (y >= 0), t, np.inf)
    raise ValueError(f"unknown shape {s.shape!r}")


def _local_normals(s: _Solid, p: np.ndarray) -> np.ndarray:
    """Outward normals (3,M) at local hit points p (3,M)."""
    n = np.zeros_like(p)
    if s.shape == "box":
        q = p / np.asarray(s.dims, dtype=np.float32)[:, None]
        axis = np.abs(q).argmax(axis=0)
        cols = np.arange(p.shape[1])
        n[axis, cols] = np.sign(q[axis, cols])
    elif s.shape == "cylinder":
        r, hh = s.dims
        on_cap = np.abs(p[1]) / hh > np.sqrt(p[0] ** 2 + p[2] ** 2) / r
        n[0] = np.where(on_cap, 0, p[0] / r)
        n[2] = np.where(on_cap, 0, p[2] / r)
        n[1] = np.where(on_cap, np.sign(p[1]), 0)
    elif s.shape == "cap":
        big_r, c = s.dims
        n = (p + np.array([[0.0], [c], [0.0]], dtype=np.float32)) / big_r
    return n


def _corners(s: _Solid) -> np.ndarray:
    """World corners (8,3) of a local bounding box, to find the pixels a solid can cover."""
    if s.shape == "box":
        hi = np.asarray(s.dims)
        lo = -hi
    elif s.shape == "cylinder":
        r, hh = s.dims
        lo, hi = np.array([-r, -hh, -r]), np.array([r, hh, r])
    else:  # cap
        big_r, c = s.dims
        base = np.sqrt(big_r**2 - c**2)
        lo, hi = np.array([-base, 0.0, -base]), np.array([base, big_r - c, base])
    grid = np.array(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij")).reshape(3, 8).T
    local = np.where(grid == 1, hi, lo)  # (8, 3)
    return local @ s.rot.T + s.center


def _pixel_box(cam: Camera, s: _Solid) -> tuple[slice, slice]:
    """Rows and columns of the image the solid can cover (the whole image if unsure)."""
    full = (slice(0, cam.height), slice(0, cam.width))
    if s.shape == "plane":
        return full
    pc = (_corners(s) - cam.position) @ cam.rotation  # (8, 3) camera coordinates
    if (pc[:, 2] < 0.05).any():
        return full
    u = cam.fx * pc[:, 0] / pc[:, 2] + cam.cx
    v = cam.fy * pc[:, 1] / pc[:, 2] + cam.cy
    u0, u1 = max(int(np.floor(u.min())) - 1, 0), min(int(np.ceil(u.max())) + 2, cam.width)
    v0, v1 = max(int(np.floor(v.min())) - 1, 0), min(int(np.ceil(v.max())) + 2, cam.height)
    return slice(v0, max(v0, v1)), slice(u0, max(u0, u1))


def _ray_dirs(cam: Camera) -> np.ndarray:
    """World ray directions (3, H, W) scaled so that t along them is the camera z (depth)."""
    x = (np.arange(cam.width, dtype=np.float32) - cam.cx) / cam.fx
    y = (np.arange(cam.height, dtype=np.float32) - cam.cy) / cam.fy
    d = np.empty((3, cam.height, cam.width), dtype=np.float32)
    d[0] = x[None, :]
    d[1] = y[:, None]
    d[2] = 1.0
    return (cam.rotation.astype(np.float32) @ d.reshape(3, -1)).reshape(d.shape)


# --------------------------------------------------------------------------------------------
# Procedural paint. Painters are deterministic functions of coordinates and parameters.


def _hash(a: np.ndarray, b: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) per integer cell (a, b): cheap per-plank / per-tile variation."""
    a = a.astype(np.int64).astype(np.uint32)
    b = b.astype(np.int64).astype(np.uint32)
    h = a * np.uint32(73856093) ^ b * np.uint32(19349663)
    h = (h ^ np.uint32(seed & 0xFFFFFFFF)) * np.uint32(2654435761)
    h = h ^ (h >> np.uint32(15))
    return (h & np.uint32(0xFFFF)).astype(np.float32) / 65536.0


def _rgb(c: Any) -> np.ndarray:
    """A colour as a (3, 1) column, to broadcast against (M,) rows."""
    return np.asarray(c, dtype=np.float32).reshape(3, 1)


def _fill(c: Any, m: int) -> np.ndarray:
    return np.repeat(_rgb(c), m, axis=1)


def _wood(u: np.ndarray, v: np.ndarray, prm: dict) -> np.ndarray:
    """Planks across v, grain along u; dark seams between planks and at board ends."""
    width = prm["plank"]
    j = np.floor(v / width)
    tone = 0.85 + 0.3 * _hash(j, j * 7 + 3, prm["seed"])
    grain = 1 + 0.07 * np.sin(u * prm["grain"] + 2.5 * np.sin(v * 23 + j * 1.7))
    length = 4 * width + 0.6
    ends = np.abs(((u + _hash(j, j, prm["seed"] + 1) * length) / length) % 1 - 0.5) > 0.49
    seam = (np.abs((v / width) % 1 - 0.5) > 0.46) | ends
    return _rgb(prm["color"]) * (tone * grain * np.where(seam, 0.55, 1.0))


def _paint_floor(p: np.ndarray, n: np.ndarray, prm: dict) -> np.ndarray:
    u, v = p[0], p[2]
    if prm["kind"] == "planks":
        return _wood(u, v, prm)
    if prm["kind"] == "tiles":
        iu, iv = np.floor(u / prm["tile"]), np.floor(v / prm["tile"])
        checker = (iu + iv) % 2
        color = _rgb(prm["color"]) * (1 - checker) + _rgb(prm["color2"]) * checker
        fu, fv = (u / prm["tile"]) % 1, (v / prm["tile"]) % 1
        grout = (np.minimum(fu, 1 - fu) < 0.03) | (np.minimum(fv, 1 - fv) < 0.03)
        return np.where(grout, _rgb(prm["grout"]), color)
    # carpet: fine, uniform speckle
    return _rgb(prm["color"]) * (0.9 + 0.2 * _hash(np.floor(u * 60), np.floor(v * 60), prm["seed"]))


def _paint_wall(p: np.ndarray, n: np.ndarray, prm: dict) -> np.ndarray:
    along = p[2] if abs(n[0, 0]) > 0.5 else p[0]  # a plane's normal is constant
    tone = np.ones_like(along)
    if prm["stripes"] > 0:
        tone = np.where((along / prm["stripes"]) % 1 < 0.5, 1.0, 0.88)
    speck = _hash(np.floor(along * 40), np.floor(p[1] * 40), prm["seed"])
    return _rgb(prm["color"]) * (tone * (0.97 + 0.06 * speck))


def _paint_flat(p: np.ndarray, n: np.ndarray, prm: dict) -> np.ndarray:
    return _fill(prm["color"], p.shape[1])


def _paint_table(p: np.ndarray, n: np.ndarray, prm: dict) -> np.ndarray:
    return _wood(p[0], p[2] + p[1], prm)


def _paint_fabric(p: np.ndarray, n: np.ndarray, prm: dict) -> np.ndarray:
    tone = np.where(((p[0] + p[2]) / prm["stripe"]) % 1 < 0.5, 1.0, 0.85)
    return _rgb(prm["color"]) * tone


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
    return _rgb(prm["wood"]) * (np.where(edge, 0.62, np.where(gap, 0.45, 1.0)) * grain)


def _paint_box(p: np.ndarray, n: np.ndarray, prm: dict) -> np.ndarray:
    """Cardboard box: plain brown, a tape band over the top and down two faces, a printed mark."""
    half = prm["half"]
    tape = (np.abs(p[0]) < 0.18 * half[0]) & (np.abs(n[0]) < 0.5)
    mark = (np.abs(n[0]) > 0.5) & (np.abs(p[2]) < 0.3 * half[2])
    mark &= np.abs(p[1] - 0.2 * half[1]) < 0.25 * half[1]
    color = np.where(tape, _rgb(prm["tape"]), _rgb(prm["cardboard"]))
    return np.where(mark, _rgb(prm["ink"]), color)


def _decal_poster(q: np.ndarray, prm: dict) -> np.ndarray:
    color = _fill(prm["background"], q.shape[1])
    for (cu, cv, su, sv), c, round_ in prm["shapes"]:
        du, dv = (q[0] - cu) / su, (q[1] - cv) / sv
        inside = du * du + dv * dv < 1 if round_ else (np.abs(du) < 1) & (np.abs(dv) < 1)
        color[:, inside] = _rgb(c)
    color[:, np.maximum(np.abs(q[0]), np.abs(q[1])) > 0.92] = _rgb(prm["border"])
    return color


def _decal_rug(q: np.ndarray, prm: dict) -> np.ndarray:
    if prm["pattern"] == "stripes":
        inner = (q[0] * prm["repeat"]) % 1 < 0.5
    else:  # diamonds
        inner = ((np.abs(q[0]) + np.abs(q[1])) * prm["repeat"]) % 1 < 0.5
    color = np.where(inner, _rgb(prm["color2"]), _rgb(prm["color"]))
    return np.where(np.maximum(np.abs(q[0]), np.abs(q[1])) > 0.85, _rgb(prm["border"]), color)


def _decal_window(q: np.ndarray, prm: dict) -> np.ndarray:
    sky = np.minimum(_rgb(prm["sky"]) * (0.75 + 0.25 * q[1]) + 0.125 * (1 + q[1]), 1.0)
    frame = np.maximum(np.abs(q[0]), np.abs(q[1])) > 0.88
    frame |= np.abs(q[0]) < 0.05
    if prm["transom"]:
        frame |= np.abs(q[1] - 0.3) < 0.05
    return np.where(frame, _rgb(prm["frame"]), sky)


def _decal_flat(q: np.ndarray, prm: dict) -> np.ndarray:
    return _fill(prm["color"], q.shape[1])


# --------------------------------------------------------------------------------------------
# Objects -> parts


def _room_parts(room: Room) -> list[_Solid]:
    eye = np.eye(3, dtype=np.float32)
    zero = np.zeros(3, dtype=np.float32)
    paints = {
        FLOOR: partial(_paint_floor, prm=room.floor),
        CEILING: partial(_paint_flat, prm=room.ceiling),
    }
    parts = []
    for face, (axis, sign) in enumerate(_FACE_AXIS):
        value = 0.0 if sign > 0 else room.extent(axis)
        name = "floor" if face == FLOOR else "ceiling" if face == CEILING else "wall"
        prm = room.floor if face == FLOOR else room.ceiling if face == CEILING else room.wall
        paint = paints.get(face, partial(_paint_wall, prm=room.wall))
        parts.append(
            _Solid("plane", eye, zero, (axis, value), CLASS_ID[name], "both", prm["ir"], paint)
        )
    return parts


def _box(
    obj: SceneObject,
    rot: np.ndarray,
    local_center: tuple[float, float, float],
    half: tuple[float, float, float],
    seen_by: str,
    paint: Painter | None,
    cls: str | None = None,
) -> _Solid:
    center = np.asarray(obj.position, dtype=np.float32) + rot @ np.asarray(
        local_center, dtype=np.float32
    )
    return _Solid(
        "box",
        rot,
        center.astype(np.float32),
        tuple(float(h) for h in half),
        CLASS_ID[cls or obj.cls],
        seen_by,
        obj.ir,
        paint,
    )


def _table_parts(obj: SceneObject, room: Room) -> tuple[list[_Solid], list[_Decal]]:
    w, d, h = obj.size
    rot, top, leg = _yaw_rot(obj.yaw), obj.paint["top"], obj.paint["leg"]
    paint = partial(_paint_table, prm=obj.paint)
    parts = [_box(obj, rot, (0, h - top / 2, 0), (w / 2, top / 2, d / 2), "both", paint)]
    for sx in (-1, 1):
        for sz in (-1, 1):
            at = (sx * (w / 2 - leg), (h - top) / 2, sz * (d / 2 - leg))
            parts.append(_box(obj, rot, at, (leg / 2, (h - top) / 2, leg / 2), "both", paint))
    return parts, []


def _bed_parts(obj: SceneObject, room: Room) -> tuple[list[_Solid], list[_Decal]]:
    w, length, h = obj.size  # h: headboard height; the bed extends along local +z from the wall
    rot, prm = _yaw_rot(obj.yaw), obj.paint
    frame, mattress = 0.28, 0.2
    wood = partial(_paint_flat, prm={"color": prm["frame"]})
    sheet = partial(_paint_fabric, prm=prm)
    pillow = partial(_paint_flat, prm={"color": prm["pillow"]})
    parts = [
        _box(obj, rot, (0, frame / 2, length / 2), (w / 2, frame / 2, length / 2), "both", wood),
        _box(obj, rot, (0, h / 2, 0.03), (w / 2, h / 2, 0.03), "both", wood),
        _box(
            obj,
            rot,
            (0, frame + mattress / 2, length / 2 + 0.03),
            (w / 2 - 0.03, mattress / 2, length / 2 - 0.03),
            "both",
            sheet,
        ),
        _box(
            obj, rot, (0, frame + mattress + 0.06, 0.3), (w / 2 - 0.12, 0.06, 0.18), "both", pillow
        ),
    ]
    return parts, []


def _cabinet_parts(obj: SceneObject, room: Room) -> tuple[list[_Solid], list[_Decal]]:
    w, d, h = obj.size
    return [
        _box(obj, _yaw_rot(obj.yaw), (0, h / 2, d / 2), (w / 2, h / 2, d / 2), "depth", None)
    ], []


def _pillar_parts(obj: SceneObject, room: Room) -> tuple[list[_Solid], list[_Decal]]:
    w, d, h = obj.size
    if obj.paint["round"]:
        center = np.asarray(obj.position, dtype=np.float32) + np.float32([0, h / 2, 0])
        return [
            _Solid(
                "cylinder",
                _yaw_rot(0.0),
                center,
                (w / 2, h / 2),
                CLASS_ID["pillar"],
                "depth",
                obj.ir,
                None,
            )
        ], []
    return [_box(obj, _yaw_rot(obj.yaw), (0, h / 2, 0), (w / 2, h / 2, d / 2), "depth", None)], []


def _crate_box_parts(obj: SceneObject, room: Room) -> tuple[list[_Solid], list[_Decal]]:
    """Crate and box: one geometry and infrared reflectance; the class picks the texture only."""
    w, d, h = obj.size
    half = (w / 2, h / 2, d / 2)
    painter = _paint_crate if obj.cls == "crate" else _paint_box
    paint = partial(painter, prm={**obj.paint, "half": half})
    return [_box(obj, _yaw_rot(obj.yaw), (0, h / 2, 0), half, "both", paint)], []


def _face_uv(room: Room, face: int, point: tuple[float, float, float]) -> tuple[float, float]:
    iu, iv = _FACE_UV[face]
    return float(point[iu]), float(point[iv])


def _sign_dome_parts(obj: SceneObject, room: Room) -> tuple[list[_Solid], list[_Decal]]:
    """Sign and dome: one flat disc painted on the wall (RGB) and a camouflaged relief (depth).

    The sign's relief is a thin flat plate, the dome's a spherical cap of the same radius, so
    RGB sees the two identically and only depth tells them apart.
    """
    radius, _, relief = obj.size
    rot = _wall_rot(obj.face)
    normal = rot[:, 1]
    wall_point = np.asarray(obj.position, dtype=np.float32)
    if obj.cls == "sign":
        thick = obj.paint["plate"]
        relief_part = _Solid(
            "cylinder",
            rot,
            wall_point + normal * (thick / 2),
            (radius, thick / 2),
            CLASS_ID["sign"],
            "depth",
            obj.ir,
            None,
        )
    else:
        big_r = (radius**2 + relief**2) / (2 * relief)
        relief_part = _Solid(
            "cap", rot, wall_point, (big_r, big_r - relief), CLASS_ID["dome"], "depth", obj.ir, None
        )
    disc = _Decal(
        obj.face,
        _face_uv(room, obj.face, obj.position),
        (radius, radius),
        True,
        CLASS_ID[obj.cls],
        partial(_decal_flat, prm=obj.paint),
    )
    return [relief_part], [disc]


def _decal_parts(obj: SceneObject, room: Room) -> tuple[list[_Solid], list[_Decal]]:
    w, h, _ = obj.size
    paint = {"poster": _decal_poster, "rug": _decal_rug, "window": _decal_window}[obj.cls]
    return [], [
        _Decal(
            obj.face,
            _face_uv(room, obj.face, obj.position),
            (w / 2, h / 2),
            False,
            CLASS_ID[obj.cls],
            partial(paint, prm=obj.paint),
            emissive=obj.cls == "window",
        )
    ]


_PART_BUILDERS: dict[str, Callable[[SceneObject, Room], tuple[list[_Solid], list[_Decal]]]] = {
    "table": _table_parts,
    "bed": _bed_parts,
    "pillar": _pillar_parts,
    "cabinet": _cabinet_parts,
    "poster": _decal_parts,
    "rug": _decal_parts,
    "window": _decal_parts,
    "crate": _crate_box_parts,
    "box": _crate_box_parts,
    "sign": _sign_dome_parts,
    "dome": _sign_dome_parts,
}


def _scene_parts(scene: Scene) -> tuple[list[_Solid], list[_Decal]]:
    """All solids (the room's six faces first) and decals of a scene."""
    solids, decals = _room_parts(scene.room), []
    for obj in scene.objects:
        if obj.cls not in _PART_BUILDERS:
            raise ValueError(f"unknown object class {obj.cls!r}; known: {sorted(_PART_BUILDERS)}")
        s, d = _PART_BUILDERS[obj.cls](obj, scene.room)
        solids += s
        decals += d
    return solids, decals


# --------------------------------------------------------------------------------------------
# Rendering


def render(scene: Scene, drop: Collection[str] = (), noise: bool = True) -> Frame:
    """Ray cast a scene to RGB, depth and labels.

    Args:
        scene: the scene to render.
        drop: cue groups whose single-modality parts are removed: `"geometry"` removes the parts
            only depth sees (camouflaged solids, sign plates, dome caps), `"appearance"` the
            parts only RGB sees (decals). RGB is unchanged by the first, depth by the second.
        noise: add sensor noise and depth holes; without it depth is only quantised.

    Returns:
        The frame; labels come from the parts that remain.
    """
    unknown = set(drop) - set(DROPPABLE)
    if unknown:
        raise ValueError(f"cannot drop {sorted(unknown)}; known cue groups: {sorted(DROPPABLE)}")
    cam = scene.camera
    hgt, wid = cam.height, cam.width
    solids, decals = _scene_parts(scene)
    if "geometry" in drop:
        solids = [s for s in solids if s.seen_by != "depth"]
    if "appearance" in drop:
        decals = []

    # Sensor noise fields first, so they never depend on what the scene holds.
    sensor = np.random.default_rng(scene.sensor_seed)
    depth_gauss = sensor.standard_normal((hgt, wid), dtype=np.float32)
    hole_draw = sensor.random((hgt, wid), dtype=np.float32)
    rgb_gauss = sensor.standard_normal((3, hgt, wid), dtype=np.float32)

    dirs = _ray_dirs(cam)  # (3, H, W)
    origin = cam.position.astype(np.float32)
    # Two casts in one sweep: depth sees every solid, RGB only the non-camouflaged ones.
    t_depth = np.full((hgt, wid), np.inf, dtype=np.float32)
    t_rgb = np.full((hgt, wid), np.inf, dtype=np.float32)
    id_depth = np.zeros((hgt, wid), dtype=np.int32)
    id_rgb = np.zeros((hgt, wid), dtype=np.int32)
    for k, s in enumerate(solids):
        rows, cols = _pixel_box(cam, s)
        sub = dirs[:, rows, cols]  # (3, h, w)
        if sub.size == 0:
            continue
        t = _intersect(s, origin, sub.reshape(3, -1)).reshape(sub.shape[1:])
        for best, ids, on in ((t_depth, id_depth, True), (t_rgb, id_rgb, s.seen_by == "both")):
            if on:
                closer = t < best[rows, cols]
                best[rows, cols] = np.where(closer, t, best[rows, cols])
                ids[rows, cols][closer] = k

    n_pix = hgt * wid
    d_flat = dirs.reshape(3, n_pix)
    id_d, id_c = id_depth.ravel(), id_rgb.ravel()
    p_depth = origin[:, None] + t_depth.reshape(1, n_pix) * d_flat  # (3, N) world hit points
    # Where no camouflaged solid is in front, both casts met the same surface.
    p_rgb = origin[:, None] + t_rgb.reshape(1, n_pix) * d_flat
    n_depth = np.zeros_like(p_depth)
    n_rgb = np.zeros_like(p_rgb)
    albedo = np.zeros_like(p_rgb)
    ir = np.zeros(n_pix, dtype=np.float32)
    label = np.zeros(n_pix, dtype=np.uint8)
    for k in np.union1d(id_d, id_c):
        s = solids[k]
        for pts, ids, normals, is_depth in (
            (p_depth, id_d, n_depth, True),
            (p_rgb, id_c, n_rgb, False),
        ):
            idx = np.flatnonzero(ids == k)
            if idx.size == 0:
                continue
            if s.shape == "plane":
                axis, sign = _FACE_AXIS[k]
                local_p = pts[:, idx]
                local_n = np.zeros_like(local_p)
                local_n[axis] = sign
                normals[axis, idx] = sign
            else:
                local_p = s.rot.T @ (pts[:, idx] - s.center[:, None])
                local_n = _local_normals(s, local_p)
                normals[:, idx] = s.rot @ local_n
            if is_depth:
                ir[idx] = s.ir
                label[idx] = s.cls
            else:
                albedo[:, idx] = s.paint(local_p, local_n)

    emissive = np.zeros(n_pix, dtype=bool)
    for dc in decals:
        iu, iv = _FACE_UV[dc.host]
        for pts, ids, is_depth in ((p_depth, id_d, True), (p_rgb, id_c, False)):
            idx = np.flatnonzero(ids == dc.host)
            q = np.stack(
                [
                    (pts[iu, idx] - dc.center[0]) / dc.half[0],
                    (pts[iv, idx] - dc.center[1]) / dc.half[1],
                ]
            )  # (2, M)
            if dc.disc:
                inside = q[0] * q[0] + q[1] * q[1] <= 1
            else:
                inside = (np.abs(q[0]) <= 1) & (np.abs(q[1]) <= 1)
            idx, q = idx[inside], q[:, inside]
            if is_depth:
                label[idx] = dc.cls
            else:
                albedo[:, idx] = dc.paint(q)
                emissive[idx] = dc.emissive

    # RGB: Lambertian shading of the RGB-visible surface by a key light and a camera fill.
    view = d_flat / np.sqrt(_dot(d_flat, d_flat))  # (3, N) unit
    facing = _dot(n_rgb, view)
    n_rgb *= np.where(facing > 0, -1.0, 1.0).astype(np.float32)  # normals face the camera
    to_light = scene.light.astype(np.float32)[:, None] - p_rgb
    dist2 = _dot(to_light, to_light)
    cos_key = np.maximum(_dot(n_rgb, to_light) / np.sqrt(dist2), 0)
    cos_fill = np.abs(facing)
    shade = scene.ambient + scene.light_power * cos_key / (1 + 0.1 * dist2) + 0.2 * cos_fill
    shade = np.where(emissive, 1.0, shade) * scene.exposure
    rgb = (albedo * shade).reshape(3, hgt, wid)
    if noise:
        rgb += scene.rgb_noise * rgb_gauss
    rgb8 = np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)

    z = t_depth
    if noise:
        cos_view = np.abs(_dot(n_depth, view)).reshape(hgt, wid)
        z = _sensor_depth(
            z, cos_view, ir.reshape(hgt, wid), depth_gauss, hole_draw, scene.depth_noise
        )
    depth = np.round(np.clip(z, 0, 65.535) * 1000).astype(np.uint16)
    return Frame(np.ascontiguousarray(rgb8), depth, label.reshape(hgt, wid))


MAX_RANGE = 7.0  # metres; farther returns are lost


def _sensor_depth(
    z: np.ndarray,
    cos_view: np.ndarray,
    ir: np.ndarray,
    gauss: np.ndarray,
    draw: np.ndarray,
    noise: float,
) -> np.ndarray:
    """A structured-light sensor: noise growing with z^2, holes at edges, grazing angles, dark
    (low infrared reflectance) or far surfaces, and a few random drop-outs. Returns metres."""
    jump_x = np.abs(np.diff(z, axis=1)) > 0.03 + 0.03 * np.minimum(z[:, 1:], z[:, :-1])
    jump_y = np.abs(np.diff(z, axis=0)) > 0.03 + 0.03 * np.minimum(z[1:], z[:-1])
    edge = np.zeros(z.shape, dtype=bool)
    edge[:, 1:] |= jump_x
    edge[:, :-1] |= jump_x
    edge[1:] |= jump_y
    edge[:-1] |= jump_y
    keep = 1 - 0.75 * edge
    keep *= 1 - 0.7 * np.clip(1 - cos_view / 0.2, 0, 1)  # grazing
    keep *= 1 - 0.9 * np.clip((0.3 - ir) / 0.2, 0, 1)  # dark in the infrared
    keep *= 1 - np.clip((z - 5.0) / (MAX_RANGE - 5.0), 0, 1) ** 2  # far
    keep *= 0.997  # speckle
    noisy = z + noise * z * z * gauss
    return np.where(draw < keep, noisy, 0.0)


# --------------------------------------------------------------------------------------------
# Scene sampling


def _camera(size: tuple[int, int], position: np.ndarray, yaw: float, pitch: float) -> Camera:
    hgt, wid = size
    fx = (wid / 2) / np.tan(np.radians(HORIZONTAL_FOV_DEG / 2))
    forward = np.array([np.sin(yaw) * np.cos(pitch), -np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
    right = np.array([np.cos(yaw), 0.0, -np.sin(yaw)])
    down = np.cross(right, forward)
    return Camera(
        hgt,
        wid,
        float(fx),
        float(fx),
        (wid - 1) / 2,
        (hgt - 1) / 2,
        position.astype(np.float32),
        np.stack([right, down, forward], axis=1).astype(np.float32),
    )


def intrinsics(size: tuple[int, int]) -> dict[str, float]:
    """The camera intrinsics every frame of a given (height, width) shares."""
    return _camera(size, np.zeros(3), 0.0, 0.0).intrinsics


def _room_hits(cam: Camera, room: Room, pix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Room face (M,) and world point (M, 3) seen at pixel coordinates pix (M, 2) as (u, v)."""
    d = cam.rotation @ np.stack(
        [(pix[:, 0] - cam.cx) / cam.fx, (pix[:, 1] - cam.cy) / cam.fy, np.ones(len(pix))]
    )  # (3, M)
    ts = np.stack(
        [_intersect(s, cam.position, d.astype(np.float32)) for s in _room_parts(room)]
    )  # (6, M)
    face = ts.argmin(axis=0)
    return face, cam.position + (ts[face, np.arange(len(pix))] * d).T


def _visible(cam: Camera, point: np.ndarray, margin: float = 0.04) -> bool:
    pc = (np.asarray(point) - cam.position) @ cam.rotation
    if pc[2] < 0.3:
        return False
    u = cam.fx * pc[0] / pc[2] + cam.cx
    v = cam.fy * pc[1] / pc[2] + cam.cy
    return (
        margin * cam.width <= u <= (1 - margin) * cam.width
        and margin * cam.height <= v <= (1 - margin) * cam.height
    )


@dataclass
class _Layout:
    """What is already placed: floor footprints (x, z, radius) and wall rectangles per face."""

    footprints: list[tuple[float, float, float]] = field(default_factory=list)
    wall_items: list[tuple[int, float, float, float, float]] = field(default_factory=list)

    def floor_free(self, x: float, z: float, r: float) -> bool:
        return all(np.hypot(x - fx, z - fz) > r + fr for fx, fz, fr in self.footprints)

    def wall_free(self, face: int, u: float, v: float, hu: float, hv: float) -> bool:
        return all(
            f != face or abs(u - fu) > hu + hu2 + 0.05 or abs(v - fv) > hv + hv2 + 0.05
            for f, fu, fv, hu2, hv2 in self.wall_items
        )


def _candidates(
    rng: np.random.Generator, cam: Camera, room: Room, v_range: tuple[float, float], count: int = 24
) -> tuple[np.ndarray, np.ndarray]:
    pix = np.stack(
        [rng.uniform(0.08, 0.92, count) * cam.width, rng.uniform(*v_range, count) * cam.height],
        axis=1,
    )
    return _room_hits(cam, room, pix)


def _place_floor(
    rng: np.random.Generator,
    cam: Camera,
    room: Room,
    layout: _Layout,
    radius: float,
    blocks: bool = True,
) -> tuple[float, float] | None:
    """A visible floor point where a footprint of `radius` fits; None if none was found."""
    faces, points = _candidates(rng, cam, room, (0.35, 0.95))
    for face, p in zip(faces, points, strict=True):
        x, z = float(p[0]), float(p[2])
        if face != FLOOR or not (radius + 0.05 < x < room.width - radius - 0.05):
            continue
        if not (radius + 0.05 < z < room.depth - radius - 0.05):
            continue
        if np.hypot(x - cam.position[0], z - cam.position[2]) < radius + 0.7:
            continue
        if blocks and not layout.floor_free(x, z, radius):
            continue
        if blocks:
            layout.footprints.append((x, z, radius))
        return x, z
    return None


def _place_wall(
    rng: np.random.Generator,
    cam: Camera,
    room: Room,
    layout: _Layout,
    hu: float,
    hv: float,
    height: tuple[float, float],
) -> tuple[int, float, float] | None:
    """A visible wall spot (face, u, v) for an item of half sizes (hu, hv)."""
    faces, points = _candidates(rng, cam, room, (0.05, 0.7))
    for face, p in zip(faces, points, strict=True):
        if face not in _WALLS:
            continue
        u, _ = _face_uv(room, face, p)
        length = room.extent(_FACE_UV[face][0])
        v = float(rng.uniform(*height))
        if not (hu + 0.05 < u < length - hu - 0.05 and hv + 0.05 < v < room.height - hv - 0.05):
            continue
        point = np.array(p, dtype=np.float64)
        point[1] = v
        if not _visible(cam, point) or not layout.wall_free(face, u, v, hu, hv):
            continue
        layout.wall_items.append((face, u, v, hu, hv))
        return int(face), u, v
    return None


def _place_against_wall(
    rng: np.random.Generator,
    cam: Camera,
    room: Room,
    layout: _Layout,
    width: float,
    depth: float,
    height: float,
) -> tuple[int, np.ndarray, float] | None:
    """A visible spot for a cabinet or bed backing onto a wall: (face, wall point, yaw)."""
    faces, points = _candidates(rng, cam, room, (0.3, 0.9))
    for face, p in zip(faces, points, strict=True):
        if face not in _WALLS:
            continue
        u, _ = _face_uv(room, face, p)
        length = room.extent(_FACE_UV[face][0])
        if not (width / 2 + 0.05 < u < length - width / 2 - 0.05):
            continue
        rot = _wall_rot(face)
        base = np.array(p, dtype=np.float64)
        base[1] = 0.0
        center = base + rot[:, 1] * depth / 2
        radius = float(np.hypot(width, depth) / 2)
        if np.hypot(center[0] - cam.position[0], center[2] - cam.position[2]) < radius + 0.5:
            continue
        if not _visible(cam, center + np.array([0, height / 2, 0])):
            continue
        if not layout.floor_free(center[0], center[2], radius):
            continue
        layout.footprints.append((float(center[0]), float(center[2]), radius))
        layout.wall_items.append((int(face), u, height / 2, width / 2, height / 2))
        normal = rot[:, 1]
        return int(face), base, float(np.arctan2(normal[0], normal[2]))
    return None


def _color(rng: np.random.Generator, lo: float = 0.1, hi: float = 0.95) -> list[float]:
    return [float(c) for c in rng.uniform(lo, hi, 3)]


def _saturated(rng: np.random.Generator) -> list[float]:
    c = rng.uniform(0.05, 0.35, 3)
    c[rng.integers(3)] = rng.uniform(0.7, 0.95)
    if rng.random() < 0.5:
        c[rng.integers(3)] = rng.uniform(0.6, 0.95)
    return [float(v) for v in c]


def _luma(c: list[float]) -> float:
    return float(0.3 * c[0] + 0.59 * c[1] + 0.11 * c[2])


def _wood_color(rng: np.random.Generator, light: bool) -> list[float]:
    base = np.array([0.72, 0.52, 0.32]) if light else np.array([0.42, 0.26, 0.14])
    return [float(v) for v in np.clip(base * rng.uniform(0.8, 1.15) + rng.normal(0, 0.03, 3), 0, 1)]


def _sample_room(rng: np.random.Generator) -> Room:
    kind = str(rng.choice(["planks", "tiles", "carpet"]))
    floor_color = _wood_color(rng, rng.random() < 0.5) if kind == "planks" else _color(rng)
    floor = {
        "kind": kind,
        "color": floor_color,
        "color2": _color(rng),
        "grout": _color(rng),
        "tile": float(rng.uniform(0.3, 0.6)),
        "plank": float(rng.uniform(0.1, 0.2)),
        "grain": float(rng.uniform(20, 50)),
        "seed": int(rng.integers(2**31)),
    }
    floor["ir"] = max(_luma(floor["color"]), 0.12)
    wall_color = [
        float(v) for v in np.clip(rng.uniform(0.45, 0.95) * rng.uniform(0.75, 1, 3), 0, 1)
    ]
    wall = {
        "color": wall_color,
        "seed": int(rng.integers(2**31)),
        "stripes": float(rng.uniform(0.1, 0.3)) if rng.random() < 0.3 else 0.0,
        "ir": max(_luma(wall_color), 0.15),
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


def sample_scene(seed: int, index: int, size: tuple[int, int] = (120, 160)) -> Scene:
    """The scene of frame `index` of a data set generated with `seed`."""
    scene_seq, sensor_seq = np.random.SeedSequence([seed, index]).spawn(2)
    rng = np.random.default_rng(scene_seq)
    room = _sample_room(rng)
    position = np.array(
        [rng.uniform(0.3, 0.7) * room.width, rng.uniform(1.1, 1.7), rng.uniform(0.3, 0.9)]
    )
    cam = _camera(size, position, float(rng.uniform(-0.5, 0.5)), float(rng.uniform(-0.05, 0.35)))
    layout = _Layout()
    objects: list[SceneObject] = []

    if rng.random() < 0.35:
        w, length = float(rng.uniform(1.0, 1.8)), float(rng.uniform(1.9, 2.1))
        spot = _place_against_wall(rng, cam, room, layout, w, length, 0.5)
        if spot:
            face, base, yaw = spot
            paint = {
                "frame": _wood_color(rng, rng.random() < 0.5),
                "color": _color(rng, 0.2),
                "pillow": _color(rng, 0.8, 1.0),
                "stripe": float(rng.uniform(0.1, 0.4)),
            }
            objects.append(
                SceneObject(
                    "bed",
                    tuple(base),
                    (w, length, float(rng.uniform(0.8, 1.1))),
                    yaw,
                    face,
                    paint,
                    max(_luma(paint["color"]), 0.15),
                )
            )
    for _ in range(int(rng.integers(0, 3))):
        w, d, h = rng.uniform(0.5, 1.2), rng.uniform(0.35, 0.6), rng.uniform(0.7, 2.0)
        spot = _place_against_wall(rng, cam, room, layout, w, d, h)
        if spot:
            face, base, yaw = spot
            objects.append(
                SceneObject(
                    "cabinet",
                    tuple(base),
                    (float(w), float(d), float(h)),
                    yaw,
                    face,
                    {},
                    float(rng.uniform(0.3, 0.9)),
                )
            )
    if rng.random() < 0.65:
        w, d = float(rng.uniform(0.8, 1.6)), float(rng.uniform(0.6, 1.0))
        spot = _place_floor(rng, cam, room, layout, float(np.hypot(w, d) / 2))
        if spot:
            paint = {
                "color": _wood_color(rng, rng.random() < 0.5),
                "top": 0.05,
                "leg": float(rng.uniform(0.05, 0.08)),
                "plank": float(rng.uniform(0.1, 0.2)),
                "grain": float(rng.uniform(20, 50)),
                "seed": int(rng.integers(2**31)),
            }
            objects.append(
                SceneObject(
                    "table",
                    (spot[0], 0.0, spot[1]),
                    (w, d, float(rng.uniform(0.68, 0.8))),
                    float(rng.uniform(0, np.pi)),
                    None,
                    paint,
                    max(_luma(paint["color"]), 0.15),
                )
            )
    for _ in range(int(rng.integers(0, 2)) + int(rng.random() < 0.2)):
        w = float(rng.uniform(0.25, 0.5))
        spot = _place_floor(rng, cam, room, layout, w / 2 * 1.42)
        if spot:
            objects.append(
                SceneObject(
                    "pillar",
                    (spot[0], 0.0, spot[1]),
                    (w, w, room.height),
                    float(rng.uniform(0, np.pi)),
                    None,
                    {"round": bool(rng.random() < 0.5)},
                    float(rng.uniform(0.3, 0.9)),
                )
            )
    for _ in range(int(rng.integers(0, 5))):
        w, d, h = (float(v) for v in rng.uniform(0.3, 0.6, 3))
        spot = _place_floor(rng, cam, room, layout, float(np.hypot(w, d) / 2))
        if spot:
            # Both textures' parameters are sampled whatever the class, so a swap is a pure edit.
            paint = {
                "wood": _wood_color(rng, True),
                "slat": float(rng.uniform(0.08, 0.15)),
                "cardboard": [
                    float(v) for v in np.array([0.66, 0.5, 0.32]) * rng.uniform(0.85, 1.1)
                ],
                "tape": _color(rng, 0.75, 0.9),
                "ink": _color(rng, 0.05, 0.3),
            }
            cls = "crate" if rng.random() < 0.5 else "box"
            objects.append(
                SceneObject(
                    cls,
                    (spot[0], 0.0, spot[1]),
                    (w, d, h),
                    float(rng.uniform(0, np.pi)),
                    None,
                    paint,
                    float(rng.uniform(0.35, 0.8)),
                )
            )

    # Decals last: they do not block anything.
    if rng.random() < 0.5:
        w, d = float(rng.uniform(1.2, 2.4)), float(rng.uniform(0.9, 1.8))
        spot = _place_floor(rng, cam, room, layout, float(max(w, d) / 2), blocks=False)
        if spot:
            paint = {
                "color": _saturated(rng),
                "color2": _saturated(rng),
                "border": _color(rng),
                "pattern": str(rng.choice(["stripes", "diamonds"])),
                "repeat": float(rng.uniform(1.5, 4)),
            }
            objects.append(
                SceneObject("rug", (spot[0], 0.0, spot[1]), (w, d, 0.0), 0.0, FLOOR, paint)
            )
    wall_items = (
        ["window"] * int(rng.random() < 0.55)
        + ["poster"] * int(rng.integers(0, 3))
        + ["sign"] * int(rng.integers(0, 4))
    )
    for cls in wall_items:
        if cls == "window":
            hu, hv, height = rng.uniform(0.4, 0.8), rng.uniform(0.4, 0.7), (1.3, 1.9)
        elif cls == "poster":
            hu, hv, height = rng.uniform(0.2, 0.5), rng.uniform(0.25, 0.6), (1.1, 1.9)
        else:
            hu = hv = rng.uniform(0.18, 0.38)
            height = (0.9, 2.0)
        spot = _place_wall(rng, cam, room, layout, float(hu), float(hv), height)
        if not spot:
            continue
        face, u, v = spot
        point = np.zeros(3)
        iu, iv = _FACE_UV[face]
        point[iu], point[iv] = u, v
        axis, sign = _FACE_AXIS[face]
        point[axis] = 0.0 if sign > 0 else room.extent(axis)
        position = tuple(float(c) for c in point)
        if cls == "window":
            paint = {
                "sky": [float(rng.uniform(0.45, 0.7)), float(rng.uniform(0.65, 0.85)), 1.0],
                "frame": _color(rng, 0.75, 1.0) if rng.random() < 0.7 else _wood_color(rng, False),
                "transom": bool(rng.random() < 0.5),
            }
            objects.append(SceneObject(cls, position, (2 * hu, 2 * hv, 0.0), 0.0, face, paint))
        elif cls == "poster":
            shapes = [
                (
                    (
                        float(rng.uniform(-0.5, 0.5)),
                        float(rng.uniform(-0.5, 0.5)),
                        float(rng.uniform(0.15, 0.5)),
                        float(rng.uniform(0.15, 0.5)),
                    ),
                    _saturated(rng),
                    bool(rng.random() < 0.5),
                )
                for _ in range(int(rng.integers(2, 5)))
            ]
            paint = {"background": _color(rng), "border": _color(rng, 0.85, 1.0), "shapes": shapes}
            objects.append(SceneObject(cls, position, (2 * hu, 2 * hv, 0.0), 0.0, face, paint))
        else:
            paint = {"color": _saturated(rng), "plate": float(rng.uniform(0.05, 0.08))}
            relief = float(rng.uniform(0.5, 0.8) * hu)
            cls = "sign" if rng.random() < 0.5 else "dome"
            objects.append(
                SceneObject(
                    cls,
                    position,
                    (float(hu), float(hu), relief),
                    0.0,
                    face,
                    paint,
                    float(rng.uniform(0.35, 0.9)),
                )
            )

    dim = rng.random() < 0.2
    light = np.array(
        [rng.uniform(0.2, 0.8) * room.width, room.height - 0.15, rng.uniform(0.3, 0.8) * room.depth]
    )
    return Scene(
        camera=cam,
        room=room,
        objects=objects,
        light=light,
        light_power=float(rng.uniform(0.6, 1.0)),
        ambient=float(rng.uniform(0.25, 0.4)),
        exposure=float(rng.uniform(0.25, 0.5) if dim else rng.uniform(0.85, 1.15)),
        rgb_noise=float(0.03 if dim else 0.01),
        depth_noise=float(rng.uniform(1.2e-3, 2.0e-3)),
        sensor_seed=int(sensor_seq.generate_state(1)[0]),
    )


def render_frame(seed: int, index: int, size: tuple[int, int] = (120, 160)) -> Frame:
    """Frame `index` of a data set generated with `seed`, exactly as `generate` writes it."""
    return render(sample_scene(seed, index, size))


# --------------------------------------------------------------------------------------------
# Writing a data set


def frame_id(index: int) -> str:
    return f"{index:06d}"


def _write_frame(root: Path, index: int, frame: Frame) -> None:
    name = f"{frame_id(index)}.png"
    write_png(root / "rgb" / name, frame.rgb, compress_level=1)
    write_png(root / "depth" / name, frame.depth, compress_level=1)
    write_png(root / "label" / name, frame.label, compress_level=1)


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
    num: int, seed: int, size: tuple[int, int], splits: tuple[float, float, float]
) -> DatasetMeta:
    return DatasetMeta(
        name="synthetic",
        classes=list(CLASSES),
        modalities={
            "rgb": ModalitySpec("color", 3),
            "depth": ModalitySpec("depth", 1, DEPTH_SCALE, "mm"),
        },
        ignore_index=IGNORE_INDEX,
        intrinsics=intrinsics(size),
        extra={
            "generator": {
                "name": "fusescope.data.synthetic",
                "version": GENERATOR_VERSION,
                "seed": seed,
                "num": num,
                "size": list(size),
                "splits": list(splits),
                "frame_seed": "np.random.SeedSequence([seed, index])",
            },
            "cue_groups": {
                "appearance": "only RGB identifies the class",
                "geometry": "only depth identifies the class",
                "both": "either modality identifies the class",
            },
        },
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


def _render_and_write(job: tuple[str, int, int, tuple[int, int]]) -> int:
    """One frame, rendered and written by a pool worker; returns its index."""
    root, seed, index, size = job
    _write_frame(Path(root), index, render_frame(seed, index, size))
    return index


def generate(
    out: str | os.PathLike,
    num: int,
    seed: int = 0,
    size: tuple[int, int] = (120, 160),
    splits: tuple[float, float, float] = (0.7, 0.15, 0.15),
    progress: bool = True,
    workers: int = 1,
) -> DatasetMeta:
    """Write the known-answer benchmark to `out` in the folder layout of `docs/architecture.md`.

    The data set is built in a temporary sibling folder and renamed onto `out` at the end, so
    `out` either holds the complete data set or does not exist. Ids are `000000`, `000001`, ...;
    splits are consecutive runs of ids (frames are independent, so any run is a random sample).

    Args:
        out: the folder to create; it must not exist or be empty.
        num: number of frames.
        seed: frame `i` is drawn from `np.random.SeedSequence([seed, i])`.
        size: (height, width) in pixels.
        splits: train, val and test shares.
        progress: show a progress bar.
        workers: processes rendering and writing frames; the bytes written do not depend on it
            (every frame is a function of (seed, index) alone and has its own files).

    Returns:
        The data set's metadata, as written to `out/meta.json`.

    Raises:
        FusescopeError: `out` exists and is not an empty folder, or an argument is invalid.
    """
    out = Path(out)
    size = (int(size[0]), int(size[1]))
    _check_args(num, seed, size, splits)
    if not (isinstance(workers, int | np.integer) and workers >= 1):
        raise FusescopeError(f"synthetic data: workers must be a positive integer, got {workers!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FusescopeError(
            f"{out}: already exists and is not empty; remove it or choose another folder"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    give_default_mode(tmp, folder=True)  # mkdtemp makes it 0700; the data set is for others too
    try:
        meta = dataset_meta(num, seed, size, splits)
        for sub in ("rgb", "depth", "label", "splits"):
            (tmp / sub).mkdir()
        bar = tqdm(total=num, desc=f"synthetic -> {out.name}", unit="frame", disable=not progress)
        with bar:
            if workers == 1:
                for index in range(num):
                    _write_frame(tmp, index, render_frame(seed, index, size))
                    bar.update()
            else:
                # spawn, not fork: the caller may hold threads (torch) that fork would copy.
                jobs = [(str(tmp), seed, index, size) for index in range(num)]
                with multiprocessing.get_context("spawn").Pool(workers) as pool:
                    for _ in pool.imap_unordered(_render_and_write, jobs, chunksize=4):
                        bar.update()
        ids = [frame_id(i) for i in range(num)]
        start = 0
        for name, count in zip(("train", "val", "test"), _split_counts(num, splits), strict=True):
            write_split(tmp, name, ids[start : start + count])
            start += count
        meta.save(tmp)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def frames_per_second(
    num: int = 200, size: tuple[int, int] = (120, 160), seed: int = 0, write: bool = True
) -> float:
    """Frames generated per second in this process (rendering and, if `write`, PNG encoding)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for sub in ("rgb", "depth", "label"):
            (root / sub).mkdir()
        start = time.perf_counter()
        for index in range(num):
            frame = render_frame(seed, index, size)
            if write:
                _write_frame(root, index, frame)
        return num / (time.perf_counter() - start)


__all__ = [
    "CLASSES",
    "CLASS_ID",
    "DROPPABLE",
    "PAIRS",
    "Camera",
    "Frame",
    "Room",
    "Scene",
    "SceneObject",
    "dataset_meta",
    "frame_id",
    "frames_per_second",
    "generate",
    "intrinsics",
    "render",
    "render_frame",
    "sample_scene",
]
