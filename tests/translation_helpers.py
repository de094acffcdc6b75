"""Tiny translation data sets in the folder layout, written by the tests that need them.

RGB is composed from texture and shade exactly as the known-answer generator documents it
(rgb = texture * shade, 8-bit), so shade + texture determine the target; depth and normal come
from the same random planes, carrying geometry only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fusescope.data.meta import ClassInfo, DatasetMeta, ModalitySpec, write_split
from fusescope.io import write_png

SPECS = {
    "rgb": ModalitySpec("color", 3),
    "texture": ModalitySpec("color", 3),
    "shade": ModalitySpec("image", 1),
    "normal": ModalitySpec("image", 3),
    "depth": ModalitySpec("depth", 1, 0.001, "mm"),
    "edge": ModalitySpec("image", 1),
}


def write_translation_dataset(
    root,
    n: int = 8,
    size=(32, 32),
    seed: int = 0,
    modalities=("rgb", "texture", "shade", "depth", "normal"),
    splits=None,
) -> Path:
    root = Path(root)
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    ids = [f"{i:04d}" for i in range(n)]
    for i in ids:
        texture = np.repeat(
            np.repeat(rng.integers(40, 250, (h // 8 + 1, w // 8 + 1, 3)), 8, 0), 8, 1
        )[:h, :w].astype(np.uint8)
        a, b = rng.uniform(-1, 1, 2)
        shade = np.clip(0.55 + 0.4 * (a * yy + b * xx), 0.05, 1)
        depth = (2000 + 1500 * (a * yy + b * xx) + 500).astype(np.uint16)
        normal = np.stack(
            [np.full((h, w), 127 + 60 * a), np.full((h, w), 127 + 60 * b), np.full((h, w), 200.0)],
            -1,
        ).astype(np.uint8)
        arrays = {
            "texture": texture,
            "shade": np.round(shade * 255).astype(np.uint8),
            "rgb": np.round(texture * shade[..., None]).astype(np.uint8),
            "depth": depth,
            "normal": normal,
            "edge": (np.abs(np.gradient(texture.mean(-1))[0]) > 5).astype(np.uint8) * 255,
        }
        for m in modalities:
            write_png(root / m / f"{i}.png", arrays[m])
    cut = max(1, n * 3 // 4)
    splits = splits or {"train": ids[:cut], "val": ids[cut:], "test": ids[cut:]}
    for name, members in splits.items():
        write_split(root, name, members)
    DatasetMeta(
        "tiny-translation", [ClassInfo("none", 0, (0, 0, 0))], {m: SPECS[m] for m in modalities}
    ).save(root)
    return root
