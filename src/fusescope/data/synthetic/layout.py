"""Layout: finding visible, free spots for objects on the floor and the walls.

A class's placer (`fusescope.data.synthetic.classes`) calls these with the scene's random
stream; every draw happens in a fixed order, so a scene is a function of (seed, index) alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fusescope.data.synthetic.parts import face_uv, room_plane, wall_rot
from fusescope.data.synthetic.raycast import intersect
from fusescope.data.synthetic.scene import FACE_AXIS, FACE_UV, FLOOR, WALLS, Camera, Room


@dataclass
class Layout:
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


@dataclass
class Site:
    """What a placer works with: the scene's random stream, its camera, room and layout, and
    (for the thermal classes, placed after the rest) the objects already placed."""

    rng: np.random.Generator
    camera: Camera
    room: Room
    layout: Layout = field(default_factory=Layout)
    placed: list = field(default_factory=list)


def _room_hits(cam: Camera, room: Room, pix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Room face (M,) and world point (M, 3) seen at pixel coordinates pix (M, 2) as (u, v)."""
    d = cam.rotation @ np.stack(
        [(pix[:, 0] - cam.cx) / cam.fx, (pix[:, 1] - cam.cy) / cam.fy, np.ones(len(pix))]
    )  # (3, M)
    ts = np.stack(
        [intersect(room_plane(room, face), cam.position, d.astype(np.float32)) for face in range(6)]
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


def _candidates(
    site: Site, v_range: tuple[float, float], count: int = 24
) -> tuple[np.ndarray, np.ndarray]:
    cam, rng = site.camera, site.rng
    pix = np.stack(
        [rng.uniform(0.08, 0.92, count) * cam.width, rng.uniform(*v_range, count) * cam.height],
        axis=1,
    )
    return _room_hits(cam, site.room, pix)


def place_floor(site: Site, radius: float, blocks: bool = True) -> tuple[float, float] | None:
    """A visible floor point (x, z) where a footprint of `radius` fits; None if none was found.

    Args:
        site: the scene being sampled.
        radius: the footprint's radius, metres.
        blocks: the footprint keeps later objects out (a rug does not).
    """
    cam, room, layout = site.camera, site.room, site.layout
    faces, points = _candidates(site, (0.35, 0.95))
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


def place_wall(
    site: Site, hu: float, hv: float, height: tuple[float, float]
) -> tuple[int, tuple[float, float, float]] | None:
    """A visible wall spot for an item of half sizes (hu, hv), its centre's height drawn from
    `height`: (face, world point on the wall), or None if none was found."""
    cam, room, layout, rng = site.camera, site.room, site.layout, site.rng
    faces, points = _candidates(site, (0.05, 0.7))
    for face, p in zip(faces, points, strict=True):
        if face not in WALLS:
            continue
        u, _ = face_uv(face, p)
        length = room.extent(FACE_UV[face][0])
        v = float(rng.uniform(*height))
        if not (hu + 0.05 < u < length - hu - 0.05 and hv + 0.05 < v < room.height - hv - 0.05):
            continue
        point = np.array(p, dtype=np.float64)
        point[1] = v
        if not _visible(cam, point) or not layout.wall_free(face, u, v, hu, hv):
            continue
        layout.wall_items.append((face, u, v, hu, hv))
        # The point exactly on the plane, from the face's (u, v).
        on_wall = np.zeros(3)
        iu, iv = FACE_UV[face]
        on_wall[iu], on_wall[iv] = u, v
        axis, sign = FACE_AXIS[face]
        on_wall[axis] = 0.0 if sign > 0 else room.extent(axis)
        return int(face), tuple(float(c) for c in on_wall)
    return None


def place_against_wall(
    site: Site, width: float, depth: float, height: float
) -> tuple[int, np.ndarray, float] | None:
    """A visible spot for a cabinet or bed backing onto a wall: (face, wall point, yaw)."""
    cam, room, layout = site.camera, site.room, site.layout
    faces, points = _candidates(site, (0.3, 0.9))
    for face, p in zip(faces, points, strict=True):
        if face not in WALLS:
            continue
        u, _ = face_uv(face, p)
        length = room.extent(FACE_UV[face][0])
        if not (width / 2 + 0.05 < u < length - width / 2 - 0.05):
            continue
        rot = wall_rot(face)
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
