"""Multi-stream surgery: per-modality BNs and convs equal separate layers; a converted encoder
equals M separate passes of the plain network; pretrained weights survive the conversion."""

import copy

import pytest
import torch
from torch import nn

from fusescope.models.backbones import create_encoder
from fusescope.models.core import Ensemble, mean_of_others, stack_modalities
from fusescope.models.multistream import MultiStreamEncoder
from fusescope.models.norms import ModalityBatchNorm, ModalityConv2d, ModalityLayerNorm
from fusescope.models.sites import Where
from fusescope.nn.norm import combine_moments


def randomise_bn(bn: nn.BatchNorm2d) -> None:
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 1.5)


@pytest.mark.parametrize("M", [2, 3])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_modality_batchnorm_equals_separate_batchnorms(M, momentum):
    refs = [nn.BatchNorm2d(6, momentum=momentum) for _ in range(M)]
    for bn in refs:
        randomise_bn(bn)
    mbn = ModalityBatchNorm.from_batchnorm(refs[0], M)
    with torch.no_grad():  # give every modality its own starting point
        for m, bn in enumerate(refs):
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(mbn, name)[m] = getattr(bn, name)
    for _step in range(3):  # training: batch statistics, running statistics updated
        xs = [torch.randn(4, 6, 5, 7) * (m + 1) + m for m in range(M)]
        x = stack_modalities(xs).requires_grad_()
        y = mbn(x)
        ref = stack_modalities([bn(t) for bn, t in zip(refs, xs, strict=True)])
        torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
        # in place on the output, as timm's ReLU and `+= shortcut` do
        y.relu_().square().sum().backward()
        grads = [
            torch.autograd.grad(bn(t.requires_grad_()).relu().square().sum(), t)[0]
            for bn, t in zip(copy.deepcopy(refs), xs, strict=True)
        ]
        torch.testing.assert_close(x.grad, stack_modalities(grads), atol=1e-4, rtol=1e-4)
    for m, bn in enumerate(refs):
        torch.testing.assert_close(mbn.running_mean[m], bn.running_mean)
        torch.testing.assert_close(mbn.running_var[m], bn.running_var)
    mbn.eval()
    for bn in refs:
        bn.eval()
    xs = [torch.randn(2, 6, 3, 3) for _ in range(M)]
    mbn.zero_grad()
    x = stack_modalities(xs).requires_grad_()
    y = mbn(x)
    torch.testing.assert_close(y, stack_modalities([bn(t) for bn, t in zip(refs, xs, strict=True)]))
    # eval mode with gradients (frozen statistics while training): gradients of every input
    y.add_(1.0).square().sum().backward()
    grads = [
        torch.autograd.grad(bn(t.requires_grad_()).add(1.0).square().sum(), [t, bn.weight, bn.bias])
        for bn, t in zip(refs, xs, strict=True)
    ]
    torch.testing.assert_close(x.grad, stack_modalities([g[0] for g in grads]))
    torch.testing.assert_close(mbn.weight.grad, torch.stack([g[1] for g in grads]))
    torch.testing.assert_close(mbn.bias.grad, torch.stack([g[2] for g in grads]))


@pytest.mark.parametrize("M", [2, 3])
def test_synchronised_modality_batchnorm_sees_the_global_batch(M):
    """Two processes simulated in one: each shard of the batch, with a `gather_stats` that
    stacks its moments with the other shard's, normalises exactly as the whole batch does, per
    modality, and the running statistics count the global batch (the collective itself is
    tested end to end by the two-process training test). Large means against small spreads:
    the combination must not lose the variance to cancellation."""
    torch.manual_seed(0)
    whole = ModalityBatchNorm(6, M)
    shards = [copy.deepcopy(whole) for _ in range(2)]
    x5 = torch.randn(8, M, 6, 5, 7) * 0.5 + 40  # (B, M, C, H, W)
    parts = [x5[:3], x5[3:]]  # uneven shards, as the last shard of a batch can be

    def moments(part):  # per (modality, channel), flattened modality-major, then the count
        var, mean = torch.var_mean(part, dim=(0, 3, 4), correction=0)  # (M, C) each
        count = torch.full((1,), part[:, 0, 0].numel(), dtype=part.dtype)
        return torch.cat([mean.flatten(), var.flatten(), count])

    ys = []
    for rank, (bn, part) in enumerate(zip(shards, parts, strict=True)):
        other = moments(parts[1 - rank])
        bn.gather_stats = lambda local, other=other, rank=rank: torch.stack(
            [local, other] if rank == 0 else [other, local]
        )
        ys.append(bn(part.reshape(-1, 6, 5, 7)).view(-1, M, 6, 5, 7))
    ref = whole(x5.reshape(-1, 6, 5, 7)).view(8, M, 6, 5, 7)
    torch.testing.assert_close(torch.cat(ys), ref, atol=2e-5, rtol=1e-5)
    for bn in shards:
        torch.testing.assert_close(bn.running_mean, whole.running_mean)
        torch.testing.assert_close(bn.running_var, whole.running_var, atol=1e-6, rtol=1e-4)


