"""SA-Gate + BMP: gate algebra on known tensors, every ablation variant builds and trains, gate
maps are recorded and drawn."""

import math

import pytest
import torch
import torch.nn.functional as F

from fusescope.dissect.taps import FeatureTaps, Tap
from fusescope.errors import FusescopeError
from fusescope.models import (
    build_model,
    deeplab,  # noqa: F401  (registers deeplabv3plus)
)
from fusescope.models.backbones import create_encoder, encoder_stages
from fusescope.models.fusion.sagate import (
    AGGREGATIONS,
    SEPARATIONS,
    FeatureAggregation,
    FeatureSeparation,
    SAGate,
    run_segment,
    save_gate_figure,
)
from fusescope.tasks.segmentation.loss import total_loss

MODALITIES, IN_CHANNELS = ["rgb", "depth"], {"rgb": 3, "depth": 1}
TINY_DECODER = {"name": "deeplabv3plus", "width": 16, "low_level_width": 8}


def tiny(**options):
    cfg = {"name": "sagate", "decoder": TINY_DECODER, **options}
    return build_model(cfg, MODALITIES, IN_CHANNELS, num_classes=3)


def batch(h=32, w=40, b=2):
    return {
        "rgb": torch.randn(b, 3, h, w),
        "depth": torch.randn(b, 1, h, w),
        "label": torch.randint(0, 3, (b, h, w)),
    }


def pair(c=32, h=5, w=6, b=2):
    return torch.rand(b, c, h, w), torch.rand(b, c, h, w)


def constant_filter(filter_module, value: float):
    """Make a ChannelFilter output `value` for every channel and input."""
    last = filter_module.mlp[2]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.constant_(last.bias, math.log(value / (1 - value)))


# ---- feature aggregation -------------------------------------------------------------------


def test_gate_weight_is_the_softmax_of_the_two_gate_logits():
    """Known answer: gate logits fixed at (1, -1) everywhere give the RGB weight
    e / (e + 1/e) = 1 / (1 + e^-2) at every pixel, and the merge is the convex combination."""
    fa = FeatureAggregation(32, "proposed")
    torch.nn.init.zeros_(fa.gates.weight)
    fa.gates.bias.data = torch.tensor([1.0, -1.0])
    rgb, depth = pair()
    merged, a = fa(rgb, depth, rgb, depth)
    want = 1 / (1 + math.exp(-2))
    torch.testing.assert_close(a, torch.full((2, 1, 5, 6), want))
    torch.testing.assert_close(merged, rgb * want + depth * (1 - want))


@pytest.mark.parametrize("bias, expect", [((40.0, -40.0), "rgb"), ((-40.0, 40.0), "depth")])
def test_gate_forced_to_one_modality_passes_its_original_input(bias, expect):
    gate = SAGate(32, bmp=False)
    torch.nn.init.zeros_(gate.aggregation.gates.weight)
    gate.aggregation.gates.bias.data = torch.tensor(bias)
    rgb, depth = pair()
    _, _, merged, a = gate(rgb, depth)
    # the merge uses the ORIGINAL inputs, not the recalibrated ones
    torch.testing.assert_close(merged, rgb if expect == "rgb" else depth)
    assert torch.allclose(a, torch.full_like(a, 1.0 if expect == "rgb" else 0.0))


def test_aggregation_variants_match_their_definitions():
    rgb, depth = pair()
    rec_rgb, rec_depth = pair()
    merged, a = FeatureAggregation(32, "addition")(rgb, depth, rec_rgb, rec_depth)
    assert a is None
    torch.testing.assert_close(merged, rec_rgb + rec_depth)
    fa = FeatureAggregation(32, "conv")
    merged, a = fa(rgb, depth, rec_rgb, rec_depth)
    assert a is None
    torch.testing.assert_close(merged, fa.conv(torch.cat([rec_rgb, rec_depth], 1)))


# ---- feature separation --------------------------------------------------------------------


def test_separation_variants_match_their_definitions():
    rgb, depth = pair()
    wd, wr = 0.3, 0.8  # constant weights: filters[0] acts on depth, filters[1] on rgb
    expected = {
        "proposed": (rgb + wd * depth, depth + wr * rgb),
        "self_global": (rgb + wd * depth, depth + wr * rgb),
        "cross_global": (rgb + wd * rgb, depth + wr * depth),
        "product": (rgb * (wd * depth), depth * (wr * rgb)),
        "concat": (rgb, depth),
    }
    assert set(expected) == set(SEPARATIONS)
    for variant, (exp_rgb, exp_depth) in expected.items():
        fs = FeatureSeparation(32, variant, reduction=16)
        if fs.filters is not None:
            constant_filter(fs.filters[0], wd)
            constant_filter(fs.filters[1], wr)
        rec_rgb, rec_depth = fs(rgb, depth)
        torch.testing.assert_close(rec_rgb, exp_rgb, msg=variant)
        torch.testing.assert_close(rec_depth, exp_depth, msg=variant)


