"""CEN: exactly the channels below theta in a modality's own part are replaced, by the mean of the
other modalities; gradients; l1 on the exchangeable gammas only; ablation modes; stats."""

import pytest
import torch

from fusescope.models import build_model
from fusescope.models.fusion.exchange import ChannelExchange, own_parts
from fusescope.models.norms import ModalityBatchNorm
from fusescope.models.sites import FusionPoint

MODS = {2: ["rgb", "depth"], 3: ["rgb", "depth", "hha"]}
CHANS = {"rgb": 3, "depth": 1, "hha": 3}


def build(M=2, **options):
    return build_model({"name": "cen", "backbone": "resnet18", **options}, MODS[M], CHANS, 5)


def batch(M=2, B=2, H=50, W=70):
    return {m: torch.randn(B, CHANS[m], H, W) for m in MODS[M]}


def exchange_op(M, C, gammas, **kw):
    bn = ModalityBatchNorm(C, M)
    with torch.no_grad():
        bn.weight.copy_(gammas)
    return ChannelExchange(
        FusionPoint("x", 1, 0, True, C, "cnn", norm=bn, in_channels=C),
        theta=0.02,
        l1_weight=1.0,
        **kw,
    ), bn


def test_own_parts_are_disjoint_and_cover():
    parts = own_parts(3, 64)
    assert parts.sum(0).eq(1).all()
    assert parts.sum(1).tolist() == [21, 21, 22]


