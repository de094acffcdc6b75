"""Parameter and FLOP counts of a model, as the papers' efficiency tables report them.

Papers count "FLOPs" with different tools, and the tools disagree by more than the methods do,
so each table is compared under its own source's rule (`COUNTERS`):

* `count_flops` (`torch`): `torch.utils.flop_counter.FlopCounterMode`, a multiply-add is 2 FLOPs,
  convolutions, matmuls and attention only, plus triangular solves (MANGO's flow; `FLOP_RULES`).
  SA-Gate Table 1 is reproduced within 1% by it.
* `count_macs_thop` (`thop`): what `thop.profile` (0.1.1) returns, multiply-adds of the modules
  it has a rule for. DFormer's and DFormerv2's tables (which list TokenFusion and GeminiFusion)
  come from their `benchmark.py`: `thop.profile(model, (1 x 3 x 480 x 640,) * 2)`. Functional
  ops count nothing there: the attention's own matmuls, `F.interpolate`, and
  `nn.MultiheadAttention` (no rule).
* `count_macs_thop_mha` (`thop_mha`): the same with a rule for `nn.MultiheadAttention` (its
  projections and products), which DFormerv2's GeminiFusion figures fit (plain thop counts
  the authors' cross-attention as 0).
* `count_macs_fvcore` (`fvcore`): fvcore's `FlopCountAnalysis`, a multiply-add is 1 "flop",
  matmuls (attention included) and convolutions, LayerNorm 5 per element, BatchNorm at
  inference 2, bilinear upsampling 4 per output element.

fusescope's vectorised per-modality modules count as the modules of the authors' code they
replace (`ModalityLinear` as M `nn.Linear`s, `ModalityLayerNorm` as M LayerNorms, GeminiFusion's
batched cross-attention as their `nn.MultiheadAttention`), so a count compares the same network.

Models can be built and counted on the meta device: no memory is allocated and no arithmetic is
done, so a ResNet-101 at 480x640 costs about a second.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from fusescope.models import build_model
from fusescope.models.norms import ModalityConv2d, ModalityLinear
from fusescope.nn.norm import is_norm, tracks_batch_stats


def count_params(model: nn.Module) -> int:
    """Every parameter of the model (trainable or not, each shared tensor once)."""
    return sum(p.numel() for p in model.parameters())


def triangular_solve_flops(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs (2 per multiply-add) of `linalg_solve_triangular(A, B)`: substitution takes
    n (n + 1) / 2 multiply-adds per right-hand side (MANGO's LICA and the ICA inverse);
    FlopCounterMode has no rule for it and would count 0."""
    n = a_shape[-1]
    rhs = math.prod(b_shape) // n  # batch x right-hand sides
    return n * (n + 1) * rhs


def cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """The CPU kernel of `F.scaled_dot_product_attention` (timm's ViT, MiT) counted as the CUDA
    kernels and the meta device's decomposition are: FlopCounterMode has no rule for it, so a
    model counted on the CPU would lose its attention."""
    return sdpa_flop_count(query, key, value)


# attention as every device counts it (the meta device decomposes it into matmuls)
ATTENTION_RULES = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention_flops,
}
# FlopCounterMode's rules for ops it does not count itself
FLOP_RULES = {
    **ATTENTION_RULES,
    torch.ops.aten.linalg_solve_triangular: triangular_solve_flops,
}


def count_free_params(model: nn.Module) -> int:
    """`count_params` less the entries of MANGO's LICA token mixings that their masks zero: each
    `TokenMixing` stores its unit-lower and strict-upper LU factors as full N x N matrices (Glow's
    layout), so N (N + 1) of its 2 N^2 + N stored entries never change; N^2 are free."""
    from fusescope.models.flow import TokenMixing

    masked = sum(
        m.num_tokens * (m.num_tokens + 1) for m in model.modules() if isinstance(m, TokenMixing)
    )
    return count_params(model) - masked


