"""The SegFormer all-MLP head (`decoder: segformer`) against a reference written here from the
authors' `SegFormerHead` (TokenFusion / GeminiFusion `segformer.py`), float64, to 1e-10."""

from __future__ import annotations

import torch

from fusescope.models import build_model
from fusescope.models.decoders import SegFormerHead
from transformer_reference import segformer_head


def test_head_equals_the_authors_segformer_head():
    torch.manual_seed(0)
    channels = [8, 16, 32, 64]
    head = SegFormerHead(channels, num_classes=5, width=12).double().eval()
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.3)
        head.fuse[1].running_mean.normal_()
        head.fuse[1].running_var.uniform_(0.5, 2.0)
    feats = [torch.randn(2, c, 24 // 2**i, 40 // 2**i, dtype=torch.float64) for i, c in
             enumerate(channels)]  # fmt: skip
    with torch.no_grad():
        got = head(feats)
        want = segformer_head(feats, head.state_dict())
    assert got.shape == (2, 5, 24, 40)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_streams_share_the_head_with_private_batchnorms():
    """As the authors' code runs one head on each stream (its BN sees each stream alone),
    the multi-stream model runs it once on the stacked streams with per-modality BNs."""
    backbone = {"name": "mit_b0", "depths": [1, 1, 1, 1], "embed_dims": [8, 16, 32, 64]}
    backbone["num_heads"] = [1, 1, 2, 2]
    model = build_model(
        {
            "name": "multistream",
            "backbone": backbone,
            "decoder": {"name": "segformer", "width": 16},
        },
        ["rgb", "depth"],
        {"rgb": 3, "depth": 1},
        5,
    )
    assert model.decoder.embed[0].weight.shape == (16, 8)  # shared
    assert model.decoder.fuse[1].weight.shape == (2, 16)  # one BN per stream
