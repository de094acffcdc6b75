"""The corruption suite: what bad depth (and bad RGB) does to a fusion model.

A corruption acts on a RAW sample, before normalisation:

    {"rgb": float32 (3, H, W) in [0, 1], "depth": float32 (1, H, W) in metres, 0 = hole,
     "label": int64 (H, W), ...}

Modalities are picked by their kind in the data set's meta (`meta.modalities[name].kind`), never
by name: each modality kind names the corruption group that acts on it
(`fusescope.data.kinds.ModalityKind.corruption_group`): depth corruptions act on every `depth`
modality, RGB corruptions on every `color` one, and none on the kinds without a group.
Labels and every other key are passed through untouched. Arrays may be NumPy arrays or torch
tensors; the result has the same type.

    corruption = make_corruption("depth_noise:3")     # KIND:SEVERITY, severity 0..5
    sample = corruption(sample, rng, meta)             # a new dict; rng: np.random.Generator

Severity 0 is the identity; 1..5 use the parameter listed per kind in `KINDS` (monotone: a
higher severity is never milder). The result depends only on the input and the generator's state,
so seeding the generator per sample (e.g. `np.random.default_rng([seed, index])`) makes an
evaluation repeatable regardless of data-loader order.

Kinds:
    depth_noise    Gaussian noise with std = c * z^2 (time-of-flight / structured-light error grows
                   with the square of the distance); c in 1/m. Values pushed below 0 become holes.
    depth_holes    this fraction of pixels set to 0, in blobs (sensor drop-outs are blobs, not
                   salt noise).
    depth_edges    in a band of this many pixels around depth discontinuities, half the pixels
                   become holes and half "flying pixels" (a random depth between the near and far
                   side), as at object boundaries of real sensors.
    depth_shift    depth misaligned with RGB: shifted in a random direction by this many pixels
                   along the dominant axis; uncovered pixels become holes.
    depth_missing  the whole depth map is missing (all zeros) with this probability per sample.
    rgb_lowlight   exposure scaled by this factor, with shot noise (1000 photo-electrons at
                   white) and read noise (std 0.002): a dim, grainy image.
    rgb_blur       Gaussian blur with this sigma in pixels (defocus / motion).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from fusescope.data.kinds import KINDS as MODALITY_KINDS

# torch is imported where it is used: the command line's help lists `KINDS` and must load
# without torch
from fusescope.errors import FusescopeError

MAX_SEVERITY = 5

Array = np.ndarray


def depth_noise(depth: Array, coeff: float, rng: np.random.Generator) -> Array:
    noise = rng.standard_normal(depth.shape, dtype=np.float32)
    noisy = depth + noise * np.float32(coeff) * depth * depth
    return np.where((depth > 0) & (noisy > 0), noisy, 0).astype(np.float32)


def blob_mask(shape: tuple[int, int], fraction: float, rng: np.random.Generator) -> Array:
    """A boolean (H, W) mask covering `fraction` of the pixels in smooth random blobs."""
    h, w = shape
    import torch
    import torch.nn.functional as F

    cell = max(4, max(h, w) // 16)  # blob scale: about 1/16 of the image
    coarse = rng.random((math.ceil(h / cell) + 1, math.ceil(w / cell) + 1), dtype=np.float32)
    field = F.interpolate(
        torch.from_numpy(coarse)[None, None], size=(h, w), mode="bicubic", align_corners=False
    )[0, 0].numpy()
    # a tiny pixel-level jitter breaks ties so the quantile gives the exact fraction
    field = field + 1e-4 * rng.random((h, w), dtype=np.float32)
    return field < np.quantile(field, fraction)


def depth_holes(depth: Array, fraction: float, rng: np.random.Generator) -> Array:
    mask = blob_mask(depth.shape[-2:], fraction, rng)
    return np.where(mask[None], 0, depth).astype(np.float32)


def depth_edges(depth: Array, width: float, rng: np.random.Generator) -> Array:
    width = int(width)
    valid = depth > 0
    near_src = np.where(valid, depth, np.inf)
    far_src = np.where(valid, depth, 0)
    size = (1, 3, 3)
    near, far = ndimage.minimum_filter(near_src, size), ndimage.maximum_filter(far_src, size)
    # a discontinuity: neighbours differ by more than 10 cm or 5 % of the depth
    edge = valid & np.isfinite(near) & (far - near > np.maximum(0.1, 0.05 * near))
    band_size = (1, 2 * width + 1, 2 * width + 1)
    band = ndimage.maximum_filter(edge, band_size) & valid
    near_w = ndimage.minimum_filter(near_src, band_size)
    near_w = np.where(np.isfinite(near_w), near_w, 0)  # no valid neighbour: never in the band
    far_w = ndimage.maximum_filter(far_src, band_size)
    u = rng.random(depth.shape, dtype=np.float32)
    t = rng.random(depth.shape, dtype=np.float32)
    flying = near_w + t * (far_w - near_w)
    out = np.where(band & (u < 0.5), 0, depth)
    out = np.where(band & (u >= 0.5), flying, out)
    return out.astype(np.float32)


def shift_image(x: Array, dy: int, dx: int) -> Array:
    """x (C, H, W) moved by (dy, dx) pixels; uncovered pixels are 0."""
    out = np.zeros_like(x)
    h, w = x.shape[-2:]
    if abs(dy) >= h or abs(dx) >= w:
        return out
    src_y, dst_y = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
    src_x, dst_x = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
    out[:, dst_y, dst_x] = x[:, src_y, src_x]
    return out


def depth_shift(depth: Array, pixels: float, rng: np.random.Generator) -> Array:
    angle = rng.uniform(0.0, 2 * math.pi)
    sin, cos = math.sin(angle), math.cos(angle)
    # N pixels along the dominant axis (Chebyshev length N): rounding a Euclidean length would
    # give e.g. (1, 1) for both N = 1 and N = 2 on a diagonal, breaking monotone severities
    scale = pixels / max(abs(sin), abs(cos))
    dy, dx = round(scale * sin), round(scale * cos)
    return shift_image(depth, dy, dx)


def depth_missing(depth: Array, probability: float, rng: np.random.Generator) -> Array:
    drop = rng.random() < probability  # drawn even when it cannot fire: the stream stays aligned
    return np.zeros_like(depth) if drop else depth.copy()


def rgb_lowlight(rgb: Array, factor: float, rng: np.random.Generator) -> Array:
    dark = rgb * np.float32(factor)
    std = np.sqrt(dark / 1000.0 + 0.002**2)
    noisy = dark + rng.standard_normal(rgb.shape, dtype=np.float32) * std
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def rgb_blur(rgb: Array, sigma: float, rng: np.random.Generator) -> Array:
    del rng  # deterministic
    return ndimage.gaussian_filter(rgb, sigma=(0, sigma, sigma), mode="nearest").astype(np.float32)


@dataclass(frozen=True)
class CorruptionKind:
    """A family of corruptions: which modalities it acts on and its parameter per severity."""

    name: str
    group: str  # the modality kinds' corruption group it acts on: "depth" | "rgb"
    levels: tuple[float, ...]  # the parameter at severities 1..5 (monotone in effect)
    fn: Callable[[Array, float, np.random.Generator], Array]
    parameter: str  # what the level means, for tables and plots


KINDS: dict[str, CorruptionKind] = {
    k.name: k
    for k in (
        CorruptionKind(
            "depth_noise",
            "depth",
            (0.005, 0.01, 0.02, 0.04, 0.08),
            depth_noise,
            "noise std / z^2 (1/m)",
        ),
        CorruptionKind(
            "depth_holes", "depth", (0.05, 0.1, 0.2, 0.35, 0.5), depth_holes, "hole fraction"
        ),
        CorruptionKind("depth_edges", "depth", (1, 2, 3, 4, 6), depth_edges, "edge band (px)"),
        CorruptionKind("depth_shift", "depth", (1, 2, 4, 8, 16), depth_shift, "shift (px)"),
        CorruptionKind(
            "depth_missing",
            "depth",
            (0.2, 0.4, 0.6, 0.8, 1.0),
            depth_missing,
            "probability missing",
        ),
        CorruptionKind(
            "rgb_lowlight", "rgb", (0.6, 0.4, 0.25, 0.12, 0.05), rgb_lowlight, "exposure factor"
        ),
        CorruptionKind("rgb_blur", "rgb", (0.5, 1.0, 1.5, 2.5, 4.0), rgb_blur, "blur sigma (px)"),
    )
}


class Corruption:
    """One corruption kind at one severity; call it on a raw sample."""

    def __init__(self, kind: CorruptionKind, severity: int):
        self.kind = kind
        self.severity = severity

    @property
    def spec(self) -> str:
        return f"{self.kind.name}:{self.severity}"

    @property
    def parameter(self) -> float | None:
        """The kind's parameter at this severity; None at severity 0."""
        return self.kind.levels[self.severity - 1] if self.severity else None

    def __repr__(self) -> str:
        return f"Corruption({self.spec!r})"

    def __call__(
        self, sample: Mapping[str, Any], rng: np.random.Generator, meta: Any
    ) -> dict[str, Any]:
        """A new sample dict with every modality of the target kind corrupted.

        Args:
            sample: raw sample (see the module docstring); not modified.
            rng: the source of randomness; the only one used.
            meta: the data set's `DatasetMeta` (its `modalities[name].kind` picks the targets).

        Raises:
            FusescopeError: the sample has no modality of a kind this corruption acts on.
        """
        kinds = {name: spec.kind for name, spec in meta.modalities.items()}
        targets = [
            name
            for name in sample
            if name in kinds and MODALITY_KINDS[kinds[name]].corruption_group == self.kind.group
        ]
        if not targets:
            present = {n: kinds[n] for n in sample if n in kinds}
            acted_on = [
                k for k, v in MODALITY_KINDS.items() if v.corruption_group == self.kind.group
            ]
            raise FusescopeError(
                f"corruption {self.spec}: acts on {' or '.join(acted_on)} modalities; "
                f"the sample has {present or 'none'}"
            )
        out = dict(sample)
        if self.severity == 0:
            return out
        for name in targets:
            out[name] = _apply(self.kind.fn, sample[name], self.parameter, rng)
        return out


