"""The `mango` fusion op for segmentation (`models/fusion/mango.LatentFlow` on the multi-stream
model, and the latent-free ablation): output contract, odd input sizes, the flow's token count,
ablation switches, float32 under autocast, configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fusescope.config import load_config
from fusescope.errors import FusescopeError
from fusescope.models import FUSION_METHODS, build_model
from fusescope.models.flow import AffineCoupling, InvertibleCrossAttention, LearnableInterModality
from fusescope.models.fusion.mango import LatentFlow

MODALITIES = ["rgb", "depth"]
IN_CHANNELS = {"rgb": 3, "depth": 1}
K = 5
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "synthetic"
TINY = {
    "name": "mango",
    "blocks": 1,
    "flow_width": 16,
    "attn_dim": 8,
    "coupling_hidden": 16,
    "grid": [3, 4],
}


def build(**options):
    return build_model({**TINY, **options}, MODALITIES, IN_CHANNELS, K)


def batch(h: int = 45, w: int = 61, b: int = 2) -> dict[str, torch.Tensor]:
    return {
        "rgb": torch.randn(b, 3, h, w),
        "depth": torch.randn(b, 1, h, w),
        "label": torch.randint(0, K, (b, h, w)),
    }


def flow_of(model) -> LatentFlow:
    (op,) = [m for m in model.modules() if isinstance(m, LatentFlow)]
    return op


def check_contract(model, data, streams=True):
    out = model(data)
    b, _, h, w = data["rgb"].shape
    assert out["logits"].shape == (b, K, h, w)
    assert sorted(out["per_modality"]) == (sorted(MODALITIES) if streams else [])
    assert set(out["aux_losses"]) == {"flow_nll"}
    nll = out["aux_losses"]["flow_nll"]
    assert nll.shape == () and torch.isfinite(nll)
    return out


def test_registered_for_every_task():
    from fusescope.models.classification import CLASSIFICATION_METHODS
    from fusescope.models.translation import TRANSLATION_METHODS

    assert all("mango" in r for r in (FUSION_METHODS, CLASSIFICATION_METHODS, TRANSLATION_METHODS))


@pytest.mark.parametrize("size", [(45, 61), (33, 97), (64, 64)])
def test_forward_backward_on_odd_sizes(size):
    model = build()
    out = check_contract(model, batch(*size))
    label = batch(*size)["label"]
    # the ensemble trains alpha only: each stream is supervised through its own output
    loss = sum(
        torch.nn.functional.cross_entropy(logits, label)
        for logits in [out["logits"], *out["per_modality"].values()]
    )
    (loss + sum(out["aux_losses"].values())).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    stats = model.training_stats()
    assert set(stats) == {"flow_nll_nats", "flow_bpd"}
    assert all(isinstance(v, float) and v == v for v in stats.values())
    assert stats["flow_bpd"] == pytest.approx(stats["flow_nll_nats"] / 0.6931471805599453, rel=1e-5)


def test_the_flow_sees_the_grid_of_both_modalities_at_any_size():
    model = build(grid=[2, 3]).eval()
    seen = []
    flow_of(model).flow.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    with torch.no_grad():
        for size in [(40, 50), (97, 131)]:
            check_contract(model, batch(*size, b=1))
    assert all(s[1:] == (2 * 2 * 3, 16) for s in seen), seen  # (B, 2 * rows * cols, width)


def test_native_grid_runs_on_every_token_of_the_stage():
    """`grid: null` (no LICA): the flow runs on every stride-16 token of both modalities."""
    model = build(grid=None, partitions=["mmca", "imca"]).eval()
    seen = []
    flow_of(model).flow.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    with torch.no_grad():
        check_contract(model, batch(45, 61, b=1))  # stride 16: 3 x 4 tokens per modality
        check_contract(model, batch(70, 90, b=1))  # 5 x 6
    assert [s[1] for s in seen] == [2 * 3 * 4, 2 * 5 * 6]


def test_nll_weight_scales_the_aux_loss():
    torch.manual_seed(0)
    a = build(nll_weight=1.0).eval()
    torch.manual_seed(0)
    b = build(nll_weight=0.25).eval()
    data = batch()
    with torch.no_grad():
        la, lb = a(data)["aux_losses"]["flow_nll"], b(data)["aux_losses"]["flow_nll"]
    torch.testing.assert_close(lb, 0.25 * la)
    torch.testing.assert_close(la, torch.tensor(a.training_stats()["flow_nll_nats"]))


def count(model, kind):
    return sum(isinstance(m, kind) for m in flow_of(model).flow.modules())


@pytest.mark.parametrize(
    "options,ica,lica,couplings",
    [
        ({}, 8, 2, 1),
        ({"partitions": []}, 0, 0, 1),  # coupling-only (table 4)
        ({"partitions": ["mmca"]}, 2, 0, 1),  # table 5
        ({"partitions": ["mmca", "imca"]}, 6, 0, 1),
        ({"blocks": 3}, 24, 6, 3),  # tables 6-7: number of blocks
        ({"coupling": False}, 8, 2, 0),
    ],
)
def test_ablation_switches(options, ica, lica, couplings):
    model = build(**options)
    # every LICA holds one ICA: count ICA layers as the paper does (8 per block)
    assert count(model, InvertibleCrossAttention) == ica
    assert count(model, LearnableInterModality) == lica
    assert count(model, AffineCoupling) == couplings
    check_contract(model, batch(37, 50))


def test_replace_makes_every_stream_read_the_flow():
    model = build(combine="replace").eval()
    seen = {}
    stage = model.encoder.body.get_submodule("layer3")
    stage.register_forward_hook(lambda m, i, o: seen.setdefault("x", o))
    with torch.no_grad():
        model(batch(45, 61, b=1))
    x5 = seen["x"].unflatten(0, (-1, 2))  # the stage's output after the op: (B, 2, C, h, w)
    torch.testing.assert_close(x5[:, 0], x5[:, 1])  # one fused map for both streams


def test_latent_off_runs_the_flow_on_pixel_patches():
    model = build(latent=False, patch=8, grid=[2, 3])
    assert not hasattr(model, "encoder")
    assert flow_of(model).flow.dim == 3 * 8 * 8  # depth tiled to RGB's 3 channels
    out = check_contract(model, batch(45, 61), streams=False)
    (out["logits"].mean() + out["aux_losses"]["flow_nll"]).backward()


def test_flow_at_stride_32():
    check_contract(build(stage=4, grid=[2, 2]), batch(45, 61))


@pytest.mark.parametrize(
    "options,message",
    [
        ({"grid": None}, "LICA"),
        ({"stage": 5}, "stage must be in 1..4"),
        ({"partitions": ["mmca", "glow"]}, "unknown partitions"),
        ({"partitions": [], "coupling": False}, "at least one"),
        ({"latent": False, "grid": None, "partitions": ["mmca"]}, "grid"),
        ({"nll_weight": -1.0}, "nll_weight"),
        ({"blocks": 0}, "at least one block"),
        ({"combine": "mix"}, "combine must be"),
    ],
)
def test_rejected_options_are_user_errors(options, message):
    with pytest.raises(FusescopeError, match=message):
        build(**options)


def test_unknown_key_and_wrong_modality_count():
    with pytest.raises(FusescopeError, match="model.heads"):
        build(heads=4)
    with pytest.raises(FusescopeError, match="two modalities"):
        build_model(TINY, ["rgb", "depth", "hha"], {"rgb": 3, "depth": 1, "hha": 3}, K)


def test_flow_runs_in_float32_under_autocast():
    model = build().eval()
    seen = []
    flow_of(model).flow.register_forward_hook(lambda m, i, o: seen.append((i[0].dtype, o[0].dtype)))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch(40, 40, b=1))
    assert seen == [(torch.float32, torch.float32)]
    assert torch.isfinite(out["aux_losses"]["flow_nll"])


def test_deeplabv3plus_decoder():
    check_contract(build(decoder="deeplabv3plus"), batch(45, 61))


@pytest.mark.parametrize("name", ["mango.yaml", "mango_ablation.yaml"])
def test_config_files_build(name):
    cfg = load_config(CONFIGS / name)
    model = build_model(dict(cfg.model), list(cfg.data.modalities), IN_CHANNELS, K)
    assert flow_of(model).grid == (8, 10)
    check_contract(model.eval(), batch(120, 160, b=1))
