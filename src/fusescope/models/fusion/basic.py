"""The simplest fusion points: unimodal, input-level (early) concat, logit-level (late) average,
and the two-stream model of the dissection paper (two encoders, concat, 1x1 conv, one decoder)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fusescope.errors import OptionError
from fusescope.models.backbones import create_encoder, feature_channels, feature_reductions
from fusescope.models.bmc import bmc_heads, check_bmc_options
from fusescope.models.decoders import build_decoder
from fusescope.models.registry import FUSION_METHODS
from fusescope.models.segmentor import Segmentor, resize_to
from fusescope.nn.layers import conv_bn_relu


class EncoderDecoder(Segmentor):
    """One encoder over the channel-concatenation of the given modalities, one decoder.

    With a single modality this is the unimodal model; with several, input-level early fusion.
    """

    def __init__(
        self,
        modalities: list[str],
        in_channels: dict[str, int],
        num_classes: int,
        backbone: str,
        pretrained: bool | str,
        decoder: str | dict,
    ):
        super().__init__(modalities, num_classes)
        self.encoder = create_encoder(backbone, sum(in_channels[m] for m in modalities), pretrained)
        self.decoder = build_decoder(
            decoder, feature_channels(self.encoder), feature_reductions(self.encoder), num_classes
        )

    def forward(self, batch: dict[str, Tensor]) -> dict:
        x = torch.cat(self.inputs(batch), dim=1)
        return self.output(resize_to(self.decoder(self.encoder(x)), x.shape[-2:]))


@FUSION_METHODS.register("unimodal")
def unimodal(
    modalities,
    in_channels,
    num_classes,
    backbone: str = "resnet18",
    pretrained: bool | str = False,
    decoder: str | dict = "light",
) -> Segmentor:
    if len(modalities) != 1:
        raise OptionError(f"unimodal reads one modality; data.modalities is {modalities}")
    return EncoderDecoder(modalities, in_channels, num_classes, backbone, pretrained, decoder)


@FUSION_METHODS.register("early_concat")
def early_concat(
    modalities,
    in_channels,
    num_classes,
    backbone: str = "resnet18",
    pretrained: bool | str = False,
    decoder: str | dict = "light",
) -> Segmentor:
    return EncoderDecoder(modalities, in_channels, num_classes, backbone, pretrained, decoder)


class LateAverage(Segmentor):
    """One full encoder-decoder per modality; the scored logits are their mean."""

    def __init__(self, modalities, in_channels, num_classes, backbone, pretrained, decoder):
        super().__init__(modalities, num_classes)
        self.streams = nn.ModuleDict(
            {
                m: EncoderDecoder([m], in_channels, num_classes, backbone, pretrained, decoder)
                for m in modalities
            }
        )

    scores_streams = True  # the mean of the streams' logits

    def forward(self, batch: dict[str, Tensor]) -> dict:
        per_modality = {m: self.streams[m](batch)["logits"] for m in self.modalities}
        logits = torch.stack(list(per_modality.values())).mean(0)
        return self.output(logits, per_modality=per_modality)


@FUSION_METHODS.register("late_average")
def late_average(
    modalities,
    in_channels,
    num_classes,
    backbone: str = "resnet18",
    pretrained: bool | str = False,
    decoder: str | dict = "light",
) -> Segmentor:
    return LateAverage(modalities, in_channels, num_classes, backbone, pretrained, decoder)


class TwoStreamConcat(Segmentor):
    """Separate encoders; at every level the features are concatenated over modalities and a
    1x1 conv (+BN+ReLU) reduces them back to one stream's width; one shared decoder.

    The dissection paper's joint model. `fuse.{level}` is the fused feature, `encoders.{m}` each
    modality's own, which is what the dissection taps read.

    With `bmc`, the Bidirectional Mutual Constraint (`fusescope.models.bmc.BMC`) acts on the two
    streams' features at each level in `bmc_levels` before they are fused, and its weighted sum
    is returned as `aux_losses["bmc"]`; `bmc.{level}` holds its heads.
    """

    def __init__(
        self,
        modalities,
        in_channels,
        num_classes,
        backbone,
        pretrained,
        decoder,
        bmc: bool | None = None,
        bmc_weight: float = 0.1,
        bmc_mode: str = "both",
        bmc_levels: list[int] | None = None,
    ):
        super().__init__(modalities, num_classes)
        self.encoders = nn.ModuleDict(
            {m: create_encoder(backbone, in_channels[m], pretrained) for m in modalities}
        )
        first = self.encoders[modalities[0]]
        channels = feature_channels(first)
        self.fuse = nn.ModuleList(conv_bn_relu(c * len(modalities), c, 1) for c in channels)
        self.decoder = build_decoder(decoder, channels, feature_reductions(first), num_classes)
        self.bmc_weight = float(bmc_weight)
        self.bmc = nn.ModuleDict()
        if bmc:
            if len(modalities) != 2:
                raise OptionError(f"bmc constrains two streams; data.modalities is {modalities}")
            # a ModuleDict keyed by level: `bmc.3` names the heads of the deepest level
            self.bmc = bmc_heads(channels, bmc_weight, bmc_mode, bmc_levels)

    def forward(self, batch: dict[str, Tensor]) -> dict:
        inputs = self.inputs(batch)
        per_stream = [self.encoders[m](x) for m, x in zip(self.modalities, inputs, strict=True)]
        levels = list(zip(*per_stream, strict=True))  # per level: one feature per modality
        aux = {}
        if len(self.bmc) and self.training:
            aux["bmc"] = self.bmc_weight * sum(
                bmc.loss(*levels[int(lvl)]) for lvl, bmc in self.bmc.items()
            )
        fused = [
            fuse(torch.cat(level, dim=1)) for fuse, level in zip(self.fuse, levels, strict=True)
        ]
        return self.output(resize_to(self.decoder(fused), inputs[0].shape[-2:]), aux_losses=aux)


@FUSION_METHODS.register("two_stream_concat")
def two_stream_concat(
    modalities,
    in_channels,
    num_classes,
    backbone: str = "resnet18",
    pretrained: bool | str = False,
    decoder: str | dict = "light",
    bmc: bool | None = None,
    bmc_weight: float = 0.1,
    bmc_mode: str = "both",
    bmc_levels: list[int] | None = None,
) -> Segmentor:
    """The dissection paper's joint model; `bmc: true` adds the BMC auxiliary loss.

    Args:
        bmc: add BMC (null/false: off).
        bmc_weight: weight of the BMC loss in `aux_losses["bmc"]`.
        bmc_mode: "both" (minimise one half's cross-modal MI, maximise the other's), "min" or
            "max" (one term only, for ablations).
        bmc_levels: encoder levels (0 = finest) whose features BMC constrains; null = all.
    """
    check_bmc_options(bmc_weight if bmc else 0.0, bmc_mode)
    return TwoStreamConcat(
        modalities,
        in_channels,
        num_classes,
        backbone,
        pretrained,
        decoder,
        bmc=bmc,
        bmc_weight=bmc_weight,
        bmc_mode=bmc_mode,
        bmc_levels=bmc_levels,
    )