def count_flops(model: nn.Module, batch: Mapping[str, Tensor]) -> int:
    """FLOPs (2 per multiply-add) of one inference forward pass of `model` on `batch`.

    The model is put in eval mode (training-only parts such as auxiliary heads do not run) and
    restored afterwards; no gradients are recorded.
    """
    from torch.fx.experimental import _config as fx_config

    was_training = model.training
    model.eval()
    try:
        # on the meta device boolean-mask indexing (e.g. the MMD's upper-triangle pick) needs a
        # size; the mask only selects a few scalars, so "all selected" changes no counted FLOP
        with (
            fx_config.patch(meta_nonzero_assume_all_nonzero=True),
            FlopCounterMode(display=False, custom_mapping=FLOP_RULES) as counter,
            torch.no_grad(),
        ):
            model(dict(batch))
    finally:
        model.train(was_training)
    return counter.get_total_flops()


@contextlib.contextmanager
def _inference(model: nn.Module):
    """Eval mode, no gradients, meta-safe boolean indexing; the mode restored afterwards."""
    from torch.fx.experimental import _config as fx_config

    was_training = model.training
    model.eval()
    try:
        with fx_config.patch(meta_nonzero_assume_all_nonzero=True), torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _hooked_count(model: nn.Module, batch: Mapping[str, Tensor], rule_of) -> int:
    """Run `model` once with a forward hook on every module `rule_of` gives a rule (its
    descendants are not visited: the rule counts the whole module, as thop's `profile` does);
    returns the sum of the rules' counts."""
    total = [0]
    handles = []
    counted: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(c + ".") for c in counted):
            continue
        rule = rule_of(module)
        if rule is None:
            continue
        counted.append(name)

        def hook(mod, args, out, rule=rule):
            total[0] += int(rule(mod, args[0], out))

        handles.append(module.register_forward_hook(hook))
    try:
        with _inference(model):
            model(dict(batch))
    finally:
        for h in handles:
            h.remove()
    return total[0]


