"""A translation generator on any timm encoder (`model.backbone` other than `unet`): the
multi-stream encoder of `create_encoder` (MiT, Swin, ViT, ResNet, ...), the `light` FPN decoder
run on every stream with private BatchNorms, its output upsampled to the input size and squashed
by a tanh into [-1, 1], per-stream images and their learned ensemble. Every op of `FUSION_OPS`
inserts at the encoder's sites as in segmentation; transformer ops (TokenFusion, GeminiFusion)
need it, since the U-Net's levels have no transformer blocks.

TokenFusion's translation generator (`gen_b2`, trained from scratch) maps onto it as: their
5-level MiT encoder (3x3 stride-2 patch embeddings, strides 2-32, widths 64-1024) -> a 4-level
MiT (`mit_bX`, strides 4-32); their exchange in the last block of each encoder level, with one
score predictor per level -> `tokenfusion` with `blocks: last` (translation's default); their
MiT decoder (pixel-shuffle upsampling, skip additions, transformer blocks, no exchange) -> the
light FPN decoder; their per-stream 1x1 projection + tanh and alpha ensemble -> the same. Their
discriminator (`dis_b2`, a MiT on input + image per stream) is the task's PatchGAN here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fusescope.models.backbones import create_encoder, feature_channels
from fusescope.models.core import common_channels
from fusescope.models.decoders import LightDecoder
from fusescope.models.methods import upsample_streams
from fusescope.models.multistream import MultiStreamModel


def tanh_images(small: Tensor, num_streams: int, size: tuple[int, int]) -> Tensor:
    """Decoder output `(B*M, C, h, w)` -> images `(M, B, C, H, W)` in [-1, 1]."""
    return torch.tanh(upsample_streams(small, num_streams, size))


def encoder_translator(
    modalities: list[str],
    in_channels: dict[str, int],
    out_channels: int,
    backbone: str | dict,
    pretrained: bool | str = False,
    decoder_width: int = 96,
) -> MultiStreamModel:
    """M streams through a shared timm encoder (private norms) and the light decoder to an
    image; see the module docstring."""
    in_chans = common_channels(modalities, in_channels)
    plain = create_encoder(backbone, in_chans, pretrained)
    head = LightDecoder(feature_channels(plain), out_channels, width=decoder_width, dropout=0.0)
    model = MultiStreamModel(
        modalities, in_chans, plain, head, tanh_images, head_name="decoder", output_key="image"
    )
    model.out_channels = out_channels
    return model
