"""CEN and AsymFusion for classification: the segmentation multi-stream encoder with a pooled head.

Where the modalities share structure (RGB and depth images), CEN and AsymFusion run every
modality through one timm encoder with shared convolutions and private BatchNorms
(`models/multistream.py`), fusing inside it with the same ops as for segmentation
(`fusion/exchange.ChannelExchange`, `fusion/asym.AsymmetricFusion`). Instead of a decoder, each
stream's deepest feature is averaged and read by one shared linear head (shared like the
convolutions); each stream's logits are `per_modality`, and the scored logits are the learned
ensemble over them, as in the papers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fusescope.errors import OptionError
from fusescope.models.backbones import create_encoder, feature_channels
from fusescope.models.classification.base import TEXT_KIND, Classifier, class_output, head
from fusescope.models.fusion.asym import AsymmetricFusion
from fusescope.models.fusion.exchange import check_exchange_options, insert_exchange
from fusescope.models.multistream import (
    Ensemble,
    MultiStreamEncoder,
    Where,
    common_channels,
    fusion_ops,
    modality_view,
    stack_modalities,
    sum_aux_losses,
)
from fusescope.models.registry import CLASSIFICATION_METHODS
from fusescope.models.segmentor import tile_channels


class MultiStreamClassifier(Classifier):
    """M streams through one encoder with shared convolutions and private BNs; a shared pooled
    head per stream (`per_modality`) and the learned ensemble of them (`logits`).

    Fusion methods call `self.encoder.insert(where, factory)` after construction.
    """

    def __init__(self, modalities, in_specs, num_classes, backbone, pretrained, shared, dropout):
        super().__init__(modalities, num_classes)
        text = [m for m in modalities if in_specs[m].get("kind") == TEXT_KIND]
        if text or len(modalities) < 2:
            raise OptionError(
                f"a multi-stream encoder shares convolutions between >= 2 image "
                f"modalities; data.modalities is {modalities}"
            )
        self.in_chans = common_channels(
            modalities, {m: int(in_specs[m]["channels"]) for m in modalities}
        )
        plain = create_encoder(backbone, self.in_chans, pretrained)
        self.encoder = MultiStreamEncoder(plain, len(modalities), shared=shared)
        self.head = head(feature_channels(plain)[-1], num_classes, dropout)
        self.ensemble = Ensemble(len(modalities))

    def forward(self, batch: dict[str, Tensor]) -> dict:
        inputs = [tile_channels(x, self.in_chans) for x, _ in self.inputs(batch)]
        M = len(self.modalities)
        features, measured = self.encoder.run(stack_modalities(inputs))  # (B*M, C, h, w)
        logits = modality_view(self.head(features[-1].mean((2, 3))), M)  # (B, M, K)
        logits = logits.transpose(0, 1)  # (M, B, K)
        per_modality = dict(zip(self.modalities, logits.unbind(0), strict=True))
        aux = {**sum_aux_losses(fusion_ops(self)), **measured}
        return class_output(self.ensemble(logits), per_modality, aux)

    def combine_present(self, per_modality: dict[str, Tensor], present: list[str]) -> Tensor:
        """The ensemble renormalised over the present modalities only."""
        alpha = self.ensemble.alpha
        mask = torch.tensor([m in present for m in self.modalities], device=alpha.device)
        weights = torch.softmax(alpha.masked_fill(~mask, float("-inf")), 0)
        return torch.tensordot(
            weights, torch.stack([per_modality[m] for m in self.modalities]), dims=1
        )

    def lr_scales(self) -> list[tuple[nn.Parameter, float]]:
        return [pair for op in fusion_ops(self) for pair in getattr(op, "lr_scales", list)()]

    @torch.no_grad()
    def training_stats(self) -> dict[str, float]:
        """Summed `stat_parts` of the fusion ops (CEN's exchanged fraction per stage)."""
        num: dict[str, Tensor] = {}
        den: dict[str, float] = {}
        for op in fusion_ops(self):
            for name, (n, d) in getattr(op, "stat_parts", dict)().items():
                num[name] = num.get(name, 0) + n.float()
                den[name] = den.get(name, 0.0) + float(d)
        return {k: float(v) / max(den[k], 1.0) for k, v in num.items()}


@CLASSIFICATION_METHODS.register("multistream")
def multistream(
    modalities,
    in_specs,
    num_classes,
    backbone="resnet18",
    pretrained=False,
    shared: bool = True,
    dropout: float = 0.0,
) -> Classifier:
    """Shared convolutions, private BNs, no exchange: the multi-stream baseline."""
    return MultiStreamClassifier(
        modalities, in_specs, num_classes, backbone, pretrained, shared, dropout
    )


@CLASSIFICATION_METHODS.register("cen")
def cen(
    modalities,
    in_specs,
    num_classes,
    backbone="resnet18",
    pretrained=False,
    theta: float = 2e-2,
    l1_weight: float = 2e-4,
    mode: str = "exchange",
    split: bool = True,
    random_portion: float = 0.3,
    shared: bool = True,
    stages: list[int] | tuple[int, ...] = (1, 2, 3, 4),
    gamma_lr_scale: float = 1.0,
    exchange_scope: str = "own_part",
    l1_per_output: bool = False,
    dropout: float = 0.0,
) -> Classifier:
    """CEN with a pooled head; options as the segmentation `cen` (fusion/exchange.py)."""
    check_exchange_options(theta, l1_weight, mode, random_portion, gamma_lr_scale, exchange_scope)
    model = MultiStreamClassifier(
        modalities, in_specs, num_classes, backbone, pretrained, shared, dropout
    )
    insert_exchange(
        model.encoder,
        stages,
        theta,
        l1_weight,
        mode,
        split,
        random_portion,
        gamma_lr_scale,
        exchange_scope,
        l1_per_output,
    )
    return model


@CLASSIFICATION_METHODS.register("asymfusion")
def asymfusion(
    modalities,
    in_specs,
    num_classes,
    backbone="resnet18",
    pretrained=False,
    shuffle: bool = True,
    shift: bool = True,
    shared: bool = True,
    stages: list[int] | tuple[int, ...] = (1, 2, 3, 4),
    dropout: float = 0.0,
) -> Classifier:
    """AsymFusion (channel shuffle + pixel shift) with a pooled head (fusion/asym.py)."""
    if not (shuffle or shift):
        raise OptionError("asymfusion needs shuffle or shift (use name: multistream for neither)")
    model = MultiStreamClassifier(
        modalities, in_specs, num_classes, backbone, pretrained, shared, dropout
    )
    model.encoder.insert(
        Where(("conv_in", "act_out"), stages=tuple(stages), blocks="last"),
        lambda point: AsymmetricFusion(point, shuffle, shift),
    )
    return model