def _thop_rule(module: nn.Module) -> Callable | None:
    """thop 0.1.1's rule for a module type (`profile`'s `register_hooks`), or None (zero)."""
    kind = type(module)
    if kind in (nn.Conv2d, nn.ConvTranspose2d, ModalityConv2d):  # count_convNd
        return lambda m, x, y: y.numel() * (x.shape[1] // m.groups) * math.prod(m.weight.shape[2:])
    if kind in (nn.Linear, ModalityLinear):  # count_linear
        return lambda m, x, y: y.numel() * m.in_features
    if is_norm(module) or isinstance(module, nn.LayerNorm | nn.modules.batchnorm._BatchNorm):
        return lambda m, x, y: 4 * x.numel()  # count_normalization: 2 per element, x2 affine
    if kind is nn.Softmax:  # count_softmax: exp, add, div
        return lambda m, x, y: (x.numel() // x.shape[m.dim]) * (3 * x.shape[m.dim] - 1)
    return None


def count_macs_thop(model: nn.Module, batch: Mapping[str, Tensor]) -> int:
    """Multiply-adds as `thop.profile` counts them (see the module docstring): convolutions and
    linears (no bias), affine norms 4 per element, `nn.Softmax` 3n - 1 per row, nothing else.
    GeminiFusion's cross-attention counts 0, as thop counts the authors' `nn.MultiheadAttention`
    (its relation MLP and softmax are counted)."""
    return _hooked_count(model, batch, _thop_rule)


def _mha_rule(module: nn.Module) -> Callable | None:
    """GeminiFusion's cross-attention counted as a thop with an `nn.MultiheadAttention` rule
    counts the authors' two MultiheadAttentions: per token and direction the query, 2 key and 2
    value projections and the output projection (6 C^2), the attention products (4 C), plus
    what plain thop counts of the module (the relation MLP, 3 C^2, and its softmax)."""
    from fusescope.models.fusion.gemini import PixelCrossAttention

    if not isinstance(module, PixelCrossAttention):
        return None

    def rule(m, x, y):  # x: (B, M, N, C)
        C = x.shape[-1]
        return (x.numel() // C) * (9 * C * C + 4 * C + 3 * C - 1)

    return rule


def count_macs_thop_mha(model: nn.Module, batch: Mapping[str, Tensor]) -> int:
    """`count_macs_thop` with the authors' `nn.MultiheadAttention` counted (see `_mha_rule`):
    what DFormerv2's GeminiFusion figures fit."""
    return _hooked_count(model, batch, lambda m: _mha_rule(m) or _thop_rule(m))


def _fvcore_norm_rule(module: nn.Module) -> Callable | None:
    if not (is_norm(module) or isinstance(module, nn.LayerNorm | nn.modules.batchnorm._BatchNorm)):
        return None
    # aten::batch_norm at inference 2 per element (affine), layer / instance norm 5 (affine)
    per_element = 2 if tracks_batch_stats(module) else 5
    return lambda m, x, y: per_element * x.numel()


def count_macs_fvcore(model: nn.Module, batch: Mapping[str, Tensor]) -> int:
    """Multiply-adds as fvcore's `FlopCountAnalysis` counts them (see the module docstring):
    matmuls and convolutions (attention included) as `FlopCounterMode` sees them, halved; norms by
    their module (fusescope's per-modality LayerNorm applies its affine apart, which fvcore would
    not see); bilinear upsampling 4 per output element."""

    def bilinear(*args, out_shape=None, **kwargs) -> int:  # doubled: everything is halved below
        return 2 * 4 * math.prod(out_shape)

    norms = _hooked_count(model, batch, _fvcore_norm_rule)
    with _inference(model):
        # fvcore has no handle for triangular solves (it skips them with a warning): no FLOP_RULES
        mapping = {**ATTENTION_RULES, torch.ops.aten.upsample_bilinear2d: bilinear}
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            model(dict(batch))
    return counter.get_total_flops() // 2 + norms


COUNTERS = {
    "torch": count_flops,
    "thop": count_macs_thop,
    "thop_mha": count_macs_thop_mha,
    "fvcore": count_macs_fvcore,
}


def meta_cost(
    model_cfg: Mapping[str, Any],
    modalities: list[str],
    in_channels: dict[str, int],
    num_classes: int,
    size: tuple[int, int],
    counter: str = "torch",
    free_params: bool = False,
) -> tuple[int, int]:
    """(parameters, FLOPs under `counter`, a key of `COUNTERS`) of `build_model(model_cfg,
    ...)` on one frame of `size`, counted on the meta device (pretrained weights are not
    loaded: they change neither count). `free_params`: `count_free_params` instead of every
    stored parameter."""
    cfg = {**model_cfg, "pretrained": False}
    with torch.device("meta"):
        model = build_model(cfg, modalities, in_channels, num_classes)
        batch = {m: torch.zeros(1, in_channels[m], *size) for m in modalities}
    params = count_free_params(model) if free_params else count_params(model)
    return params, COUNTERS[counter](model, batch)


def flow_cost(
    channels: int, grid: tuple[int, int], blocks: int = 12, flow_width: int = 64, **flow
) -> dict[str, int]:
    """What MANGO's `LatentFlow` costs on a `grid` of tokens per modality, from a `channels`-wide
    map of that size (batch 1, float32, on the CPU): `tokens` (both modalities), `params`,
    `flops` of one forward (FlopCounterMode, 2 per multiply-add) and `activation_bytes`, the
    tensors autograd keeps for the backward pass (each storage once, parameters excluded)."""
    from fusescope.models.flow import PARTITIONS
    from fusescope.models.fusion.mango import LatentFlow

    options = {
        "partitions": PARTITIONS,
        "coupling": True,
        "attn_dim": 64,
        "hidden": 128,
        "nll_weight": 0.1,
        "log_scale_bound": 2.0,
        **flow,
    }
    op = LatentFlow(channels, flow_width=flow_width, grid=grid, blocks=blocks, **options)
    x5 = torch.randn(1, 2, channels, *grid)
    with FlopCounterMode(display=False, custom_mapping=FLOP_RULES) as counter, torch.no_grad():
        op.fuse_maps(x5)
    weights = {p.untyped_storage().data_ptr() for p in op.parameters()}
    kept: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fused, nll = op.fuse_maps(x5.requires_grad_())
    return {
        "tokens": 2 * grid[0] * grid[1],
        "params": count_params(op),
        "flops": counter.get_total_flops(),
        "activation_bytes": sum(kept.values()),
    }
