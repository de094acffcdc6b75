"""MANGO in its paper's setting (section 4.1): MAE ViT-B/16 or MiT-B3 with the SegFormer head at
256 x 256, the flow on every token the encoder gives; its counts (`models/cost.py`) on the meta
device, checked against the real model and against the flow's parameters by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fusescope.config import load_config
from fusescope.models import build_model
from fusescope.models.cost import (
    count_flops,
    count_free_params,
    count_params,
    flow_cost,
    meta_cost,
)
from fusescope.models.fusion.mango import LatentFlow

MODALITIES = ["rgb", "depth"]
IN_CHANNELS = {"rgb": 3, "depth": 1}
K = 5
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY_VIT = {"name": "vit_tiny_patch16_224", "depth": 4, "embed_dim": 32, "num_heads": 2}
TINY = {
    "name": "mango",
    "backbone": TINY_VIT,
    "decoder": {"name": "segformer", "width": 16},
    "blocks": 1,
    "flow_width": 16,
    "attn_dim": 8,
    "coupling_hidden": 16,
}


def flow_of(model) -> LatentFlow:
    (op,) = [m for m in model.modules() if isinstance(m, LatentFlow)]
    return op


def batch(h: int, w: int, b: int = 2) -> dict[str, torch.Tensor]:
    return {
        "rgb": torch.randn(b, 3, h, w),
        "depth": torch.randn(b, 1, h, w),
        "label": torch.randint(0, K, (b, h, w)),
    }


def flow_params_by_hand(channels, width, tokens, blocks, attn, hidden) -> tuple[int, int]:
    """(stored, free) parameters of a LatentFlow with all three partitions and the coupling."""
    ica = 2 * (width * attn + attn) + 2 * attn + attn + 1  # to_q, to_k, norm_q, norm_k, temp
    mixing_stored = 2 * tokens**2 + tokens  # full L and U matrices + log-scales
    coupling = (width * hidden + hidden) + (hidden**2 + hidden) + (hidden * 2 * width + 2 * width)
    block = 8 * ica + 2 * mixing_stored + coupling  # 2 MMCA + 4 IMCA + 2 LICA (ICA + mixing)
    ends = (channels * width + width) + (2 * width * channels + channels)
    stored = blocks * block + ends
    return stored, stored - blocks * 2 * tokens * (tokens + 1)


def test_a_vit_flows_at_its_last_block():
    """A ViT's four stages all run at stride 16: the default stage is the encoder's output (its
    last block), not the third group of blocks."""
    model = build_model(TINY, MODALITIES, IN_CHANNELS, K)
    assert list(model.encoder.fusion) == ["vit_blocks_3"]


def test_the_full_grid_is_every_token_unpooled():
    """At 64 x 64 a ViT/16 gives 4 x 4 tokens: `grid: [4, 4]` then pools nothing, so the model
    equals the one on the native grid (`grid: null`, every token by construction)."""
    options = {**TINY, "partitions": ["mmca", "imca"]}
    torch.manual_seed(0)
    full = build_model({**options, "grid": [4, 4]}, MODALITIES, IN_CHANNELS, K).eval()
    torch.manual_seed(0)
    native = build_model({**options, "grid": None}, MODALITIES, IN_CHANNELS, K).eval()
    seen = []
    flow_of(full).flow.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    data = batch(64, 64)
    with torch.no_grad():
        a, b = full(data), native(data)
    assert seen == [(2, 2 * 16, 16)]
    torch.testing.assert_close(a["logits"], b["logits"], rtol=0, atol=0)
    # a pooled grid is a different model: 2 x 2 tokens per modality
    torch.manual_seed(0)
    pooled = build_model({**options, "grid": [2, 2]}, MODALITIES, IN_CHANNELS, K).eval()
    with torch.no_grad():
        assert not torch.allclose(pooled(data)["logits"], a["logits"])


def test_forward_backward_with_lica_on_the_full_grid():
    model = build_model({**TINY, "grid": [4, 4]}, MODALITIES, IN_CHANNELS, K)
    data = batch(64, 64)
    out = model(data)
    assert out["logits"].shape == (2, K, 64, 64)
    loss = nn.functional.cross_entropy(out["logits"], data["label"])
    for logits in out["per_modality"].values():
        loss = loss + nn.functional.cross_entropy(logits, data["label"])
    (loss + out["aux_losses"]["flow_nll"]).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


def test_meta_counts_equal_the_real_model():
    """`meta_cost` (no memory, no arithmetic) gives the real model's parameters and FLOPs."""
    cfg = {**TINY, "grid": [4, 4]}
    chans = {"rgb": 3, "depth": 3}
    params, flops = meta_cost(cfg, MODALITIES, chans, K, (64, 64))
    real = build_model(cfg, MODALITIES, chans, K)
    assert params == count_params(real)
    data = {m: torch.randn(1, 3, 64, 64) for m in MODALITIES}
    assert flops == count_flops(real, data)
    free = meta_cost(cfg, MODALITIES, chans, K, (64, 64), free_params=True)[0]
    assert free == count_free_params(real) == params - 2 * 32 * 33  # 2 LICA mixings, N = 32


