"""FLOP counters under each source's rule (`models/cost.py`): thop's module rules (DFormer's
benchmark), thop with a MultiheadAttention rule, fvcore's op rules; checked by hand on small
modules, and fusescope's vectorised per-modality modules counted as the authors' modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fusescope.models.cost import count_macs_fvcore, count_macs_thop, count_macs_thop_mha
from fusescope.models.fusion.gemini import PixelCrossAttention
from fusescope.models.norms import ModalityLayerNorm, ModalityLinear


class Wrap(nn.Module):
    """A batch dict in, one tensor through `body` (the counters call models with a dict)."""

    def __init__(self, body: nn.Module, post=None):
        super().__init__()
        self.body = body
        self.post = post

    def forward(self, batch):
        y = self.body(batch["x"])
        return self.post(y) if self.post else y


def test_thop_rules_by_hand():
    body = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),  # out (1, 8, 5, 6): 240 x 3 x 9
        nn.BatchNorm2d(8),  # 4 per element of 240
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=4),  # 240 x 2 x 9
        nn.Flatten(2),
        nn.Softmax(dim=-1),  # 8 rows of 30: 8 x (3 x 30 - 1)
        nn.Linear(30, 7),  # 56 outputs x 30
    )
    model = Wrap(body, post=lambda y: F.interpolate(y[None], scale_factor=2.0))  # functional: 0
    batch = {"x": torch.randn(1, 3, 10, 12)}
    assert count_macs_thop(model, batch) == 240 * 27 + 4 * 240 + 240 * 18 + 8 * 89 + 56 * 30


def test_per_modality_modules_count_as_the_modules_they_replace():
    M, B, N = 2, 3, 5
    lin = ModalityLinear(6, 4, M)
    assert count_macs_thop(Wrap(lin), {"x": torch.randn(B, M, N, 6)}) == M * B * N * 6 * 4
    norm = ModalityLayerNorm(6, M)
    x = torch.randn(B * M, N, 6)
    assert count_macs_thop(Wrap(norm), {"x": x}) == 4 * x.numel()  # as M affine LayerNorms
    assert count_macs_fvcore(Wrap(norm), {"x": x}) == 5 * x.numel()  # fvcore: 5 with affine


def test_cross_attention_is_zero_for_thop_and_its_projections_with_an_mha_rule():
    B, M, N, C = 2, 2, 7, 16
    op = PixelCrossAttention(C, M, heads=4)
    model = Wrap(op)
    model.forward = lambda batch: op(batch["x"], "attn_mix")
    batch = {"x": torch.randn(B, M, N, C)}
    tokens = B * M * N
    relation = tokens * (2 * C * C + C * C) + tokens * (3 * C - 1)  # 2 Linears, Softmax
    assert count_macs_thop(model, batch) == relation
    assert count_macs_thop_mha(model, batch) == tokens * (9 * C * C + 4 * C + 3 * C - 1)
    # fvcore sees the projections as matmuls: q, 2 keys, 2 values, out (6 C^2) + relation 3 C^2
    # per token, and once per call the noise rows through each direction's key and value
    # weights (M C^2 each: the noise is folded into the projections, not added per token)
    assert count_macs_fvcore(model, batch) == tokens * 9 * C * C + 2 * M * C * C


def test_fvcore_counts_matmuls_norms_and_bilinear_upsampling():
    body = nn.Sequential(nn.Linear(8, 4), nn.LayerNorm(4))
    model = Wrap(body, post=lambda y: F.interpolate(y[:, None, None], size=(6, 8), mode="bilinear"))
    batch = {"x": torch.randn(3, 8)}  # (3, 4) -> (3, 1, 1, 4) -> (3, 1, 6, 8)
    assert count_macs_fvcore(model, batch) == 3 * 8 * 4 + 5 * 12 + 4 * 3 * 48
