"""The RefineNet decoder of the CEN / AsymFusion code, dilated backbones, and cost counting."""

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_backbone
from fusescope.errors import FusescopeError
from fusescope.models import FUSION_METHODS, build_model
from fusescope.models.backbones import backbone_spec, create_encoder, feature_reductions
from fusescope.models.cost import count_flops, count_params, meta_cost
from fusescope.models.refinenet import RefineNetDecoder


def authors_forward(dec: RefineNetDecoder, feats: list[torch.Tensor]) -> torch.Tensor:
    """The authors' forward pass, statement by statement (eval mode: dropout is identity),
    with their in-place ReLU: the RCU's shortcut holds the same tensor, so it is rectified too."""

    def rcu(unit, x):
        for seq in unit.convs:
            x = x.clone()
            residual = x
            x = F.relu(x, inplace=True)  # also rectifies `residual`
            x = seq[0](x)
            x = F.relu(x)
            x = seq[2](x)
            x = x + residual
        return x

    def crp(block, x):
        top = x
        for conv in block.convs:
            top = conv(F.max_pool2d(top, 5, stride=1, padding=2))
            x = x + top
        return x

    levels = dec.levels
    x = None
    for i in reversed(range(len(feats))):
        lvl = levels[i]
        y = rcu(lvl.adapt, lvl.dimred(feats[i]))
        if x is None:
            y = F.relu(y)
        else:
            y = F.relu(lvl.joint(y) + x)
        y = rcu(lvl.out, crp(lvl.crp, y))
        if i > 0:
            y = lvl.to_finer(y)
            x = F.interpolate(y, size=feats[i - 1].shape[-2:], mode="bilinear", align_corners=True)
        else:
            x = y
    return dec.classifier(x)


def test_refinenet_matches_the_authors_forward():
    channels = [8, 16, 24, 32]
    dec = RefineNetDecoder(channels, num_classes=5, width=6, top_width=10).eval()
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, c, 16 >> i, 20 >> i, generator=g) for i, c in enumerate(channels)]
    with torch.no_grad():
        ours = dec(feats)
        ref = authors_forward(dec, feats)
    assert ours.shape == (2, 5, 16, 20)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_refinenet_dropout_on_the_two_coarsest_levels_and_before_the_classifier():
    """As the authors' code: dropout on features of levels 4 and 3 and on the classifier's input
    (told apart by their channels), nowhere else."""
    dec = RefineNetDecoder([3, 5, 7, 9], num_classes=3, width=4, top_width=6).train()
    calls = []
    dec.dropout.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[1]))
    dec([torch.randn(1, c, 8 >> i, 8 >> i) for i, c in enumerate([3, 5, 7, 9])])
    assert calls == [9, 7, 4]  # level 4, level 3, the classifier's input (width 4)


def test_refinenet_resnet101_parameters_are_cen_table_2():
    """CEN Table 2: the uni-modal RefineNet (ResNet-101) has 118.1 M parameters and CEN 118.2 M
    (the authors' decoder: 75.6 M; ResNet-101 features: 42.5 M)."""
    with torch.device("meta"):
        uni = build_model(
            {"name": "unimodal", "backbone": "resnet101", "decoder": "refinenet"},
            ["rgb"],
            {"rgb": 3},
            40,
        )
        cen = build_model(
            {"name": "cen", "backbone": "resnet101", "decoder": "refinenet"},
            ["rgb", "depth"],
            {"rgb": 3, "depth": 1},
            40,
        )
    assert round(count_params(uni) / 1e6, 1) == 118.1
    assert round(count_params(cen) / 1e6, 1) == 118.2
    assert round(count_params(uni.decoder) / 1e6, 1) == 75.6


@pytest.mark.parametrize("method", ["cen", "asymfusion"])
def test_refinenet_shared_by_the_modalities(method):
    """Multi-stream models run one decoder on every stream (the authors' ModuleParallel): the
    decoder holds one copy of its weights, treats each stacked sample on its own, and every
    per-modality output is the decoder's output for one of the streams."""
    torch.manual_seed(0)
    model = build_model(
        {"name": method, "backbone": "resnet18", "decoder": "refinenet"},
        ["rgb", "depth"],
        {"rgb": 3, "depth": 1},
        4,
    ).eval()
    assert count_params(model.decoder) == count_params(RefineNetDecoder([64, 128, 256, 512], 4))
    seen = []
    model.decoder.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    batch = {"rgb": torch.randn(2, 3, 32, 40), "depth": torch.randn(2, 1, 32, 40)}
    with torch.no_grad():
        out = model(batch)
        feats = seen[0]  # the stacked streams, in whatever order the model stacks them
        stacked = model.decoder(feats)
        alone = torch.cat([model.decoder([f[j : j + 1] for f in feats]) for j in range(4)])
    torch.testing.assert_close(alone, stacked)
    streams = F.interpolate(stacked, size=(32, 40), mode="bilinear", align_corners=False)
    for m in ("rgb", "depth"):
        for b in range(2):
            assert any(torch.allclose(out["per_modality"][m][b], s, atol=1e-5) for s in streams)


