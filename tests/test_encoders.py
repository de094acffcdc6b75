"""One encoder factory for every timm family: four NCHW levels at strides 4-32 from any input
size, channels as `feature_info` says, stages numbered 1-4 whatever levels are returned, and
one-line errors for a name or an option a family cannot take."""

from __future__ import annotations

import pytest
import torch

from fusescope.errors import FusescopeError
from fusescope.models.backbones import (
    create_encoder,
    feature_channels,
    feature_reductions,
    stage_modules,
)
from test_fusion_contract import FAMILIES


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_gives_four_nchw_levels_at_strides_4_to_32(family):
    enc = create_encoder(FAMILIES[family]).eval()
    assert enc.family == family
    assert feature_reductions(enc) == [4, 8, 16, 32]
    with torch.no_grad():
        feats = enc(torch.randn(2, 3, 45, 61))  # no multiple of any stride
    assert len(feats) == 4
    for f, c, r in zip(feats, feature_channels(enc), [4, 8, 16, 32], strict=True):
        assert f.shape[:2] == (2, c)  # NCHW, the channels feature_info gives
        # the grid of the stride, up to the padding of a patch embedding
        assert abs(f.shape[-2] - 45 / r) <= 1 and abs(f.shape[-1] - 61 / r) <= 1
    assert len(stage_modules(enc)) == 4
    for name in stage_modules(enc):
        enc.get_submodule(name)  # every stage names a real module


@pytest.mark.parametrize("family", ["resnet", "swin", "vit"])
def test_one_level_keeps_the_four_stages(family):
    """A classifier reads the deepest level only; its stages stay numbered 1-4."""
    full = create_encoder(FAMILIES[family])
    last = create_encoder(FAMILIES[family], levels=(4,))
    assert feature_reductions(last) == [32]
    assert stage_modules(last) == stage_modules(full)
    with torch.no_grad():
        (f,) = last(torch.randn(1, 3, 64, 64))
    assert f.shape[1] == feature_channels(full)[-1]


def test_one_channel_input_for_every_family():
    for family, spec in FAMILIES.items():
        enc = create_encoder(spec, in_chans=1)
        with torch.no_grad():
            assert enc(torch.randn(1, 1, 64, 64))[0].shape[0] == 1, family


@pytest.mark.parametrize(
    "spec, match",
    [
        ("resnet_nope", "not a timm model; families that work: resnet"),
        ({"name": "mit_b0", "output_stride": 16}, "cannot dilate"),
        ({"name": "resnet18", "stride": 16}, "unexpected keyword argument 'stride'"),
        ({"name": "mit_b0", "num_heads": [5, 5, 5, 5]}, "should be divided by num_heads"),
    ],
)
def test_bad_backbones_are_one_line_errors(spec, match):
    with pytest.raises(FusescopeError, match=match) as err:
        create_encoder(spec)
    assert "\n" not in str(err.value)


def test_dilated_resnet_keeps_its_levels_and_weights():
    plain = create_encoder("resnet18")
    dilated = create_encoder({"name": "resnet18", "output_stride": 16})
    assert feature_reductions(dilated) == [4, 8, 16, 16]
    assert [k for k in plain.state_dict()] == [k for k in dilated.state_dict()]


def test_mit_is_pvt_v2_with_mlp_ratio_4():
    """SegFormer's MiT-B0 encoder has 3.32 M parameters; timm's pvt_v2_b0 (MLP ratio 8 in its
    early stages) has more."""
    mit = create_encoder("mit_b0")
    pvt = create_encoder("pvt_v2_b0")
    count = sum(p.numel() for p in mit.parameters())
    assert abs(count / 1e6 - 3.32) < 0.01
    assert sum(p.numel() for p in pvt.parameters()) > count
