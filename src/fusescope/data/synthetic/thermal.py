"""The thermal modality of the known-answer rooms: what a radiometric thermal camera sees, and
the classes only it can see.

Image formation (exact), per pixel of the RGB-visible surface (the thermal camera shares the RGB
camera's view and, like RGB, is blind to the camouflaged solids and, like depth, to the decals):

    T       = air + offset(surface) + stratification * (y - room height / 2) + warmth
    thermal = round(clip(T + netd * N(0, 1), 0, 655.35) / THERMAL_SCALE)        uint16 counts

with `offset` the room face's (floor, wall or ceiling) or the solid's own temperature above the
air, `y` the point's height in metres, `warmth` the excess of a warm patch (floor heating, a
heating pipe: `classes.THERMAL_SPECS`) at that point, and N(0, 1) a whole-image field drawn from
the frame's thermal stream before anything else in it. THERMAL_SCALE is 0.01 K per count, as a
FLIR camera's radiometric "TLinear" output, so the files read in kelvin with
`meta.json`'s `scale` (`fusescope.data.kinds`: kind `thermal`).

Everything thermal draws comes from its own stream (the third child of the frame's
`SeedSequence([seed, index])`), after every draw of the other modalities: a frame sampled
for thermal has the same RGB, depth and texture bytes as one sampled without it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fusescope.data.synthetic.classes import THERMAL_SPECS
from fusescope.data.synthetic.layout import Site
from fusescope.data.synthetic.parts import Solid
from fusescope.data.synthetic.scene import CEILING, FLOOR, Scene, SceneObject, ThermalScene

THERMAL_SCALE = 0.01  # kelvin per stored count
NETD = 0.05  # kelvin: a microbolometer's noise-equivalent temperature difference
MAX_KELVIN = 65535 * THERMAL_SCALE


def sample_thermal(
    rng: np.random.Generator, site: Site, objects: list[SceneObject]
) -> tuple[ThermalScene, list[SceneObject]]:
    """The thermal part of a scene from its thermal stream: the room's temperatures, each
    object's (in order, whatever its class, so swapping a pair changes nothing), then the
    thermal-only objects, placed after every other one.

    Returns:
        The room's `ThermalScene` and the objects (each with its temperature), the thermal-only
        ones appended.
    """
    noise_seed = int(rng.integers(2**63))  # first: the noise field depends on the frame alone
    air = float(rng.uniform(292.0, 297.0))
    room = ThermalScene(
        air=air,
        floor=float(rng.uniform(-1.5, -0.3)),
        wall=float(rng.uniform(-0.8, 0.8)),
        ceiling=float(rng.uniform(0.3, 1.5)),
        stratification=float(rng.uniform(0.2, 0.6)),
        netd=NETD,
        noise_seed=noise_seed,
    )
    warm = [dataclasses.replace(obj, temperature=float(rng.uniform(-1.5, 2.5))) for obj in objects]
    site = dataclasses.replace(site, rng=rng, placed=warm)
    for spec in THERMAL_SPECS:
        for _ in range(spec.count(rng)):
            obj = spec.place(site)
            if obj is not None:
                warm.append(obj)
    return room, warm


def thermal_noise(scene: Scene) -> np.ndarray:
    """The frame's thermal noise field, standard normal (H, W); it depends on the frame alone."""
    rng = np.random.default_rng(scene.thermal.noise_seed)
    return rng.standard_normal((scene.camera.height, scene.camera.width))


def render_thermal(
    scene: Scene,
    solids: list[Solid],
    surface: np.ndarray,
    points: np.ndarray,
    warmth: np.ndarray,
    noise: bool = True,
) -> np.ndarray:
    """The thermal image (H, W) uint16 of a scene (formation: the module docstring).

    Args:
        scene: a scene sampled with thermal (`scene.thermal` set).
        solids: the solids the RGB-visible surface was cast against (the room's faces first).
        surface: (N,) the index in `solids` of each pixel's RGB-visible surface.
        points: (3, N) world points of that surface.
        warmth: (N,) the warm patches' excess at each pixel, kelvin.
        noise: add the sensor's noise field.
    """
    room = scene.thermal
    offset = np.array(
        [
            room.floor
            if k == FLOOR
            else room.ceiling
            if k == CEILING
            else room.wall
            if k < 6
            else (s.temperature or 0.0)  # a depth-only solid is never the visible surface
            for k, s in enumerate(solids)
        ]
    )
    height = points[1].astype(np.float64) - scene.room.height / 2
    temperature = room.air + offset[surface] + room.stratification * height + warmth
    temperature = temperature.reshape(scene.camera.height, scene.camera.width)
    if noise:
        temperature = temperature + room.netd * thermal_noise(scene)
    return np.round(np.clip(temperature, 0, MAX_KELVIN) / THERMAL_SCALE).astype(np.uint16)