def test_proposed_separation_reads_both_modalities_and_self_global_only_its_own():
    rgb, depth = pair(c=16)
    fs = FeatureSeparation(16, "proposed", reduction=4)
    assert fs.filters[0].mlp[0].in_features == 32  # GAP(rgb || depth): 2C -> C/16
    assert fs.filters[0].mlp[0].out_features == 4 and fs.filters[0].mlp[2].out_features == 16
    own = FeatureSeparation(16, "self_global", reduction=4)
    constant_depth = torch.ones_like(depth)
    # the weight on depth must not change when only RGB changes
    w1 = own(rgb, constant_depth)[0] - rgb
    w2 = own(rgb * 3, constant_depth)[0] - rgb * 3
    torch.testing.assert_close(w1, w2)


# ---- BMP -----------------------------------------------------------------------------------


def test_bmp_averages_each_stream_with_the_merge():
    rgb, depth = pair()
    rgb, depth = rgb - 0.5, depth - 0.5  # negative values make the ReLU option visible
    gate = SAGate(32, bmp=True)
    rgb_out, depth_out, merged, _ = gate(rgb, depth)
    torch.testing.assert_close(rgb_out, (rgb + merged) / 2)
    torch.testing.assert_close(depth_out, (depth + merged) / 2)
    gate.bmp_relu = True
    rgb_out, depth_out, merged, _ = gate(rgb, depth)
    torch.testing.assert_close(rgb_out, F.relu((rgb + merged) / 2))
    gate.bmp = False
    rgb_out, depth_out, _, _ = gate(rgb, depth)
    assert rgb_out is rgb and depth_out is depth


# ---- the model -----------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0"])
def test_stage_by_stage_run_equals_the_encoder(backbone):
    enc = create_encoder(backbone, in_chans=1).eval()
    x = torch.randn(1, 1, 37, 45)
    ref = enc(x)
    stages = encoder_stages(enc)
    assert len(stages) == len(ref)
    for seg, expected in zip(stages, ref, strict=True):
        x = run_segment(seg, x)
        torch.testing.assert_close(x, expected)


VARIANTS = (
    [{"separation": s} for s in SEPARATIONS]
    + [{"aggregation": a} for a in AGGREGATIONS]
    + [
        {"bmp": False},
        {"bmp_relu": True},
        {"gates": [1]},
        {"gates": [2, 4]},
        {"gates": []},
        {"head": "average"},
        {"head": "average", "gates": [1, 2]},
        {"aux_weight": 0},
        {"decoder": "light"},
    ]
)


@pytest.mark.parametrize(
    "options", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items())
)
def test_every_variant_builds_and_trains_a_step(options):
    model = tiny(**options).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    b = batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = model(b)
    assert out["logits"].shape == (2, 3, 32, 40)
    loss, _ = total_loss(out, b["label"], ignore_index=255)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    opt.step()
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("decoder") for k in changed) or options.get("head") == "average"
    assert any(k.startswith("fuse.") for k in changed) or not model.gated


def test_every_gate_parameter_gets_a_gradient():
    model = tiny().train()
    out = model(batch())
    (out["logits"].mean() + sum(a.logits.mean() for a in out["aux_logits"].values())).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_aux_head_defaults_follow_the_decoder():
    assert tiny().aux_weight == pytest.approx(0.2)
    assert "aux_head" in tiny()(batch())["aux_logits"]
    assert tiny(decoder="light").aux_weight == 0
    assert tiny(aux_weight=0)(batch())["aux_logits"] == {}
    assert tiny(aux_weight=0).decoder.aux_head is None  # no unused parameters
    with pytest.raises(FusescopeError, match="aux"):
        tiny(decoder="light", aux_weight=0.5)


def test_ungated_stages_give_the_mean_and_gates_follow_config():
    model = tiny(gates=[2]).eval()
    assert list(model.fuse.keys()) == ["2"]
    b = batch()
    merged, rgb_levels, depth_levels = model.encode(b["rgb"], b["depth"])
    torch.testing.assert_close(merged[0], (rgb_levels[0] + depth_levels[0]) / 2)


def test_head_average_returns_per_modality_logits():
    out = tiny(head="average")(batch())
    assert set(out["per_modality"]) == {"rgb", "depth"}
    torch.testing.assert_close(
        out["logits"], (out["per_modality"]["rgb"] + out["per_modality"]["depth"]) / 2
    )


