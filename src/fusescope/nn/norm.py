"""Normalisation maths and the small protocol the engine uses to treat norms specially.

The engine must not import model classes to recognise a model's own normalisation layers, so a
module says what it is with class attributes:

    is_norm = True            its parameters are a norm's affine (no weight decay)
    tracks_batch_stats = True  it normalises with batch statistics in training
                               (`freeze_bn_statistics` puts it in eval mode)
    gather_stats               an attribute the engine sets to a differentiable all-gather when
                               it runs on several processes (global-batch statistics)

torch's own norms are recognised by type.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase


def combine_moments(mean: Tensor, var: Tensor, count: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean and biased variance of the union of P parts from each part's (P, ...) mean, biased
    variance and count (Chan et al.): every term is non-negative, so unlike E[x^2] - E[x]^2 it
    loses no precision when the mean is large against the spread. Returns (mean, var, total)."""
    total = count.sum(0)
    joint = (count * mean).sum(0) / total
    spread = (count * (var + (mean - joint) ** 2)).sum(0) / total
    return joint, spread, total


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer: torch's norms, or a module with `is_norm = True`."""
    return isinstance(module, (_NormBase, nn.GroupNorm, nn.LayerNorm)) or bool(
        getattr(module, "is_norm", False)
    )


def tracks_batch_stats(module: nn.Module) -> bool:
    """A batch norm: torch's, or a module with `tracks_batch_stats = True`."""
    return isinstance(module, _BatchNorm) or bool(getattr(module, "tracks_batch_stats", False))
