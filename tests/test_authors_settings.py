"""The CEN / AsymFusion code's training settings as config options (frozen BN statistics, weight
decay on every parameter, alpha in the decoder's lr group), checked against those settings as the
authors' code applies them, and set in the real-data configs that reproduce the papers."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from conftest import TINY_MODEL
from fusescope.config import load_config
from fusescope.engine.train import freeze_bn_statistics, make_optimizer, train
from fusescope.errors import FusescopeError
from fusescope.models import build_model
from fusescope.models.norms import ModalityBatchNorm

ROOT = Path(__file__).resolve().parents[1]
MODS, CHANS = ["rgb", "depth"], {"rgb": 3, "depth": 1}


def by_hand(bn: ModalityBatchNorm, x5: torch.Tensor, m: int) -> torch.Tensor:
    """Modality m's BN in eval mode: (x - running_mean) / sqrt(running_var + eps) * g + b."""
    return (x5[:, m] - bn.running_mean[m, :, None, None]) / torch.sqrt(
        bn.running_var[m, :, None, None] + bn.eps
    ) * bn.weight[m, :, None, None] + bn.bias[m, :, None, None]


def test_frozen_statistics_normalise_with_the_running_ones():
    """FREEZE_BN (every BatchNorm module in eval mode while training): each modality's BN output
    is its running-statistics normalisation, float64, and the running statistics do not move;
    gammas still get gradients, dropout stays in training mode."""
    model = build_model({"name": "multistream", "backbone": "resnet18"}, MODS, CHANS, 5).double()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, ModalityBatchNorm):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 1.5)
    model.train()
    freeze_bn_statistics(model)
    bn = model.encoder.body.layer2[0].bn1
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    seen = {}
    # clones: the ReLU after the BN works in place
    bn.register_forward_hook(lambda mod, args, out: seen.update(x=args[0], y=out.clone()))
    out = model({m: torch.randn(2, CHANS[m], 40, 48, dtype=torch.float64) for m in MODS})
    x5, y5 = seen["x"].unflatten(0, (-1, 2)), seen["y"].unflatten(0, (-1, 2))  # (B, M, ...)
    for m in range(2):
        torch.testing.assert_close(y5[:, m], by_hand(bn, x5, m), rtol=1e-12, atol=1e-12)
    after = {k: v for k, v in model.state_dict().items() if "running" in k}
    assert all(torch.equal(before[k], after[k]) for k in before)
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    assert dropouts and all(m.training for m in dropouts)
    out["per_modality"]["rgb"].sum().backward()  # the ensemble's logits are detached
    stem = model.encoder.body.bn1  # (timm zero-inits each block's last BN: bn1 gets no gradient)
    assert stem.weight.grad is not None and stem.weight.grad[0].abs().sum() > 0


def test_engine_keeps_frozen_statistics(tiny_data, tmp_path):
    cfg = load_config(
        ROOT / "configs" / "synthetic" / "cen.yaml",
        [
            f"data.root={tiny_data}",
            "data.synth=null",
            *TINY_MODEL,
            "train.max_steps=2",
            "train.freeze_bn_stats=true",
        ],
    )
    run = train(cfg, tmp_path / "run")
    trained = load_file(str(run / "model.safetensors"))
    torch.manual_seed(cfg.train.seed)  # the engine's initial weights
    fresh = build_model(OmegaConf.to_container(cfg.model), MODS, CHANS, 3).state_dict()
    stats = [k for k in trained if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(trained[k], fresh[k]) for k in stats)
    gammas = [k for k in stats if "encoder" in k]
    assert any(
        not torch.equal(
            trained[k.replace("running_mean", "weight")], fresh[k.replace("running_mean", "weight")]
        )
        for k in gammas
        if k.endswith("running_mean")
    )


@pytest.mark.parametrize("dataset", ["nyudv2", "sunrgbd"])
@pytest.mark.parametrize("method", ["cen", "asymfusion"])
def test_real_data_configs_optimise_as_the_authors(dataset, method):
    """The authors' optimisers: encoder (conv1 / bn1 / layer*) SGD at lr 5e-4, everything else
    (decoder, alpha) at 3e-3, weight decay 1e-5 on every parameter; FREEZE_BN; and for CEN the
    code's exchange rule and l1 count."""
    cfg = load_config(ROOT / "configs" / dataset / f"{method}.yaml")
    assert cfg.train.freeze_bn_stats and cfg.train.decay_all
    if method == "cen":
        assert cfg.model.exchange_scope == "any" and cfg.model.l1_per_output
        assert cfg.model.l1_weight == pytest.approx(2e-4)
    model_cfg = {
        k: v
        for k, v in OmegaConf.to_container(cfg.model).items()
        if k not in ("backbone", "pretrained", "decoder")
    }
    model = build_model({**model_cfg, "backbone": "resnet18"}, MODS, CHANS, 5)
    groups = make_optimizer(model, cfg.train).param_groups
    setting = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        encoder = name.startswith("encoder.")
        assert setting[id(p)] == (pytest.approx(5e-4 if encoder else 3e-3), pytest.approx(1e-5)), (
            name
        )


def test_adam_betas_reach_the_optimiser_and_bad_ones_are_named():
    """pix2pix / CEN translation train with Adam beta1 = 0.5: `train.betas` sets it."""
    cfg = load_config(None, ["train.betas=[0.5,0.999]"])
    model = torch.nn.Linear(3, 2)
    groups = make_optimizer(model, cfg.train).param_groups
    assert {g["betas"] for g in groups} == {(0.5, 0.999)}
    default = make_optimizer(model, load_config(None, []).train).param_groups
    assert {g["betas"] for g in default} == {(0.9, 0.999)}
    with pytest.raises(FusescopeError, match=r"train.betas=\[1.5, 0.999\] must be two numbers"):
        load_config(None, ["train.betas=[1.5,0.999]"])