@pytest.mark.parametrize("M", [2, 3])
def test_exactly_channels_below_theta_in_own_part_are_replaced(M):
    C = 12
    gammas = torch.ones(M, C)
    own = own_parts(M, C)
    small = torch.zeros(M, C, dtype=torch.bool)
    small[0, [0, 1, 7]] = True  # 0, 1 in modality 0's part; 7 is not
    small[1, [C // M, C - 1]] = True  # first channel of its part; C-1 only for M = 2
    gammas[small] = torch.tensor([0.0, -0.019, 0.001, 0.015, 0.0])[: small.sum()]
    gammas[0, 2] = 0.02  # at theta: not below, kept
    op, _ = exchange_op(M, C, gammas)
    expected_mask = small & own
    assert torch.equal(op.replaced(), expected_mask)
    x5 = torch.randn(M, 2, C, 3, 4, requires_grad=True)  # modality-first for reading
    y5 = op(x5.transpose(0, 1), "norm_out").transpose(0, 1)  # ops see (B, M, C, H, W)
    for m in range(M):
        others = torch.cat([x5[:m], x5[m + 1 :]]).mean(0)
        for c in range(C):
            want = others[:, c] if expected_mask[m, c] else x5[m, :, c]
            torch.testing.assert_close(y5[m, :, c], want)
    # the replaced value is dropped from the graph: zero gradient through it
    y5[0, :, 0].sum().backward()
    assert x5.grad[0, :, 0].abs().sum() == 0
    assert x5.grad[1:, :, 0].abs().sum() > 0


def test_l1_is_on_exchangeable_gammas_only():
    gammas = torch.arange(1.0, 9.0).view(2, 4)
    op, _ = exchange_op(2, 4, gammas)
    # modality 0 owns channels 0-1, modality 1 channels 2-3
    assert op.aux_losses()["l1_gamma"].item() == pytest.approx(1 + 2 + 7 + 8)
    op_all, _ = exchange_op(2, 4, gammas, split=False)
    assert op_all.aux_losses()["l1_gamma"].item() == pytest.approx(36)


def test_discard_and_random_modes():
    gammas = torch.ones(2, 8)
    gammas[0, 1] = 0.0
    op, _ = exchange_op(2, 8, gammas, mode="discard")
    x5 = torch.randn(2, 1, 8, 2, 2)  # (M, B, ...)
    y5 = op(x5.transpose(0, 1), "norm_out").transpose(0, 1)
    assert y5[0, :, 1].abs().sum() == 0 and torch.equal(y5[1], x5[1])
    op, _ = exchange_op(2, 8, torch.ones(2, 8), mode="random", random_portion=0.5)
    mask = op.replaced()
    assert mask.any() and not (mask & ~own_parts(2, 8)).any()
    assert "random_mask" in op.state_dict()


def test_exchange_off_equals_plain_multistream():
    torch.manual_seed(1)
    cen = build(mode="none")
    ms = build_model({"name": "multistream", "backbone": "resnet18"}, MODS[2], CHANS, 5)
    ms.load_state_dict(cen.state_dict())
    b = batch()
    for train in (True, False):
        outs = []
        for model in (cen, ms):
            torch.manual_seed(2)  # same decoder dropout in train mode
            outs.append(model.train(train)(b)["logits"])
        torch.testing.assert_close(*outs)


def test_exchange_happens_in_the_model_and_stats_report_it():
    model = build(M=3).eval()
    with torch.no_grad():  # timm zero-inits each block's last BN, which would hide the effect
        for mod in model.modules():
            if isinstance(mod, ModalityBatchNorm):
                mod.weight.uniform_(0.5, 1.5)
    ops = list(model.encoder.fusion.values())
    assert len(ops) == 8  # every block of resnet18's stages 1-4
    stage1 = [op for op in ops if op.stage == 1]
    with torch.no_grad():
        for op in stage1:
            op.gamma.masked_fill_(op.own, 0.0)  # everything exchangeable in stage 1 goes
    stats = model.training_stats()
    assert stats["exchanged/stage1"] == 1.0 and stats["exchanged/stage2"] == 0.0
    b = batch(M=3)
    out = model(b)
    assert set(out["per_modality"]) == set(MODS[3])
    mode_none = build(M=3, mode="none").eval()
    mode_none.load_state_dict(model.state_dict())
    assert not torch.allclose(out["logits"], mode_none(b)["logits"])


@pytest.mark.parametrize(
    "M,backbone", [(2, "resnet18"), (3, "resnet18"), (2, "efficientnet_lite0")]
)
def test_forward_backward_odd_size(M, backbone):
    model = build(M=M, backbone=backbone)
    out = model(batch(M=M, H=51, W=69))
    assert out["logits"].shape == (2, 5, 51, 69)
    loss = out["logits"].mean() + sum(p.mean() for p in out["per_modality"].values())
    (loss + out["aux_losses"]["l1_gamma"]).backward()
    assert model.ensemble.alpha.grad is not None


def test_efficientnet_exchange_is_at_the_depthwise_bn_before_its_activation():
    model = build(backbone="efficientnet_lite0")
    for name, mod in model.encoder.body.named_modules():
        if isinstance(mod, ModalityBatchNorm) and mod.after_norm:
            assert name.endswith(("bn1", "bn2")) and type(mod.act).__name__ == "ReLU6"
            block = model.encoder.body.get_submodule(name.rsplit(".", 1)[0])
            assert block.conv_dw.groups == block.conv_dw.in_channels  # depthwise


def test_adds_no_parameters_beyond_bns_and_alpha():
    uni = build_model({"name": "unimodal", "backbone": "resnet18"}, ["rgb"], CHANS, 14)
    cen = build_model({"name": "cen", "backbone": "resnet18"}, MODS[2], CHANS, 14)
    n_uni = sum(p.numel() for p in uni.parameters())
    n_cen = sum(p.numel() for p in cen.parameters())
    bn_extra = sum(m.weight.numel() for m in cen.modules() if isinstance(m, ModalityBatchNorm))
    assert n_cen == n_uni + bn_extra + 2  # each BN's second copy (gamma+beta = 2C -> 4C), alpha
    assert n_cen < 1.01 * n_uni


def test_rejects_bad_options():
    with pytest.raises(Exception, match="mode"):
        build(mode="swap")
    with pytest.raises(Exception, match="unknown config key"):
        build(thresh=0.1)
    with pytest.raises(Exception, match="gamma_lr_scale"):
        build(gamma_lr_scale=0)


def test_gamma_lr_scale_gives_the_exchange_gammas_their_own_learning_rate():
    """The exchange BNs' gammas (and nothing else) train at scale x lr, through the schedule."""
    from omegaconf import OmegaConf

    from fusescope.config import TrainConfig
    from fusescope.engine.train import lr_factor, make_optimizer

    model = build(gamma_lr_scale=10.0)
    cfg = OmegaConf.structured(
        TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=1e-4, momentum=0.9)
    )
    opt = make_optimizer(model, cfg)
    gammas = {id(op.gamma) for op in model.modules() if isinstance(op, ChannelExchange)}
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert len(lr_of) == sum(1 for _ in model.parameters())  # every parameter, once
    assert {lr_of[i] for i in gammas} == {1e-2}
    assert {lr for i, lr in lr_of.items() if i not in gammas} == {1e-3}
    assert all(
        g["weight_decay"] == 0.0
        for g in opt.param_groups
        if any(id(p) in gammas for p in g["params"])
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, 2, 10, 0.9))
    for _ in range(5):
        opt.step()
        sched.step()
    lrs = sorted({round(g["lr"] / lr_factor(5, 2, 10, 0.9), 12) for g in opt.param_groups})
    assert lrs == [1e-3, 1e-2]
    assert make_optimizer(build(), cfg).param_groups[0]["lr"] == 1e-3  # default: one lr


# --- the authors' code (yikaiw/CEN, semantic_segmentation), written from its published
# behaviour, float64: `Exchange` and the l1 term of `train()`


