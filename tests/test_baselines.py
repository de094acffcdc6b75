"""One tester over every multi-stream method (forward/backward at an odd size, M = 2 and 3, save
and load round trip), and the baseline matrix's own parts: positions, MMD, parameter counts."""

import copy

import pytest
import torch

from fusescope.errors import FusescopeError
from fusescope.models import build_model
from fusescope.models.fusion.baselines import POSITIONS, pairwise_mmd

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
    grads = [p.grad for p in model.encoder.fusion.parameters()]
    assert all(g is not None for g in grads)
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


def test_align_loss_is_reported_and_not_kept():
    model = build_model(
        {"name": "baseline", "fusion": "align", "align_weight": 0.5}, MODS[2], CHANS, 4
    )
    batch = {m: torch.randn(2, CHANS[m], 50, 70) for m in MODS[2]}
    assert model(batch)["aux_losses"]["align_mmd"] > 0
    assert model.aux_losses() == {}  # handed out once, then released


def test_rejects_bad_options():
    with pytest.raises(FusescopeError, match="fusion"):
        build_model({"name": "baseline", "fusion": "sum"}, MODS[2], CHANS, 4)
    with pytest.raises(FusescopeError, match="position"):
        build_model({"name": "baseline", "position": "deep"}, MODS[2], CHANS, 4)
    with pytest.raises(FusescopeError, match="2 modalities|>= 2"):
        build_model({"name": "baseline"}, ["rgb"], CHANS, 4)
    with pytest.raises(FusescopeError, match="equal input channels"):
        build_model({"name": "cen"}, ["rgb", "x"], {"rgb": 3, "x": 2}, 4)
