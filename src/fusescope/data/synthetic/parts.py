"""Objects -> parts: the solids and decals a renderer sees, and the helpers class specs build
them with (`fusescope.data.synthetic.classes` says which parts each class has).

A part is seen by both modalities or by one only (`seen_by`): `depth` solids are painted like
what lies behind them and the RGB cast skips them; decals are flat paint on a room face that
the depth cast never sees (`rgb` decals), or flat warm patches that only the thermal image
shows (`thermal` decals: no paint, no relief). Points, directions and normals are
component-major (3, M) arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fusescope.data.synthetic.scene import FACE_AXIS, FACE_UV, Room, SceneObject

Painter = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(local points (3, M), local normals (3, M)) -> albedo (3, M)."""
DecalPainter = Callable[[np.ndarray], np.ndarray]
"""Decal coordinates in [-1, 1]^2 (2, M) -> albedo (3, M); a thermal decal's: warming (M,), K."""


@dataclass(frozen=True)
class Solid:
    shape: str  # "plane" | "box" | "cylinder" | "cap"
    rot: np.ndarray  # (3, 3) float32, local -> world; columns are the local axes
    center: np.ndarray  # (3,) float32, world position of the local origin
    dims: tuple[float, ...]
    cls: int
    seen_by: str  # "both" or "depth" (camouflaged)
    ir: float
    paint: Painter | None
    temperature: float | None = None  # above the air, K (thermal scenes; `SceneObject`)


@dataclass(frozen=True)
class Decal:
    host: int  # room face it is painted on
    center: tuple[float, float]  # face (u, v), metres
    half: tuple[float, float]
    disc: bool
    cls: int
    paint: DecalPainter
    emissive: bool = False  # windows glow: unaffected by the room's lighting
    seen_by: str = "rgb"  # "rgb" (paint) or "thermal" (a warm patch: only thermal sees it)


def yaw_rot(yaw: float) -> np.ndarray:
    """Local -> world rotation about the vertical: local +z points to (sin yaw, 0, cos yaw)."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=np.float32)


def wall_rot(face: int) -> np.ndarray:
    """Local frame on a wall: local y is the inward normal (relief grows along +y)."""
    axis, sign = FACE_AXIS[face]
    n = np.zeros(3)
    n[axis] = sign
    a = np.array([n[2], 0.0, -n[0]])  # horizontal tangent
    return np.stack([a, n, np.cross(a, n)], axis=1).astype(np.float32)


def face_uv(face: int, point) -> tuple[float, float]:
    """The (u, v) coordinates of a world point on a room face, metres."""
    iu, iv = FACE_UV[face]
    return float(point[iu]), float(point[iv])


def room_plane(
    room: Room, face: int, cls: int = -1, ir: float = 0.0, paint: Painter | None = None
) -> Solid:
    """One of the room's six inward-facing planes (class and paint are not needed to cast)."""
    axis, sign = FACE_AXIS[face]
    value = 0.0 if sign > 0 else room.extent(axis)
    eye = np.eye(3, dtype=np.float32)
    return Solid("plane", eye, np.zeros(3, dtype=np.float32), (axis, value), cls, "both", ir, paint)


def box(
    obj: SceneObject,
    rot: np.ndarray,
    local_center: tuple[float, float, float],
    half: tuple[float, float, float],
    cls: int,
    seen_by: str,
    paint: Painter | None,
) -> Solid:
    """A box of half sizes `half` centred at `local_center` in the object's (rotated) frame."""
    center = np.asarray(obj.position, dtype=np.float32) + rot @ np.asarray(
        local_center, dtype=np.float32
    )
    return Solid(
        "box",
        rot,
        center.astype(np.float32),
        tuple(float(h) for h in half),
        cls,
        seen_by,
        obj.ir,
        paint,
        obj.temperature,
    )


def face_decal(
    obj: SceneObject,
    half: tuple[float, float],
    cls: int,
    paint: DecalPainter,
    disc: bool = False,
    emissive: bool = False,
    seen_by: str = "rgb",
) -> Decal:
    """A rectangle (or disc) painted on the room face `obj.face`, centred at `obj.position`."""
    uv = face_uv(obj.face, obj.position)
    return Decal(obj.face, uv, half, disc, cls, paint, emissive, seen_by)
