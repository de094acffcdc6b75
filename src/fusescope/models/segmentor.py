"""The one forward shape every model has: batch dict in, output dict out.

    batch  = {"rgb": (B,3,H,W), "depth": (B,1,H,W), ..., "label": (B,H,W)}   (label optional)
    output = {"logits": (B,K,H,W),                      the prediction that is scored
              "per_modality": {name: (B,K,H,W)},        optional, each supervised too
              "aux_logits": {name: AuxLogits(logits, weight)},  optional, supervised (x weight)
              "aux_losses": {name: scalar tensor}}      unsupervised, already weighted; summed

Models never read labels nor compute a supervised loss: the engine supervises `logits`,
`per_modality` and every `aux_logits` entry with the data set's ignore index, class weights and
the global-batch normalisation, and adds every aux loss, so it never needs to know the method.
Dissection reads models through forward hooks on named modules, so models keep their parts as
attributes with stable names (`encoders.rgb`, `fuse`, `decoder`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn


class Segmentor(nn.Module):
    """Base class: records which modalities a model reads and how many classes it predicts."""

    def __init__(self, modalities: list[str], num_classes: int):
        super().__init__()
        self.modalities = list(modalities)
        self.num_classes = num_classes

    def inputs(self, batch: dict[str, Tensor]) -> list[Tensor]:
        """The model's input tensors in modality order, with a clear error if one is missing."""
        missing = [m for m in self.modalities if m not in batch]
        if missing:
            raise KeyError(f"batch lacks modalities {missing}; has {sorted(batch)}")
        return [batch[m] for m in self.modalities]

    def lr_scales(self) -> list[tuple[nn.Parameter, float]]:
        """Parameters that train at `scale x train.lr` (default: none; all train at lr)."""
        return []


class AuxLogits(NamedTuple):
    """Auxiliary logits (B, K, H, W) at the label's resolution and their loss weight."""

    logits: Tensor
    weight: float


def output(
    logits: Tensor,
    per_modality: dict[str, Tensor] | None = None,
    aux_losses: dict[str, Tensor] | None = None,
    aux_logits: dict[str, AuxLogits] | None = None,
) -> dict:
    return {
        "logits": logits,
        "per_modality": per_modality or {},
        "aux_losses": aux_losses or {},
        "aux_logits": aux_logits or {},
    }


def resize_to(logits: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def tile_channels(x: Tensor, channels: int) -> Tensor:
    """Repeat a 1-channel input to `channels` (CEN feeds depth as 1 channel tiled to 3)."""
    if x.shape[1] == channels:
        return x
    if x.shape[1] != 1:
        raise ValueError(f"cannot tile {x.shape[1]} channels to {channels}")
    return x.expand(-1, channels, -1, -1)
