"""Joint transforms: geometry applied identically to every image modality and the label, photometry
to colour modalities only; text modalities pass through untouched. What a kind needs (nearest or
bilinear resizing, a mirror that turns a normal's x around, jitter, holes kept at 0 by the
normaliser) comes from its entry in `fusescope.data.kinds`. Each sample gets its own
`np.random.Generator` (seeded from the run seed, the epoch and the sample index), so augmentation
is independent of workers, process count and resumption.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fusescope.data.kinds import kind_of
from fusescope.data.meta import ModalitySpec


def resize(x: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """Resize a (C,H,W) modality or (H,W) label by `mode`: `nearest` (no new values: holes stay
    holes, ids stay ids; labels and the kinds with holes) or `bilinear`."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        y = F.interpolate(x.reshape(1, -1, *x.shape[-2:]).float(), size=size, mode="nearest")
        return y.reshape(*x.shape[:-2], *size).to(x.dtype)
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]


def _interpolation(name: str, specs: dict[str, ModalitySpec]) -> str:
    return "nearest" if name == "label" else kind_of(specs[name]).interpolation


class TrainTransform:
    """Random scale, random crop (padding with ignore / zeros), horizontal flip, colour jitter.

    Args:
        specs: modality specs from meta.json (the kind decides interpolation and photometry).
        crop_size: (H, W) of the output, or None for the input frame's own size (so frames of one
            size still batch after random rescaling).
        scale_range: the random rescale factor range.
        hflip: flip with probability 1/2.
        color_jitter: strength of brightness / contrast / saturation jitter on colour modalities.
        ignore_index: label value for padded pixels.
    """

    def __init__(
        self,
        specs: dict[str, ModalitySpec],
        crop_size: tuple[int, int] | None,
        scale_range: tuple[float, float] = (0.75, 1.25),
        hflip: bool = True,
        color_jitter: float = 0.2,
        ignore_index: int = 255,
    ):
        self.specs = specs
        self.crop_size = tuple(crop_size) if crop_size else None
        self.scale_range = tuple(scale_range)
        self.hflip = hflip
        self.color_jitter = color_jitter
        self.ignore_index = ignore_index

    def __call__(self, sample: dict[str, Tensor], rng: np.random.Generator) -> dict[str, Tensor]:
        # images and the label map; text, class targets and masks are not spatial
        names = [
            k
            for k in sample
            if isinstance(sample[k], Tensor)
            and (k == "label" or k in self.specs and kind_of(self.specs[k]).spatial)
        ]
        h, w = sample["label" if "label" in sample else names[0]].shape[-2:]
        # draw every random number up front, in a fixed order, so the stream is the same
        # whatever the modalities are
        scale = rng.uniform(*self.scale_range)
        u_crop = rng.uniform(size=2)
        flip = self.hflip and rng.uniform() < 0.5
        jitter = rng.uniform(-1, 1, size=3) * self.color_jitter

        out = dict(sample)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        for k in names:
            out[k] = resize(out[k], size, _interpolation(k, self.specs))
        ch, cw = self.crop_size or (h, w)
        ph, pw = max(ch - size[0], 0), max(cw - size[1], 0)
        top = int(u_crop[0] * (size[0] + ph - ch + 1))
        left = int(u_crop[1] * (size[1] + pw - cw + 1))
        for k in names:
            fill = self.ignore_index if k == "label" else 0
            x = F.pad(out[k], (0, pw, 0, ph), value=fill) if ph or pw else out[k]
            out[k] = x[..., top : top + ch, left : left + cw]
        if flip:
            for k in names:
                # a kind may change values too: a mirrored surface faces the other way along x
                out[k] = out[k].flip(-1) if k == "label" else kind_of(self.specs[k]).mirror(out[k])
        for k in names:
            if k != "label" and kind_of(self.specs[k]).colour and self.color_jitter > 0:
                out[k] = color_jitter(out[k], *jitter)
        return out


def color_jitter(rgb: Tensor, brightness: float, contrast: float, saturation: float) -> Tensor:
    """Brightness, contrast and saturation offsets in [-1, 1] * strength on a [0, 1] image."""
    x = rgb * (1 + brightness)
    mean = x.mean()
    x = (x - mean) * (1 + contrast) + mean
    grey = x.mean(0, keepdim=True)
    x = (x - grey) * (1 + saturation) + grey
    return x.clamp(0, 1)


class Normalize:
    """Per-channel (x - mean) / std with train-split statistics; holes (depth 0) stay 0.

    Works on a sample (C, H, W) or a batch (B, C, H, W) alike."""

    def __init__(self, specs: dict[str, ModalitySpec], stats: dict[str, dict[str, list[float]]]):
        # text modalities are encoded by their vocabulary (their statistics), not normalised
        self.specs = {k: v for k, v in specs.items() if kind_of(v).spatial}
        stats = {k: v for k, v in stats.items() if "mean" in v}
        self.mean = {k: torch.tensor(v["mean"]).view(-1, 1, 1) for k, v in stats.items()}
        self.std = {k: torch.tensor(v["std"]).view(-1, 1, 1) for k, v in stats.items()}

    def to(self, device: str | torch.device) -> Normalize:
        """The statistics on `device`, to normalise batches already there (dissection)."""
        self.mean = {k: v.to(device) for k, v in self.mean.items()}
        self.std = {k: v.to(device) for k, v in self.std.items()}
        return self

    def __call__(self, sample: dict[str, Tensor]) -> dict[str, Tensor]:
        out = dict(sample)
        for k, spec in self.specs.items():
            if k in out:
                out[k] = kind_of(spec).normalise(out[k], self.mean[k], self.std[k])
        return out

    def mirror(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Normalised images flipped left-right as their kinds say (`ModalityKind.mirror` in
        normalised units: a normal's x turns around), e.g. for flip test-time augmentation;
        other entries are flipped as they are."""
        return {
            k: kind_of(self.specs[k]).mirror_normalised(v, self.mean[k], self.std[k])
            if k in self.specs
            else v.flip(-1)
            for k, v in batch.items()
        }
