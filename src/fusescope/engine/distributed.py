"""Batch statistics across processes.

PyTorch's SyncBatchNorm runs on GPUs only; on CPU processes (gloo) we use `GlobalBatchNorm2d`,
which gathers every process's per-channel mean, variance and count with a differentiable
collective and combines them exactly (`combine_moments`), so a run on several CPU processes
matches the one-process run (the test checks it). Per-modality BNs do the same on any device.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fusescope.nn.norm import combine_moments


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of a sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def gather_stack(x: Tensor) -> Tensor:
    """(...) -> (P, ...): this tensor from every process, stacked by rank; differentiable (an
    all-reduce of a tensor that is zero outside this process's slot)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    slots = [torch.zeros_like(x)] * world
    slots[rank] = x
    return _AllReduceSum.apply(torch.stack(slots))


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch."""

    def forward(self, x: Tensor) -> Tensor:
        if not (
            self.training
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
        ):
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()  # statistics in float32 under mixed precision (as native batch_norm)
        var, mean = torch.var_mean(xf, dim=(0, 2, 3), correction=0)
        count = torch.full((1,), x.numel() / c, dtype=xf.dtype, device=x.device)
        stacked = gather_stack(torch.cat([mean, var, count]))  # (P, 2C + 1)
        mean, var, n = combine_moments(stacked[:, :c], stacked[:, c : 2 * c], stacked[:, 2 * c :])
        n = n[0]
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = (
                    self.momentum
                    if self.momentum is not None
                    else 1 / float(self.num_batches_tracked)
                )
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp(min=1), m)
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def convert_batchnorm(model: nn.Module, device_type: str) -> nn.Module:
    """Make BatchNorms synchronise across processes: torch SyncBatchNorm (timm's converter keeps
    BatchNormAct2d's activation) on accelerators, GlobalBatchNorm2d for plain BatchNorm2d on CPU.
    Norms with a `gather_stats` slot (per-modality BNs of multi-stream models) gather and combine
    their statistics on any device."""
    for module in model.modules():
        if hasattr(module, "gather_stats"):  # the protocol of fusescope.nn.norm
            module.gather_stats = gather_stack
    if device_type != "cpu":
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(model)
    return _to_global_batchnorm(model)


def _to_global_batchnorm(model: nn.Module) -> nn.Module:
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm2d(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
            )
            new.load_state_dict(child.state_dict())
            setattr(model, name, new)
        else:
            _to_global_batchnorm(child)
    return model
