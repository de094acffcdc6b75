"""The multi-stream host for classification: the segmentation multi-stream encoder with a pooled
head, into which every op of `FUSION_OPS` inserts (CEN, AsymFusion, the baselines, BMC, ...).

Where the modalities share structure (RGB and depth images), every modality runs through one
timm encoder with shared convolutions and private norms (`models/multistream.py`), fusing inside
it with the same ops as for segmentation. Instead of a decoder, each stream's deepest feature is
averaged and read by one shared linear head (shared like the convolutions); each stream's logits
are `per_modality`, and the scored logits are the learned ensemble over them, as in the papers.
"""

from __future__ import annotations

from torch import Tensor, nn

from fusescope.errors import OptionError
from fusescope.models.backbones import create_encoder, feature_channels
from fusescope.models.classification.base import TEXT_KIND
from fusescope.models.core import common_channels
from fusescope.models.methods import register_fusion_ops
from fusescope.models.multistream import MultiStreamModel, streams_first
from fusescope.models.registry import CLASSIFICATION_METHODS


class PooledHead(nn.Sequential):
    """Dropout + linear on each stream's deepest feature, averaged over its cells."""

    def forward(self, features: list[Tensor]) -> Tensor:  # -> (B*M, K)
        return super().forward(features[-1].mean((2, 3)))


def pooled_streams(logits: Tensor, num_streams: int, size) -> Tensor:
    return streams_first(logits, num_streams)  # (M, B, K)


def classification_host(
    modalities: list[str],
    in_specs: dict,
    num_classes: int,
    *,
    backbone: str = "resnet18",
    pretrained: bool | str = False,
    shared: bool = True,
    dropout: float = 0.0,
) -> MultiStreamModel:
    """M image streams through one encoder with shared convolutions and private norms; a shared
    pooled head per stream (`per_modality`) and the learned ensemble of them (`logits`).

    Args:
        backbone, pretrained: the encoder (`create_encoder`; any timm family).
        shared: share the convolutions between the streams.
        dropout: before the linear head.
    """
    text = [m for m in modalities if in_specs[m].get("kind") == TEXT_KIND]
    if text or len(modalities) < 2:
        raise OptionError(
            f"a multi-stream encoder shares convolutions between >= 2 image "
            f"modalities; data.modalities is {modalities}"
        )
    in_chans = common_channels(modalities, {m: int(in_specs[m]["channels"]) for m in modalities})
    plain = create_encoder(backbone, in_chans, pretrained, levels=(4,))  # the head reads one
    head = PooledHead(nn.Dropout(dropout), nn.Linear(feature_channels(plain)[-1], num_classes))
    model = MultiStreamModel(
        modalities,
        in_chans,
        plain,
        head,
        pooled_streams,
        head_name="head",
        shared=shared,
        convert_head=False,
    )
    model.num_classes = num_classes
    return model


register_fusion_ops("classification", CLASSIFICATION_METHODS, classification_host)
