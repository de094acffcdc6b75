"""Classification fusion methods over per-modality branches (image backbones, text encoder).

- `unimodal`: one branch and a head (image only, text only; MANGO Table 3's unimodal rows).
- `early_concat`: one image encoder over the channel-concatenation of image modalities (RGB-D).
- `late`: one branch + head per modality; the scored logits are their mean (late fusion).
- `ensemble`: as `late`, scored by CEN's learned ensemble (softmax(alpha) over the modalities'
  logits, detached: the ensemble trains alpha only, each head is supervised as `per_modality`).
- `concat`: pooled vectors projected to `width`, concatenated, an MLP head; `bmc: true` adds
  the dissection paper's Bidirectional Mutual Constraint on the projected vectors.
- `attention`: the modalities' tokens (projected to `width`, plus a learned modality code)
  through transformer layers over all tokens at once; `mode: self` lets every token attend to
  every token, `mode: cross` only to the *other* modalities' tokens (cross-attention in both
  directions as one masked attention, no loop over modalities). Masked means per modality,
  concatenated, a head.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fusescope.errors import OptionError
from fusescope.models.bmc import BMC, check_bmc_options
from fusescope.models.classification.base import (
    TEXT_KIND,
    Classifier,
    build_branch,
    check_modalities,
    head,
    stack_logits,
)
from fusescope.models.core import Ensemble
from fusescope.models.registry import CLASSIFICATION_METHODS


def _branches(modalities, in_specs, opts) -> nn.ModuleDict:
    return nn.ModuleDict({m: build_branch(m, in_specs[m], **opts) for m in modalities})


class PerModalityHeads(Classifier):
    """A branch and a head per modality; `combine` decides the scored logits."""

    def __init__(self, modalities, in_specs, num_classes, branch_opts, dropout, combine):
        super().__init__(modalities, num_classes)
        self.branches = _branches(modalities, in_specs, branch_opts)
        self.heads = nn.ModuleDict(
            {m: head(self.branches[m].dim, num_classes, dropout) for m in modalities}
        )
        self.ensemble = Ensemble(len(modalities)) if combine == "ensemble" else None

    @property
    def scores_streams(self) -> bool:
        return len(self.modalities) > 1

    def forward(self, batch: dict[str, Tensor]) -> dict:
        encoded = self.encode(batch)
        per_modality = {m: self.heads[m](encoded[m].pooled) for m in self.modalities}
        if len(self.modalities) == 1:
            return self.output(per_modality[self.modalities[0]])
        return self.ensemble_output(stack_logits(per_modality))


@CLASSIFICATION_METHODS.register("unimodal")
def unimodal(
    modalities,
    in_specs,
    num_classes,
    backbone="resnet18",
    pretrained=False,
    text_dim: int = 64,
    text_layers: int = 2,
    text_heads: int = 4,
    text_dropout: float = 0.1,
    glove: str | bool | None = None,
    text_encoder: str = "scratch",
    text_model: str | None = None,
    dropout: float = 0.0,
) -> Classifier:
    """One modality's branch (timm image backbone or the text encoder) and a linear head."""
    check_modalities(modalities, (1,), "unimodal")
    return PerModalityHeads(modalities, in_specs, num_classes, _opts(locals()), dropout, "mean")


@CLASSIFICATION_METHODS.register("late")
def late(
    modalities,
    in_specs,
    num_classes,
    backbone="resnet18",
    pretrained=False,
    text_dim: int = 64,
    text_layers: int = 2,
    text_heads: int = 4,
    text_dropout: float = 0.1,
    glove: str | bool | None = None,
    text_encoder: str = "scratch",
    text_model: str | None = None,
    dropout: float = 0.0,
) -> Classifier:
    """Late fusion: the mean of the modalities' logits (each head supervised on its own too)."""
    check_modalities(modalities, None, "late")
    return PerModalityHeads(modalities, in_specs, num_classes, _opts(locals()), dropout, "mean")


