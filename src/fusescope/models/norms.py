"""Per-modality layers over a modality-stacked batch: private norms (and, for unshared streams,
private convolutions) that run as one native call for every modality.

Modalities are stacked on the batch axis sample-major, `(B*M, ...)` with row `b*M + m` holding
modality m of sample b (`core.stack_modalities`), so every shared layer runs once for all of
them. `convert_modules` turns a module's norms into these classes by surgery, each modality's
copy initialised from the (pretrained) norm, as TokenFusion's `expand_state_dict` does for its
LayerNorms:

* `BatchNorm2d` (timm's `BatchNormAct2d` included, which keeps its activation) ->
  `ModalityBatchNorm`: one `batch_norm` over the `(B, M*C, H, W)` view, the same memory;
* `LayerNorm` over the last axis (transformer tokens, ConvNeXt's channels-last norm) and timm's
  `LayerNorm2d` (over the channels of an NCHW map) -> `ModalityLayerNorm`: one `layer_norm`
  without affine for every modality, then the (M, C) affine on the `(B, M, ...)` view;
* with `shared=False`, every `Conv2d` -> `ModalityConv2d`: M private filters as one grouped
  convolution over the same `(B, M*C, H, W)` view.

`ModalityInstanceNorm` is the U-Net translator's norm (instance statistics, private affines).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, LayerNorm2d
from torch import Tensor, nn

from fusescope.errors import OptionError
from fusescope.models.core import modality_view
from fusescope.nn.norm import combine_moments


class ModalityBatchNorm(nn.Module):
    """M BatchNorms over a modality-stacked batch, with fusion slots between norm and activation.

    Equals M separate `BatchNorm2d` calls (train and eval, running statistics included) but runs
    as one native `batch_norm` (cuDNN / MIOpen / CPU kernel, as the device has it) over the
    `(B, M*C, H, W)` view of the sample-major stack, channel `m*C + c` being channel c of
    modality m; the (M, C) parameters and buffers are flattened as views, so the kernel updates
    the running statistics in place. Under mixed precision the
    statistics are computed and kept in float32 (the native kernel does so for a bf16/fp16 input
    with float32 parameters), and the output has the input's dtype.

    Args:
        num_features: channels C.
        num_modalities: M.
        eps, momentum: as `nn.BatchNorm2d` (momentum None: cumulative average).
        act: activation applied after normalisation (timm's BatchNormAct2d carries one).
        drop: drop layer between norm and activation (BatchNormAct2d's `drop`).

    `gather_stats`, when set (the engine's `convert_batchnorm` does it for multi-process runs),
    stacks a tensor from every process, differentiably; training statistics are then those of
    the global batch, per modality, as SyncBatchNorm gives a plain BatchNorm.
    """

    is_norm = True  # the engine's protocol (fusescope.nn.norm): no weight decay,
    tracks_batch_stats = True  # frozen by train.freeze_bn_stats, statistics gathered in DDP

    def __init__(
        self,
        num_features: int,
        num_modalities: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        act: nn.Module | None = None,
        drop: nn.Module | None = None,
    ):
        super().__init__()
        self.num_features = num_features
        self.num_modalities = num_modalities
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(num_modalities, num_features))
        self.bias = nn.Parameter(torch.zeros(num_modalities, num_features))
        self.register_buffer("running_mean", torch.zeros(num_modalities, num_features))
        self.register_buffer("running_var", torch.ones(num_modalities, num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.drop = drop if drop is not None else nn.Identity()
        self.act = act if act is not None else nn.Identity()
        # fusion slots (`sites.SiteHook`s); plain lists so the ops stay registered only once
        # (in MultiStreamEncoder.fusion) and the state-dict keys do not depend on the method
        self.after_norm: list = []
        self.after_act: list = []
        self.gather_stats: Callable[[Tensor], Tensor] | None = None

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d, num_modalities: int) -> ModalityBatchNorm:
        """Every modality starts from `bn`'s parameters and running statistics."""
        if not (bn.affine and bn.track_running_stats):
            raise OptionError(
                f"{type(bn).__name__} without affine parameters or running "
                f"statistics is not supported"
            )
        act = drop = None
        if isinstance(bn, BatchNormAct2d):
            act, drop = bn.act, bn.drop
        elif type(bn) is not nn.BatchNorm2d:
            raise OptionError(f"unsupported BatchNorm subclass {type(bn).__name__}")
        new = cls(bn.num_features, num_modalities, bn.eps, bn.momentum, act=act, drop=drop)
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(new, name).copy_(getattr(bn, name).detach().expand(num_modalities, -1))
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
        return new.to(bn.weight.device)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, modalities={self.num_modalities}, eps={self.eps}, "
            f"momentum={self.momentum}"
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.gather_stats is not None:
            y = self._global_norm(x)
        else:
            factor = 0.0
            if self.training:
                self.num_batches_tracked.add_(1)
                # momentum None: cumulative average, as nn.BatchNorm2d (which also reads the
                # count on the host here)
                factor = (
                    self.momentum
                    if self.momentum is not None
                    else 1.0 / float(self.num_batches_tracked)
                )
            M = self.num_modalities
            BM, C, H, W = x.shape
            # the (M, C) parameters and statistics flattened as views: modality m's channel c
            # is channel m*C + c, and the kernel updates the running statistics in place
            y = F.batch_norm(
                x.reshape(BM // M, M * C, H, W),  # (B, M*C, H, W): the same memory
                self.running_mean.view(-1),
                self.running_var.view(-1),
                self.weight.view(-1),
                self.bias.view(-1),
                self.training,
                factor,
                self.eps,
            )
            # back to (B*M, C, H, W) as `_unsafe_view`: the same memory, but not an autograd
            # view of the kernel's output (a temporary nothing else holds, and batch norm's
            # backward does not need it), so the in-place ReLU / `+= shortcut` that timm blocks
            # apply to a BN's output stay cheap (on a view, autograd would copy the whole
            # tensor in backward)
            if torch.onnx.is_in_onnx_export():  # ONNX has no _unsafe_view; no backward there
                y = y.reshape(BM, C, H, W)
            else:
                y = torch.ops.aten._unsafe_view(y.contiguous(), (BM, C, H, W))
        if not self.after_norm:
            y = self.act(self.drop(y))
            if not self.after_act:
                return y
        y5 = modality_view(y, self.num_modalities)  # (B, M, C, H, W)
        for hook in self.after_norm:  # (B, M, C, H, W) maps: see `sites.SiteHook`
            y5 = hook.apply_map(y5)
        if self.after_norm:  # the activation acts on the ops' output itself, not a view of it
            y5 = self.act(self.drop(y5))
        for hook in self.after_act:
            y5 = hook.apply_map(y5)
        return y5.reshape(y.shape)

    def _global_norm(self, x: Tensor) -> Tensor:
        """Training normalisation with the global batch's per-modality moments (several
        processes), differentiable through the gathered moments; statistics in float32."""
        M = self.num_modalities
        BM, C, H, W = x.shape
        xf = x.float()
        wide = xf.view(BM // M, M * C, H, W)
        var, mean = torch.var_mean(wide, dim=(0, 2, 3), correction=0)  # (M*C,) each
        n = wide.numel() // (M * C)
        count = torch.full((1,), n, dtype=xf.dtype, device=xf.device)
        stacked = self.gather_stats(torch.cat([mean, var, count]))  # (P, 2*M*C + 1)
        MC = M * C
        mean, var, total = combine_moments(
            stacked[:, :MC], stacked[:, MC : 2 * MC], stacked[:, 2 * MC :]
        )
        mean, var = mean.view(M, C), var.view(M, C)
        self._update_running_stats(mean, var, total[0])
        # y = (x - mean) / sqrt(var + eps) * gamma + beta, folded to one multiply-add; the
        # (M, C) factors repeated per sample give one row per (sample, modality)
        scale = self.weight * torch.rsqrt(var + self.eps)  # (M, C)
        shift = self.bias - mean * scale
        rows = BM // M
        y = torch.addcmul(
            shift.repeat(rows, 1)[:, :, None, None], xf, scale.repeat(rows, 1)[:, :, None, None]
        )
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, n: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative moving average, as nn.BatchNorm2d (no host sync)
            factor = 1.0 / self.num_batches_tracked.to(mean.dtype)
        else:
            factor = self.momentum
        # BatchNorm2d keeps the unbiased variance in its running estimate
        unbiased = var * (n / (n - 1).clamp(min=1))
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)


class ModalityConv2d(nn.Module):
    """M private copies of a convolution, run as one grouped convolution (unshared streams).

    The filters of modality m are rows `[m*C_out, (m+1)*C_out)` of `weight`, each initialised
    from the source conv.
    """

    def __init__(self, conv: nn.Conv2d, num_modalities: int):
        super().__init__()
        if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros":
            raise OptionError(
                f"cannot unshare {type(conv).__name__} (padding_mode={conv.padding_mode})"
            )
        self.num_modalities = num_modalities
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.groups = conv.groups * num_modalities
        self.weight = nn.Parameter(conv.weight.detach().repeat(num_modalities, 1, 1, 1))
        self.bias = (
            nn.Parameter(conv.bias.detach().repeat(num_modalities))
            if conv.bias is not None
            else None
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, modalities={self.num_modalities}, "
            f"stride={self.stride}, groups={self.groups}"
        )

    def forward(self, x: Tensor) -> Tensor:
        M = self.num_modalities
        BM, C, H, W = x.shape
        # (B*M, C, H, W) is (B, M*C, H, W) in memory: modality m is channel group m of a
        # grouped conv, and its output (B, M*C', H', W') is again (B*M, C', H', W')
        y = F.conv2d(
            x.reshape(BM // M, M * C, H, W),
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )
        return y.view(BM, y.shape[1] // M, *y.shape[2:])


class ModalityLinear(nn.Module):
    """M private linears over a modality view `(B, M, ..., C_in)`: modality m's rows go through
    its own `(C_out, C_in)` weight, all in one batched matmul (a fusion op's per-modality MLP,
    e.g. TokenFusion's score predictor, one network per modality in the authors' code).

    Initialised as the transformer blocks around it (timm / SegFormer): truncated normal
    weights of std 0.02, zero biases.
    """

    def __init__(self, in_features: int, out_features: int, num_modalities: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.num_modalities = num_modalities
        self.weight = nn.Parameter(torch.empty(num_modalities, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(num_modalities, out_features))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, modalities={self.num_modalities}"

    def forward(self, x: Tensor) -> Tensor:  # (B, M, ..., C_in) -> (B, M, ..., C_out)
        B, M = x.shape[:2]
        rows = x.reshape(B, M, -1, self.in_features)
        y = torch.einsum("bmri,moi->bmro", rows, self.weight) + self.bias[:, None]
        return y.reshape(*x.shape[:-1], self.out_features)


class ModalityLayerNorm(nn.Module):
    """M LayerNorms over a modality-stacked batch: one native `layer_norm` without affine for
    every modality, then each modality's (C,) affine on the `(B, M, ..., C)` view.

    Args:
        num_features: the normalised width C.
        num_modalities: M.
        eps: as the source norm.
        channel_dim: 1 for timm's LayerNorm2d (NCHW maps, normalised over C), -1 for a
            LayerNorm over the last axis (tokens, channels-last maps).
    """

    is_norm = True  # fusescope.nn.norm protocol: an affine norm, no weight decay

    def __init__(
        self, num_features: int, num_modalities: int, eps: float = 1e-5, channel_dim: int = -1
    ):
        super().__init__()
        self.num_features = num_features
        self.num_modalities = num_modalities
        self.eps = eps
        self.channel_dim = channel_dim
        self.weight = nn.Parameter(torch.ones(num_modalities, num_features))
        self.bias = nn.Parameter(torch.zeros(num_modalities, num_features))

    @classmethod
    def from_layernorm(cls, ln: nn.LayerNorm, num_modalities: int) -> ModalityLayerNorm:
        """Every modality starts from `ln`'s affine parameters."""
        if len(ln.normalized_shape) != 1:
            raise OptionError(f"a LayerNorm over {tuple(ln.normalized_shape)} is not supported")
        dim = 1 if isinstance(ln, LayerNorm2d) else -1
        new = cls(ln.normalized_shape[0], num_modalities, ln.eps, dim)
        with torch.no_grad():
            new.weight.copy_(ln.weight.detach().expand(num_modalities, -1))
            new.bias.copy_(ln.bias.detach().expand(num_modalities, -1))
        return new.to(ln.weight.device)

    def extra_repr(self) -> str:
        return f"{self.num_features}, modalities={self.num_modalities}, eps={self.eps}"

    def forward(self, x: Tensor) -> Tensor:
        M, C = self.num_modalities, self.num_features
        # reshapes with the sizes read from the input (not flatten / unflatten), so a traced
        # ONNX graph keeps batch and image size dynamic
        if self.channel_dim == 1:  # (B*M, C, H, W): normalise channels-last, as timm does
            BM, _, H, W = x.shape
            y = F.layer_norm(x.permute(0, 2, 3, 1), (C,), None, None, self.eps)
            y5 = y.reshape(BM // M, M, H, W, C)
            y5 = torch.addcmul(self.bias[:, None, None], y5, self.weight[:, None, None])
            return y5.reshape(BM, H, W, C).permute(0, 3, 1, 2)
        y = F.layer_norm(x, (C,), None, None, self.eps)  # (B*M, ..., C)
        y4 = y.reshape(y.shape[0] // M, M, -1, C)  # (B, M, N, C)
        y4 = torch.addcmul(self.bias[:, None], y4, self.weight[:, None])
        return y4.reshape(y.shape)


class ModalityInstanceNorm(nn.Module):
    """Instance norm over a modality-stacked batch with private affine parameters per modality.

    Instance statistics are per sample and channel, so the stacked `(B*M, C, H, W)` batch needs
    one native `instance_norm` call with no affine; the (M, C) gammas and betas then apply on the
    `(B, M, C, H, W)` view. Statistics are computed in float32 under mixed precision. No running
    statistics: training and evaluation normalise alike (pix2pix's instance norm; the CEN code's
    `track_running_stats=True` would make evaluation use training averages instead).

    The gammas are what CEN's exchange reads (`weight`, (M, C)), as `ModalityBatchNorm`'s.
    """

    is_norm = True  # fusescope.nn.norm protocol: an affine norm, no weight decay

    def __init__(self, num_features: int, num_modalities: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.num_modalities = num_modalities
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_modalities, num_features))
        self.bias = nn.Parameter(torch.zeros(num_modalities, num_features))

    def forward(self, x: Tensor) -> Tensor:  # (B*M, C, H, W)
        y = F.instance_norm(x.float(), eps=self.eps)
        y5 = y.unflatten(0, (-1, self.num_modalities))  # (B, M, C, H, W)
        y5 = y5 * self.weight[..., None, None] + self.bias[..., None, None]
        return y5.flatten(0, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, modalities={self.num_modalities}"


def convert_modules(module: nn.Module, num_modalities: int, shared: bool = True) -> nn.Module:
    """In place: every BatchNorm2d -> ModalityBatchNorm, every affine LayerNorm (and timm's
    LayerNorm2d) -> ModalityLayerNorm; with `shared=False` also every Conv2d -> ModalityConv2d.
    A norm of another kind is an error (it would silently stay shared). Returns `module`."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, ModalityBatchNorm.from_batchnorm(child, num_modalities))
        elif isinstance(child, nn.LayerNorm):
            if child.elementwise_affine:  # without affine a LayerNorm is the same for everyone
                setattr(module, name, ModalityLayerNorm.from_layernorm(child, num_modalities))
        elif isinstance(child, nn.Conv2d) and not shared:
            setattr(module, name, ModalityConv2d(child, num_modalities))
        elif isinstance(child, nn.modules.batchnorm._BatchNorm | nn.GroupNorm):
            raise OptionError(f"{name}: {type(child).__name__} cannot be made per-modality")
        elif not shared and isinstance(child, nn.Linear):
            raise OptionError(
                f"{name}: unshared streams are built for convolutional encoders; a "
                f"{type(child).__name__} cannot be unshared (use shared: true, which keeps "
                f"private norms)"
            )
        else:
            convert_modules(child, num_modalities, shared)
    return module
