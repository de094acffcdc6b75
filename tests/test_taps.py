"""Feature taps: named modules through hooks, per-modality splits, concatenation, streaming."""

import pytest
import torch
from torch import nn

from fusescope.dissect import FeatureTaps, Tap, concat_features, stream_features
from fusescope.errors import FusescopeError
from fusescope.models import build_model


@pytest.fixture(scope="module")
def joint():
    torch.manual_seed(0)
    return build_model(
        {"name": "two_stream_concat", "backbone": "resnet18"},
        ["rgb", "depth"],
        {"rgb": 3, "depth": 1},
        5,
    ).eval()


def batch(b=2, size=32):
    return {
        "rgb": torch.randn(b, 3, size, size),
        "depth": torch.randn(b, 1, size, size),
        "label": torch.randint(0, 5, (b, size, size)),
        "id": [str(i) for i in range(b)],
    }


def test_taps_read_modules_without_editing_the_model(joint):
    b = batch()
    with torch.no_grad():
        plain = joint(b)["logits"]
        with FeatureTaps(
            joint,
            {
                "rgb": "encoders.rgb.layer4",
                "fused": "fuse.3",
                "enc": Tap("encoders.depth", index=1),
            },
        ) as taps:
            tapped = joint(b)["logits"]
        expected_rgb = joint.encoders["rgb"](b["rgb"])[3]
        expected_depth = joint.encoders["depth"](b["depth"])[1]
    assert torch.equal(plain, tapped)
    assert torch.allclose(taps.features["rgb"], expected_rgb)
    assert torch.allclose(taps.features["enc"], expected_depth)
    assert taps.features["fused"].shape == (2, 512, 1, 1)
    # hooks removed on exit: another forward records nothing
    kept = {k: v.clone() for k, v in taps.features.items()}
    with torch.no_grad():
        joint(batch())
    assert all(torch.equal(taps.features[k], v) for k, v in kept.items())


def test_bad_names_fail_clearly(joint):
    with pytest.raises(FusescopeError, match="no module 'encoders.rgb.layer9'"):
        FeatureTaps(joint, {"x": "encoders.rgb.layer9"})
    with pytest.raises(FusescopeError, match="index"), torch.no_grad():
        with FeatureTaps(joint, {"x": "encoders.rgb"}):
            joint(batch())


def test_split_and_clone_against_inplace():
    class Stacked(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            y = self.conv(x)
            return self.relu(y)  # overwrites the conv output in place

    model = Stacked()
    x = torch.randn(6, 3, 4, 4)  # (B*M) = 3 samples x 2 modalities, sample-major
    with torch.no_grad(), FeatureTaps(model, {"c": Tap("conv", split=("rgb", "depth"))}) as t:
        model(x)
        ref = model.conv(x)
    assert set(t.features) == {"c@rgb", "c@depth"}
    assert torch.equal(t.features["c@rgb"], ref[0::2])  # still negative values: a copy was kept
    assert torch.equal(t.features["c@depth"], ref[1::2])
    with (
        pytest.raises(FusescopeError, match="multiple"),
        FeatureTaps(model, {"c": Tap("conv", split=("a", "b", "c", "d"))}),
    ):
        model(x)


def test_concat_resizes_to_first():
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)
    cat = concat_features([a, b])
    assert cat.shape == (2, 8, 4, 4) and torch.equal(cat[:, :3], a)


def test_stream_features_over_models(joint):
    torch.manual_seed(1)
    rgb_only = build_model({"name": "unimodal"}, ["rgb"], {"rgb": 3}, 5).eval()
    loader = [batch(2), batch(3)]
    stream = stream_features(
        {"rgb": rgb_only, "joint": joint},
        {
            "rgb_sep": ("rgb", "encoder.layer4"),
            "rgb_joint": ("joint", "encoders.rgb.layer4"),
            "depth_joint": ("joint", "encoders.depth.layer4"),
        },
        loader,
        concat={"cat_joint": ["rgb_joint", "depth_joint"]},
    )
    assert not isinstance(stream, list)  # a generator: one batch at a time
    sizes = []
    for b, feats in stream:
        sizes.append(feats["cat_joint"].shape[0])
        assert feats["cat_joint"].shape[1] == 1024
        assert torch.equal(feats["cat_joint"][:, 512:], feats["depth_joint"])
        assert b["rgb"].shape[0] == sizes[-1]
    assert sizes == [2, 3]
    with pytest.raises(FusescopeError, match="unknown models"):
        next(stream_features({"rgb": rgb_only}, {"x": ("nope", "encoder")}, loader))
    with pytest.raises(FusescopeError, match="concat"):
        next(
            stream_features(
                {"rgb": rgb_only},
                {"x": ("rgb", "encoder.layer4")},
                loader,
                concat={"c": ["x", "y"]},
            )
        )