def test_gate_maps_through_taps_and_figure(tmp_path):
    """Gate maps are read from outside, by taps on the named gates (the model keeps none)."""
    model = tiny().eval()
    b = batch(h=64, w=64)
    taps = {str(s): Tap(f"fuse.{s}", index=3) for s in (1, 2, 3, 4)}
    with FeatureTaps(model, taps) as tapped:
        model(b)
    gates = {int(s): a for s, a in tapped.features.items()}
    assert sorted(gates) == [1, 2, 3, 4]
    assert gates[1].shape == (2, 1, 16, 16) and gates[4].shape == (2, 1, 2, 2)
    # the maps the model logs (mean weight per gate, same forward) are the tapped ones
    stats = model.training_stats()
    assert set(stats) == {f"gate/rgb_weight/stage{s}" for s in (1, 2, 3, 4)}
    for s, a in gates.items():
        assert stats[f"gate/rgb_weight/stage{s}"] == pytest.approx(float(a.mean()), abs=1e-6)
        assert (a > 0).all() and (a < 1).all()
    path = save_gate_figure(tmp_path / "gates.png", gates, {"rgb": b["rgb"], "depth": b["depth"]})
    assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"


def test_state_dict_round_trip():
    a, b = tiny().eval(), tiny().eval()
    b.load_state_dict(a.state_dict())
    x = batch()
    torch.testing.assert_close(a(x)["logits"], b(x)["logits"])


@pytest.mark.parametrize(
    "options, match",
    [
        ({"separation": "nope"}, "separation"),
        ({"aggregation": "x"}, "aggregation"),
        ({"gates": [0, 5]}, "gates"),
        ({"head": "x"}, "head"),
        ({"colour": 1}, "model.colour"),
        ({"head": "average", "bmp": False}, "bmp"),
    ],
)
def test_bad_options_are_clear_errors(options, match):
    with pytest.raises(FusescopeError, match=match):
        tiny(**options)


def test_needs_exactly_two_modalities():
    with pytest.raises(FusescopeError, match="two modalities"):
        build_model(
            {"name": "sagate"}, ["rgb", "depth", "hha"], {"rgb": 3, "depth": 1, "hha": 3}, 3
        )


def test_shared_shortcuts_are_one_module_for_both_streams_as_the_authors_build_them():
    """model.shared_shortcuts: the second stream's projection shortcuts are the first stream's
    modules (the authors' `self.hha_downsample = downsample`); the default keeps one each."""
    torch.manual_seed(0)
    separate, shared = tiny(), tiny(shared_shortcuts=True)
    rgb, depth = shared.encoders["rgb"], shared.encoders["depth"]
    names = [n for n, m in rgb.named_modules() if n.endswith("downsample")]
    assert names == ["layer2.0.downsample", "layer3.0.downsample", "layer4.0.downsample"]
    modules_rgb, modules_depth = dict(rgb.named_modules()), dict(depth.named_modules())
    for n in names:
        assert modules_rgb[n] is modules_depth[n]
        assert (
            dict(separate.encoders["rgb"].named_modules())[n]
            is not dict(separate.encoders["depth"].named_modules())[n]
        )
    one_copy = sum(p.numel() for n in names for p in modules_rgb[n].parameters())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(separate) - count(shared) == one_copy > 0
    # the shared shortcut's gradient is the sum of both streams' (the separate model with equal
    # shortcut weights in its two streams computes the same function)
    for n in names:
        twin = dict(separate.encoders["depth"].named_modules())[n]
        twin.load_state_dict(dict(separate.encoders["rgb"].named_modules())[n].state_dict())
    shared.load_state_dict(separate.state_dict())
    x = batch()
    for model in (separate, shared):
        model.eval()  # no dropout, the same normalisation in both
        model(x)["logits"].square().sum().backward()
    grads = [
        dict(model.encoders[m].named_modules())["layer3.0.downsample"][0].weight.grad
        for model, m in ((separate, "rgb"), (separate, "depth"), (shared, "rgb"))
    ]
    assert grads[0].abs().sum() > 0 and grads[1].abs().sum() > 0
    torch.testing.assert_close(grads[2], grads[0] + grads[1], rtol=1e-4, atol=1e-6)
    # weights save and load (the state dict names the module under both streams)
    state = shared.state_dict()
    assert "encoders.depth.layer3.0.downsample.0.weight" in state
    fresh = tiny(shared_shortcuts=True)
    fresh.load_state_dict(state)
    assert torch.equal(
        fresh.encoders["depth"].layer3[0].downsample[0].weight,
        shared.encoders["rgb"].layer3[0].downsample[0].weight,
    )


def test_shared_shortcuts_need_a_resnet():
    with pytest.raises(FusescopeError, match="shared_shortcuts needs a backbone with projection"):
        tiny(shared_shortcuts=True, backbone="efficientnet_lite0")
