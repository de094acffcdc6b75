"""Segmentation's forward contract: batch dict in, output dict out (`core.FusionModel`).

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

from fusescope.models.core import AuxLogits, FusionModel, resize_to, tile_channels


class Segmentor(FusionModel):
    """Base class of segmentation models: the modalities a model reads and how many classes it
    predicts."""

    output_key = "logits"

    def __init__(self, modalities: list[str], num_classes: int):
        super().__init__(modalities)
        self.num_classes = num_classes


__all__ = ["AuxLogits", "Segmentor", "resize_to", "tile_channels"]
