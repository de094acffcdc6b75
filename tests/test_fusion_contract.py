"""The contract every registered fusion method keeps (`FUSION_METHODS.names()`), in one place.

For each method and each modality count it supports: forward at an odd size, backward through
the engine's loss with a gradient on every trainable parameter, a save / load round trip into a
fresh build with the same state-dict keys and the same outputs, and a clear error for a count it
does not support. Mixed precision over every method is tests/test_mixed_precision.py.
"""

import pytest
import torch

from fusescope.engine.loss import total_loss
from fusescope.errors import FusescopeError
from fusescope.models import FUSION_METHODS, build_model

MODALITIES = {1: ["rgb"], 2: ["rgb", "depth"], 3: ["rgb", "depth", "hha"]}
CHANNELS = {"rgb": 3, "depth": 1, "hha": 3}
# the modality counts each method supports; a method registered later must be added here
SUPPORTED = {
    "unimodal": (1,),
    "sagate": (2,),
    "mango": (2,),
    "asymfusion": (2, 3),
    "baseline": (2, 3),
    "cen": (2, 3),
    "early_concat": (1, 2, 3),
    "late_average": (1, 2, 3),
    "multistream": (2, 3),
    "two_stream_concat": (1, 2, 3),
}
CASES = [(name, m) for name in FUSION_METHODS.names() for m in SUPPORTED.get(name, ())]


def test_every_registered_method_has_a_contract_entry():
    assert sorted(SUPPORTED) == FUSION_METHODS.names()


def build(name: str, m: int, seed: int = 0):
    torch.manual_seed(seed)
    return build_model({"name": name}, MODALITIES[m], CHANNELS, 4)


def batch(m: int) -> dict:
    g = torch.Generator().manual_seed(1)
    b = {k: torch.randn(2, CHANNELS[k], 33, 41, generator=g) for k in MODALITIES[m]}
    b["label"] = torch.randint(0, 4, (2, 33, 41), generator=g)
    return b


@pytest.mark.parametrize("name, m", CASES)
def test_forward_backward_reaches_every_parameter(name, m):
    model = build(name, m).train()
    b = batch(m)
    out = model(b)
    assert out["logits"].shape == (2, 4, 33, 41)
    assert torch.isfinite(out["logits"]).all()
    loss, _ = total_loss(out, b["label"], ignore_index=255)
    loss.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert params
    missing = [n for n, p in params if p.grad is None]
    assert not missing, missing[:5]
    assert all(torch.isfinite(p.grad).all() for _, p in params)


@pytest.mark.parametrize("name, m", CASES)
def test_save_load_round_trip(name, m):
    model = build(name, m, seed=0).eval()
    fresh = build(name, m, seed=1).eval()
    assert list(fresh.state_dict()) == list(model.state_dict())
    b = batch(m)
    before = fresh(b)["logits"]
    fresh.load_state_dict(model.state_dict())
    after = fresh(b)["logits"]
    ref = model(b)["logits"]
    torch.testing.assert_close(after, ref)
    assert not torch.allclose(before, ref)  # the load changed something: the test can fail


@pytest.mark.parametrize("name", FUSION_METHODS.names())
def test_an_unsupported_modality_count_is_a_user_error(name):
    unsupported = [m for m in (1, 2, 3) if m not in SUPPORTED[name]]
    for m in unsupported[:1]:
        with pytest.raises(FusescopeError, match="modalit"):
            build(name, m)