def _apply(fn: Callable, x: Any, parameter: float, rng: np.random.Generator) -> Any:
    """Run `fn` on a NumPy view of `x` and give the result back in `x`'s type."""
    import torch

    if isinstance(x, torch.Tensor):
        y = fn(x.detach().cpu().numpy().astype(np.float32, copy=False), parameter, rng)
        return torch.from_numpy(np.ascontiguousarray(y)).to(x.device)
    return fn(np.asarray(x, dtype=np.float32), parameter, rng)


def make_corruption(spec: str) -> Corruption:
    """Parse `KIND:SEVERITY` (severity 0..5) into a Corruption.

    Raises:
        FusescopeError: unknown kind or bad severity; the message lists the known kinds.
    """
    known = ", ".join(KINDS)
    kind, sep, level = str(spec).partition(":")
    kind = kind.strip()
    if kind not in KINDS:
        raise FusescopeError(
            f"unknown corruption {kind!r} in {spec!r}; known: {known} "
            f"(write KIND:SEVERITY, severity 0..{MAX_SEVERITY})"
        )
    try:
        severity = int(level)
    except ValueError:
        severity = -1
    if not sep or severity < 0 or severity > MAX_SEVERITY or str(severity) != level.strip():
        raise FusescopeError(
            f"corruption {spec!r}: severity must be an integer 0..{MAX_SEVERITY} "
            f"(write KIND:SEVERITY; known kinds: {known})"
        )
    return Corruption(KINDS[kind], severity)
