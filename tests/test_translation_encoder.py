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
