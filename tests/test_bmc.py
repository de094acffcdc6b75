"""BMC: bounded on extreme inputs, the right gradient sign per half, trains in the model."""

import pytest
import torch

from fusescope.errors import FusescopeError
from fusescope.models import build_model
from fusescope.models.bmc import BMC


@pytest.mark.parametrize("scale", [0.0, 1e-6, 1.0, 1e4, 1e8])
def test_finite_and_bounded_on_extreme_inputs(scale):
    bmc = BMC(8, latent=4, cap=5.0).train()
    a = torch.randn(3, 8, 5, 5) * scale
    b = -torch.randn(3, 8, 5, 5) * scale
    loss = bmc.loss(a, b)
    assert torch.isfinite(loss)
    # min half: CE <= 2 * latent * (|z| + log 2), z = mu + eps * std with |mu| <= 1,
    # std <= e^0.5; the max half is squashed to [-cap, cap]
    assert loss.abs() < 200
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in bmc.parameters() if p.grad is not None)
    assert bmc.max_mi is not None and abs(bmc.last["max"]) < 200


def test_halves_get_gradients_of_the_right_sign():
    torch.manual_seed(0)
    bmc = BMC(6, cap=3.0).eval()  # eval: no sampling, so the estimates are deterministic
    a = torch.randn(4, 6, 4, 4, requires_grad=True)
    b = torch.randn(4, 6, 4, 4, requires_grad=True)
    (g_loss,) = torch.autograd.grad(bmc.loss(a, b), a)
    est = bmc.estimates(a, b)
    (g_min,) = torch.autograd.grad(est["min"], a)
    (g_max,) = torch.autograd.grad(est["max"], a)
    # the loss pushes the first half down the estimate and the second half up it
    assert torch.allclose(g_loss[:, :3], g_min[:, :3], atol=1e-6)
    squash = 1 - torch.tanh(est["max"].detach() / 3.0) ** 2
    assert torch.allclose(g_loss[:, 3:], -squash * g_max[:, 3:], atol=1e-6)
    assert g_min[:, 3:].abs().max() == 0 and g_max[:, :3].abs().max() == 0
    assert g_loss[:, :3].abs().max() > 0 and g_loss[:, 3:].abs().max() > 0


def test_modes():
    a, b = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    assert set(BMC(4, mode="min").eval().estimates(a, b)) == {"min"}
    assert set(BMC(4, mode="max").eval().estimates(a, b)) == {"max"}
    with pytest.raises(ValueError, match="mode"):
        BMC(4, mode="sideways")


def make(**options):
    return build_model(
        {"name": "two_stream_concat", "backbone": "resnet18", **options},
        ["rgb", "depth"],
        {"rgb": 3, "depth": 1},
        4,
    )


def test_two_stream_model_with_bmc_trains_a_step():
    model = make(bmc=True, bmc_weight=0.5, bmc_levels=[2, 3]).train()
    assert set(model.bmc) == {"2", "3"}
    batch = {"rgb": torch.randn(2, 3, 64, 64), "depth": torch.randn(2, 1, 64, 64)}
    label = torch.randint(0, 4, (2, 64, 64))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    out = model(batch)
    assert torch.isfinite(out["aux_losses"]["bmc"])
    loss = torch.nn.functional.cross_entropy(out["logits"], label) + out["aux_losses"]["bmc"]
    before = model.bmc["3"].max_mi.head_a.fc.weight.detach().clone()
    loss.backward()
    assert model.bmc["3"].min_mi.head_b.conv.weight.grad.abs().sum() > 0
    assert model.encoders["depth"].layer4[0].downsample[0].weight.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(before, model.bmc["3"].max_mi.head_a.fc.weight)
    assert set(model.training_stats()) == {"bmc/2/min", "bmc/2/max", "bmc/3/min", "bmc/3/max"}
    assert model.eval()(batch)["aux_losses"] == {}


def test_model_options_validated():
    assert len(make().bmc) == 0 and len(make(bmc=None).bmc) == 0
    assert len(make(bmc=True).bmc) == 4
    with pytest.raises(FusescopeError, match="bmc_mode"):
        make(bmc=True, bmc_mode="up")
    with pytest.raises(FusescopeError, match="bmc_levels"):
        make(bmc=True, bmc_levels=[7])
    with pytest.raises(FusescopeError, match="two streams"):
        build_model(
            {"name": "two_stream_concat", "bmc": True},
            ["rgb", "depth", "hha"],
            {"rgb": 3, "depth": 1, "hha": 3},
            4,
        )