def test_combine_moments_equals_the_whole():
    x = torch.randn(10, 3, dtype=torch.float64) * 2 + 5
    parts = [x[:4], x[4:5], x[5:]]
    stats = [torch.var_mean(p, dim=0, correction=0) for p in parts]
    mean, var, n = combine_moments(
        torch.stack([m for _, m in stats]),
        torch.stack([v for v, _ in stats]),
        torch.tensor([[4.0], [1.0], [5.0]], dtype=torch.float64),
    )
    torch.testing.assert_close(mean, x.mean(0))
    torch.testing.assert_close(var, x.var(0, correction=0))
    assert n.item() == 10


def test_modality_conv_equals_separate_convs():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=True)
    mconv = ModalityConv2d(conv, 3)
    with torch.no_grad():
        mconv.weight.normal_()
        mconv.bias.normal_()
    xs = [torch.randn(2, 4, 9, 11) for _ in range(3)]
    ref = []
    for m, t in enumerate(xs):
        c = copy.deepcopy(conv)
        c.weight.data = mconv.weight.data[m * 6 : (m + 1) * 6]
        c.bias.data = mconv.bias.data[m * 6 : (m + 1) * 6]
        ref.append(c(t))
    torch.testing.assert_close(
        mconv(stack_modalities(xs)), stack_modalities(ref), atol=1e-5, rtol=1e-5
    )


def stream_copy(plain: nn.Module, ms: MultiStreamEncoder, m: int) -> nn.Module:
    """A plain encoder carrying modality m's BN (and, unshared, conv) parameters of `ms`."""
    ref = copy.deepcopy(plain)
    ms_modules = dict(ms.body.named_modules())
    with torch.no_grad():
        for name, mod in ref.named_modules():
            src = ms_modules[name]
            if isinstance(mod, nn.BatchNorm2d):
                for p in ("weight", "bias", "running_mean", "running_var"):
                    getattr(mod, p).copy_(getattr(src, p)[m])
            elif isinstance(mod, nn.LayerNorm) and isinstance(src, ModalityLayerNorm):
                mod.weight.copy_(src.weight[m])
                mod.bias.copy_(src.bias[m])
            elif isinstance(mod, nn.Conv2d) and isinstance(src, ModalityConv2d):
                n = mod.out_channels
                mod.weight.copy_(src.weight[m * n : (m + 1) * n])
    return ref


