"""Every registered fusion method trains under `train.precision=bf16-mixed` through the real
engine (Lightning Fabric's CPU autocast) and evaluates under bf16 autocast: finite losses, and
BatchNorm statistics computed and kept in float32 (the per-modality BN once crashed here,
updating its float32 running statistics from bfloat16 moments)."""

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import TINY_MODEL, backbone_override
from fusescope.config import load_config
from fusescope.engine.checkpoint import load_run
from fusescope.engine.distributed import GlobalBatchNorm2d
from fusescope.engine.train import train
from fusescope.models import FUSION_METHODS

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic" / "early_concat.yaml"


def norm_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: b
        for name, b in model.named_buffers()
        if name.endswith(("running_mean", "running_var"))
    }


@pytest.mark.parametrize("method", FUSION_METHODS.names())
def test_every_method_trains_and_evaluates_in_bf16(tiny_data, tmp_path, method):
    modalities = "[rgb]" if method == "unimodal" else "[rgb,depth]"
    cfg = load_config(
        CONFIG,
        [
            f"data.root={tiny_data}",
            "data.synth=null",
            *TINY_MODEL,
            backbone_override(method),
            f"model.name={method}",
            f"data.modalities={modalities}",
            "model.decoder={name: light, width: 32}",
            "train.max_steps=2",
            "train.log_every=1",
            "train.ckpt_every=2",
            "train.precision=bf16-mixed",
            "train.accelerator=cpu",
        ],
    )
    run = train(cfg, tmp_path / "run")
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses), losses

    model = load_run(run).model
    buffers = norm_buffers(model)
    assert buffers, "no BatchNorm statistics found"
    for name, b in buffers.items():
        assert b.dtype == torch.float32 and torch.isfinite(b).all(), name
    assert any(b.abs().max() > 0 for n, b in buffers.items() if n.endswith("running_mean"))

    batch = {m: torch.randn(2, 3 if m == "rgb" else 1, 32, 40) for m in cfg.data.modalities}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    assert torch.isfinite(out["logits"].float()).all()
    for name, b in norm_buffers(model).items():
        assert b.dtype == torch.float32, name


def test_synchronised_batchnorms_keep_float32_statistics_in_bf16(monkeypatch):
    """The multi-process BN paths (GlobalBatchNorm2d of plain models, ModalityBatchNorm with
    `gather_stats`) on a bfloat16 input: two processes simulated by gathering this process's
    moments twice, which must equal one float32 BN over the batch seen twice."""
    from fusescope.engine import distributed
    from fusescope.models.norms import ModalityBatchNorm

    def gather_twice(t):
        return torch.stack([t, t])

    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(distributed, "gather_stack", gather_twice)
    x = (torch.randn(4, 6, 5, 5) * 2 + 3).bfloat16()
    twice = torch.cat([x, x]).float()
    for bn, ref, shape in (
        (GlobalBatchNorm2d(6), torch.nn.BatchNorm2d(6), (-1, 6, 5, 5)),
        # the same memory as 4 samples x 2 modalities x 3 channels, stacked sample-major
        (ModalityBatchNorm(3, 2), ModalityBatchNorm(3, 2), (-1, 3, 5, 5)),
    ):
        if isinstance(bn, ModalityBatchNorm):
            bn.gather_stats = gather_twice
        y = bn(x.reshape(shape)).reshape(x.shape)
        expected = ref(twice.reshape(shape)).reshape(twice.shape)[:4]
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), expected, atol=0.05, rtol=0.02)
        for name in ("running_mean", "running_var"):
            assert getattr(bn, name).dtype == torch.float32
            torch.testing.assert_close(getattr(bn, name), getattr(ref, name))
