"""AsymFusion: pixel shift on a known tensor, channel shuffle, shift added to the other stream,
switches, M = 2 and 3, and no parameters beyond per-modality BNs and alpha."""

import pytest
import torch

from fusescope.models import build_model
from fusescope.models.fusion.asym import AsymmetricFusion, pixel_shift, shuffle_split
from fusescope.models.multistream import FusionPoint, ModalityBatchNorm

MODS = {2: ["rgb", "depth"], 3: ["rgb", "depth", "hha"]}
CHANS = {"rgb": 3, "depth": 1, "hha": 3}


def test_pixel_shift_on_a_known_tensor():
    x = torch.arange(1.0, 13.0).view(1, 1, 3, 4).expand(1, 4, 3, 4)  # 4 groups of 1 channel
    y = pixel_shift(x)
    grid = x[0, 0]
    zero_row, zero_col = torch.zeros(1, 4), torch.zeros(3, 1)
    assert torch.equal(y[0, 0], torch.cat([grid[1:], zero_row]))  # up
    assert torch.equal(y[0, 1], torch.cat([grid[:, 1:], zero_col], 1))  # left
    assert torch.equal(y[0, 2], torch.cat([zero_col, grid[:, :-1]], 1))  # right
    assert torch.equal(y[0, 3], torch.cat([zero_row, grid[:-1]]))  # down


def make_op(C, **kw):
    return AsymmetricFusion(FusionPoint("x", 1, 1, True, C, ModalityBatchNorm(C, 2), C), **kw)


@pytest.mark.parametrize("M", [2, 3])
def test_shuffle_and_shift_go_to_the_other_stream(M):
    C = 10
    T = shuffle_split(C)
    assert T == 8
    op = make_op(C)
    x5 = torch.randn(M, 2, C, 5, 6)
    shuffled = op(x5, "conv_in")
    others = [torch.cat([x5[:m], x5[m + 1 :]]).mean(0) for m in range(M)]
    for m in range(M):
        torch.testing.assert_close(shuffled[m, :, :T], x5[m, :, :T])
        torch.testing.assert_close(shuffled[m, :, T:], others[m][:, T:])
    out = torch.zeros(M, 2, C, 5, 6)
    fused = op(out, "act_out")
    for m in range(M):
        torch.testing.assert_close(fused[m, :, :T], pixel_shift(others[m][:, :T]))
        assert fused[m, :, T:].abs().sum() == 0
    assert op._pending is None


def test_switches():
    x5 = torch.randn(2, 1, 10, 4, 4)
    op = make_op(10, shuffle=False)
    assert torch.equal(op(x5, "conv_in"), x5)
    assert op(torch.zeros_like(x5), "act_out").abs().sum() > 0
    op = make_op(10, shift=False)
    assert not torch.equal(op(x5, "conv_in"), x5)
    assert torch.equal(op(torch.zeros_like(x5), "act_out"), torch.zeros_like(x5))


@pytest.mark.parametrize(
    "M,backbone,opts",
    [
        (2, "resnet18", {}),
        (3, "resnet18", {}),
        (2, "resnet50", {"shuffle": False}),
        (2, "efficientnet_lite0", {"shift": False}),
    ],
)
def test_forward_backward_odd_size(M, backbone, opts):
    model = build_model({"name": "asymfusion", "backbone": backbone, **opts}, MODS[M], CHANS, 5)
    assert len(model.encoder.fusion) == 4  # the last block of each stage
    batch = {m: torch.randn(2, CHANS[m], 50, 70) for m in MODS[M]}
    out = model(batch)
    assert out["logits"].shape == (2, 5, 50, 70) and set(out["per_modality"]) == set(MODS[M])
    (out["logits"].mean() + sum(p.mean() for p in out["per_modality"].values())).backward()


def test_fusion_changes_the_output_and_adds_no_parameters():
    uni = build_model({"name": "unimodal"}, ["rgb"], CHANS, 14)
    asym = build_model({"name": "asymfusion"}, MODS[2], CHANS, 14).eval()
    plain = build_model({"name": "multistream"}, MODS[2], CHANS, 14).eval()
    with torch.no_grad():  # timm zero-inits each block's last BN, which would hide the effect
        for mod in asym.modules():
            if isinstance(mod, ModalityBatchNorm):
                mod.weight.uniform_(0.5, 1.5)
    plain.load_state_dict(asym.state_dict())
    n_uni = sum(p.numel() for p in uni.parameters())
    n_asym = sum(p.numel() for p in asym.parameters())
    assert n_asym == sum(p.numel() for p in plain.parameters()) and n_asym < 1.01 * n_uni
    batch = {m: torch.randn(1, CHANS[m], 40, 40) for m in MODS[2]}
    assert not torch.allclose(asym(batch)["logits"], plain(batch)["logits"])


def test_rejects_no_operation():
    with pytest.raises(Exception, match="shuffle or shift"):
        build_model({"name": "asymfusion", "shuffle": False, "shift": False}, MODS[2], CHANS, 5)
