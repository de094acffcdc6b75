"""The translation methods: every fusion method that makes sense for a pix2pix U-Net.

Each builder is `builder(modalities, in_channels, out_channels, **model_cfg)` and takes the
U-Net's size: `depth` (encoder levels; 8 is the papers' U-Net-256), `width` (pix2pix's ngf, 64)
and `dropout` (innermost decoder levels with dropout 0.5; pix2pix: 3).

Single stream: `unimodal` (one input), `early_concat` (inputs concatenated on the channel axis).
Multi-stream (shared convs, private instance norms, per-modality outputs + learned ensemble, as
CEN's translation code): `multistream` (no fusion) and every op of `FUSION_OPS` (`cen`,
`asymfusion`, `baseline`, `mango`, `bmc`, ...) on the U-Net host (`unet.translation_host`),
registered by `models/methods.register_fusion_ops`; each takes `decoder_norms`: shared (the
paper's text) or private (the CEN code) instance-norm affines in the decoder.

Levels are numbered 1..depth from the finest (stride 2) to the innermost (1x1 at 256 px for
depth 8) and are the stages of the ops' `stages` options. CEN and AsymFusion act where the
encoder has instance norms, levels 2..depth-1 (CEN's code: conv2..conv7); the baselines at CEN
Table 4's positions (`UNetEncoder.positions`).
"""

from __future__ import annotations

from fusescope.errors import OptionError
from fusescope.models.methods import register_fusion_ops
from fusescope.models.multistream import MultiStreamModel
from fusescope.models.translation.registry import TRANSLATION_METHODS
from fusescope.models.translation.unet import pix2pix_init, translation_host, unet


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


register_fusion_ops("translation", TRANSLATION_METHODS, translation_host, finalize=pix2pix_init)