@pytest.mark.parametrize(
    "backbone,M,shared",
    [("resnet18", 2, True), ("resnet18", 3, False), ("efficientnet_lite0", 3, True)],
)
def test_multistream_equals_separate_passes(backbone, M, shared):
    plain = create_encoder(backbone)
    ms = MultiStreamEncoder(copy.deepcopy(plain), M, shared=shared)
    with torch.no_grad():  # make the modalities differ
        for mod in ms.modules():
            if isinstance(mod, ModalityBatchNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
            if isinstance(mod, ModalityConv2d):
                mod.weight.mul_(torch.empty_like(mod.weight).uniform_(0.5, 1.5))
    # float64: the check is about the algebra; float32 rounding grows through a deep network
    # normalised with batch statistics of a few pixels (stage 4 sees 2x3 of them)
    refs = [stream_copy(plain, ms, m).double() for m in range(M)]
    ms.double()
    xs = [torch.randn(2, 3, 50, 70, dtype=torch.float64) for _ in range(M)]
    for train in (True, False):
        ms.train(train)
        for r in refs:
            r.train(train)
        feats = ms(stack_modalities(xs))
        ref_feats = [r(t) for r, t in zip(refs, xs, strict=True)]
        for level, f in enumerate(feats):
            expected = stack_modalities([rf[level] for rf in ref_feats])
            torch.testing.assert_close(f, expected, atol=1e-5, rtol=1e-5)


TRANSFORMER_LIKE = {
    "convnext": {"name": "convnext_atto", "depths": [1, 1, 2, 1], "dims": [8, 16, 32, 64]},
    "convnext_nhwc": {
        "name": "convnext_atto",
        "depths": [1, 1, 1, 1],
        "dims": [8, 16, 32, 64],
        "conv_mlp": False,
    },
    "mit": {
        "name": "mit_b0",
        "depths": [1, 2, 1, 1],
        "embed_dims": [8, 16, 32, 64],
        "num_heads": [1, 1, 2, 2],
    },
    "swin": {
        "name": "swin_tiny_patch4_window7_224",
        "embed_dim": 16,
        "depths": [1, 2, 1, 1],
        "num_heads": [1, 2, 2, 4],
    },
    "vit": {"name": "vit_tiny_patch16_224", "depth": 4, "embed_dim": 32, "num_heads": 2},
}


@pytest.mark.parametrize("family", sorted(TRANSFORMER_LIKE))
def test_private_layernorms_equal_separate_networks(family):
    """Shared weights, private LayerNorms: the M-stream encoder equals M copies of the plain
    network, each carrying its modality's norms (every LayerNorm became per-modality: one left
    shared would give both streams the same affine and fail this)."""
    M = 2
    plain = create_encoder(TRANSFORMER_LIKE[family])
    ms = MultiStreamEncoder(copy.deepcopy(plain), M)
    norms = [mod for mod in ms.modules() if isinstance(mod, ModalityLayerNorm)]
    assert norms
    # every pretrained norm was copied to each modality
    plain_ln = [mod for mod in plain.modules() if isinstance(mod, nn.LayerNorm)]
    assert len(plain_ln) == len(norms)
    for src, norm in zip(plain_ln, norms, strict=True):
        assert torch.equal(norm.weight[1], src.weight) and torch.equal(norm.bias[0], src.bias)
    with torch.no_grad():
        for norm in norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.3, 0.3)
    refs = [stream_copy(plain, ms, m).double().eval() for m in range(M)]
    ms.double().eval()
    xs = [torch.randn(2, 3, 45, 61, dtype=torch.float64) for _ in range(M)]
    feats = ms(stack_modalities(xs))
    ref_feats = [r(t) for r, t in zip(refs, xs, strict=True)]
    for level, f in enumerate(feats):
        expected = stack_modalities([rf[level] for rf in ref_feats])
        torch.testing.assert_close(f, expected, atol=1e-8, rtol=1e-8)


def test_pretrained_efficientnet_survives_conversion():
    plain = create_encoder("efficientnet_lite0", pretrained=True)
    ms = MultiStreamEncoder(copy.deepcopy(plain), 2)
    acts = [type(m.act).__name__ for m in ms.modules() if isinstance(m, ModalityBatchNorm)]
    assert "ReLU6" in acts  # BatchNormAct2d kept its activation
    x = torch.randn(2, 3, 64, 80)
    # float64: in float32 the stacked batch alone changes the conv kernels' summation order
    # (differences ~1e-5 at the last stage); the check is about equality of the algebra
    for train, dtype in ((False, torch.float64), (True, torch.float64)):
        plain.train(train).to(dtype)
        ms.train(train).to(dtype)
        x = x.to(dtype)
        ref = plain(x)
        out = ms(stack_modalities([x, x]))
        for f, r in zip(out, ref, strict=True):
            torch.testing.assert_close(f[0::2], r, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(f[1::2], r, atol=1e-5, rtol=1e-5)


def test_blocks_and_stages_are_found():
    ms = MultiStreamEncoder(create_encoder("resnet34"), 2)
    points = ms.points(Where(("norm_out",)))
    assert [sum(p.stage == s for p in points) for s in (1, 2, 3, 4)] == [3, 4, 6, 3]
    last = ms.points(Where(("conv_in",), blocks="last"))
    assert [p.name for p in last] == ["layer1.2", "layer2.3", "layer3.5", "layer4.2"]
    eff = MultiStreamEncoder(create_encoder("efficientnet_lite0"), 2)
    stages = [p.stage for p in eff.points(Where(("norm_out",)))]
    assert stages[0] == 1 and stages[-1] == 4 and stages == sorted(stages)


def test_mean_of_others_and_ensemble():
    x = torch.randn(2, 3, 4)  # (B, M, ...)
    torch.testing.assert_close(mean_of_others(x)[:, 0], (x[:, 1] + x[:, 2]) / 2)
    torch.testing.assert_close(mean_of_others(x)[:, 2], (x[:, 0] + x[:, 1]) / 2)
    assert torch.equal(mean_of_others(x[:, :2]), x[:, :2].flip(1))  # M = 2: exact swap
    ens = Ensemble(2)
    logits = torch.randn(2, 1, 3, 4, 4, requires_grad=True)  # (M, B, K, H, W)
    out = ens(logits)
    torch.testing.assert_close(out, logits.mean(0))  # alpha = 1 -> equal weights
    out.sum().backward()
    assert logits.grad is None and ens.alpha.grad is not None
