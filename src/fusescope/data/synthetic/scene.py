"""Scene types: the editable dataclasses a frame is rendered from, and the room's faces.

World frame: y up, the room spans [0, width] x [0, height] x [0, depth] metres. Camera frame:
x right, y down, z forward (the optical axis).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

HORIZONTAL_FOV_DEG = 62.0  # a Kinect-like field of view

# Room faces, in part order: the room is six inward-facing planes.
FLOOR, CEILING, WALL_X0, WALL_X1, WALL_Z0, WALL_Z1 = range(6)
WALLS = (WALL_X0, WALL_X1, WALL_Z0, WALL_Z1)
# (axis, sign of the inward normal) per face; the plane sits at 0 or at the room's extent.
FACE_AXIS = ((1, 1.0), (1, -1.0), (0, 1.0), (0, -1.0), (2, 1.0), (2, -1.0))
# World axes spanning each face's (u, v) texture coordinates, in metres.
FACE_UV = ((0, 2), (0, 2), (2, 1), (2, 1), (0, 1), (0, 1))


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
    # thermal scenes only (`ThermalScene`): a solid's temperature above the air, kelvin; a
    # thermal-only object's excess over the surface it warms
    temperature: float | None = None


@dataclass
class ThermalScene:
    """What a thermal camera sees of a room, drawn from the frame's own thermal stream, and
    only when the thermal modality is rendered (the other modalities never read it).

    Temperatures in kelvin: each room face's is `air` + its offset, a solid's `air` + its
    object's `temperature`, and every surface warms by `stratification` per metre of height
    above mid-room (warm air rises).
    """

    air: float
    floor: float  # offsets from `air`
    wall: float
    ceiling: float
    stratification: float  # kelvin per metre of height
    netd: float  # the sensor's noise-equivalent temperature difference (noise std), kelvin
    noise_seed: int  # the thermal noise stream; independent of what the scene holds


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
    thermal: ThermalScene | None = None  # sampled only when thermal is rendered


@dataclass
class Frame:
    """Every image of one frame, as written (formats: `fusescope.data.synthetic` docstring)."""

    rgb: np.ndarray  # uint8 (H, W, 3)
    depth: np.ndarray  # uint16 (H, W) millimetres, 0 = hole
    label: np.ndarray  # uint8 (H, W) class ids
    # The translation modalities, None unless asked for (`render(extra=...)`).
    texture: np.ndarray | None = None  # uint8 (H, W, 3) albedo / TEXTURE_RANGE
    shade: np.ndarray | None = None  # uint8 (H, W) shading / SHADE_RANGE
    normal: np.ndarray | None = None  # uint8 (H, W, 3) camera-frame unit normals, (n + 1) / 2
    edge: np.ndarray | None = None  # uint8 (H, W) Sobel magnitude of the texture's luminance / 4
    thermal: np.ndarray | None = None  # uint16 (H, W) temperature / THERMAL_SCALE (0.01 K)


def make_camera(size: tuple[int, int], position: np.ndarray, yaw: float, pitch: float) -> Camera:
    """The camera of a (height, width) frame at `position`, turned by `yaw` and tilted down by
    `pitch` (radians)."""
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
    return make_camera(size, np.zeros(3), 0.0, 0.0).intrinsics
