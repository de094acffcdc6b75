"""GeminiFusion against a reference written here from the authors' code (JiaDingCN/GeminiFusion
`mix_transformer.py`: the per-sample loop over `nn.MultiheadAttention`, the relation judger and
the noise embeddings), in float64 to 1e-10: the fusion module alone, and whole MiT encoders with
the fusion before every block's `proj`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fusescope.errors import FusescopeError
from fusescope.models import build_model
from fusescope.models.fusion.gemini import PixelCrossAttention
from fusescope.models.norms import ModalityLayerNorm
from transformer_reference import GeminiReference, encoder_params, mit_forward

DEPTHS, DIMS, HEADS, SR = [1, 2, 1, 1], [8, 16, 32, 64], [1, 1, 2, 2], [8, 4, 2, 1]
SPEC = {"name": "mit_b0", "depths": DEPTHS, "embed_dims": DIMS, "num_heads": HEADS}
EPS = {"embed": 1e-5, "sr": 1e-5, "block": 1e-6}  # timm's (SegFormer's) MiT norms


def randomised(module: nn.Module, std: float = 0.3) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, std)
    return module


@pytest.mark.parametrize("heads", [8, 2])
def test_fusion_module_equals_the_authors_batch_loop(heads):
    torch.manual_seed(0)
    op = randomised(PixelCrossAttention(16, 2, heads)).double()
    x = torch.randn(3, 2, 20, 16, dtype=torch.float64)
    params = {f"g.{k}": v for k, v in op.state_dict().items()}
    ref = GeminiReference(16, heads).double().load_from(params, "g").eval()
    with torch.no_grad():
        got = op(x, "attn_mix")
        want = ref([x[:, 0], x[:, 1]])
    for m in range(2):
        torch.testing.assert_close(got[:, m], want[m], rtol=0, atol=1e-10)


def test_encoder_with_fusion_before_every_proj_equals_the_authors_code():
    torch.manual_seed(0)
    cfg = {"name": "geminifusion", "backbone": SPEC, "decoder": "segformer", "heads": 4}
    model = randomised(build_model(cfg, ["rgb", "depth"], {"rgb": 3, "depth": 1}, 4)).double()
    model.eval()
    state = model.state_dict()
    refs = {}
    for key in sorted({k.split(".relation.")[0] for k in state if ".relation." in k}):
        block = key.removeprefix("encoder.fusion.")  # stages_S_blocks_J
        s, j = int(block.split("_")[1]), int(block.split("_")[3])
        refs[s, j] = GeminiReference(DIMS[s], 4).double().load_from(state, key).eval()
    assert len(refs) == sum(DEPTHS)

    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(2, 3, 40, 56, generator=g, dtype=torch.float64) for _ in range(2)]
    with torch.no_grad():
        want = mit_forward(
            encoder_params(model), xs, DEPTHS, HEADS, SR, EPS,
            before_proj=lambda s, j, f: refs[s, j](f),
        )  # fmt: skip
        got = model.encoder(torch.stack(xs, 1).flatten(0, 1))
    for level, feature in enumerate(got):
        for m in range(2):
            torch.testing.assert_close(
                feature.unflatten(0, (-1, 2))[:, m], want[m][level], rtol=0, atol=1e-10
            )


def test_parameters_per_block_are_their_11_c_squared():
    """Two MultiheadAttentions (4C^2 + 4C each), the relation judger (3C^2 + 2C) and two
    2-row noise embeddings (4C): 11 C^2 + 14 C per block."""
    C = 32
    op = PixelCrossAttention(C, 2)
    assert sum(p.numel() for p in op.parameters()) == 11 * C * C + 14 * C
    ref = GeminiReference(C, 8)
    assert sum(p.numel() for p in ref.parameters()) == 11 * C * C + 14 * C


def test_norms_private_on_mit_shared_on_swin_as_their_code():
    mit = build_model(
        {"name": "geminifusion", "backbone": SPEC}, ["rgb", "depth"], {"rgb": 3, "depth": 1}, 4
    )
    assert all(
        isinstance(m, ModalityLayerNorm)
        for m in mit.encoder.body.modules()
        if isinstance(m, nn.LayerNorm | ModalityLayerNorm)
    )
    swin = {"name": "swin_tiny_patch4_window7_224", "embed_dim": 16, "depths": [1, 1, 1, 1]}
    swin["num_heads"] = [1, 1, 1, 1]
    model = build_model(
        {"name": "geminifusion", "backbone": swin, "heads": 4},
        ["rgb", "depth"],
        {"rgb": 3, "depth": 1},
        4,
    )
    kinds = {n: type(m).__name__ for n, m in model.encoder.body.named_modules()}
    assert kinds["body.layers_0.blocks.0.norm1"] == "LayerNorm"
    assert kinds["body.layers_1.downsample.norm"] == "LayerNorm"
    assert kinds["body.patch_embed.norm"] == "ModalityLayerNorm"
    out = model({"rgb": torch.randn(2, 3, 33, 41), "depth": torch.randn(2, 1, 33, 41)})
    assert out["logits"].shape == (2, 4, 33, 41)
    private = build_model(
        {"name": "geminifusion", "backbone": swin, "heads": 4, "norms": "private"},
        ["rgb", "depth"],
        {"rgb": 3, "depth": 1},
        4,
    )
    assert type(private.encoder.body.body.layers_0.blocks[0].norm1) is ModalityLayerNorm


def test_heads_must_divide_the_width():
    with pytest.raises(FusescopeError, match="do not split into 3 heads") as err:
        build_model(
            {"name": "geminifusion", "backbone": SPEC, "heads": 3},
            ["rgb", "depth"],
            {"rgb": 3, "depth": 1},
            4,
        )
    assert "\n" not in str(err.value)
