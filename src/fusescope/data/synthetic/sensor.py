"""The sensor model: RGB noise and quantisation, a structured-light depth sensor.

Noise is drawn from the frame's own stream (`Scene.sensor_seed`) as whole-image fields, before
and independently of what the scene holds (`noise_fields`), so removing an object changes the
noisy images exactly where the clean ones change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusescope.data.synthetic.scene import Scene

MAX_RANGE = 7.0  # metres; farther returns are lost
DEPTH_SCALE = 0.001  # metres per stored unit (uint16 millimetres)


@dataclass(frozen=True)
class NoiseFields:
    """A frame's sensor noise, drawn in this order from `np.random.default_rng(sensor_seed)`."""

    depth: np.ndarray  # float32 (H, W) standard normal
    holes: np.ndarray  # float32 (H, W) uniform [0, 1): a pixel drops out where it is >= keep
    rgb: np.ndarray  # float32 (3, H, W) standard normal


def noise_fields(scene: Scene) -> NoiseFields:
    """The sensor noise of a scene's frame; it depends on `scene.sensor_seed` and the size only."""
    hgt, wid = scene.camera.height, scene.camera.width
    sensor = np.random.default_rng(scene.sensor_seed)
    depth = sensor.standard_normal((hgt, wid), dtype=np.float32)
    holes = sensor.random((hgt, wid), dtype=np.float32)
    rgb = sensor.standard_normal((3, hgt, wid), dtype=np.float32)
    return NoiseFields(depth, holes, rgb)


def sensor_rgb(radiance: np.ndarray, noise: np.ndarray | None, std: float) -> np.ndarray:
    """8-bit RGB (H, W, 3) of radiance (3, H, W) in [0, 1] units: `round(255 * clip(radiance +
    std * noise, 0, 1))` (no noise when `noise` is None). Modifies `radiance`."""
    if noise is not None:
        radiance += std * noise
    return np.round(np.clip(radiance, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)


def sensor_depth(
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


def quantise_depth(z: np.ndarray) -> np.ndarray:
    """uint16 millimetres of metres (0 stays 0: a hole)."""
    return np.round(np.clip(z, 0, 65.535) * 1000).astype(np.uint16)
