"""Input modalities paired with target modalities, for image-to-image translation: the folder
layout of `data/meta.py` without labels (a `label/` folder, if present, is not read).

A sample is `{input: float32 (C, H, W) normalised with train statistics, ...,
"target:<name>": float32 (C, H, W) in [-1, 1], "id": str}`. Targets are keyed apart
(`target_key`) so a model, which reads its input modalities by name, never sees them; they are
mapped to [-1, 1] (`TargetSpace`), the range of the generator's tanh: 8-bit images by 2x - 1,
depth and thermal by their train-split range (see `TargetSpace`). Inputs are normalised with
train-split statistics, or (`data.input_map: cen`) mapped to [-1, 1] as CEN's loader maps them
(`CenInputMap`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from fusescope.data.folder import check_folder, load_modality
from fusescope.data.kinds import kind_of
from fusescope.data.meta import ModalitySpec, load_meta, read_split
from fusescope.errors import FusescopeError

TARGET_PREFIX = "target:"
# CEN's image2image_translation loader (utils/dataset.py: max_v) divides log(1 + raw depth) by
# 11.1 (raw: Taskonomy's 16-bit 1/512 m units; log(65536) = 11.09) before its 8-bit cast
CEN_DEPTH_LOG_MAX = 11.1
TASKONOMY_DEPTH_UNITS_PER_METRE = 512


def target_key(name: str) -> str:
    """The batch key of target modality `name` (inputs are keyed by their bare names)."""
    return TARGET_PREFIX + name


class TargetSpace:
    """Maps targets from natural units to the generator's [-1, 1]: `2 (x - low) / (high - low)
    - 1`, clipped, with (low, high) from the target's kind (`ModalityKind.target_range`):

    8-bit images ([0, 1] after loading): (0, 1), i.e. `2x - 1`. Depth (metres): (0, mean + 3
    std) of the train split's valid depth, so near-all depth values use the tanh's range and
    holes map to -1 (0 m). Thermal (kelvin): mean -/+ 3 std.

    Args:
        specs: the targets' modality specs.
        stats: normalisation statistics holding every target's mean / std.
    """

    def __init__(self, specs: dict[str, ModalitySpec], stats: dict[str, dict]):
        self.specs = specs
        self.range = {}
        for name, spec in specs.items():
            mean, std = stats[name]["mean"][0], stats[name]["std"][0]
            self.range[name] = tuple(float(v) for v in kind_of(spec).target_range(mean, std))

    def to_unit(self, name: str, x: Tensor) -> Tensor:
        """Natural units -> [-1, 1]."""
        low, high = self.range[name]
        return (2 * (x - low) / (high - low) - 1).clamp(-1, 1)


class CenInputMap:
    """`(sample) -> sample`: every input in [-1, 1] as CEN's translation loader gives it.

    The loader reads each PNG, maps depth (Taskonomy's 16-bit 1/512 m units) to
    log(1 + raw) x 255 / 11.1 and 16-bit edge texture to raw x 255 / 11355, casts both to 8
    bits (a floor), and feeds every image through ToTensor and Normalize(0.5, 0.5): 8-bit
    x / 255 -> 2 x - 1. Here 8-bit inputs ([0, 1] once loaded; `data/taskonomy.py` already wrote
    edge texture as floor(raw x 255 / 11355)) become 2 x - 1, and depth (metres) is taken back
    to 1/512 m units and mapped the same way, floor included. Holes (0 m) give -1 (CEN's loader
    reads Taskonomy's 65535 = no depth, log(65536) / 11.1 -> about 1: `data prepare taskonomy`
    writes holes as 0). 1-channel inputs stay 1-channel (CEN's loader tiles them to 3; the
    stacked generator tiles them where another input has 3).

    Args:
        specs: the input modalities' specs (every input is mapped; depth by its kind).
    """

    def __init__(self, specs: dict[str, ModalitySpec]):
        self.specs = specs

    def __call__(self, sample: dict) -> dict:
        out = dict(sample)
        for name, spec in self.specs.items():
            x = sample[name]
            if spec.kind == "depth":
                raw = x * TASKONOMY_DEPTH_UNITS_PER_METRE
                x = torch.floor(torch.log1p(raw) * (255 / CEN_DEPTH_LOG_MAX)).clamp(0, 255) / 255
            out[name] = 2 * x - 1
        return out


class PairedDataset(Dataset):
    """Inputs and targets of one split (see the module docstring).

    Indexing with an int gives the evaluation view; with (epoch, index) the training view,
    augmented by `transform` seeded from (seed, epoch, index) as `FolderDataset` does.

    Args:
        root: data folder.
        split: split name.
        inputs: input modality names, in model order.
        targets: target modality names.
        transform: joint augmentation `(sample, rng) -> sample` on natural units (the inputs
            and targets move together: geometry only, no photometric change of a target).
        normalize: `(sample) -> sample` normalising the inputs.
        target_space: maps targets to [-1, 1]; None keeps natural units (statistics).
        seed: run seed.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        inputs: list[str],
        targets: list[str],
        transform: Callable | None = None,
        normalize: Callable | None = None,
        target_space: TargetSpace | None = None,
        seed: int = 0,
    ):
        self.root = Path(root)
        self.meta = load_meta(self.root)
        self.split = split
        self.inputs, self.targets = list(inputs), list(targets)
        self.modalities = self.inputs + self.targets  # what `compute_stats` reads
        self.ids = read_split(self.root, split)
        self.files = check_folder(
            self.root, self.meta, self.modalities, self.ids, with_labels=False
        )
        self.transform = transform
        self.normalize = normalize
        self.target_space = target_space
        self.seed = seed

    def __len__(self) -> int:
        return len(self.ids)

    def load_raw(self, index: int) -> dict:
        """Inputs and targets in natural units, checked: every file the first input's size."""
        sample_id = self.ids[index]
        raw: dict = {"id": sample_id}
        first = None
        for name in self.modalities:
            path = self.files[name][sample_id]
            x = load_modality(path, name, self.meta.modalities[name])
            if first is None:
                first = (x.shape[-2:], name)
            elif x.shape[-2:] != first[0]:
                role = "target" if name in self.targets else "input"
                raise FusescopeError(
                    f"{path}: {role} '{name}' is {x.shape[-2]}x{x.shape[-1]}, input "
                    f"'{first[1]}' is {first[0][0]}x{first[0][1]}: inputs and targets must be "
                    f"aligned frames of one size"
                )
            raw[name] = x
        return raw

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (None, key)
        raw = self.load_raw(index)
        sample = {
            k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in raw.items()
        }
        if self.transform is not None and epoch is not None:
            sample = self.transform(sample, np.random.default_rng([self.seed, 0, epoch, index]))
        if self.normalize is not None:
            sample = self.normalize(sample)
        for name in self.targets:
            y = sample.pop(name)
            sample[target_key(name)] = (
                self.target_space.to_unit(name, y) if self.target_space is not None else y
            )
        return sample
