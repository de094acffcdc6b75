"""References written in the tests from the authors' code (TokenFusion's and GeminiFusion's
`mix_transformer.py`, their SegFormer head), in their own style: one tensor per modality in a
Python list, every module applied per modality, the batch looped where their code loops it.

They take a fusescope model's weights by name (per-modality LayerNorms as rows of its (M, C)
parameters), so a test compares the two implementations on the same numbers, in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def encoder_params(model: nn.Module) -> dict[str, Tensor]:
    """The multi-stream encoder's tensors under timm's full-model names (`stages.S...`)."""
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("encoder.body."):
            name = key.removeprefix("encoder.body.")
            out[name.replace("stages_", "stages.", 1)] = value
    return out


def layer_norm(x: Tensor, p: dict, name: str, m: int, eps: float) -> Tensor:
    """`LayerNormParallel`'s modality m (a row of our (M, C) parameters)."""
    w, b = p[name + ".weight"], p[name + ".bias"]
    if w.dim() == 2:
        w, b = w[m], b[m]
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


def linear(x: Tensor, p: dict, name: str) -> Tensor:
    return F.linear(x, p[name + ".weight"], p[name + ".bias"])


def attention_mix(xs, p, pre, heads, sr, H, W, eps):
    """Their `Attention.forward` up to (not including) `proj`: a list of (B, N, C) per modality
    -> the attention's output before its projection, per modality."""
    out = []
    for m, x in enumerate(xs):
        B, N, C = x.shape
        q = linear(x, p, pre + ".q").reshape(B, N, heads, C // heads).permute(0, 2, 1, 3)
        if sr > 1:
            x_ = x.permute(0, 2, 1).reshape(B, C, H, W)
            x_ = F.conv2d(x_, p[pre + ".sr.weight"], p[pre + ".sr.bias"], stride=sr)
            x_ = x_.reshape(B, C, -1).permute(0, 2, 1)
            x_ = layer_norm(x_, p, pre + ".norm", m, eps["sr"])
        else:
            x_ = x
        kv = linear(x_, p, pre + ".kv").reshape(B, -1, 2, heads, C // heads)
        kv = kv.permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        attn = (q @ k.transpose(-2, -1)) * (C // heads) ** -0.5
        attn = attn.softmax(dim=-1)
        out.append((attn @ v).transpose(1, 2).reshape(B, N, C))
    return out


def mlp(x: Tensor, p: dict, pre: str, H: int, W: int) -> Tensor:
    """Their `Mlp` (fc1, DWConv, GELU, fc2)."""
    x = linear(x, p, pre + ".fc1")
    B, N, C = x.shape
    x = x.transpose(1, 2).view(B, C, H, W)
    x = F.conv2d(x, p[pre + ".dwconv.weight"], p[pre + ".dwconv.bias"], padding=1, groups=C)
    x = F.gelu(x.flatten(2).transpose(1, 2))
    return linear(x, p, pre + ".fc2")


def mit_forward(
    p: dict,
    inputs: list[Tensor],
    depths: list[int],
    heads: list[int],
    sr_ratios: list[int],
    eps: dict,
    block_input=None,
    before_proj=None,
    after_proj=None,
) -> list[list[Tensor]]:
    """Their `MixVisionTransformer.forward_features` over M modalities (a list of (B, 3, H, W)),
    with the fusion hooks at their places:

    * `block_input(stage, block, xs)` -> state handed to `after_proj` (TokenFusion's mask, from
      the score predictor on the block's input);
    * `before_proj(stage, block, xs)` -> xs (GeminiFusion, after self-attention, before proj);
    * `after_proj(stage, block, xs, state)` -> xs (TokenFusion's mask and exchange).

    Returns the four levels' maps per modality.
    """
    outs = [[] for _ in inputs]
    xs = inputs
    B = xs[0].shape[0]
    for s in range(4):
        pe = "patch_embed" if s == 0 else f"stages.{s}.downsample"
        k, stride = (7, 4) if s == 0 else (3, 2)
        xs = [F.conv2d(x, p[pe + ".proj.weight"], p[pe + ".proj.bias"], stride, k // 2) for x in xs]
        H, W = xs[0].shape[-2:]
        xs = [x.flatten(2).transpose(1, 2) for x in xs]
        xs = [layer_norm(x, p, pe + ".norm", m, eps["embed"]) for m, x in enumerate(xs)]
        for j in range(depths[s]):
            pre = f"stages.{s}.blocks.{j}"
            state = block_input(s, j, xs) if block_input else None
            normed = [layer_norm(x, p, pre + ".norm1", m, eps["block"]) for m, x in enumerate(xs)]
            f = attention_mix(normed, p, pre + ".attn", heads[s], sr_ratios[s], H, W, eps)
            if before_proj:
                f = before_proj(s, j, f)
            f = [linear(x, p, pre + ".attn.proj") for x in f]
            if after_proj:
                f = after_proj(s, j, f, state)
            xs = [x + y for x, y in zip(xs, f, strict=True)]
            normed = [layer_norm(x, p, pre + ".norm2", m, eps["block"]) for m, x in enumerate(xs)]
            f = [mlp(x, p, pre + ".mlp", H, W) for x in normed]
            xs = [x + y for x, y in zip(xs, f, strict=True)]
        xs = [layer_norm(x, p, f"stages.{s}.norm", m, eps["block"]) for m, x in enumerate(xs)]
        xs = [x.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous() for x in xs]
        for m, x in enumerate(xs):
            outs[m].append(x)
    return outs


# ----------------------------------------------------------------------------------- TokenFusion


def predictor_lg(channels: int, params: dict, prefix: str, m: int) -> nn.Sequential:
    """Their `PredictorLG.score_nets[m]`, with modality m's weights of our predictor."""
    C = channels
    net = nn.Sequential(
        nn.LayerNorm(C),
        nn.Linear(C, C),
        nn.GELU(),
        nn.Linear(C, C // 2),
        nn.GELU(),
        nn.Linear(C // 2, C // 4),
        nn.GELU(),
        nn.Linear(C // 4, 2),
        nn.LogSoftmax(dim=-1),
    ).double()
    with torch.no_grad():
        net[0].weight.copy_(params[prefix + ".norm.weight"][m])
        net[0].bias.copy_(params[prefix + ".norm.bias"][m])
        for i, layer in zip(range(4), (1, 3, 5, 7), strict=True):
            net[layer].weight.copy_(params[f"{prefix}.layers.{i}.weight"][m])
            net[layer].bias.copy_(params[f"{prefix}.layers.{i}.bias"][m])
    return net


def token_exchange(x: list[Tensor], mask: list[Tensor], mask_threshold: float) -> list[Tensor]:
    """Their `TokenExchange` (two modalities)."""
    x0, x1 = torch.zeros_like(x[0]), torch.zeros_like(x[1])
    x0[mask[0] >= mask_threshold] = x[0][mask[0] >= mask_threshold]
    x0[mask[0] < mask_threshold] = x[1][mask[0] < mask_threshold]
    x1[mask[1] >= mask_threshold] = x[1][mask[1] >= mask_threshold]
    x1[mask[1] < mask_threshold] = x[0][mask[1] < mask_threshold]
    return [x0, x1]


# ---------------------------------------------------------------------------------- GeminiFusion


class GeminiReference(nn.Module):
    """Their `Attention`'s fusion part, the two directions' `nn.MultiheadAttention`s, the
    relation judger and the noise embeddings, run as their code runs them: a Python loop over
    the batch, each sample's N tokens a batch of length-1 queries over 2 keys."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.cross_attn_0_to_1 = nn.MultiheadAttention(dim, heads, dropout=0.0)
        self.cross_attn_1_to_0 = nn.MultiheadAttention(dim, heads, dropout=0.0)
        self.relation_judger = nn.Sequential(
            nn.Linear(dim * 2, dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(dim, dim),
            nn.Dropout(0.0), nn.Softmax(dim=-1),
        )  # fmt: skip
        self.k_noise = nn.Embedding(2, dim)
        self.v_noise = nn.Embedding(2, dim)

    def load_from(self, params: dict, prefix: str) -> GeminiReference:
        """Copy our op's parameters (direction m = our modality m) in."""
        with torch.no_grad():
            for m, mha in enumerate((self.cross_attn_0_to_1, self.cross_attn_1_to_0)):
                mha.in_proj_weight.copy_(params[prefix + ".in_proj_weight"][m])
                mha.in_proj_bias.copy_(params[prefix + ".in_proj_bias"][m])
                mha.out_proj.weight.copy_(params[prefix + ".out_proj_weight"][m])
                mha.out_proj.bias.copy_(params[prefix + ".out_proj_bias"][m])
            self.relation_judger[0].weight.copy_(params[prefix + ".relation.0.weight"])
            self.relation_judger[0].bias.copy_(params[prefix + ".relation.0.bias"])
            self.relation_judger[3].weight.copy_(params[prefix + ".relation.2.weight"])
            self.relation_judger[3].bias.copy_(params[prefix + ".relation.2.bias"])
            self.k_noise.weight.copy_(params[prefix + ".k_noise"])
            self.v_noise.weight.copy_(params[prefix + ".v_noise"])
        return self

    def forward(self, x: list[Tensor]) -> list[Tensor]:
        B = x[0].shape[0]
        new_x0, new_x1 = [], []
        for bs in range(B):
            q = x[0][bs].unsqueeze(0)
            relation_score = self.relation_judger(torch.cat([q, x[1][bs].unsqueeze(0)], dim=-1))
            k = torch.cat([self.k_noise.weight[0] + q, torch.mul(q, relation_score)], dim=0)
            v = torch.cat([self.v_noise.weight[0] + q, x[1][bs].unsqueeze(0)], dim=0)
            new_x0.append(x[0][bs] + self.cross_attn_0_to_1(q, k, v)[0].squeeze(0))
            q = x[1][bs].unsqueeze(0)
            relation_score = self.relation_judger(torch.cat([q, x[0][bs].unsqueeze(0)], dim=-1))
            k = torch.cat([self.k_noise.weight[1] + q, torch.mul(q, relation_score)], dim=0)
            v = torch.cat([self.v_noise.weight[1] + q, x[0][bs].unsqueeze(0)], dim=0)
            new_x1.append(x[1][bs] + self.cross_attn_1_to_0(q, k, v)[0].squeeze(0))
        return [torch.stack(new_x0), torch.stack(new_x1)]


# ------------------------------------------------------------------------------- SegFormer head


def segformer_head(features: list[Tensor], p: dict) -> Tensor:
    """Their `SegFormerHead.forward` (eval mode: BN with running statistics, no dropout), with
    our head's weights (`embed.i` = `linear_c{i+1}.proj`, `fuse` = `linear_fuse`, `classifier`
    = `linear_pred`); one stream (BN row `m` given by the caller's `p`)."""
    c1, c2, c3, c4 = features
    n = c4.shape[0]

    def embed(c: Tensor, i: int) -> Tensor:
        y = F.linear(c.flatten(2).transpose(1, 2), p[f"embed.{i}.weight"], p[f"embed.{i}.bias"])
        return y.permute(0, 2, 1).reshape(n, -1, c.shape[2], c.shape[3])

    size = c1.size()[2:]
    _c4 = F.interpolate(embed(c4, 3), size=size, mode="bilinear", align_corners=False)
    _c3 = F.interpolate(embed(c3, 2), size=size, mode="bilinear", align_corners=False)
    _c2 = F.interpolate(embed(c2, 1), size=size, mode="bilinear", align_corners=False)
    _c1 = embed(c1, 0)
    _c = F.conv2d(torch.cat([_c4, _c3, _c2, _c1], dim=1), p["fuse.0.weight"])
    _c = F.batch_norm(
        _c, p["fuse.1.running_mean"], p["fuse.1.running_var"], p["fuse.1.weight"],
        p["fuse.1.bias"], False, 0.0, 1e-5,
    )  # fmt: skip
    return F.conv2d(F.relu(_c), p["classifier.weight"], p["classifier.bias"])
