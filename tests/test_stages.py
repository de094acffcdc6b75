"""The staged schedule (`train.stages`: TokenFusion's / GeminiFusion's three AdamW stages, each
with a fresh warm-up, poly decay and optimiser) and frozen parameters (`train.lr_scales` 0)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_MODEL
from fusescope.config import load_config
from fusescope.engine.checkpoint import load_checkpoint
from fusescope.engine.train import STAGE_WARMUP_RATIO, stage_lr_factor, train
from fusescope.errors import FusescopeError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "synthetic" / "multistream.yaml"
STAGES = "train.stages=[{steps: 3, lr: 0.004, warmup_steps: 2}, {steps: 4, lr: 0.002}]"


def cfg(data, *extra):
    return load_config(
        CONFIG,
        [f"data.root={data}", "data.synth=null", *TINY_MODEL, "train.log_every=1", *extra],
    )


def logged(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_stage_factor_is_their_poly_warmup():
    # PolyWarmupAdamW: 1 - (1 - s / W) (1 - 1e-6) during warm-up, then (1 - s / D) ** power
    assert stage_lr_factor(0, 1500, 40000, 1.0) == pytest.approx(STAGE_WARMUP_RATIO)
    assert stage_lr_factor(750, 1500, 40000, 1.0) == pytest.approx(0.5 + 0.5e-6)
    assert stage_lr_factor(1500, 1500, 40000, 1.0) == pytest.approx(1 - 1500 / 40000)
    assert stage_lr_factor(20000, 1500, 40000, 0.9) == pytest.approx(0.5**0.9)
    assert stage_lr_factor(40000, 1500, 40000, 1.0) == 0.0


def test_each_stage_has_its_lr_warmup_decay_and_a_fresh_optimiser(tiny_data, tmp_path):
    run = tmp_path / "run"
    train(cfg(tiny_data, STAGES, "train.max_steps=7", "train.poly_power=1.0"), run)
    # the lr logged after step k is the one step k + 1 uses: stage 1 (steps 0-2, warm-up 2,
    # decay over its 3 steps) then stage 2 (steps 3-6, warm-up train.warmup_steps = 2 (TINY))
    expected = [
        0.004 * stage_lr_factor(1, 2, 3, 1.0),
        0.004 * stage_lr_factor(2, 2, 3, 1.0),
        0.002 * stage_lr_factor(0, 2, 4, 1.0),
        0.002 * stage_lr_factor(1, 2, 4, 1.0),
        0.002 * stage_lr_factor(2, 2, 4, 1.0),
        0.002 * stage_lr_factor(3, 2, 4, 1.0),
        0.002 * stage_lr_factor(4, 2, 4, 1.0),
    ]
    assert [r["lr"] for r in logged(run)] == pytest.approx(expected, rel=1e-9, abs=1e-15)
    # AdamW's state restarted with the second stage: 4 steps, not 7
    state = load_checkpoint(run / "checkpoints" / "last.ckpt")["optimizer"]["state"]
    assert {int(s["step"]) for s in state.values()} == {4}
    kept = tmp_path / "kept"
    train(cfg(tiny_data, STAGES, "train.max_steps=7", "train.stage_fresh_optimizer=false"), kept)
    state = load_checkpoint(kept / "checkpoints" / "last.ckpt")["optimizer"]["state"]
    assert {int(s["step"]) for s in state.values()} == {7}


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("kill_at, ckpt_every", [(4, 3), (5, 2)])
def test_resume_across_a_stage_boundary_is_exact(tiny_data, tmp_path, kill_at, ckpt_every):
    """Killed after a checkpoint at the boundary (step 3) or inside stage 2 (step 4), the
    resumed run ends with the uninterrupted run's weights."""
    c = cfg(tiny_data, STAGES, "train.max_steps=7", f"train.ckpt_every={ckpt_every}")
    train(c, tmp_path / "whole")

    def kill(step):
        if step == kill_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(c, tmp_path / "broken", on_step=kill)
    train(c, tmp_path / "broken")
    a = load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = load_file(str(tmp_path / "broken" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_zero_lr_scale_freezes_and_decoder_scale_applies(tiny_data, tmp_path):
    run = tmp_path / "run"
    train(cfg(tiny_data, "train.lr_scales={decoder: 10.0, ensemble: 0.0}"), run)
    w = load_file(str(run / "model.safetensors"))
    assert torch.equal(w["ensemble.alpha"], torch.ones(2))  # never moved (TokenFusion's alpha)
    state = load_checkpoint(run / "checkpoints" / "last.ckpt")["optimizer"]
    lrs = sorted({g["initial_lr"] for g in state["param_groups"]})
    base = load_config(CONFIG).train.lr
    assert lrs == pytest.approx([0.0, base, 10 * base])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.stages=[{steps: 3}]", r"train.stages\[0\].lr is required"),
        ("train.stages=[{steps: 3, lr: 0.1, decay: 4}]", "unknown config key"),
        ("train.stages=[{steps: 0, lr: 0.1}]", r"train.stages\[0\].steps=0"),
        ("train.stages=[]", "train.stages is empty"),
        ("train.stages=[{steps: 2, lr: 0.1}]", "runs past train.stages, which end after 2"),
    ],
)
def test_bad_stages_are_one_line(tiny_data, override, message):
    with pytest.raises(FusescopeError, match=message) as err:
        cfg(tiny_data, override)
    assert "\n" not in str(err.value)


def test_changed_stages_refuse_a_resume(tiny_data, tmp_path):
    run = tmp_path / "run"
    train(cfg(tiny_data, STAGES, "train.max_steps=3"), run)
    other = "train.stages=[{steps: 3, lr: 0.004, warmup_steps: 2}, {steps: 4, lr: 0.001}]"
    with pytest.raises(FusescopeError, match="train.stages"):
        train(cfg(tiny_data, other, "train.max_steps=7"), run)