@CLASSIFICATION_METHODS.register("ensemble")
def ensemble(
    modalities,
    in_specs,
    num_classes,
    backbone="resnet18",
    pretrained=False,
    text_dim: int = 64,
    text_layers: int = 2,
    text_heads: int = 4,
    text_dropout: float = 0.1,
    glove: str | bool | None = None,
    text_encoder: str = "scratch",
    text_model: str | None = None,
    dropout: float = 0.0,
) -> Classifier:
    """CEN's learned ensemble over per-modality heads."""
    check_modalities(modalities, None, "ensemble")
    if len(modalities) < 2:
        raise OptionError(f"ensemble combines >= 2 modalities; data.modalities is {modalities}")
    return PerModalityHeads(modalities, in_specs, num_classes, _opts(locals()), dropout, "ensemble")


def _opts(local: dict) -> dict:
    keys = (
        "backbone",
        "pretrained",
        "text_dim",
        "text_layers",
        "text_heads",
        "text_dropout",
        "glove",
        "text_encoder",
        "text_model",
    )
    return {k: local[k] for k in keys}


class EarlyConcat(Classifier):
    """One image encoder over the channel-concatenation of the (image) modalities."""

    def __init__(self, modalities, in_specs, num_classes, backbone, pretrained, dropout):
        super().__init__(modalities, num_classes)
        text = [m for m in modalities if in_specs[m].get("kind") == TEXT_KIND]
        if text:
            raise OptionError(f"early_concat stacks image channels; {text} is text")
        channels = sum(int(in_specs[m]["channels"]) for m in modalities)
        from fusescope.models.classification.base import ImageBranch

        self.encoder = ImageBranch(channels, backbone, pretrained)
        self.head = head(self.encoder.dim, num_classes, dropout)

    def forward(self, batch: dict[str, Tensor]) -> dict:
        x = torch.cat(self.inputs(batch), dim=1)
        return self.output(self.head(self.encoder(x).pooled))


@CLASSIFICATION_METHODS.register("early_concat")
def early_concat(
    modalities, in_specs, num_classes, backbone="resnet18", pretrained=False, dropout: float = 0.0
) -> Classifier:
    """Input-level fusion of image modalities (RGB-D): one encoder over stacked channels."""
    return EarlyConcat(modalities, in_specs, num_classes, backbone, pretrained, dropout)


class ConcatFusion(Classifier):
    """Pooled vectors -> Linear to `width` each -> concat -> MLP head; optional BMC."""

    def __init__(
        self,
        modalities,
        in_specs,
        num_classes,
        branch_opts,
        width,
        hidden,
        dropout,
        bmc,
        bmc_weight,
        bmc_mode,
    ):
        super().__init__(modalities, num_classes)
        self.branches = _branches(modalities, in_specs, branch_opts)
        self.project = nn.ModuleDict(
            {m: nn.Linear(self.branches[m].dim, width) for m in modalities}
        )
        self.head = head(width * len(modalities), num_classes, dropout, hidden)
        self.bmc_weight = float(bmc_weight)
        self.bmc = BMC(width, mode=bmc_mode, weight=bmc_weight) if bmc else None
        if bmc and len(modalities) != 2:
            raise OptionError(f"bmc constrains two modalities; data.modalities is {modalities}")

    def forward(self, batch: dict[str, Tensor]) -> dict:
        encoded = self.encode(batch)
        vectors = [self.project[m](encoded[m].pooled) for m in self.modalities]  # (B, width)
        aux = {}
        if self.bmc is not None and self.training:
            # BMC's heads read (B, C, H, W) maps: a pooled vector is a 1x1 map
            aux["bmc"] = self.bmc_weight * self.bmc.loss(*(v[:, :, None, None] for v in vectors))
        return self.output(self.head(torch.cat(vectors, dim=1)), aux_losses=aux)


@CLASSIFICATION_METHODS.register("concat")
def concat(
    modalities,
    in_specs,
    num_classes,
    backbone="resnet18",
    pretrained=False,
    text_dim: int = 64,
    text_layers: int = 2,
    text_heads: int = 4,
    text_dropout: float = 0.1,
    glove: str | bool | None = None,
    text_encoder: str = "scratch",
    text_model: str | None = None,
    width: int = 128,
    hidden: int | None = 128,
    dropout: float = 0.0,
    bmc: bool | None = None,
    bmc_weight: float = 0.1,
    bmc_mode: str = "both",
) -> Classifier:
    """Feature-level concat fusion; `bmc: true` adds BMC (`bmc_weight`, `bmc_mode`)."""
    check_modalities(modalities, None, "concat")
    check_bmc_options(bmc_weight if bmc else 0.0, bmc_mode)
    if width < 2:
        raise OptionError(f"width must be >= 2; got {width}")
    return ConcatFusion(
        modalities,
        in_specs,
        num_classes,
        _opts(locals()),
        width,
        hidden,
        dropout,
        bmc,
        bmc_weight,
        bmc_mode,
    )


