"""CEN: channel exchanging guided by BN scaling factors (Wang et al., NeurIPS 2020).

Where: right after the norm of every block's unit in every stage (the `norm_out` site of
`models/sites.py`), before the activation: ResNet BasicBlock bn1 (the BN of its first 3x3 conv,
which feeds a ReLU as the paper requires), Bottleneck bn2, EfficientNet the BN of the depthwise
conv, ConvNeXt the LayerNorm after its depthwise conv; the U-Net translator's levels with an
instance norm (CEN section 4.2). On a transformer (ViT, MiT, Swin) the norm is each block's
first LayerNorm, private per modality, whose output feeds the attention: a token channel of
modality m whose gamma is below theta takes the other modalities' mean there (CEN carried to
tokens channel-wise, as its rule is stated on any per-modality affine norm; TokenFusion, the CEN
authors' transformer method, exchanges whole tokens instead).

What (eq. 6): the channels are split into M disjoint, nearly equal parts (part m =
`[floor(m*C/M), floor((m+1)*C/M))`); channel c of modality m is replaced only if c is in part m
and |gamma_{m,c}| < theta, by the mean of the other modalities' BN outputs. The replaced value is
dropped from the graph (its gradient is zero, as the paper says), the replacement carries the
gradient to the other modalities. The l1 penalty (eq. 4) is on the gammas of each modality's own
part only and is returned as the aux loss `l1_gamma` = `l1_weight * sum |gamma_hat|` (the paper
states lambda = 5e-3; the authors' code adds `2e-4 * L1` once per supervised output, M + 1 times,
an effective 6e-4 for M = 2: `l1_per_output: true` counts it their way; default 2e-4, once).

Where the authors' code (yikaiw/CEN, `Exchange`) differs from the paper's text:
`exchange_scope: any` replaces *every* channel of modality m whose |gamma| < theta, in its own
part or not (only the l1 penalty is split into parts); `own_part` (default) is the paper's rule.
The configs that reproduce the papers' tables use the code's settings.

Ablations of CEN section 4 (`mode`): `random` exchanges a fixed random portion of each part,
drawn once at construction and kept in the state dict (ShuffleNet-like, no gamma guidance);
`discard` zeroes the channels below theta instead of exchanging them; `none` keeps the model
(private BNs, l1, ensemble) but exchanges nothing (CEN Table 1, "half-channel l1, no exchange").
`split=False` makes every channel exchangeable and penalised (Table 1 "all-channel").
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fusescope.errors import OptionError
from fusescope.models.core import FusionOp, mean_of_others
from fusescope.models.registry import FUSION_OPS
from fusescope.models.sites import FusionPoint, Where

MODES = ("exchange", "random", "discard", "none")
EXCHANGE_SCOPES = ("own_part", "any")


def own_parts(num_modalities: int, channels: int) -> Tensor:
    """(M, C) bool: part m of the channels, the only ones modality m may have replaced."""
    bounds = [m * channels // num_modalities for m in range(num_modalities + 1)]
    c = torch.arange(channels)
    return torch.stack([(c >= bounds[m]) & (c < bounds[m + 1]) for m in range(num_modalities)])


class ChannelExchange(FusionOp):
    """Eq. 6 at one norm: acts on its output, maps `(B, M, C, H, W)` or tokens `(B, M, N, C)`,
    before the activation.

    Args:
        point: the fusion point; its per-modality norm's gammas decide what is exchanged.
        theta: threshold on |gamma|.
        l1_weight: weight of the l1 penalty on the exchangeable gammas.
        mode: exchange | random | discard | none (see module doc).
        split: restrict modality m to its own part of the channels (the paper's setting).
        random_portion: fraction of each exchangeable part exchanged in `random` mode.
        gamma_lr_scale: this BN's gammas train at `gamma_lr_scale x train.lr` (see `cen`).
        exchange_scope: `own_part` (the paper: modality m is replaced only in part m) or `any`
            (the authors' code: any channel below theta); the l1 penalty stays on part m.
        l1_per_output: count the l1 term once per supervised output (M + 1), as the authors'
            code does.
    """

    def __init__(
        self,
        point: FusionPoint,
        theta: float,
        l1_weight: float,
        mode: str = "exchange",
        split: bool = True,
        random_portion: float = 0.3,
        gamma_lr_scale: float = 1.0,
        exchange_scope: str = "own_part",
        l1_per_output: bool = False,
    ):
        super().__init__()
        if exchange_scope not in EXCHANGE_SCOPES:
            raise OptionError(
                f"exchange_scope must be one of {', '.join(EXCHANGE_SCOPES)}, not "
                f"{exchange_scope!r}"
            )
        self.stage = point.stage
        self.gamma_lr_scale = gamma_lr_scale
        self.theta = theta
        self._norm = (point.norm,)  # a tuple: read the gammas without registering the norm twice
        M, C = point.norm.weight.shape
        # the authors' loop adds lamda * L1 once per output: M modalities + the ensemble
        self.l1_weight = l1_weight * (M + 1 if l1_per_output else 1)
        self.mode = mode
        device = point.norm.weight.device
        own = own_parts(M, C) if split else torch.ones(M, C, dtype=torch.bool)
        self.register_buffer("own", own.to(device), persistent=False)
        exchangeable = own if exchange_scope == "own_part" else torch.ones(M, C, dtype=torch.bool)
        self.register_buffer("exchangeable", exchangeable.to(device), persistent=False)
        if mode == "random":
            draw = torch.rand(M, C, device=device) < random_portion
            self.register_buffer("random_mask", draw & self.exchangeable)

    @property
    def gamma(self) -> Tensor:
        return self._norm[0].weight  # (M, C)

    def replaced(self) -> Tensor:
        """(M, C) bool: which channel of which modality is replaced now."""
        if self.mode == "random":
            return self.random_mask
        if self.mode == "none":
            return torch.zeros_like(self.exchangeable)
        return (self.gamma.detach().abs() < self.theta) & self.exchangeable

    def forward(self, x5: Tensor, site: str) -> Tensor:
        if self.mode == "none":
            return x5
        replaced = self.replaced()
        # maps (B, M, C, H, W) or tokens (B, M, N, C): the mask broadcasts over the rest
        mask = replaced[None, :, :, None, None] if x5.dim() == 5 else replaced[None, :, None, :]
        if self.mode == "discard":
            return x5.masked_fill(mask, 0.0)
        # where() drops the replaced value from the graph: its gradient is exactly zero
        return torch.where(mask, mean_of_others(x5), x5)

    def aux_losses(self) -> dict[str, Tensor]:
        if self.l1_weight == 0:
            return {}
        return {"l1_gamma": self.l1_weight * self.gamma.abs().masked_fill(~self.own, 0.0).sum()}

    def lr_scales(self) -> list[tuple[nn.Parameter, float]]:
        return [] if self.gamma_lr_scale == 1.0 else [(self.gamma, self.gamma_lr_scale)]

    def stat_parts(self) -> dict[str, tuple[Tensor, float]]:
        """Exchanged fraction of this stage's exchangeable channels (summed over blocks)."""
        return {
            f"exchanged/stage{self.stage}": (self.replaced().sum(), float(self.exchangeable.sum()))
        }


def check_exchange_options(
    theta: float,
    l1_weight: float,
    mode: str,
    random_portion: float,
    gamma_lr_scale: float,
    exchange_scope: str,
) -> None:
    """The option checks every task's `cen` builder makes (segmentation, translation,
    classification).

    Raises:
        OptionError: naming the option and its allowed values.
    """
    if mode not in MODES:
        raise OptionError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if exchange_scope not in EXCHANGE_SCOPES:
        raise OptionError(
            f"exchange_scope must be one of {', '.join(EXCHANGE_SCOPES)}, not {exchange_scope!r}"
        )
    if theta < 0 or l1_weight < 0 or not 0 <= random_portion <= 1 or gamma_lr_scale <= 0:
        raise OptionError(
            "theta and l1_weight must be >= 0, random_portion in [0, 1], gamma_lr_scale > 0"
        )


def _check_cen(
    theta: float = 2e-2,
    l1_weight: float = 2e-4,
    mode: str = "exchange",
    random_portion: float = 0.3,
    gamma_lr_scale: float = 1.0,
    exchange_scope: str = "own_part",
    **_,
) -> None:
    check_exchange_options(theta, l1_weight, mode, random_portion, gamma_lr_scale, exchange_scope)


@FUSION_OPS.register(
    "cen",
    check=_check_cen,
    paper="CEN: Deep Multimodal Fusion by Channel Exchanging (Wang et al., NeurIPS 2020)",
    task_defaults={"translation": {"theta": 1e-2, "l1_weight": 1e-3}},
)
def cen(
    model,
    *,
    theta: float = 2e-2,
    l1_weight: float = 2e-4,
    mode: str = "exchange",
    split: bool = True,
    random_portion: float = 0.3,
    stages: list[int] | None = None,
    gamma_lr_scale: float = 1.0,
    exchange_scope: str = "own_part",
    l1_per_output: bool = False,
) -> None:
    """CEN (Wang et al., NeurIPS 2020): channel exchanging guided by the per-modality norms'
    gammas, after the norm of every block of `stages` (default: every stage with such a norm).

    Options: `theta` (|gamma| threshold), `l1_weight` (sparsity weight), `mode`
    (exchange | random | discard | none), `split` (disjoint exchangeable parts), `random_portion`
    (random mode), `stages`, `gamma_lr_scale` (learning-rate multiplier for the gammas of the
    exchange norms), `exchange_scope` (own_part: the paper's rule | any: the authors' code),
    `l1_per_output` (count `l1_weight` M + 1 times, as the authors' code: 2e-4 there is an
    effective 6e-4). Translation's defaults are section 4.2's: theta 1e-2, l1 1e-3.

    Why `gamma_lr_scale`: the paper trains an ImageNet-pretrained ResNet-101 for ~40k SGD steps,
    starting from the pretrained gammas. From scratch every gamma starts at 1, and AdamW
    moves a parameter by at most ~lr per step whatever the l1 weight, so in a few hundred steps
    no gamma can reach theta and CEN degenerates to "no exchange". Scaling the gammas' step lets
    the l1 term and the task gradient settle which channels fall below theta on a short budget.
    """
    model.encoder.insert(
        Where(("norm_out",), stages=tuple(stages) if stages is not None else None),
        lambda point: ChannelExchange(
            point,
            theta,
            l1_weight,
            mode,
            split,
            random_portion,
            gamma_lr_scale,
            exchange_scope,
            l1_per_output,
        ),
    )
