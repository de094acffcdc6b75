"""The translation generators and the PatchGAN: option variants beyond the contract tester's
(tests/test_fusion_contract.py), and equivalences that can fail (private instance norms =
separate norms, streams independent without fusion, CEN's exchange known answers, AsymFusion's
level op, the ensemble, the 70x70 receptive field)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fusescope.errors import FusescopeError, OptionError
from fusescope.models.fusion.asym import AsymmetricFusion
from fusescope.models.norms import ModalityInstanceNorm
from fusescope.models.sites import ForwardScope, FusionPoint
from fusescope.models.translation import TRANSLATION_METHODS
from fusescope.models.translation.patchgan import PatchDiscriminator, receptive_field
from fusescope.models.translation.unet import unet

CHANNELS = {"shade": 1, "texture": 3, "depth": 1, "normal": 3}
TINY = {"depth": 4, "width": 8, "dropout": 0}

# (method, options, modalities): option variants and 3-stream builds beyond the contract
# tester's one default build per method (tests/test_fusion_contract.py)
CASES = [
    ("unimodal", {}, ["shade"]),
    ("early_concat", {}, ["shade", "texture"]),
    ("multistream", {}, ["shade", "texture", "depth"]),
    ("cen", {}, ["shade", "texture"]),
    ("cen", {"exchange_scope": "any", "theta": 0.9}, ["shade", "texture", "depth"]),
    ("asymfusion", {}, ["shade", "texture"]),
    ("baseline", {"fusion": "concat", "position": "all"}, ["shade", "texture", "normal"]),
    ("baseline", {"fusion": "attention", "position": "middle"}, ["shade", "texture"]),
    ("baseline", {"fusion": "align", "position": "early"}, ["depth", "normal"]),
    (
        "baseline",
        {"fusion": "average", "position": "late", "decoder_norms": "private"},
        ["depth", "normal"],
    ),
    (
        "mango",
        {"blocks": 1, "attn_dim": 8, "coupling_hidden": 16, "flow_width": 8},
        ["shade", "texture"],
    ),
    ("bmc", {"bmc_levels": [1, 2]}, ["shade", "texture"]),
]


def build(name, options, modalities, out_channels=3, **size):
    return TRANSLATION_METHODS.build(
        name,
        {**TINY, **size, **options},
        where="model",
        modalities=modalities,
        in_channels=CHANNELS,
        out_channels=out_channels,
    )


def batch_for(modalities, b=2, h=24, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(b, CHANNELS[m], h, w, generator=g) for m in modalities}


@pytest.mark.parametrize(
    ("name", "options", "modalities"),
    CASES,
    ids=[f"{c[0]}-{len(c[2])}-{i}" for i, c in enumerate(CASES)],
)
def test_forward_contract_and_gradients(name, options, modalities):
    model = build(name, options, modalities)
    out = model(batch_for(modalities))  # 24x40: not a multiple of 2^depth, padded inside
    assert out["image"].shape == (2, 3, 24, 40)
    assert out["image"].abs().max() <= 1  # tanh
    streams = model.num_streams
    assert sorted(out["per_modality"]) == (sorted(modalities) if streams > 1 else [])
    loss = out["image"].sum() + sum(v.sum() for v in out["per_modality"].values())
    loss = loss + sum(out["aux_losses"].values(), torch.zeros(()))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    # the state dict round trip reproduces the output exactly
    twin = build(name, options, modalities)
    twin.load_state_dict(model.state_dict())
    model.eval(), twin.eval()
    b = batch_for(modalities, seed=1)
    torch.testing.assert_close(twin(b)["image"], model(b)["image"], rtol=0, atol=0)


def test_modality_instance_norm_equals_separate_norms():
    M, C = 3, 5
    norm = ModalityInstanceNorm(C, M)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(M, C))
        norm.bias.copy_(torch.randn(M, C))
    x = torch.randn(4 * M, C, 6, 7)  # sample-major stack: row b*M + m
    expected = torch.empty_like(x)
    for m in range(M):
        ref = nn.InstanceNorm2d(C, affine=True)
        with torch.no_grad():
            ref.weight.copy_(norm.weight[m])
            ref.bias.copy_(norm.bias[m])
        expected[m::M] = ref(x[m::M])
    torch.testing.assert_close(norm(x), expected)


def test_streams_are_independent_without_fusion_and_exchange_couples_them():
    mods = ["shade", "texture"]
    plain = build("multistream", {}, mods)
    none = build("cen", {"mode": "none"}, mods)
    full = build("cen", {"theta": 10.0}, mods)  # every gamma (1) below theta: own parts swap
    none.load_state_dict(plain.state_dict())
    full.load_state_dict(plain.state_dict())
    a, b = batch_for(mods, seed=0), batch_for(mods, seed=1)
    changed = {"shade": a["shade"], "texture": b["texture"]}  # only texture differs
    with torch.no_grad():
        for model in (plain, none, full):
            model.eval()
        # no fusion: the shade stream does not see texture, and CEN with mode none is it
        torch.testing.assert_close(
            plain(a)["per_modality"]["shade"], plain(changed)["per_modality"]["shade"]
        )
        torch.testing.assert_close(none(a)["image"], plain(a)["image"])
        # exchange: the shade stream now reads texture's channels
        diff = full(a)["per_modality"]["shade"] - full(changed)["per_modality"]["shade"]
        assert diff.abs().max() > 1e-3
    assert full.training_stats()["exchanged/stage2"] == pytest.approx(1.0)
    assert plain.training_stats() == {}


def test_cen_l1_is_on_own_parts_of_the_instance_norm_gammas():
    model = build("cen", {"l1_weight": 0.5}, ["shade", "texture"])
    out = model(batch_for(["shade", "texture"]))
    # levels 2 and 3 (depth 4) have 16 and 32 channels, half of each modality's gammas (=1)
    expected = 0.5 * sum(2 * (c // 2) for c in (16, 32))
    assert float(out["aux_losses"]["l1_gamma"].detach()) == pytest.approx(expected)


def test_ensemble_is_the_softmax_weighted_sum_of_the_streams():
    model = build("asymfusion", {}, ["shade", "texture"])
    with torch.no_grad():
        model.ensemble.alpha.copy_(torch.tensor([0.3, -1.2]))
    out = model(batch_for(["shade", "texture"]))
    w = torch.softmax(torch.tensor([0.3, -1.2]), 0)
    expected = w[0] * out["per_modality"]["shade"] + w[1] * out["per_modality"]["texture"]
    torch.testing.assert_close(out["image"], expected)


def test_level_shuffle_shift_known_answer():
    C, T = 10, 8  # T = 4 * floor(10 / 5)
    op = AsymmetricFusion(FusionPoint("levels.1", 2, 0, True, C, "level"), level=True)
    x5 = torch.randn(1, 2, C, 5, 6)
    out = op(x5, "stage_out", ForwardScope())
    # channels T..C come from the other modality
    torch.testing.assert_close(out[:, 0, T:], x5[:, 1, T:])
    torch.testing.assert_close(out[:, 1, T:], x5[:, 0, T:])
    # channel group 0 (offset (-1, 0)): own + the other's pixel above, zero on the first row
    g = T // 4
    torch.testing.assert_close(out[:, 0, :g, 1:], x5[:, 0, :g, 1:] + x5[:, 1, :g, :-1])
    torch.testing.assert_close(out[:, 0, :g, 0], x5[:, 0, :g, 0])
    # group 3 (offset (1, 0)): the pixel below
    torch.testing.assert_close(
        out[:, 1, 3 * g : T, :-1], x5[:, 1, 3 * g : T, :-1] + x5[:, 0, 3 * g : T, 1:]
    )


def test_patchgan_sees_70x70_patches():
    assert receptive_field(3) == 70
    disc = PatchDiscriminator(4, width=4, layers=3)
    # instance norm statistics span the whole image; the conv geometry is what is measured
    disc.net = nn.Sequential(
        *[nn.Identity() if isinstance(m, nn.InstanceNorm2d) else m for m in disc.net]
    )
    x = torch.randn(1, 1, 160, 160, requires_grad=True)
    logits = disc(x, torch.randn(1, 3, 160, 160))
    r, c = logits.shape[-2] // 2, logits.shape[-1] // 2
    logits[0, 0, r, c].backward()
    rows = x.grad[0, 0].abs().sum(1).nonzero()
    cols = x.grad[0, 0].abs().sum(0).nonzero()
    assert int(rows.max() - rows.min()) + 1 == 70
    assert int(cols.max() - cols.min()) + 1 == 70


def test_unet_256_shapes():
    model = build("cen", {}, ["shade", "texture"], depth=8, width=2)
    assert model.encoder.body.size_multiple == 256
    out = model(batch_for(["shade", "texture"], b=1, h=256, w=256))
    assert out["image"].shape == (1, 3, 256, 256)
    widths = [level.conv.out_channels for level in model.encoder.body.levels]
    assert widths == [2, 4, 8, 16, 16, 16, 16, 16]


# pix2pix's generator and discriminator as its paper's appendix lists them (Ck: 4x4 conv to k
# channels, stride 2; CDk: with dropout 0.5; decoder k counts the skip-concatenated input):
# U-Net encoder C64-C128-C256-C512-C512-C512-C512-C512, decoder CD512-CD1024-CD1024-C1024-C1024-
# C512-C256-C128, then a conv to the output channels; 70x70 PatchGAN C64-C128-C256-C512 (the
# last stride 1), then a conv to 1 channel. No norm on the first encoder layer, the innermost
# encoder layer or the first discriminator layer.
UNET_256_ENCODER = [64, 128, 256, 512, 512, 512, 512, 512]
PATCHGAN_70 = [64, 128, 256, 512]


def unet_256_reference(cin: int, cout: int, conv_bias: bool, norm_params: bool) -> int:
    """Parameters of U-Net-256 from the layer list: 4x4 convs, one norm (2 x C affine
    parameters) after every conv but the first, the innermost encoder conv and the last."""
    enc = UNET_256_ENCODER
    convs = list(zip([cin, *enc[:-1]], enc, strict=True))  # encoder
    ups = [enc[-1]] + [2 * c for c in enc[-2::-1]]  # decoder inputs, skips concatenated
    convs += list(zip(ups, [*enc[-2::-1], cout], strict=True))
    normed = [c for i, (_, c) in enumerate(convs) if i not in (0, 7, len(convs) - 1)]
    weights = sum(16 * a * b for a, b in convs)
    # pix2pix drops a conv's bias where a (batch) norm follows it; the outermost up-conv keeps it
    biases = sum(b for _, b in convs) if conv_bias else cout
    return weights + biases + (2 * sum(normed) if norm_params else 0)


def patchgan_reference(cin: int, conv_bias: bool, norm_params: bool) -> int:
    convs = list(zip([cin, *PATCHGAN_70], [*PATCHGAN_70, 1], strict=True))
    normed = PATCHGAN_70[1:]
    weights = sum(16 * a * b for a, b in convs)
    biases = sum(b for _, b in convs) if conv_bias else PATCHGAN_70[0] + 1
    return weights + biases + (2 * sum(normed) if norm_params else 0)


def test_unet_256_and_the_70x70_patchgan_have_pix2pix_s_parameters():
    # pix2pix's published counts (its batch-norm default: biases dropped before a norm):
    # U-Net-256 54.41 M, 70x70 PatchGAN on 3 + 3 channels 2.77 M
    assert unet_256_reference(3, 3, conv_bias=False, norm_params=True) == 54_413_955
    assert patchgan_reference(6, conv_bias=False, norm_params=True) == 2_768_705
    # ours: every conv keeps its bias (instance norm) and every norm has affine parameters
    generator = unet(["rgb"], {"rgb": 3}, 3, streams="concat", depth=8, width=64)
    ours = sum(p.numel() for p in generator.parameters())
    assert ours == unet_256_reference(3, 3, conv_bias=True, norm_params=True) == 54_419_459
    disc = PatchDiscriminator(6, width=64, layers=3)
    ours = sum(p.numel() for p in disc.parameters())
    assert ours == patchgan_reference(6, conv_bias=True, norm_params=True) == 2_769_601
    # and the difference from pix2pix's count is exactly the biases a batch norm makes redundant
    redundant = sum(
        m.bias.numel()
        for m in generator.modules()
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d) and m.out_channels != 3
    )
    assert 54_419_459 - redundant == 54_413_955


def test_unet_256_dropout_follows_the_first_three_decoder_layers(monkeypatch):
    """Dropout 0.5 on the outputs of the first three decoder layers (pix2pix's CD512-CD1024-
    CD1024 and CEN's deconv1-3: 512 channels at 2x2, 4x4, 8x8 of a 256 frame), nowhere else,
    and only in training mode. (The PyTorch port of pix2pix moves it one level outwards, to 4x4,
    8x8, 16x16; the paper and CEN's code, which produced CEN's numbers, are followed here.)"""
    from fusescope.models.translation import unet as unet_module

    seen = []
    real_dropout = unet_module.F.dropout

    def recording(x, p, training):
        if training:
            seen.append((tuple(x.shape[1:]), p))
        return real_dropout(x, p, training)

    monkeypatch.setattr(unet_module.F, "dropout", recording)
    model = unet(["rgb"], {"rgb": 3}, 3, streams="concat", depth=8, width=8)
    assert model.decoder.dropout_levels == (8, 7, 6)
    x = {"rgb": torch.randn(1, 3, 256, 256)}
    with torch.no_grad():
        model.eval()(x)
        assert seen == []
        model.train()(x)
    assert seen == [((64, 2, 2), 0.5), ((64, 4, 4), 0.5), ((64, 8, 8), 0.5)]


@pytest.mark.parametrize(
    ("name", "options", "modalities", "message"),
    [
        ("unimodal", {}, ["shade", "texture"], "one modality"),
        ("cen", {}, ["shade"], ">= 2 modalities"),
        ("cen", {"stages": [1]}, ["shade", "texture"], "has no site norm_out"),
        ("baseline", {"position": "somewhere"}, ["shade", "texture"], "position must be"),
        ("baseline", {"fusion": "sum"}, ["shade", "texture"], "fusion must be"),
        ("mango", {}, ["shade", "texture", "depth"], "two modalities"),
        (
            "asymfusion",
            {"shuffle": False, "shift": False},
            ["shade", "texture"],
            "shuffle or shift",
        ),
        ("early_concat", {"depth": 1}, ["shade", "texture"], "depth must be >= 2"),
    ],
)
def test_bad_options_are_option_errors(name, options, modalities, message):
    with pytest.raises(OptionError, match=message):
        build(name, options, modalities)


def test_unknown_option_names_the_key():
    with pytest.raises(FusescopeError, match="model.thetta"):
        build("cen", {"thetta": 1.0}, ["shade", "texture"])


def test_shared_convs_need_tileable_channels():
    with pytest.raises(OptionError, match="equal input channels"):
        unet(["a", "b"], {"a": 2, "b": 3}, 3, depth=3, width=4, dropout=0)
