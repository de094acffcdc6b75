"""Scene sampling: the room, the camera, the objects (each class's placer) and the lighting of
one frame, drawn from the frame's own random stream."""

from __future__ import annotations

import numpy as np

from fusescope.data.synthetic.classes import SPECS, ClassSpec, sample_room
from fusescope.data.synthetic.layout import Site
from fusescope.data.synthetic.scene import Scene, SceneObject, make_camera
from fusescope.data.synthetic.thermal import sample_thermal


def _placement_groups() -> list[list[ClassSpec]]:
    """Placed classes in order, grouped by whose counts are drawn together: each `floor` class
    alone, every `wall` class in one group (after the floor classes)."""
    placed = [s for s in SPECS if s.place is not None]
    walls = [s for s in placed if s.stage == "wall"]
    return [[s] for s in placed if s.stage == "floor"] + ([walls] if walls else [])


def sample_scene(
    seed: int, index: int, size: tuple[int, int] = (120, 160), thermal: bool = False
) -> Scene:
    """The scene of frame `index` of a data set generated with `seed`; with `thermal`, also its
    thermal part (`thermal.sample_thermal`: temperatures and the thermal-only objects), drawn
    from a third stream, so everything else is the same as without."""
    streams = np.random.SeedSequence([seed, index]).spawn(3 if thermal else 2)
    scene_seq, sensor_seq = streams[:2]  # the same two children whether or not a third is made
    rng = np.random.default_rng(scene_seq)
    room = sample_room(rng)
    position = np.array(
        [rng.uniform(0.3, 0.7) * room.width, rng.uniform(1.1, 1.7), rng.uniform(0.3, 0.9)]
    )
    cam = make_camera(
        size, position, float(rng.uniform(-0.5, 0.5)), float(rng.uniform(-0.05, 0.35))
    )
    site = Site(rng, cam, room)
    objects: list[SceneObject] = []
    # Solids first, decals last (they do not block anything): the order of SPECS.
    for group in _placement_groups():
        counts = [spec.count(rng) for spec in group]
        for spec, count in zip(group, counts, strict=True):
            for _ in range(count):
                obj = spec.place(site)
                if obj is not None:
                    objects.append(obj)

    dim = rng.random() < 0.2
    light = np.array(
        [rng.uniform(0.2, 0.8) * room.width, room.height - 0.15, rng.uniform(0.3, 0.8) * room.depth]
    )
    scene = Scene(
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
    if thermal:
        scene.thermal, scene.objects = sample_thermal(
            np.random.default_rng(streams[2]), site, objects
        )
    return scene