class AttentionFusion(Classifier):
    """Transformer layers over the tokens of every modality at once (see the module doc)."""

    def __init__(
        self,
        modalities,
        in_specs,
        num_classes,
        branch_opts,
        width,
        layers,
        heads,
        mode,
        dropout,
        attn_dropout,
    ):
        super().__init__(modalities, num_classes)
        self.mode = mode
        self.branches = _branches(modalities, in_specs, branch_opts)
        self.project = nn.ModuleDict(
            {m: nn.Linear(self.branches[m].dim, width) for m in modalities}
        )
        self.modality_code = nn.Parameter(torch.zeros(len(modalities), width))
        nn.init.normal_(self.modality_code, std=0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width,
                heads,
                2 * width,
                attn_dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(width)
        self.head = head(width * len(modalities), num_classes, dropout)

    def forward(self, batch: dict[str, Tensor]) -> dict:
        encoded = self.encode(batch)
        tokens, masks, owner = [], [], []
        for i, m in enumerate(self.modalities):  # gathers M tensors; the attention is one op
            t = self.project[m](encoded[m].tokens) + self.modality_code[i]  # (B, N_m, W)
            tokens.append(t)
            mask = encoded[m].mask
            masks.append(
                torch.ones(t.shape[:2], dtype=torch.bool, device=t.device) if mask is None else mask
            )
            owner.append(torch.full((t.shape[1],), i, device=t.device))
        x = torch.cat(tokens, 1)  # (B, N, W), N = sum of N_m
        valid = torch.cat(masks, 1)  # (B, N)
        owner = torch.cat(owner)  # (N,) which modality each token belongs to
        # cross: a token may attend only to the other modalities' tokens (True = not allowed)
        same = owner[:, None] == owner[None, :] if self.mode == "cross" else None
        for layer in self.layers:
            x = layer(x, src_mask=same, src_key_padding_mask=~valid)
        x = self.norm(x)
        # masked mean per modality, all at once: one (B, M, N) weight matrix
        member = owner[None, :] == torch.arange(len(self.modalities), device=x.device)[:, None]
        weights = (member[None] & valid[:, None]).to(x.dtype)  # (B, M, N)
        pooled = (weights @ x) / weights.sum(-1, keepdim=True).clamp(min=1.0)  # (B, M, W)
        return self.output(self.head(pooled.flatten(1)))


@CLASSIFICATION_METHODS.register("attention")
def attention(
    modalities,
    in_specs,
    num_classes,
    backbone="resnet18",
    pretrained=False,
    text_dim: int = 64,
    text_layers: int = 2,
    text_heads: int = 4,
    text_dropout: float = 0.1,
    glove: str | bool | None = None,
    text_encoder: str = "scratch",
    text_model: str | None = None,
    width: int = 128,
    layers: int = 2,
    heads: int = 4,
    mode: str = "cross",
    dropout: float = 0.0,
    attn_dropout: float = 0.1,
) -> Classifier:
    """Self- or cross-attention fusion over the modalities' tokens.

    Args:
        width: token width after projection.
        layers, heads: fusion transformer layers and heads.
        mode: `self` (every token attends to all) or `cross` (only to other modalities').
    """
    check_modalities(modalities, None, "attention")
    if mode not in ("self", "cross"):
        raise OptionError(f"mode must be 'self' or 'cross', got {mode!r}")
    if mode == "cross" and len(modalities) < 2:
        raise OptionError(f"cross-attention needs >= 2 modalities; data.modalities is {modalities}")
    if layers < 1 or width % heads:
        raise OptionError(
            f"need layers >= 1 and heads dividing width; got layers={layers}, "
            f"width={width}, heads={heads}"
        )
    return AttentionFusion(
        modalities,
        in_specs,
        num_classes,
        _opts(locals()),
        width,
        layers,
        heads,
        mode,
        dropout,
        attn_dropout,
    )
