"""GeminiFusion: pixel-wise fusion for vision transformers (Jia et al., ICML 2024), as the
authors' code runs it (JiaDingCN/GeminiFusion, `models/mix_transformer.py`,
`models/swin_transformer.py`).

In every block, on the attention's output (MiT: after the self-attention, before `proj`, site
`attn_mix`; Swin: after the window attention and its projection, before drop path and the
residual add, site `attn_out`), each modality m's token q at a position attends over two entries
built from the same position only:

    keys    [q + k_noise_m,  q * relation(q, other)]
    values  [q + v_noise_m,  other]
    out     q + MultiheadAttention_m(q, keys, values)     (8 heads, no dropout)

`other` is the other modality's token (for M > 2 the mean of the other modalities', CEN's eq. 6
rule); `relation` is one MLP(2C -> C -> C, GELU) + softmax over the channels shared by both
directions (their `relation_judger`); `k_noise`, `v_noise` are learned embeddings with one row
per direction (their layer-adaptive noise, `nn.Embedding(2, C)`), and each direction has its own
attention (`cross_attn_0_to_1`, `cross_attn_1_to_0`). Attention over 2 entries per token keeps
the cost linear in the tokens: about 11 C^2 parameters per block.

The authors loop over the batch in Python and call `nn.MultiheadAttention` per sample; here all
samples, positions and modalities run at once as batched matmuls over the `(B, M, N, C)` view
(`benchmarks/gemini_loop.py` measures the two; tests/test_gemini.py checks them equal to 1e-10).

Norms: their MiT makes every LayerNorm private per modality (`LayerNormParallel`), their Swin
shares the blocks' `norm1` / `norm2` and the patch-merging norms (`ModuleParallel(LayerNorm)`);
`norms: auto` does the same per family (`private` / `shared` force one setting).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fusescope.errors import OptionError
from fusescope.models.core import FusionOp, mean_of_others
from fusescope.models.registry import FUSION_OPS
from fusescope.models.sites import FusionPoint, Where

# where the fusion acts per encoder family (their MiT: before `proj`; their Swin: after it)
SITE = {"swin": "attn_out"}
NORMS = ("auto", "private", "shared")
# the norms their Swin shares between the modalities (module names in timm's Swin)
SWIN_SHARED_NORMS = (".norm1", ".norm2", "downsample.norm")


class PixelCrossAttention(FusionOp):
    """GeminiFusion at one block, on tokens `(B, M, N, C)` (see the module docstring).

    Parameters (M directions): `relation` (shared), `k_noise`, `v_noise` (M, C), and per
    direction an attention's `in_proj_weight` (M, 3C, C) (query, key, value rows, as
    `nn.MultiheadAttention` stacks them), `in_proj_bias` (M, 3C), `out_proj_weight` (M, C, C),
    `out_proj_bias` (M, C).

    Initialised as their code leaves it: `in_proj_weight` Xavier-uniform over each (3C, C)
    (MultiheadAttention's own), the linears (relation MLP, `out_proj`) truncated normal std 0.02
    (their `_init_weights`), biases 0, the noise embeddings N(0, 1) (`nn.Embedding`'s).
    """

    layout = "tokens"

    def __init__(self, channels: int, num_modalities: int, heads: int = 8):
        super().__init__()
        if channels % heads:
            raise OptionError(
                f"geminifusion: {channels} channels do not split into {heads} heads "
                f"(model.heads must divide every stage's width)"
            )
        C, M = channels, num_modalities
        self.heads = heads
        self.relation = nn.Sequential(
            nn.Linear(2 * C, C), nn.GELU(), nn.Linear(C, C), nn.Softmax(dim=-1)
        )
        self.k_noise = nn.Parameter(torch.randn(M, C))
        self.v_noise = nn.Parameter(torch.randn(M, C))
        self.in_proj_weight = nn.Parameter(torch.empty(M, 3 * C, C))
        self.in_proj_bias = nn.Parameter(torch.zeros(M, 3 * C))
        self.out_proj_weight = nn.Parameter(torch.empty(M, C, C))
        self.out_proj_bias = nn.Parameter(torch.zeros(M, C))
        for m in range(M):
            nn.init.xavier_uniform_(self.in_proj_weight.data[m])
        nn.init.trunc_normal_(self.out_proj_weight, std=0.02)
        for layer in (self.relation[0], self.relation[2]):
            nn.init.trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, x4: Tensor, site: str) -> Tensor:
        B, M, N, C = x4.shape
        h, d = self.heads, C // self.heads
        other = mean_of_others(x4)
        relation = self.relation(torch.cat([x4, other], dim=-1))  # (B, M, N, C), sums to 1

        def rows(t: Tensor) -> Tensor:  # (B, M, N, C) -> (M, B*N, C): one bmm per projection
            return t.transpose(0, 1).reshape(M, B * N, C)

        def project(t: Tensor, weight: Tensor, bias: Tensor) -> Tensor:  # direction m: W_m t + b_m
            return torch.baddbmm(bias[:, None], t, weight.transpose(1, 2))

        w_k, w_v = self.in_proj_weight[:, C : 2 * C], self.in_proj_weight[:, 2 * C :]
        b_k, b_v = self.in_proj_bias[:, C : 2 * C], self.in_proj_bias[:, 2 * C :]
        # query and the self entry's key / value in one projection: a noise row enters a
        # projection linearly, W (q + noise) + b = (W q + b) + W noise
        q, k_self, v_self = project(rows(x4), self.in_proj_weight, self.in_proj_bias).split(C, -1)
        k_self = k_self + torch.einsum("mdc,mc->md", w_k, self.k_noise)[:, None]
        v_self = v_self + torch.einsum("mdc,mc->md", w_v, self.v_noise)[:, None]
        k_rel = project(rows(x4 * relation), w_k, b_k)
        v_other = project(rows(other), w_v, b_v)
        # attention over the two entries: a softmax over 2 is the sigmoid of their difference
        q = q.reshape(M, B * N, h, d)
        gap = (q * (k_self - k_rel).reshape(M, B * N, h, d)).sum(-1) / math.sqrt(d)  # (M, BN, h)
        v_other = v_other.reshape(M, B * N, h, d)
        mixed = v_other + torch.sigmoid(gap)[..., None] * (v_self.reshape(M, B * N, h, d) - v_other)
        out = project(mixed.reshape(M, B * N, C), self.out_proj_weight, self.out_proj_bias)
        return x4 + out.reshape(M, B, N, C).transpose(0, 1)


def _check_gemini(heads: int = 8, norms: str = "auto", **_) -> None:
    if not (isinstance(heads, int) and heads >= 1):
        raise OptionError(f"geminifusion: heads must be a positive integer, not {heads!r}")
    if norms not in NORMS:
        raise OptionError(f"geminifusion: norms must be one of {', '.join(NORMS)}, not {norms!r}")


@FUSION_OPS.register(
    "geminifusion",
    check=_check_gemini,
    paper="GeminiFusion: Efficient Pixel-wise Multimodal Fusion for Vision Transformer "
    "(Jia et al., ICML 2024)",
    block_families=("transformer",),
)
def geminifusion(
    model, *, heads: int = 8, stages: list[int] | None = None, norms: str = "auto"
) -> None:
    """GeminiFusion (Jia et al., ICML 2024): pixel-wise cross-attention between the modalities'
    tokens at the same position in every block of `stages` (default: all), with a relation
    discriminator and layer-adaptive noise (see the module docstring).

    Options: `heads` (8, their `--n_heads`), `stages`, `norms` (auto: private LayerNorms on MiT,
    the block and patch-merging norms shared on Swin, as their code; private | shared).
    """
    encoder = model.encoder
    if encoder.block_family != "transformer":
        raise OptionError(
            f"geminifusion attends between transformer tokens: it needs transformer blocks "
            f"(MiT, Swin, ViT), not this {encoder.family or 'encoder'}'s"
        )
    if norms == "shared" or (norms == "auto" and encoder.family == "swin"):
        every = norms == "shared"
        encoder.share_norms(lambda name: every or name.endswith(SWIN_SHARED_NORMS))
    M = encoder.num_modalities

    def build(point: FusionPoint) -> PixelCrossAttention:
        return PixelCrossAttention(point.channels, M, heads).to(point.norm.weight.device)

    site = SITE.get(encoder.family, "attn_mix")
    encoder.insert(Where((site,), stages=tuple(stages) if stages is not None else None), build)
