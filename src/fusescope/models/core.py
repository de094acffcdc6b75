"""The one model core every task builds on: inputs by modality name, per-modality outputs and
their ensemble, and what fusion ops contribute (auxiliary losses, learning-rate scales, training
statistics).

Every model of every task is a `FusionModel`:

    batch  = {<modality>: tensor, <modality>_mask: (B, L) bool for a padded text, ...}
    output = {<output_key>: prediction,          "logits" (segmentation, classification) or
                                                   "image" (translation): what is scored
              "per_modality": {name: prediction}, each supervised too (optional)
              "aux_losses": {name: scalar},       unsupervised, already weighted; summed
              "aux_logits": {name: AuxLogits}}    segmentation's auxiliary heads (optional)

Models never read targets. A fusion op is a `FusionOp` module anywhere in the model: the base
class sums their `aux_losses()`, collects their `lr_scales()` and turns their `stat_parts()` into
`training_stats()`, so no model writes that again. A model with per-modality outputs and an
`ensemble` scores the ensemble; `combine_present` re-scores with some modalities absent.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusescope.errors import OptionError


class FusionOp(nn.Module):
    """Base of every fusion op (CEN's exchange, AsymFusion, the baseline ops, MANGO's flow,
    BMC, TokenFusion, GeminiFusion ...).

    An op placed at a site of a multi-stream encoder is called as `op(x5, site)` with the
    site's tensor in the modality view (`models/sites.py`: maps `(B, M, C, H, W)` or tokens
    `(B, M, N, C)`), and returns the same shape; with `uses_scope = True` as
    `op(x5, site, scope)` (`ForwardScope`: what one site hands to a later one within a forward,
    and losses measured on features). `layout` says which view the op wants: "map", "tokens" or
    None (the site's own).

    Hooks for the model core (defaults: nothing):
        aux_losses(): {name: scalar} of the op's parameters, already weighted (CEN's l1);
        lr_scales(): [(parameter, scale)] that train at scale x lr;
        stat_parts(): {name: (numerator tensor, denominator)}, summed over ops by name and
            divided in `FusionModel.training_stats` (one host transfer for all).
    """

    uses_scope = False
    layout: str | None = None

    def aux_losses(self) -> dict[str, Tensor]:
        return {}

    def lr_scales(self) -> list[tuple[nn.Parameter, float]]:
        return []

    def stat_parts(self) -> dict[str, tuple[Tensor, float]]:
        return {}


class AuxLogits(NamedTuple):
    """Auxiliary logits (B, K, H, W) at the label's resolution and their loss weight."""

    logits: Tensor
    weight: float


class Ensemble(nn.Module):
    """Learned ensemble of per-modality outputs (CEN eq. 4, AsymFusion): alpha (M, init 1) ->
    softmax -> weighted sum. The outputs are detached, so the ensemble's loss trains alpha only
    (each modality's own branch is supervised through its `per_modality` output)."""

    def __init__(self, num_modalities: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(num_modalities))

    def forward(self, outputs: Tensor) -> Tensor:  # (M, B, ...) -> (B, ...)
        weights = torch.softmax(self.alpha, 0).to(outputs.dtype)
        return torch.tensordot(weights, outputs.detach(), dims=1)

    def present(self, outputs: Tensor, present: Tensor) -> Tensor:
        """The ensemble over the present modalities only (`present`: (M,) bool): alpha's
        softmax restricted to them."""
        alpha = self.alpha.masked_fill(~present.to(self.alpha.device), float("-inf"))
        return torch.tensordot(torch.softmax(alpha, 0).to(outputs.dtype), outputs, dims=1)