def test_dilated_backbone():
    plain = create_encoder("resnet18")
    dilated = create_encoder({"name": "resnet18", "output_stride": 16})
    assert feature_reductions(plain) == [4, 8, 16, 32]
    assert feature_reductions(dilated) == [4, 8, 16, 16]
    assert count_params(plain) == count_params(dilated)  # same weights, so pretrained fits
    feats = dilated(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 4]
    assert feature_reductions(create_encoder({"name": "resnet18", "output_stride": 8})) == [
        4,
        8,
        8,
        8,
    ]
    # the SA-Gate configuration: DeepLabV3+ at output stride 16 gets the paper's rates
    model = build_model(
        {
            "name": "sagate",
            "backbone": {"name": "resnet18", "output_stride": 16},
            "decoder": "deeplabv3plus",
        },
        ["rgb", "depth"],
        {"rgb": 3, "depth": 1},
        4,
    )
    assert model.decoder.rates == [6, 12, 18]
    assert backbone_spec("resnet50") == ("resnet50", 32)


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"name": "resnet18", "output_stride": 12}, "output_stride must be 8, 16 or 32"),
        ({"name": "resnet18", "stride": 16}, "unexpected keyword argument 'stride'"),
        ({"output_stride": 16}, "model.backbone must be"),
    ],
)
def test_bad_backbone_spec(spec, match):
    with pytest.raises(FusescopeError, match=match):
        create_encoder(spec)


def test_flops_are_twice_the_multiply_adds():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, batch):
            return self.conv(batch["rgb"])

    macs = 8 * 10 * 12 * 3 * 3 * 3  # outputs x (input channels x kernel) multiply-adds
    assert count_flops(Wrap(), {"rgb": torch.zeros(1, 3, 10, 12)}) == 2 * macs


def test_meta_cost_equals_real_cost():
    cfg = {"name": "cen", "backbone": "resnet18", "decoder": "refinenet"}
    chans = {"rgb": 3, "depth": 1}
    params, flops = meta_cost(cfg, ["rgb", "depth"], chans, 5, (32, 40))
    model = build_model(cfg, ["rgb", "depth"], chans, 5)
    real = count_flops(
        model, {"rgb": torch.zeros(1, 3, 32, 40), "depth": torch.zeros(1, 1, 32, 40)}
    )
    assert params == count_params(model) and flops == real


@pytest.mark.parametrize("method, paper_gflops", [("late_average", 269.6), ("sagate", 204.9)])
def test_flops_of_sagate_table_1(method, paper_gflops):
    """SA-Gate Table 1 (ResNet-50 with the authors' deep stem, output stride 16, DeepLabV3+,
    RGB + HHA at 3 x 480 x 480): our count is within 1% of the paper's, so its "FLOPs" are
    2 x multiply-adds, as FlopCounterMode counts them."""
    cfg = {
        "name": method,
        "backbone": {"name": "resnet50s", "output_stride": 16},
        "decoder": "deeplabv3plus",
    }
    _, flops = meta_cost(cfg, ["rgb", "hha"], {"rgb": 3, "hha": 3}, 40, (480, 480))
    assert abs(flops / 1e9 - paper_gflops) / paper_gflops < 0.01


@pytest.mark.parametrize("method", sorted(FUSION_METHODS.names()))
def test_every_method_takes_refinenet(method):
    modalities = ["rgb"] if method == "unimodal" else ["rgb", "depth"]
    decoder = {"name": "refinenet", "width": 8, "top_width": 16}
    model = build_model(
        {"name": method, "backbone": tiny_backbone(method), "decoder": decoder},
        modalities,
        {"rgb": 3, "depth": 1},
        4,
    )
    batch = {"rgb": torch.randn(2, 3, 32, 32), "depth": torch.randn(2, 1, 32, 32)}
    out = model({m: batch[m] for m in modalities})
    assert out["logits"].shape == (2, 4, 32, 32)
    assert all(v.shape == (2, 4, 32, 32) for v in out["per_modality"].values())
    assert torch.isfinite(out["logits"]).all()
