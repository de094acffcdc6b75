"""One tester over every multi-stream method (forward/backward at an odd size, M = 2 and 3, save
and load round trip), and the baseline matrix's own parts: positions, MMD, parameter counts."""

import copy

import pytest
import torch

from fusescope.errors import FusescopeError
from fusescope.models import build_model
from fusescope.models.backbones import create_encoder, encoder_stages
from fusescope.models.fusion.baselines import POSITIONS, ConcatFusion, pairwise_mmd

MODS = {2: ["rgb", "depth"], 3: ["rgb", "depth", "hha"]}
CHANS = {"rgb": 3, "depth": 1, "hha": 3}

METHODS = [
    {"name": "multistream"},
    {"name": "multistream", "shared": False},
    {"name": "cen"},
    {"name": "cen", "shared": False, "mode": "discard"},
    {"name": "cen", "mode": "random", "l1_weight": 0.0},
    {"name": "asymfusion"},
    {"name": "baseline", "fusion": "concat", "position": "all"},
    {"name": "baseline", "fusion": "concat", "position": "early", "shared": False},
    {"name": "baseline", "fusion": "align", "position": "all"},
    {"name": "baseline", "fusion": "align", "position": "late", "shared": False},
    {"name": "baseline", "fusion": "attention", "position": "all"},
    {"name": "baseline", "fusion": "attention", "position": [1, 3]},
]


@pytest.mark.parametrize("M", [2, 3])
@pytest.mark.parametrize("cfg", METHODS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_every_method(cfg, M):
    model = build_model(cfg, MODS[M], CHANS, 4)
    batch = {m: torch.randn(2, CHANS[m], 50, 70) for m in MODS[M]}
    out = model(batch)
    assert out["logits"].shape == (2, 4, 50, 70)
    assert set(out["per_modality"]) == set(MODS[M])
    loss = out["logits"].mean() + sum(p.mean() for p in out["per_modality"].values())
    (loss + sum(out["aux_losses"].values(), torch.zeros(()))).backward()
    # every trainable parameter, fusion ops' included (parameter-free ops add none), gets one
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]
    # save / load round trip into a fresh build, and deepcopy keeps its own fusion wiring
    model.eval()
    fresh = build_model(cfg, MODS[M], CHANS, 4).eval()
    fresh.load_state_dict(model.state_dict())
    twin = copy.deepcopy(model)
    ref = model(batch)["logits"]
    torch.testing.assert_close(fresh(batch)["logits"], ref)
    torch.testing.assert_close(twin(batch)["logits"], ref)


def test_positions_select_stages():
    for position, stages in POSITIONS.items():
        model = build_model({"name": "baseline", "position": position}, MODS[2], CHANS, 4)
        assert len(model.encoder.fusion) == len(stages)


def test_concat_parameters_follow_the_table_rule():
    """Concat fusion costs a 1x1 conv (2C -> C) + BN per fused stage (CEN Table 2's 2C^2)."""
    plain = build_model({"name": "multistream"}, MODS[2], CHANS, 4)
    cat = build_model(
        {"name": "baseline", "fusion": "concat", "position": "all"}, MODS[2], CHANS, 4
    )
    extra = sum(p.numel() for p in cat.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == sum(2 * c * c + 2 * c for c in (64, 128, 256, 512))


def test_mmd():
    x = torch.randn(2, 64, 8)
    same = torch.stack([x[0], x[0]])
    assert pairwise_mmd(same).abs() < 1e-6
    shifted = torch.stack([x[0], x[1] + 3.0])
    assert pairwise_mmd(shifted) > 10 * pairwise_mmd(x).abs() > 0
    three = torch.stack([x[0], x[0], x[1] + 3.0])  # mean over the 3 pairs, one of them equal
    torch.testing.assert_close(
        pairwise_mmd(three), 2 * pairwise_mmd(shifted) / 3, rtol=0.05, atol=0
    )


@pytest.mark.parametrize("streams", ["keep", "merge"])
def test_align_loss_goes_out_with_its_forward_and_is_not_kept(streams):
    cfg = {"name": "baseline", "fusion": "align", "align_weight": 0.5, "streams": streams}
    if streams == "merge":
        cfg["shared"] = False
    model = build_model(cfg, MODS[2], CHANS, 4)
    batch = {m: torch.randn(2, CHANS[m], 50, 70) for m in MODS[2]}
    first = model(batch)["aux_losses"]["align_mmd"]
    assert first > 0
    # a second forward reports its own loss, not one added to the first's
    torch.testing.assert_close(model(batch)["aux_losses"]["align_mmd"], first)
    # no fusion op holds a tensor (a measured loss, its graph) after the forward
    ops = [m for m in model.modules() if type(m).__name__ == "AlignFusion"]
    assert ops and not [v for op in ops for v in vars(op).values() if torch.is_tensor(v)]


def test_rejects_bad_options():
    with pytest.raises(FusescopeError, match="fusion"):
        build_model({"name": "baseline", "fusion": "sum"}, MODS[2], CHANS, 4)
    with pytest.raises(FusescopeError, match="position"):
        build_model({"name": "baseline", "position": "deep"}, MODS[2], CHANS, 4)
    with pytest.raises(FusescopeError, match="2 modalities|>= 2"):
        build_model({"name": "baseline"}, ["rgb"], CHANS, 4)
    with pytest.raises(FusescopeError, match="equal input channels"):
        build_model({"name": "cen"}, ["rgb", "x"], {"rgb": 3, "x": 2}, 4)
    with pytest.raises(FusescopeError, match="shared: false"):
        build_model({"name": "baseline", "streams": "merge"}, MODS[2], CHANS, 4)
    with pytest.raises(FusescopeError, match="streams"):
        build_model({"name": "baseline", "streams": "fuse"}, MODS[2], CHANS, 4)


def merged(M=2, **options):
    cfg = {"name": "baseline", "shared": False, "streams": "merge", **options}
    return build_model(cfg, MODS[M], CHANS, 4)


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("M", [2, 3])
@pytest.mark.parametrize("fusion", ["concat", "align", "attention"])
@pytest.mark.parametrize("position", ["early", "late", "all", [1, 3]])
def test_merged_streams_train_and_round_trip(fusion, position, M):
    model = merged(M, fusion=fusion, position=position)
    batch = {m: torch.randn(2, CHANS[m], 50, 70) for m in MODS[M]}
    out = model(batch)
    assert out["logits"].shape == (2, 4, 50, 70) and out["per_modality"] == {}
    assert ("align_mmd" in out["aux_losses"]) == (fusion == "align")
    (out["logits"].mean() + sum(out["aux_losses"].values(), torch.zeros(()))).backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, unused  # no dead weights (DDP would refuse them)
    model.eval()
    fresh = merged(M, fusion=fusion, position=position).eval()
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh(batch)["logits"], model(batch)["logits"])


