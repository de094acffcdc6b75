"""Procedural paint shared by several classes, and the random draws of paint parameters.

Painters are deterministic functions of surface coordinates and parameters (the randomness is
in the parameters, drawn when the scene is sampled). A class's own painter lives with its spec
in `fusescope.data.synthetic.classes`.

Albedo bound: no painter returns more than 1.2305 (wood: colour <= 1 x tone < 1.15 x grain
<= 1.07; everything else <= 1.08), which `rendering.TEXTURE_RANGE` relies on.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def cell_hash(a: np.ndarray, b: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) per integer cell (a, b): cheap per-plank / per-tile variation."""
    a = a.astype(np.int64).astype(np.uint32)
    b = b.astype(np.int64).astype(np.uint32)
    h = a * np.uint32(73856093) ^ b * np.uint32(19349663)
    h = (h ^ np.uint32(seed & 0xFFFFFFFF)) * np.uint32(2654435761)
    h = h ^ (h >> np.uint32(15))
    return (h & np.uint32(0xFFFF)).astype(np.float32) / 65536.0


def column(c: Any) -> np.ndarray:
    """A colour as a (3, 1) column, to broadcast against (M,) rows."""
    return np.asarray(c, dtype=np.float32).reshape(3, 1)


def fill(c: Any, m: int) -> np.ndarray:
    return np.repeat(column(c), m, axis=1)


def wood(u: np.ndarray, v: np.ndarray, prm: dict) -> np.ndarray:
    """Planks across v, grain along u; dark seams between planks and at board ends."""
    width = prm["plank"]
    j = np.floor(v / width)
    tone = 0.85 + 0.3 * cell_hash(j, j * 7 + 3, prm["seed"])
    grain = 1 + 0.07 * np.sin(u * prm["grain"] + 2.5 * np.sin(v * 23 + j * 1.7))
    length = 4 * width + 0.6
    ends = np.abs(((u + cell_hash(j, j, prm["seed"] + 1) * length) / length) % 1 - 0.5) > 0.49
    seam = (np.abs((v / width) % 1 - 0.5) > 0.46) | ends
    return column(prm["color"]) * (tone * grain * np.where(seam, 0.55, 1.0))


def paint_flat(p: np.ndarray, n: np.ndarray, prm: dict) -> np.ndarray:
    return fill(prm["color"], p.shape[1])


def paint_fabric(p: np.ndarray, n: np.ndarray, prm: dict) -> np.ndarray:
    tone = np.where(((p[0] + p[2]) / prm["stripe"]) % 1 < 0.5, 1.0, 0.85)
    return column(prm["color"]) * tone


def decal_flat(q: np.ndarray, prm: dict) -> np.ndarray:
    return fill(prm["color"], q.shape[1])


# Paint parameter draws (scene sampling)


def random_color(rng: np.random.Generator, lo: float = 0.1, hi: float = 0.95) -> list[float]:
    return [float(c) for c in rng.uniform(lo, hi, 3)]


def saturated_color(rng: np.random.Generator) -> list[float]:
    c = rng.uniform(0.05, 0.35, 3)
    c[rng.integers(3)] = rng.uniform(0.7, 0.95)
    if rng.random() < 0.5:
        c[rng.integers(3)] = rng.uniform(0.6, 0.95)
    return [float(v) for v in c]


def luma(c: list[float]) -> float:
    return float(0.3 * c[0] + 0.59 * c[1] + 0.11 * c[2])


def wood_color(rng: np.random.Generator, light: bool) -> list[float]:
    base = np.array([0.72, 0.52, 0.32]) if light else np.array([0.42, 0.26, 0.14])
    return [float(v) for v in np.clip(base * rng.uniform(0.8, 1.15) + rng.normal(0, 0.03, 3), 0, 1)]
