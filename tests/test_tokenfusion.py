"""TokenFusion against a reference written here from the authors' segmentation code
(yikaiw/TokenFusion `mix_transformer.py`: `PredictorLG`, `Attention` with the mask and
`TokenExchange`, `forward_features`), in float64 to 1e-10: the score predictor, and whole MiT
encoders (every block of every stage exchanging) on the same weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fusescope.errors import FusescopeError
from fusescope.models import build_model
from fusescope.models.fusion.tokenfusion import ScorePredictor, TokenExchange
from fusescope.models.norms import ModalityLayerNorm
from transformer_reference import encoder_params, mit_forward, predictor_lg, token_exchange

DEPTHS, DIMS, HEADS, SR = [1, 2, 1, 1], [8, 16, 32, 64], [1, 1, 2, 2], [8, 4, 2, 1]
SPEC = {"name": "mit_b0", "depths": DEPTHS, "embed_dims": DIMS, "num_heads": HEADS}
# their LayerNormParallel uses eps 1e-6 for every norm; fusescope keeps SegFormer's / timm's
# 1e-5 in the patch-embedding and spatial-reduction norms (what the released weights were
# trained with): the tests give both models the authors' 1e-6
EPS = {"embed": 1e-6, "sr": 1e-6, "block": 1e-6}


def build(modalities=("rgb", "depth"), seed=0, **options):
    torch.manual_seed(seed)
    chans = {"rgb": 3, "depth": 1, "hha": 3}
    cfg = {"name": "tokenfusion", "backbone": SPEC, "decoder": "segformer", **options}
    model = build_model(cfg, list(modalities), chans, 4).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.3 if "predictor" not in name else 1.0)
    for module in model.encoder.body.modules():  # the predictors keep nn.LayerNorm's 1e-5
        if isinstance(module, ModalityLayerNorm):
            module.eps = 1e-6
    return model


def reference(model, inputs, threshold=0.02, exchange=token_exchange):
    """Their encoder: the stage's predictor on each block's input, mask = softmax(score)[..., 0],
    the attention output (after proj) times the mask, then TokenExchange."""
    p = encoder_params(model)
    fusion = {k: v for k, v in model.state_dict().items() if ".predictor." in k}
    owners = sorted({k.split(".predictor.")[0] for k in fusion})  # one per stage
    masks = []

    def block_input(s, j, xs):
        prefix = owners[s] + ".predictor"
        nets = [predictor_lg(DIMS[s], fusion, prefix, m) for m in range(len(xs))]
        B = xs[0].shape[0]
        score = [net(x) for net, x in zip(nets, xs, strict=True)]
        mask = [F.softmax(sc.reshape(B, -1, 2), dim=2)[:, :, 0] for sc in score]
        masks.append(mask)
        return mask

    def after_proj(s, j, xs, mask):
        xs = [x * m.unsqueeze(2) for x, m in zip(xs, mask, strict=True)]
        return exchange(xs, mask, threshold)

    outs = mit_forward(p, inputs, DEPTHS, HEADS, SR, EPS, block_input, after_proj=after_proj)
    return outs, masks


def inputs(M=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 40, 56, generator=g, dtype=torch.float64) for _ in range(M)]


def ours(model, xs):
    stacked = torch.stack(xs, 1).flatten(0, 1)  # (B*M, 3, H, W), sample-major
    with torch.no_grad():
        features, losses = model.encoder.run(stacked)
    M = len(xs)
    return [[f.unflatten(0, (-1, M))[:, m] for f in features] for m in range(M)], losses


def test_score_predictor_equals_predictor_lg():
    torch.manual_seed(0)
    pred = ScorePredictor(16, 2).double()
    with torch.no_grad():
        for p in pred.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(3, 2, 10, 16, dtype=torch.float64)
    params = {f"p.{k}": v for k, v in pred.state_dict().items()}
    with torch.no_grad():
        got = pred(x)
        for m in range(2):
            want = predictor_lg(16, params, "p", m)(x[:, m])
            torch.testing.assert_close(got[:, m], want, rtol=0, atol=1e-10)


def test_encoder_with_exchange_equals_the_authors_code():
    model = build()
    xs = inputs()
    got, losses = ours(model, xs)
    want, masks = reference(model, xs)
    for m in range(2):
        for a, b in zip(got[m], want[m], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    # it can fail: tokens were exchanged in every stage, and not all of them
    flat = torch.cat([torch.cat([mk.flatten() for mk in mask]) for mask in masks])
    share = (flat < 0.02).double().mean()
    assert 0.05 < share < 0.95, share
    # the sparsity loss: lambda * sum |mask| of every block and modality, per sample
    total = sum(sum(mk.abs().sum() for mk in mask) for mask in masks)
    torch.testing.assert_close(losses["token_l1"], 6e-6 * total / 2, rtol=1e-12, atol=0)


def test_no_exchange_without_low_scores():
    """threshold 0: the masked attention output only (their code's mask, no exchange)."""
    model = build(threshold=0.0)
    xs = inputs(seed=2)
    got, _ = ours(model, xs)

    def no_exchange(xs, mask, threshold):
        return xs

    want, _ = reference(model, xs, threshold=0.0, exchange=no_exchange)
    for a, b in zip(got[1], want[1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_three_modalities_take_the_mean_of_the_others():
    model = build(modalities=("rgb", "depth", "hha"))
    xs = inputs(M=3, seed=3)

    def mean_exchange(xs, mask, threshold):  # CEN's eq. 6 rule for M > 2
        out = []
        for m, x in enumerate(xs):
            others = sum(xs[k] for k in range(len(xs)) if k != m) / (len(xs) - 1)
            low = (mask[m] < threshold).unsqueeze(-1)
            out.append(torch.where(low, others, x))
        return out

    got, _ = ours(model, xs)
    want, _ = reference(model, xs, exchange=mean_exchange)
    for m in range(3):
        for a, b in zip(got[m], want[m], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_one_predictor_per_stage_shared_by_its_blocks():
    model = build()
    ops = [op for op in model.fusion_ops() if isinstance(op, TokenExchange)]
    assert len(ops) == sum(DEPTHS)  # every block of every stage
    owners = [op for op in ops if "predictor" in op._modules]
    assert [op.stage for op in owners] == [1, 2, 3, 4]
    stage2 = [op for op in ops if op.stage == 2]
    assert stage2[0]._predictor[0] is stage2[1]._predictor[0]
    assert model.training_stats()["tokens_exchanged/stage1"] >= 0
    last = build(blocks="last")
    assert len(list(last.fusion_ops())) == 4


def test_needs_transformer_blocks():
    with pytest.raises(FusescopeError, match="needs transformer blocks") as err:
        build_model({"name": "tokenfusion"}, ["rgb", "depth"], {"rgb": 3, "depth": 1}, 4)
    assert "\n" not in str(err.value)
