"""MANGO for classification: the invertible cross-attention flow over two encoders' tokens.

MANGO (Truong et al.) classifies MM-IMDB (poster + plot) by encoding each modality, mapping the
joint tokens through the flow G (L = 12 blocks of MMCA / IMCA / LICA layers and an affine
coupling, `models/flow.py`) and reading Z with the task head; the loss is the task loss plus the
negative log-likelihood of the tokens under G with a standard normal prior (Table 3: micro-F1
71.7, macro-F1 68.2).

The flow needs both modalities to bring the same, fixed number of tokens (MMCA's attention is
square; LICA mixes a fixed N), while a poster gives h*w cells and a plot any number of words.
Each modality's tokens are therefore read into `slots` tokens by learned-query attention
pooling (masked: padded words get zero weight, so padding never changes a sample's tokens).
Each slot token then goes through a LayerNorm without affine parameters: a scale-free latent, so
the jointly trained encoders cannot shrink their features to drive the NLL to -infinity (the
segmentation model's BatchNorm does the same job; a per-token norm keeps samples independent).
The head reads the mean of Z over each modality's slots. The flow runs in float32 under mixed
precision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fusescope.errors import OptionError
from fusescope.models.classification.base import (
    Classifier,
    build_branch,
    check_modalities,
    head,
)
from fusescope.models.flow import PARTITIONS
from fusescope.models.fusion.mango import LatentFlow
from fusescope.models.registry import CLASSIFICATION_METHODS

HEADS = ("mlp", "dynmm")  # the head on Z: see `mango`


class SlotPooling(nn.Module):
    """`slots` learned queries attend over a modality's tokens: (B, N, D) -> (B, slots, D).

    Padded tokens (mask False) get exactly zero weight; the values are the tokens themselves,
    plus a learned code per slot.
    """

    def __init__(self, dim: int, slots: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(slots, dim) / math.sqrt(dim))
        self.to_key = nn.Linear(dim, dim)
        # a code per slot added to its output: at the start every slot averages nearly the same
        # tokens, and near-identical tokens make each ICA attention row nearly uniform, whose
        # triangular inverse then amplifies rounding (the flow must stay invertible in float32)
        self.codes = nn.Parameter(torch.randn(slots, dim))

    def forward(self, tokens: Tensor, mask: Tensor | None) -> Tensor:
        keys = self.to_key(tokens)  # (B, N, D)
        scores = self.queries @ keys.transpose(1, 2) / math.sqrt(tokens.shape[-1])  # (B, S, N)
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        return scores.softmax(-1) @ tokens + self.codes  # (B, S, D)


class MangoClassifier(Classifier):
    """Two branches -> slot tokens -> MANGO flow -> head on Z. Parts under stable names:
    `branches.{m}`, `project.{m}`, `slots.{m}`, `latent` (the `LatentFlow` every task's MANGO
    uses, its flow `latent.flow`), `head`."""

    def __init__(
        self,
        modalities,
        in_specs,
        num_classes,
        branch_opts,
        *,
        width,
        slots,
        attn_dim,
        coupling_hidden,
        blocks,
        partitions,
        coupling,
        nll_weight,
        log_scale_bound,
        dropout,
        hidden,
    ):
        super().__init__(modalities, num_classes)
        self.branches = nn.ModuleDict(
            {m: build_branch(m, in_specs[m], **branch_opts) for m in modalities}
        )
        self.project = nn.ModuleDict(
            {m: nn.Linear(self.branches[m].dim, width) for m in modalities}
        )
        self.slots = nn.ModuleDict({m: SlotPooling(width, slots) for m in modalities})
        self.latent_norm = nn.LayerNorm(width, elementwise_affine=False)
        self.latent = LatentFlow(
            None,
            flow_width=width,
            grid=None,
            num_tokens=2 * slots,
            blocks=blocks,
            partitions=partitions,
            coupling=coupling,
            attn_dim=attn_dim,
            hidden=coupling_hidden,
            nll_weight=nll_weight,
            log_scale_bound=log_scale_bound,
        )
        self.head = head(2 * width, num_classes, dropout, hidden)
        self.num_slots = slots

    def tokens(self, batch: dict[str, Tensor]) -> Tensor:
        """The flow's input (B, 2*slots, width): modality A's slot tokens, then B's."""
        encoded = self.encode(batch)
        parts = [
            self.slots[m](self.project[m](encoded[m].tokens), encoded[m].mask)
            for m in self.modalities
        ]
        return self.latent_norm(torch.cat(parts, dim=1))

    def forward(self, batch: dict[str, Tensor]) -> dict:
        tokens = self.tokens(batch)
        z, nll = self.latent.flow_tokens(tokens)
        b, n, d = z.shape
        pooled = z.view(b, 2, n // 2, d).mean(2).flatten(1)  # (B, 2*width): per-modality means
        logits = self.head(pooled)
        return self.output(logits, aux_losses={"flow_nll": self.latent.nll_weight * nll})


@CLASSIFICATION_METHODS.register("mango")
def mango(
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
    width: int = 64,
    slots: int = 8,
    attn_dim: int = 64,
    coupling_hidden: int = 128,
    blocks: int = 12,
    partitions: Sequence[str] = PARTITIONS,
    coupling: bool = True,
    nll_weight: float = 0.1,
    log_scale_bound: float = 2.0,
    dropout: float = 0.0,
    hidden: int | None = 128,
    head: str = "mlp",
) -> Classifier:
    """MANGO: task loss + `nll_weight` x the flow's NLL per dimension.

    Args:
        width: token width D of the flow.
        slots: tokens per modality (the flow sees 2 x slots tokens).
        attn_dim, coupling_hidden, blocks, partitions, coupling, log_scale_bound: the flow
            (`models/flow.py`; the paper: 12 blocks, all three partitions, coupling on).
        nll_weight: weight of the NLL (nats per dimension) in the loss.
        dropout, hidden: the head on Z (`head: mlp`).
        head: `mlp`, a one-hidden-layer MLP (`hidden` wide) on the concatenated per-modality
            means of Z; `dynmm`, the task head of Dynamic Multimodal Fusion (Xue & Marculescu,
            the head MANGO's section 4.1 names): one linear layer on that concatenation, as
            the fusion branch of DynMM's MM-IMDB code (MultiBench's Concat, then
            Linear(2 x 512, 23)); no hidden layer, no dropout (`width: 512` gives their sizes).
    """
    check_modalities(modalities, (2,), "mango")
    if head not in HEADS:
        raise OptionError(f"head must be one of {', '.join(HEADS)}, not {head!r}")
    if head == "dynmm":
        hidden, dropout = None, 0.0
    unknown = sorted(set(partitions) - set(PARTITIONS))
    if unknown:
        raise OptionError(f"unknown partitions {unknown}; known: {', '.join(PARTITIONS)}")
    if slots < 1 or width < 2 or nll_weight < 0:
        raise OptionError(
            f"need slots >= 1, width >= 2, nll_weight >= 0; got {slots}, {width}, {nll_weight}"
        )
    opts = {
        k: v
        for k, v in locals().items()
        if k
        in (
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
    }
    return MangoClassifier(
        modalities,
        in_specs,
        num_classes,
        opts,
        width=width,
        slots=slots,
        attn_dim=attn_dim,
        coupling_hidden=coupling_hidden,
        blocks=blocks,
        partitions=list(partitions),
        coupling=coupling,
        nll_weight=nll_weight,
        log_scale_bound=log_scale_bound,
        dropout=dropout,
        hidden=hidden,
    )
