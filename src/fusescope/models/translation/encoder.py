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

`decoder: tokenfusion` swaps the light decoder for TokenFusion's own (`TokenFusionDecoder`, the
task head MANGO's section 4.1 takes for translation): from the coarsest level up, a 2x pixel
shuffle, a 1x1 convolution to the next level's width and a LayerNorm, the encoder's feature
of that level added, that level's MiT blocks and a LayerNorm; from the finest level (stride 4
here, their stride 2) pixel-shuffle steps without blocks to full resolution, then the 1x1
projection and tanh. The blocks copy the encoder level's heads, spatial reduction and depth
(their gen_bX decoder mirrors its encoder's configuration).
"""

from __future__ import annotations

import math

import torch
from timm.models.pvt_v2 import Block as MiTBlock
from torch import Tensor, nn

from fusescope.errors import OptionError
from fusescope.models.backbones import (
    create_encoder,
    feature_channels,
    feature_reductions,
    stage_modules,
)
from fusescope.models.core import common_channels, resize_to
from fusescope.models.decoders import LightDecoder
from fusescope.models.methods import upsample_streams
from fusescope.models.multistream import MultiStreamModel


def tanh_images(small: Tensor, num_streams: int, size: tuple[int, int]) -> Tensor:
    """Decoder output `(B*M, C, h, w)` -> images `(M, B, C, H, W)` in [-1, 1]."""
    return torch.tanh(upsample_streams(small, num_streams, size))


DECODERS = ("light", "tokenfusion")


class PatchUpsample(nn.Module):
    """TokenFusion's decoder step up: 2x pixel shuffle (C -> C / 4 channels), 1x1 convolution to
    `out` channels, LayerNorm over channels; (N, C, H, W) -> (N, out, 2H, 2W)."""

    def __init__(self, channels: int, out: int):
        super().__init__()
        if channels % 4:
            raise OptionError(f"a 2x pixel shuffle needs channels divisible by 4, got {channels}")
        self.shuffle = nn.PixelShuffle(2)
        self.proj = nn.Conv2d(channels // 4, out, 1)
        self.norm = nn.LayerNorm(out)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(self.shuffle(x))
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class TokenFusionDecoder(nn.Module):
    """TokenFusion's translation decoder (see the module docstring) on an encoder's levels.

    Args:
        channels: the encoder levels' widths, finest first.
        reductions: their strides (each twice the previous).
        blocks: per level (finest first), (depth, heads, spatial-reduction ratio) of its MiT
            blocks; the coarsest level has none (it is the decoder's input).
        out_channels: image channels.
    """

    def __init__(
        self,
        channels: list[int],
        reductions: list[int],
        blocks: list[tuple[int, int, int]],
        out_channels: int,
    ):
        super().__init__()
        if any(b != 2 * a for a, b in zip(reductions, reductions[1:], strict=False)):
            raise OptionError(
                f"TokenFusion's decoder needs strides doubling per level: {reductions}"
            )
        levels = range(len(channels) - 2, -1, -1)  # coarsest-but-one to finest
        self.up = nn.ModuleList(PatchUpsample(channels[i + 1], channels[i]) for i in levels)
        self.blocks = nn.ModuleList(
            nn.ModuleList(
                MiTBlock(channels[i], heads, mlp_ratio=4.0, sr_ratio=sr, qkv_bias=True)
                for _ in range(depth)
            )
            for i, (depth, heads, sr) in ((i, blocks[i]) for i in levels)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(channels[i]) for i in levels)
        steps = int(math.log2(reductions[0]))
        self.to_full = nn.Sequential(
            *(PatchUpsample(channels[0], channels[0]) for _ in range(steps))
        )
        self.project = nn.Conv2d(channels[0], out_channels, 1)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = features[-1]
        for up, blocks, norm, skip in zip(
            self.up, self.blocks, self.norms, features[-2::-1], strict=True
        ):
            x = resize_to(up(x), tuple(skip.shape[-2:])) + skip  # sizes differ off multiples of 32
            n, c, h, w = x.shape
            tokens = x.flatten(2).transpose(1, 2)  # (N, h*w, C)
            for block in blocks:
                tokens = block(tokens, [h, w])
            x = norm(tokens).transpose(1, 2).reshape(n, c, h, w)
        return self.project(self.to_full(x))


def encoder_blocks(encoder: nn.Module) -> list[tuple[int, int, int]]:
    """(depth, heads, spatial-reduction ratio) of each stage of a MiT encoder (timm's PVTv2);
    elsewhere 2 blocks, a head per 64 channels and MiT's ratios 8, 4, 2, 1."""
    found = []
    names = stage_modules(encoder)
    for k, width in enumerate(feature_channels(encoder)):
        stage = encoder.get_submodule(names[k]) if k < len(names) else None
        if hasattr(stage, "blocks") and hasattr(stage.blocks[0], "attn"):
            attn = stage.blocks[0].attn
            sr = attn.sr.stride[0] if getattr(attn, "sr", None) is not None else 1
            found.append((len(stage.blocks), attn.num_heads, sr))
        else:
            found.append((2, max(1, width // 64), 2 ** max(0, 3 - k)))
    return found


def encoder_translator(
    modalities: list[str],
    in_channels: dict[str, int],
    out_channels: int,
    backbone: str | dict,
    pretrained: bool | str = False,
    decoder_width: int = 96,
    decoder: str = "light",
) -> MultiStreamModel:
    """M streams through a shared timm encoder (private norms) and the light decoder (or
    TokenFusion's, `decoder: tokenfusion`) to an image; see the module docstring."""
    if decoder not in DECODERS:
        raise OptionError(f"model.decoder must be one of {', '.join(DECODERS)}, not {decoder!r}")
    in_chans = common_channels(modalities, in_channels)
    plain = create_encoder(backbone, in_chans, pretrained)
    if decoder == "tokenfusion":
        head = TokenFusionDecoder(
            feature_channels(plain),
            feature_reductions(plain),
            encoder_blocks(plain),
            out_channels,
        )
    else:
        head = LightDecoder(feature_channels(plain), out_channels, width=decoder_width, dropout=0.0)
    model = MultiStreamModel(
        modalities, in_chans, plain, head, tanh_images, head_name="decoder", output_key="image"
    )
    model.out_channels = out_channels
    return model