@pytest.mark.parametrize("position,merge", [("early", 2), ("middle", 3), ("late", 4)])
def test_merged_streams_cost_a_stream_copy_up_to_the_merge(position, merge):
    """Commonly used setting (CEN Table 2 left): the extra parameters over the unimodal model
    are M-1 copies of the encoder up to the merge stage plus the fusion block."""
    uni = build_model({"name": "unimodal"}, ["rgb"], CHANS, 4)
    stages = encoder_stages(create_encoder("resnet18", 3))
    copy_cost = sum(count(s) for s in stages[:merge])
    c = (64, 128, 256, 512)[merge - 1]
    fusion_cost = 2 * c * c + 2 * c
    assert count(merged(2, position=position)) == count(uni) + copy_cost + fusion_cost


@pytest.mark.parametrize("position", ["early", "all", [2, 4]])
def test_merged_streams_see_other_modalities_only_through_fusion(position):
    """Zero the concat weights that read the second modality at every fusion point: the
    prediction no longer depends on depth, so depth reaches the first stream, the trunk and
    the decoder only through the fusion blocks (and does when the weights are not zero)."""
    torch.manual_seed(0)
    model = merged(2, fusion="concat", position=position).eval()
    rgb = torch.randn(1, 3, 50, 70)
    depths = torch.randn(2, 1, 50, 70)
    outs = [model({"rgb": rgb, "depth": d[None]})["logits"] for d in depths]
    assert not torch.allclose(*outs)
    with torch.no_grad():
        for op in model.fuse.values():
            assert isinstance(op, ConcatFusion)
            conv = op.reduce[0]
            conv.weight[:, conv.in_channels // 2 :] = 0
    outs = [model({"rgb": rgb, "depth": d[None]})["logits"] for d in depths]
    torch.testing.assert_close(*outs)


def test_encoder_stages_equal_the_encoder():
    for name in ("resnet18", "efficientnet_lite0"):
        encoder = create_encoder(name, 3).eval()
        x = torch.randn(1, 3, 64, 80)
        ref = encoder(x)
        for stage, want in zip(encoder_stages(encoder), ref, strict=True):
            x = stage(x)
            assert torch.equal(x, want)


def test_merged_streams_of_one_input_equal_the_plain_pretrained_network():
    """Both modalities fed the same image, align (mean) at the last stage: every stream is the
    pretrained encoder, so the model equals the plain unimodal network with those weights
    (efficientnet_lite0: its BatchNormAct2d activations survive the conversion and the cut)."""
    torch.manual_seed(0)
    model = merged(
        2, backbone="efficientnet_lite0", pretrained=True, fusion="align", position="late"
    ).eval()
    plain = build_model(
        {"name": "unimodal", "backbone": "efficientnet_lite0", "pretrained": True},
        ["rgb"],
        CHANS,
        4,
    ).eval()
    plain.decoder.load_state_dict(model.decoder.state_dict())
    gray = torch.randn(2, 1, 50, 70)
    rgb = gray.expand(-1, 3, -1, -1)
    torch.testing.assert_close(
        model({"rgb": rgb, "depth": gray})["logits"],
        plain({"rgb": rgb})["logits"],
        atol=1e-5,
        rtol=1e-4,
    )