class FusionModel(nn.Module):
    """Base class of every model: the modalities it reads, in order, and what its fusion ops
    contribute (see the module docstring).

    Attributes:
        output_key: the output dict's key of the scored prediction.
        ensemble: the learned `Ensemble` of `per_modality` outputs, or None (then absent
            modalities are combined by the mean of the present ones' outputs).
    """

    output_key = "logits"

    def __init__(self, modalities: list[str]):
        super().__init__()
        self.modalities = list(modalities)
        self.ensemble: Ensemble | None = None

    # ------------------------------------------------------------------------------- inputs
    def inputs(self, batch: Mapping[str, Tensor]) -> list[Tensor]:
        """The model's input tensors in modality order, with a clear error if one is missing."""
        missing = [m for m in self.modalities if m not in batch]
        if missing:
            raise KeyError(f"batch lacks modalities {missing}; has {sorted(batch)}")
        return [batch[m] for m in self.modalities]

    def masks(self, batch: Mapping[str, Tensor]) -> list[Tensor | None]:
        """Each modality's validity mask (`<modality>_mask`: a padded text), or None."""
        return [batch.get(f"{m}_mask") for m in self.modalities]

    # ------------------------------------------------------------------------------ outputs
    def output(
        self,
        prediction: Tensor,
        per_modality: dict[str, Tensor] | None = None,
        aux_losses: dict[str, Tensor] | None = None,
        aux_logits: dict[str, AuxLogits] | None = None,
    ) -> dict:
        """The output dict; `aux_losses` are added to the fusion ops' parameter losses."""
        out = {
            self.output_key: prediction,
            "per_modality": per_modality or {},
            "aux_losses": {**self.aux_losses(), **(aux_losses or {})},
        }
        if aux_logits or self.output_key == "logits":
            out["aux_logits"] = aux_logits or {}
        return out

    def ensemble_output(self, stacked: Tensor, **extra) -> dict:
        """Outputs of M streams `(M, B, ...)` as `per_modality` plus their ensemble."""
        per_modality = dict(zip(self.modalities, stacked.unbind(0), strict=True))
        scored = self.ensemble(stacked) if self.ensemble is not None else stacked.mean(0)
        return self.output(scored, per_modality, **extra)

    @property
    def scores_streams(self) -> bool:
        """Whether the scored prediction combines per-modality outputs (then a modality absent
        at inference is left out of the combination, `combine_present`)."""
        return self.ensemble is not None

    def combine_present(self, per_modality: dict[str, Tensor], present: list[str]) -> Tensor:
        """The scored prediction from the present modalities' outputs only (a modality absent
        at inference): the learned ensemble renormalised over them, else their mean."""
        if self.ensemble is None:
            return torch.stack([per_modality[m] for m in present]).mean(0)
        stacked = torch.stack([per_modality[m] for m in self.modalities])  # (M, B, ...)
        mask = torch.tensor([m in present for m in self.modalities])
        return self.ensemble.present(stacked, mask)

    def onnx_unsupported(self) -> str | None:
        """Why ONNX export with dynamic height and width is impossible (None if it is not):
        the first of the fusion ops' own reasons (`FusionOp.onnx_unsupported`)."""
        for op in self.fusion_ops():
            reason = getattr(op, "onnx_unsupported", None)
            if callable(reason) and reason():
                return reason()
        return None

    # --------------------------------------------------------------------------- fusion ops
    def fusion_ops(self) -> Iterator[FusionOp]:
        """Every fusion op of the model, in module order."""
        return (m for m in self.modules() if isinstance(m, FusionOp))

    def aux_losses(self) -> dict[str, Tensor]:
        """The ops' parameter losses summed by name, in a fixed order (CEN's l1 on gammas);
        losses measured on features come with the forward (`ForwardScope`)."""
        return sum_losses(op.aux_losses() for op in self.fusion_ops())

    def lr_scales(self) -> list[tuple[nn.Parameter, float]]:
        """Parameters that train at `scale x train.lr` (the ops'; default: none)."""
        return [pair for op in self.fusion_ops() for pair in op.lr_scales()]

    @torch.no_grad()
    def training_stats(self) -> dict[str, float]:
        """The ops' `stat_parts` summed by name and divided, with one host transfer."""
        num: dict[str, list[Tensor]] = {}
        den: dict[str, float] = {}
        for op in self.fusion_ops():
            for name, (n, d) in op.stat_parts().items():
                num.setdefault(name, []).append(torch.as_tensor(n).float().reshape(()))
                den[name] = den.get(name, 0.0) + float(d)
        if not num:
            return {}
        totals = torch.stack([torch.stack(v).sum() for v in num.values()]).tolist()
        return {name: t / max(den[name], 1.0) for name, t in zip(num, totals, strict=True)}


def sum_losses(parts) -> dict[str, Tensor]:
    """Dicts of losses summed by name, keeping the order names first appear in."""
    losses: dict[str, Tensor] = {}
    for part in parts:
        for name, value in part.items():
            losses[name] = losses[name] + value if name in losses else value
    return losses


# ---------------------------------------------------------------------------------------------
# the modality-stacked batch


def stack_modalities(tensors: list[Tensor]) -> Tensor:
    """M tensors `(B, ...)` -> `(B*M, ...)`, sample-major: row `b*M + m` is modality m of b."""
    return torch.stack(tensors, dim=1).flatten(0, 1)


def modality_view(x: Tensor, num_modalities: int) -> Tensor:
    """`(B*M, ...)` -> `(B, M, ...)`, a view (the inverse of `stack_modalities`)."""
    return x.unflatten(0, (-1, num_modalities))


def mean_of_others(x5: Tensor) -> Tensor:
    """(B, M, ...) -> (B, M, ...): entry m is the mean over the other modalities (CEN eq. 6).

    For M = 2 an exact swap; otherwise a (M x M) mixing matrix keeps it one vectorised op. The
    result is contiguous in the (B, M, ...) order, so it folds back to `(B*M, ...)` for free.
    """
    M = x5.shape[1]
    if M == 2:
        return x5.flip(1)
    mix = (1.0 - torch.eye(M, device=x5.device, dtype=x5.dtype)) / (M - 1)
    # view_as, not view(x5.shape): a traced export keeps the sizes dynamic (view(shape) bakes
    # in the example's batch, height and width)
    return torch.matmul(mix, x5.reshape(x5.shape[0], M, -1)).view_as(x5)


def common_channels(modalities: list[str], in_channels: dict[str, int]) -> int:
    """The channel count every modality is tiled to (depth: 1 channel -> 3, as CEN feeds it)."""
    target = max(in_channels[m] for m in modalities)
    bad = [m for m in modalities if in_channels[m] not in (1, target)]
    if bad:
        raise OptionError(
            f"shared convolutions need equal input channels: {bad} have "
            f"{[in_channels[m] for m in bad]}, others {target} (only 1-channel "
            f"inputs are tiled)"
        )
    return target


def tile_channels(x: Tensor, channels: int) -> Tensor:
    """Repeat a 1-channel input to `channels` (CEN feeds depth as 1 channel tiled to 3)."""
    if x.shape[1] == channels:
        return x
    if x.shape[1] != 1:
        raise ValueError(f"cannot tile {x.shape[1]} channels to {channels}")
    return x.expand(-1, channels, -1, -1)


def resize_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of `(N, C, H, W)` to `size` (no copy when it already has it)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