def test_triangular_solves_are_counted():
    """FlopCounterMode alone counts 0 for a triangular solve: n (n + 1) per right-hand side."""

    class Solve(nn.Module):
        def forward(self, batch):
            return torch.linalg.solve_triangular(batch["a"], batch["b"], upper=True)

    a = torch.eye(6).expand(3, 6, 6) + torch.ones(6, 6).triu(1)
    assert count_flops(Solve(), {"a": a, "b": torch.randn(3, 6, 4)}) == 6 * 7 * 3 * 4


@pytest.mark.parametrize("grid", [(4, 4), (2, 3)])
def test_flow_cost_parameters_by_hand(grid):
    cost = flow_cost(24, grid, blocks=2, flow_width=8, attn_dim=4, hidden=6)
    tokens = 2 * grid[0] * grid[1]
    assert cost["tokens"] == tokens
    assert cost["params"] == flow_params_by_hand(24, 8, tokens, 2, 4, 6)[0]
    assert cost["flops"] > 0 and cost["activation_bytes"] > 0


def test_more_tokens_cost_more():
    full, pooled = flow_cost(32, (8, 8), blocks=1), flow_cost(32, (4, 4), blocks=1)
    assert full["flops"] > 4 * pooled["flops"]  # LICA's N x N mixing grows with N^2
    assert full["activation_bytes"] > 4 * pooled["activation_bytes"]


@pytest.mark.parametrize("backbone, stage", [("vit_base_patch16_224.mae", 4), ("mit_b3", 3)])
def test_paper_setting_on_the_meta_device(backbone, stage):
    """The paper's setting at 256 x 256: the flow sees all 2 x 16 x 16 stride-16 tokens, and its
    parameters are the hand count; the rest is the encoder and head."""
    cfg = {
        "name": "mango",
        "backbone": backbone,
        "stage": stage,
        "decoder": {"name": "segformer", "width": 256},
        "grid": [16, 16],
    }
    chans = {"rgb": 3, "depth": 3}
    with torch.device("meta"):
        model = build_model(cfg, MODALITIES, chans, 40)
        seen = []
        op = flow_of(model)
        op.flow.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
        model.eval()
        with torch.no_grad():
            model({m: torch.zeros(1, 3, 256, 256) for m in MODALITIES})
    assert seen == [(1, 512, 64)]
    channels = op.to_tokens.in_channels
    assert channels == (768 if backbone.startswith("vit") else 320)
    stored, free = flow_params_by_hand(channels, 64, 512, 12, 64, 128)
    assert count_params(op) == stored and count_free_params(op) == free


@pytest.mark.parametrize("path", ["nyudv2/mango.yaml", "sunrgbd/mango.yaml"])
def test_paper_configs(path):
    cfg = load_config(CONFIGS / path)
    model = dict(cfg.model)
    assert model["backbone"]["name"] == "vit_base_patch16_224.mae"
    assert model["decoder"] == {"name": "segformer", "width": 256}
    assert list(cfg.data.crop_size) == [256, 256] and list(cfg.eval.window) == [256, 256]
    assert list(model["grid"]) == [16, 16] and model["blocks"] == 12
    tokenfusion = load_config(CONFIGS / path.replace("mango", "tokenfusion"))
    for key in ("optimizer", "lr", "stages", "betas", "weight_decay", "lr_scales", "batch_size"):
        assert cfg.train[key] == tokenfusion.train[key], key
