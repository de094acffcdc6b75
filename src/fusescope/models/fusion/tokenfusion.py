"""TokenFusion: multimodal token fusion for vision transformers (Wang et al., CVPR 2022), as the
authors' segmentation code runs it (yikaiw/TokenFusion, `semantic_segmentation/models`).

The host is the multi-stream encoder (every linear and conv shared by the modalities, only the
LayerNorms private, each copy initialised from the one pretrained LN, as their `LayerNormParallel`
and `expand_state_dict`). In every block of every stage:

* a score predictor scores each token of the block's input (site `block_in`): one predictor per
  stage, shared by the stage's blocks, and per modality its own MLP LN -> C -> C/2 -> C/4 -> 2
  with GELUs and a log-softmax (their `PredictorLG`); the token's mask is the softmax of the
  scores' first entry (`F.softmax(score)[..., 0]`);
* the attention branch's output after `proj` (site `attn_out`, before drop path and the residual
  add) is multiplied by the mask, and a token whose mask is below `threshold` (0.02) takes the
  other modality's masked token instead (their `TokenExchange`; for M > 2 the mean of the other
  modalities' tokens, CEN's eq. 6 rule). The residual stream itself is never exchanged.

The mask travels from `block_in` to `attn_out` in the forward's scope (`ForwardScope.carry`).
The sparsity loss `token_l1` is `sparsity_weight` x sum |mask| over every token of every block
and modality of a sample, averaged over the samples (engine convention: a loss does not depend
on how a batch is split). The authors' loop sums it over their whole batch (6 on NYUDv2, one
DataParallel forward), so their lambda is ours / 6: their README's 1e-6, which their published
runs use, is `6e-6` here (the default); their config default 1e-4 is `6e-4` (at their size it
outweighs the task loss about a hundredfold).

The rest of their model is the host's and the engine's: the SegFormer head shared by the
streams (`decoder: segformer`), the learned ensemble over the detached per-stream logits, every
output supervised, and `train.freeze_bn_stats` for their FREEZE_BN. Their translation generator
exchanges in the last block of each encoder level only (`blocks: last`, translation's default).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusescope.errors import OptionError
from fusescope.models.core import FusionOp, mean_of_others
from fusescope.models.norms import ModalityLayerNorm, ModalityLinear
from fusescope.models.registry import FUSION_OPS
from fusescope.models.sites import ForwardScope, FusionPoint, Where


class ScorePredictor(nn.Module):
    """Per modality an MLP LN -> C -> C/2 -> C/4 -> 2 (GELU between) and a log-softmax over the
    two scores, all modalities in one batched pass (their `PredictorLG`'s `score_nets`).

    `(B, M, N, C)` tokens -> `(B, M, N, 2)` log-probabilities."""

    def __init__(self, channels: int, num_modalities: int):
        super().__init__()
        if channels < 4:
            raise OptionError(f"TokenFusion's score predictor needs >= 4 channels, got {channels}")
        self.num_modalities = num_modalities
        self.norm = ModalityLayerNorm(channels, num_modalities)  # nn.LayerNorm's eps, 1e-5
        widths = [channels, channels, channels // 2, channels // 4, 2]
        self.layers = nn.ModuleList(
            ModalityLinear(a, b, num_modalities) for a, b in zip(widths, widths[1:], strict=False)
        )

    def forward(self, x4: Tensor) -> Tensor:
        B, M, N, C = x4.shape
        y = self.norm(x4.reshape(B * M, N, C)).reshape(B, M, N, C)
        for i, layer in enumerate(self.layers):
            y = layer(y)
            if i < len(self.layers) - 1:
                y = F.gelu(y)
        return F.log_softmax(y, dim=-1)


class TokenExchange(FusionOp):
    """TokenFusion at one block: the mask from the block's input, then the masked attention
    output with low-scored tokens exchanged (see the module docstring).

    Args:
        point: the block.
        predictor: the stage's `ScorePredictor`; `owner` registers it (the stage's first op),
            the other ops of the stage only use it.
        threshold: tokens whose mask is below it are exchanged (0.02).
        sparsity_weight: weight of sum |mask| per sample.
    """

    uses_scope = True
    layout = "tokens"

    def __init__(
        self,
        point: FusionPoint,
        predictor: ScorePredictor,
        owner: bool,
        threshold: float,
        sparsity_weight: float,
    ):
        super().__init__()
        self.stage = point.stage
        if owner:
            self.predictor = predictor
        self._predictor = (predictor,)  # a tuple: used here, registered once (by the owner)
        self.threshold = threshold
        self.sparsity_weight = sparsity_weight
        # the exchanged share of the last forward's tokens, detached: a logging statistic only
        self.register_buffer("exchanged", torch.zeros(()), persistent=False)

    def forward(self, x4: Tensor, site: str, scope: ForwardScope) -> Tensor:
        if site == "block_in":
            mask = self._predictor[0](x4).softmax(-1)[..., 0]  # (B, M, N)
            scope.carry[self] = mask
            if self.sparsity_weight:
                scope.add_loss("token_l1", self.sparsity_weight * mask.abs().sum() / x4.shape[0])
            return x4
        mask = scope.carry.pop(self)
        masked = x4 * mask[..., None].to(x4.dtype)
        replaced = mask < self.threshold
        self.exchanged.copy_(replaced.float().mean().detach())
        # where() drops the replaced token from the graph; the other modality's carries on
        return torch.where(replaced[..., None], mean_of_others(masked), masked)

    def stat_parts(self) -> dict[str, tuple[Tensor, float]]:
        """The share of tokens exchanged at this block in the last forward (mean over the
        stage's blocks, as the authors print it per modality)."""
        return {f"tokens_exchanged/stage{self.stage}": (self.exchanged, 1.0)}


def _check_tokenfusion(
    threshold: float = 0.02, sparsity_weight: float = 6e-6, blocks: str = "all", **_
) -> None:
    if not 0 <= threshold <= 1 or sparsity_weight < 0:
        raise OptionError("tokenfusion: threshold must be in [0, 1] and sparsity_weight >= 0")
    if blocks not in ("all", "last"):
        raise OptionError(f"tokenfusion: blocks must be all or last, not {blocks!r}")


@FUSION_OPS.register(
    "tokenfusion",
    check=_check_tokenfusion,
    paper="TokenFusion: Multimodal Token Fusion for Vision Transformers (Wang et al., CVPR 2022)",
    task_defaults={"translation": {"blocks": "last"}},
    block_families=("transformer",),
)
def tokenfusion(
    model,
    *,
    threshold: float = 0.02,
    sparsity_weight: float = 6e-6,
    stages: list[int] | None = None,
    blocks: str = "all",
) -> None:
    """TokenFusion (Wang et al., CVPR 2022): per-stage score predictors mask each block's
    attention output and exchange the tokens scored below `threshold` (see the module
    docstring).

    Options: `threshold` (0.02), `sparsity_weight` (lambda on sum |mask| per sample; 6e-6 is
    their README's 1e-6 on their batch of 6, 6e-4 their config default 1e-4), `stages`
    (default: every stage), `blocks` (all: every block, their segmentation code; last: the last
    block of each stage, their translation generator, translation's default).
    """
    encoder = model.encoder
    if encoder.block_family != "transformer":
        raise OptionError(
            f"tokenfusion exchanges transformer tokens: it needs transformer blocks (MiT, Swin, "
            f"ViT), not this {encoder.family or 'encoder'}'s"
        )
    num_modalities = encoder.num_modalities
    predictors: dict[int, ScorePredictor] = {}

    def build(point: FusionPoint) -> TokenExchange:
        owner = point.stage not in predictors
        if owner:
            predictors[point.stage] = ScorePredictor(point.channels, num_modalities).to(
                point.norm.weight.device
            )
        return TokenExchange(point, predictors[point.stage], owner, threshold, sparsity_weight)

    where = Where(
        ("block_in", "attn_out"),
        stages=tuple(stages) if stages is not None else None,
        blocks=blocks,
    )
    encoder.insert(where, build)
