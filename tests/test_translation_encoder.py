"""The translation generator on a timm encoder (`backbone`): MiT streams, the light decoder to an
image, TokenFusion exchanging in the last block of each level as their translation generator."""

from __future__ import annotations

import pytest
import torch

from fusescope.errors import OptionError
from fusescope.models.translation import TRANSLATION_METHODS

MIT = {"name": "mit_b0", "depths": [2, 1, 2, 1], "embed_dims": [8, 16, 32, 64]}
MIT["num_heads"] = [1, 1, 2, 2]


def build(name, **options):
    return TRANSLATION_METHODS.build(
        name,
        options,
        where="model",
        modalities=["shade", "texture"],
        in_channels={"shade": 1, "texture": 3},
        out_channels=3,
    )


def test_tokenfusion_translates_with_exchange_in_each_levels_last_block():
    model = build("tokenfusion", backbone=MIT, decoder_width=8)
    ops = list(model.fusion_ops())
    assert [op.stage for op in ops] == [1, 2, 3, 4]  # one per level: its last block
    assert list(model.encoder.fusion) == [
        "stages_0_blocks_1", "stages_1_blocks_0", "stages_2_blocks_1", "stages_3_blocks_0"
    ]  # fmt: skip
    out = model({"shade": torch.randn(2, 1, 40, 48), "texture": torch.randn(2, 3, 40, 48)})
    assert out["image"].shape == (2, 3, 40, 48)
    assert out["image"].abs().max() <= 1 and sorted(out["per_modality"]) == ["shade", "texture"]
    assert "token_l1" in out["aux_losses"]
    every = build("tokenfusion", backbone=MIT, decoder_width=8, blocks="all")
    assert len(list(every.fusion_ops())) == 6


def test_unet_options_with_a_timm_encoder_are_one_line_errors():
    with pytest.raises(OptionError, match="model.depth, model.width describe the U-Net"):
        build("multistream", backbone=MIT, depth=4, width=8)
    with pytest.raises(OptionError, match="the U-Net trains from scratch"):
        build("cen", pretrained=True)


def test_tokenfusion_decoder_mirrors_the_encoder_levels():
    """`decoder: tokenfusion`: per level (coarse to fine) a pixel-shuffle step to that level's
    width, its skip added, the encoder level's MiT blocks (depth, heads, spatial reduction);
    pixel-shuffle steps without blocks from stride 4 to full size, a 1x1 projection, tanh."""
    from fusescope.models.translation.encoder import TokenFusionDecoder

    model = build("mango", backbone=MIT, decoder="tokenfusion", grid=[2, 2], blocks=1)
    decoder = model.decoder
    assert isinstance(decoder, TokenFusionDecoder)
    # levels 3, 2, 1 of MIT: depths 2, 1, 2; heads 2, 1, 1; mit_b0's reductions 2, 4, 8
    shapes = [
        (len(level), level[0].attn.num_heads, level[0].attn.sr.stride[0])
        for level in decoder.blocks
    ]
    assert shapes == [(2, 2, 2), (1, 1, 4), (2, 1, 8)]
    assert [up.proj.out_channels for up in decoder.up] == [32, 16, 8]
    assert len(decoder.to_full) == 2  # stride 4 -> 2 -> 1
    data = {"shade": torch.randn(2, 1, 40, 48), "texture": torch.randn(2, 3, 40, 48)}
    out = model(data)  # 40 x 48: the stride-32 level is 2 x 2, upsampled to the 3 x 3 skip
    assert out["image"].shape == (2, 3, 40, 48) and out["image"].abs().max() <= 1
    images = [out["image"], *out["per_modality"].values()]  # the ensemble trains alpha only
    loss = sum((img - 0.5).abs().mean() for img in images)
    (loss + out["aux_losses"]["flow_nll"]).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    # private LayerNorms per stream in the decoder, as TokenFusion's LayerNormParallel
    assert decoder.norms[0].weight.shape == (2, 32)
    with pytest.raises(OptionError, match="the U-Net has its own decoder"):
        build("mango", decoder="tokenfusion")
    with pytest.raises(OptionError, match="model.decoder must be one of light, tokenfusion"):
        build("mango", backbone=MIT, decoder="segformer")