def authors_exchange(x0, x1, g0, g1, theta):
    """Modality 0 takes modality 1's channel c wherever |gamma_0[c]| < theta, in any channel;
    and symmetrically."""
    y0, y1 = x0.clone(), x1.clone()
    for c in range(x0.shape[1]):
        if abs(float(g0[c])) < theta:
            y0[:, c] = x1[:, c]
        if abs(float(g1[c])) < theta:
            y1[:, c] = x0[:, c]
    return y0, y1


def test_exchange_scope_any_equals_the_authors_exchange():
    C = 10
    gammas = torch.rand(2, C, dtype=torch.float64) + 0.5
    gammas[0, [1, 7]] = torch.tensor([0.01, -0.015], dtype=torch.float64)  # own half; other half
    gammas[1, [2, 8]] = torch.tensor([0.0, 0.019], dtype=torch.float64)  # other half; own half
    x0, x1 = (torch.randn(3, C, 4, 5, dtype=torch.float64) for _ in range(2))
    ref = authors_exchange(x0, x1, gammas[0], gammas[1], 0.02)
    for scope in ("any", "own_part"):
        op, bn = exchange_op(2, C, gammas.float(), exchange_scope=scope)
        op.double(), bn.double()
        with torch.no_grad():
            bn.weight.copy_(gammas)
        y = op(torch.stack([x0, x1], 1), "norm_out")  # (B, M, C, H, W)
        if scope == "any":
            torch.testing.assert_close(y[:, 0], ref[0], atol=0, rtol=0)
            torch.testing.assert_close(y[:, 1], ref[1], atol=0, rtol=0)
        else:  # the paper: channel 7 of modality 0 and 2 of modality 1 are not in their parts
            assert torch.equal(y[:, 0, 7], x0[:, 7]) and torch.equal(y[:, 1, 2], x1[:, 2])
            assert torch.equal(y[:, 0, 1], x1[:, 1]) and torch.equal(y[:, 1, 8], x0[:, 8])
    assert op.aux_losses()["l1_gamma"].item() == pytest.approx(
        float(gammas[0, :5].abs().sum() + gammas[1, 5:].abs().sum())
    )  # l1: own halves only
    with pytest.raises(Exception, match="exchange_scope"):
        build(exchange_scope="everywhere")


def authors_loss(outputs, target, slim_params, lamda):
    """`train()` of the authors' code: per output (each modality, then the ensemble), NLL of
    log-softmax plus lamda * sum |slim params|, the l1 term counted once per output."""
    loss = 0
    for out in outputs:
        loss = loss + torch.nn.functional.nll_loss(torch.log_softmax(out, 1), target)
        loss = loss + lamda * sum(p.abs().sum() for p in slim_params)
    return loss


def test_l1_per_output_and_the_loss_equal_the_authors():
    """Bottleneck ResNet (the authors' ResNet-101 family): the l1 term is on bn2's gammas,
    modality 0's first half and modality 1's second half, counted M + 1 times."""
    from fusescope.tasks.segmentation.loss import total_loss

    model = build_model(
        {"name": "cen", "backbone": "resnet26", "l1_per_output": True, "exchange_scope": "any"},
        MODS[2],
        CHANS,
        5,
    ).double()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, ModalityBatchNorm):
                mod.weight.uniform_(-1, 1)
    # the authors select every parameter named *bn2*.weight, alternating halves per modality
    slim = []
    for name, p in model.encoder.body.named_parameters():
        if name.startswith("layer") and name.endswith("bn2.weight"):
            C = p.shape[1]
            slim += [p[0, : C // 2], p[1, C // 2 :]]
    assert len(slim) == 2 * 8  # resnet26: 2 blocks in each of 4 stages
    b = {m: torch.randn(2, CHANS[m], 40, 48, dtype=torch.float64) for m in MODS[2]}
    label = torch.randint(0, 5, (2, 40, 48))
    out = model.eval()(b)
    outputs = [out["per_modality"]["rgb"], out["per_modality"]["depth"], out["logits"]]
    no_task = [torch.zeros(1, 5, 1, 1, dtype=torch.float64)] * 3  # the l1 terms alone
    constant = 3 * torch.log(torch.tensor(5.0, dtype=torch.float64))  # their NLL of uniform
    l1_term = authors_loss(no_task, torch.zeros(1, 1, 1, dtype=torch.long), slim, 2e-4) - constant
    torch.testing.assert_close(out["aux_losses"]["l1_gamma"], l1_term, rtol=1e-12, atol=0)
    ours, _ = total_loss(out, label, ignore_index=255)  # the engine's sum, cross-entropy in fp32
    torch.testing.assert_close(
        ours.double(), authors_loss(outputs, label, slim, 2e-4), rtol=1e-6, atol=0
    )
    once = build_model({"name": "cen", "backbone": "resnet26"}, MODS[2], CHANS, 5).double()
    once.load_state_dict(model.state_dict())
    torch.testing.assert_close(
        3 * once.aux_losses()["l1_gamma"], model.aux_losses()["l1_gamma"], rtol=1e-12, atol=0
    )
