"""Bidirectional Mutual Constraint (BMC): an auxiliary loss for any two-stream fusion model.

From "Dissecting RGB-D Learning for Improved Multi-modal Fusion" (sec. IV-E): before fusion, each
modality's features are split into two channel halves; the cross-modal mutual information of
the first half is minimised (each modality keeps what is specific to it) and that of the second
half maximised (the modalities share a consistent part).

The mutual-information estimate follows CMINet (Zhang et al., ICCV 2021, "cascaded mutual
information minimization"): a small head per modality maps its features to a diagonal Gaussian
latent (mu, logvar, both squashed by tanh), a sample z = mu + eps * std is drawn, and

    I(a; b) ~= CE(sigmoid z_a, sigmoid z_b) + CE(sigmoid z_b, sigmoid z_a)
               - KL(N_a || N_b) - KL(N_b || N_a)

with each cross-entropy's target detached (CMINet's one-sided targets), averaged over the batch
and summed over latent dimensions. Differences from CMINet, and why:
- The heads end in global average pooling instead of a flatten sized for one input resolution,
  so any feature size works.
- std = exp(logvar / 2) (the usual meaning of "logvar"; CMINet's code uses exp(logvar)).
- Bounded: tanh keeps mu and logvar in [-1, 1], so each KL is below ~10 nats per dimension and
  each cross-entropy below |z| + log 2; on top of that the maximised estimate goes through
  `cap * tanh(I / cap)`, so its reward saturates instead of driving the heads to extremes.
  CMINet only ever minimised; maximising an unbounded estimate would diverge.

Modes: "both" (the paper), "min" (only the first half's term: CMINet-like, restricted to one
half) and "max" (only the second half's term), for ablations.

BMC is a fusion op (`FUSION_OPS["bmc"]`) with one option set for every model that takes it:
`bmc_weight` (the loss is `bmc_weight` x the unweighted BMC term), `bmc_mode`, `bmc_levels`
(0 = the finest level). On a multi-stream model it measures the two streams at the chosen stage
outputs (features pass unchanged); the two-stream concat segmentor and the classification
concat model (`bmc: true`) call `BMC.loss` on their two streams' features before fusing them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusescope.errors import OptionError
from fusescope.models.core import FusionOp
from fusescope.models.registry import FUSION_OPS
from fusescope.models.sites import ForwardScope, Where

MODES = ("both", "min", "max")


class GaussianHead(nn.Module):
    """Features `(B, C, H, W)` -> tanh-bounded `mu`, `logvar`, each `(B, latent)`."""

    def __init__(self, channels: int, latent: int, hidden: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, hidden, 3, stride=2, padding=1)
        self.act = nn.LeakyReLU(0.2, inplace=True)
        self.fc = nn.Linear(hidden, 2 * latent)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.act(self.conv(x)).mean((2, 3))  # (B, hidden)
        mu, logvar = torch.tanh(self.fc(h)).chunk(2, dim=1)  # (B, latent) each
        return mu, logvar


def gaussian_kl(mu_p: Tensor, logvar_p: Tensor, mu_q: Tensor, logvar_q: Tensor) -> Tensor:
    """KL(N_p || N_q) of diagonal Gaussians, summed over dimensions: `(B,)`."""
    kl = 0.5 * (logvar_q - logvar_p + (logvar_p.exp() + (mu_p - mu_q) ** 2) / logvar_q.exp() - 1)
    return kl.sum(1)


def cminet_mutual_information(
    mu_a: Tensor, logvar_a: Tensor, mu_b: Tensor, logvar_b: Tensor, sample: bool = True
) -> Tensor:
    """CMINet's cross-modal mutual-information estimate from two Gaussian latents (a scalar).

    Args:
        mu_a, logvar_a, mu_b, logvar_b: `(B, latent)`.
        sample: draw z = mu + eps * std (training); otherwise z = mu.
    """
    z_a, z_b = mu_a, mu_b
    if sample:
        z_a = mu_a + torch.randn_like(mu_a) * (0.5 * logvar_a).exp()
        z_b = mu_b + torch.randn_like(mu_b) * (0.5 * logvar_b).exp()
    # BCE(sigmoid z_a, sigmoid z_b) from logits: stable, and at most |z_a| + log 2
    ce = (
        F.binary_cross_entropy_with_logits(z_a, torch.sigmoid(z_b).detach(), reduction="none")
        + F.binary_cross_entropy_with_logits(z_b, torch.sigmoid(z_a).detach(), reduction="none")
    ).sum(1)  # (B,)
    kl = gaussian_kl(mu_a, logvar_a, mu_b, logvar_b) + gaussian_kl(mu_b, logvar_b, mu_a, logvar_a)
    return (ce - kl).mean()


class MutualInformationEstimator(nn.Module):
    """One Gaussian head per modality and CMINet's estimate between them."""

    def __init__(self, channels_a: int, channels_b: int, latent: int = 6, hidden: int = 32):
        super().__init__()
        self.head_a = GaussianHead(channels_a, latent, hidden)
        self.head_b = GaussianHead(channels_b, latent, hidden)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return cminet_mutual_information(*self.head_a(a), *self.head_b(b), sample=self.training)


