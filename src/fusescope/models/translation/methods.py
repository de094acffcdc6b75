"""The translation methods: every fusion method that makes sense for a pix2pix U-Net.

Each builder is `builder(modalities, in_channels, out_channels, **model_cfg)` and takes the
U-Net's size: `depth` (encoder levels; 8 is the papers' U-Net-256), `width` (pix2pix's ngf, 64)
and `dropout` (innermost decoder levels with dropout 0.5; pix2pix: 3).

Single stream: `unimodal` (one input), `early_concat` (inputs concatenated on the channel axis).
Multi-stream (shared convs, private instance norms, per-modality outputs + learned ensemble, as
CEN's translation code): `multistream` (no fusion) and every op of `FUSION_OPS` (`cen`,
`asymfusion`, `baseline`, `mango`, `bmc`, `tokenfusion`, `geminifusion`, ...) on the
multi-stream host (`host`), registered by `models/methods.register_fusion_ops`: the U-Net
(`unet.translation_host`; `decoder_norms`: shared (the paper's text) or private (the CEN code)
instance-norm affines in the decoder), or with `backbone: <timm encoder>` a MiT / Swin / ResNet
encoder and a light decoder (`encoder.encoder_translator`; the transformer ops need it).

Levels are numbered 1..depth from the finest (stride 2) to the innermost (1x1 at 256 px for
depth 8) and are the stages of the ops' `stages` options. CEN and AsymFusion act where the
encoder has instance norms, levels 2..depth-1 (CEN's code: conv2..conv7); the baselines at CEN
Table 4's positions (`UNetEncoder.positions`).
"""

from __future__ import annotations

from fusescope.errors import OptionError
from fusescope.models.methods import register_fusion_ops
from fusescope.models.multistream import MultiStreamModel
from fusescope.models.translation.encoder import encoder_translator
from fusescope.models.translation.registry import TRANSLATION_METHODS
from fusescope.models.translation.unet import UNetEncoder, pix2pix_init, translation_host, unet


@TRANSLATION_METHODS.register("unimodal")
def unimodal(
    modalities, in_channels, out_channels, depth: int = 8, width: int = 64, dropout: int = 3
) -> MultiStreamModel:
    """pix2pix on one input modality."""
    if len(modalities) != 1:
        raise OptionError(f"unimodal reads one modality; data.modalities is {modalities}")
    return early_concat(modalities, in_channels, out_channels, depth, width, dropout)


@TRANSLATION_METHODS.register("early_concat")
def early_concat(
    modalities, in_channels, out_channels, depth: int = 8, width: int = 64, dropout: int = 3
) -> MultiStreamModel:
    """pix2pix on the channel-concatenation of the inputs (input-level fusion)."""
    model = unet(
        modalities,
        in_channels,
        out_channels,
        streams="concat",
        depth=depth,
        width=width,
        dropout=dropout,
    )
    return pix2pix_init(model)


UNET_DEFAULTS = {"depth": 8, "width": 64, "dropout": 3, "decoder_norms": "shared"}


def host(
    modalities: list[str],
    in_channels: dict[str, int],
    out_channels: int,
    *,
    backbone: str | dict = "unet",
    pretrained: bool | str = False,
    depth: int = 8,
    width: int = 64,
    dropout: int = 3,
    decoder_norms: str = "shared",
    decoder_width: int = 96,
    decoder: str = "light",
) -> MultiStreamModel:
    """The multi-stream generator every op inserts into: `backbone: unet` (default) the pix2pix
    U-Net (`depth`, `width`, `dropout`, `decoder_norms`; `unet.translation_host`), or any timm
    encoder (`mit_b0`, `{name: mit_b2, drop_path_rate: 0.1}`, `resnet18`, ...) with `pretrained`
    weights and the light decoder of `decoder_width` or TokenFusion's (`decoder: tokenfusion`;
    `encoder.encoder_translator`)."""
    if backbone == "unet":
        if decoder != "light":
            raise OptionError(
                f"model.decoder {decoder!r} decodes a timm encoder's levels; the U-Net has its "
                f"own decoder (set model.backbone, e.g. mit_b0)"
            )
        if pretrained:
            raise OptionError("model.pretrained: the U-Net trains from scratch (pix2pix, CEN)")
        return translation_host(
            modalities,
            in_channels,
            out_channels,
            depth=depth,
            width=width,
            dropout=dropout,
            decoder_norms=decoder_norms,
        )
    given = {"depth": depth, "width": width, "dropout": dropout, "decoder_norms": decoder_norms}
    unet_only = [k for k, v in given.items() if v != UNET_DEFAULTS[k]]
    if unet_only:
        raise OptionError(
            f"model.{', model.'.join(unet_only)} describe the U-Net; backbone {backbone!r} "
            f"decodes with the light FPN decoder (model.decoder_width)"
        )
    if len(modalities) < 2:
        raise OptionError(
            f"a multi-stream generator fuses >= 2 modalities; data.modalities is {modalities}"
        )
    return encoder_translator(
        modalities, in_channels, out_channels, backbone, pretrained, decoder_width, decoder
    )


def initialise(model: MultiStreamModel) -> MultiStreamModel:
    """pix2pix's initialisation for the U-Net; a timm encoder keeps its own (or its weights)."""
    return pix2pix_init(model) if isinstance(model.encoder.body, UNetEncoder) else model


register_fusion_ops("translation", TRANSLATION_METHODS, host, finalize=initialise)