class BMC(FusionOp):
    """The BMC loss on one pair of same-level features.

    Args:
        channels: channels of each modality's feature (both streams must match, the halves are
            compared head to head).
        mode: "both", "min" or "max".
        latent: Gaussian latent size per head (CMINet uses 6).
        hidden: width of each head's conv.
        cap: saturation of the maximised estimate, `cap * tanh(I / cap)`.
        weight: the loss weight at a fusion site (`forward`).
        label: names its estimates in the training log (`bmc/<label>/min`).

    The first `channels // 2` channels form the minimised half, the rest the maximised half.
    """

    uses_scope = True
    layout = "map"

    def __init__(
        self,
        channels: int,
        mode: str = "both",
        latent: int = 6,
        hidden: int = 32,
        cap: float = 10.0,
        weight: float = 1.0,
        label: str = "",
    ):
        super().__init__()
        if mode not in MODES:
            raise OptionError(f"bmc mode must be one of {', '.join(MODES)}; got {mode!r}")
        if channels < 2:
            raise OptionError(f"BMC splits channels in two halves; got {channels} channel(s)")
        if cap <= 0:
            raise OptionError(f"bmc cap must be positive, got {cap}")
        self.mode = mode
        self.weight = weight
        self.label = label
        self.split = channels // 2
        self.cap = cap
        rest = channels - self.split
        self.min_mi = (
            MutualInformationEstimator(self.split, self.split, latent, hidden)
            if mode in ("both", "min")
            else None
        )
        self.max_mi = (
            MutualInformationEstimator(rest, rest, latent, hidden)
            if mode in ("both", "max")
            else None
        )
        self.last: dict[str, Tensor] = {}  # the latest estimates, detached, for logging

    def halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`(B, C, H, W)` -> the minimised `(B, C//2, ...)` and maximised `(B, C - C//2, ...)`."""
        return x[:, : self.split], x[:, self.split :]

    def estimates(self, a: Tensor, b: Tensor) -> dict[str, Tensor]:
        """The raw estimates of each active half: {"min": I(a1; b1), "max": I(a2; b2)}."""
        (a_min, a_max), (b_min, b_max) = self.halves(a), self.halves(b)
        out = {}
        if self.min_mi is not None:
            out["min"] = self.min_mi(a_min, b_min)
        if self.max_mi is not None:
            out["max"] = self.max_mi(a_max, b_max)
        return out

    def loss(self, a: Tensor, b: Tensor) -> Tensor:
        """Scalar loss (unweighted): I(min half) - cap * tanh(I(max half) / cap), per `mode`."""
        if a.shape[:2] != b.shape[:2]:
            raise OptionError(
                f"BMC needs features of the same batch and channels; got "
                f"{tuple(a.shape)} and {tuple(b.shape)}"
            )
        est = self.estimates(a, b)
        loss = a.new_zeros(())
        if "min" in est:
            loss = loss + est["min"]
        if "max" in est:
            loss = loss - self.cap * torch.tanh(est["max"] / self.cap)
        # detached tensors, not floats: reading them is the caller's (logging) host sync
        self.last = {k: v.detach() for k, v in est.items()}
        return loss

    def forward(self, x5: Tensor, site: str, scope: ForwardScope) -> Tensor:
        """At a stage output of two streams `(B, 2, C, H, W)`: adds `weight` x the loss to the
        forward's losses in training; the features pass unchanged."""
        if self.training:
            scope.add_loss("bmc", self.weight * self.loss(x5[:, 0], x5[:, 1]))
        return x5

    def stat_parts(self) -> dict[str, tuple[Tensor, float]]:
        """The latest estimates (`bmc/<label>/min`, `.../max`), for the training log."""
        prefix = f"bmc/{self.label}/" if self.label else "bmc/"
        return {prefix + half: (value, 1.0) for half, value in self.last.items()}


def check_bmc_options(bmc_weight: float = 0.1, bmc_mode: str = "both", **_) -> None:
    if bmc_mode not in MODES:
        raise OptionError(f"bmc_mode must be one of {', '.join(MODES)}; got {bmc_mode!r}")
    if bmc_weight < 0:
        raise OptionError(f"bmc_weight must be >= 0, got {bmc_weight}")


def bmc_heads(
    channels: list[int], bmc_weight: float, bmc_mode: str, bmc_levels: list[int] | None
) -> nn.ModuleDict:
    """One BMC per chosen level (`bmc_levels`, 0 = finest; None: all) of features with
    `channels` per level, keyed by level (`bmc.3` names the deepest level's heads)."""
    levels = list(range(len(channels))) if bmc_levels is None else list(bmc_levels)
    bad = [lvl for lvl in levels if not 0 <= lvl < len(channels)]
    if bad or not levels:
        raise OptionError(f"bmc_levels {bmc_levels} must pick levels in 0..{len(channels) - 1}")
    return nn.ModuleDict(
        {
            str(lvl): BMC(channels[lvl], mode=bmc_mode, weight=bmc_weight, label=str(lvl))
            for lvl in sorted(set(levels))
        }
    )


@FUSION_OPS.register(
    "bmc",
    check=check_bmc_options,
    paper="BMC: Dissecting RGB-D Learning for Improved Multi-modal Fusion (Chen et al.)",
)
def bmc(
    model, *, bmc_weight: float = 0.1, bmc_mode: str = "both", bmc_levels: list[int] | None = None
) -> None:
    """The Bidirectional Mutual Constraint on two streams' stage outputs (`bmc_levels`,
    0 = the finest stage; default all), as an auxiliary loss (`aux_losses["bmc"]`)."""
    encoder = model.encoder
    if encoder.num_modalities != 2:
        raise OptionError(f"bmc constrains two streams; data.modalities is {model.modalities}")
    channels = [p.channels for p in encoder.points(Where(("stage_out",)))]
    heads = bmc_heads(channels, bmc_weight, bmc_mode, bmc_levels)
    encoder.insert(
        Where(("stage_out",), stages=tuple(int(k) + 1 for k in heads)),
        lambda point: heads[str(point.stage - 1)],
    )
