"""AsymFusion: pixel shift on a known tensor, channel shuffle, shift added to the other stream,
switches, M = 2 and 3, and no parameters beyond per-modality BNs and alpha."""

import pytest
import torch

from fusescope.models import build_model
from fusescope.models.core import stack_modalities
from fusescope.models.fusion.asym import AsymmetricFusion, pixel_shift, shuffle_split
from fusescope.models.norms import ModalityBatchNorm
from fusescope.models.sites import ForwardScope, FusionPoint

MODS = {2: ["rgb", "depth"], 3: ["rgb", "depth", "hha"]}
CHANS = {"rgb": 3, "depth": 1, "hha": 3}


def test_pixel_shift_on_a_known_tensor():
    """The authors' positions (-1, 0), (0, -1), (0, 1), (1, 0): out[h, w] = x[h + dh, w + dw]."""
    x = torch.arange(1.0, 13.0).view(1, 1, 3, 4).expand(1, 4, 3, 4)  # 4 groups of 1 channel
    y = pixel_shift(x)
    grid = x[0, 0]
    zero_row, zero_col = torch.zeros(1, 4), torch.zeros(3, 1)
    assert torch.equal(y[0, 0], torch.cat([zero_row, grid[:-1]]))  # x[h - 1, w]
    assert torch.equal(y[0, 1], torch.cat([zero_col, grid[:, :-1]], 1))  # x[h, w - 1]
    assert torch.equal(y[0, 2], torch.cat([grid[:, 1:], zero_col], 1))  # x[h, w + 1]
    assert torch.equal(y[0, 3], torch.cat([grid[1:], zero_row]))  # x[h + 1, w]


def make_op(C, **kw):
    return AsymmetricFusion(
        FusionPoint("x", 1, 1, True, C, "cnn", norm=ModalityBatchNorm(C, 2), in_channels=C), **kw
    )


SCOPES: dict = {}  # one forward scope per op: its sites' calls in a test are one forward


def run(op, xm, site):
    """Ops see (B, M, C, H, W); the tests read modality-first (M, B, C, H, W)."""
    return op(xm.transpose(0, 1), site, SCOPES.setdefault(op, ForwardScope())).transpose(0, 1)


@pytest.mark.parametrize("M", [2, 3])
def test_shuffle_and_shift_go_to_the_other_stream(M):
    C = 10
    T = shuffle_split(C)
    assert T == 8
    op = make_op(C)
    xm = torch.randn(M, 2, C, 5, 6)
    shuffled = run(op, xm, "conv_in")
    others = [torch.cat([xm[:m], xm[m + 1 :]]).mean(0) for m in range(M)]
    for m in range(M):
        torch.testing.assert_close(shuffled[m, :, :T], xm[m, :, :T])
        torch.testing.assert_close(shuffled[m, :, T:], others[m][:, T:])
    out = torch.randn(M, 2, C, 5, 6)
    out_others = [torch.cat([out[:m], out[m + 1 :]]).mean(0) for m in range(M)]
    fused = run(op, out, "act_out")
    for m in range(M):  # own first T channels + the others' shift; then the second shuffle
        torch.testing.assert_close(fused[m, :, :T], out[m, :, :T] + pixel_shift(others[m][:, :T]))
        torch.testing.assert_close(fused[m, :, T:], out_others[m][:, T:])
    assert not SCOPES[op].carry  # the shift was handed on and consumed within the forward


def test_switches():
    xm = torch.randn(2, 1, 10, 4, 4)
    op = make_op(10, shuffle=False)
    assert torch.equal(run(op, xm, "conv_in"), xm)
    assert run(op, torch.zeros_like(xm), "act_out").abs().sum() > 0
    op = make_op(10, shift=False)
    assert not torch.equal(run(op, xm, "conv_in"), xm)
    assert torch.equal(run(op, torch.zeros_like(xm), "act_out"), torch.zeros_like(xm))
    assert not torch.equal(run(op, xm, "act_out"), xm)  # the second shuffle


# --- the authors' block, written from their published behaviour (yikaiw/AsymFusion,
# models/model.py: Bottleneck with use_shuffle, ShiftShuffle), float64


def authors_shift(x: torch.Tensor, offsets) -> torch.Tensor:
    """Pixel by pixel: group i of (B, 4g, H, W) takes out[h, w] = x[h + dh, w + dw], else 0."""
    B, T, H, W = x.shape
    g = T // 4
    out = torch.zeros_like(x)
    for i, (dh, dw) in enumerate(offsets):
        for h in range(H):
            for w in range(W):
                if 0 <= h + dh < H and 0 <= w + dw < W:
                    out[:, i * g : (i + 1) * g, h, w] = x[:, i * g : (i + 1) * g, h + dh, w + dw]
    return out


def authors_bottleneck(
    block, xs, training, offsets=((-1, 0), (0, -1), (0, 1), (1, 0)), second_shuffle=True
):
    """Two modalities as a list through a timm Bottleneck whose BNs are ModalityBatchNorms."""
    F = torch.nn.functional

    def bn(mbn, x, m):
        return F.batch_norm(
            x,
            mbn.running_mean[m].clone(),
            mbn.running_var[m].clone(),
            mbn.weight[m],
            mbn.bias[m],
            training,
            0.0,
            mbn.eps,
        )

    def conv(layer, x):  # the weights only: calling the module would run the fusion hooks
        return F.conv2d(x, layer.weight, None, layer.stride, layer.padding)

    out = [F.relu(bn(block.bn1, conv(block.conv1, x), m)) for m, x in enumerate(xs)]
    C = out[0].shape[1]
    group = C // 5
    T = 4 * group
    zeros = torch.zeros_like(out[0][:, T:])
    shift = [torch.cat([authors_shift(o[:, :T], offsets), zeros], 1) for o in out]
    shuffled = [
        torch.cat([out[0][:, :T], out[1][:, T:]], 1),
        torch.cat([out[1][:, :T], out[0][:, T:]], 1),
    ]
    out = [F.relu(bn(block.bn2, conv(block.conv2, s), m)) for m, s in enumerate(shuffled)]
    out = [out[0] + shift[1], out[1] + shift[0]]
    if second_shuffle:
        out = [
            torch.cat([out[0][:, :T], out[1][:, T:]], 1),
            torch.cat([out[1][:, :T], out[0][:, T:]], 1),
        ]
    out = [bn(block.bn3, conv(block.conv3, o), m) for m, o in enumerate(out)]
    return [F.relu(o + x) for o, x in zip(out, xs, strict=True)]


def test_bottleneck_equals_the_authors_block():
    """A Bottleneck with AsymFusion equals the authors' block to float64 precision, in training
    and in eval mode; the mirrored shift or a missing second shuffle would be far off."""
    model = build_model({"name": "asymfusion", "backbone": "resnet26"}, MODS[2], CHANS, 5)
    block = model.encoder.body.layer1[-1]  # the last block of stage 1: where AsymFusion acts
    block.double()
    with torch.no_grad():  # every modality its own BN; timm zero-inits bn3, which would hide all
        for mod in block.modules():
            if isinstance(mod, ModalityBatchNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.3, 0.3)
                mod.running_mean.uniform_(-0.3, 0.3)
                mod.running_var.uniform_(0.5, 1.5)
    C_in = block.conv1.in_channels
    assert block.conv2.in_channels % 5  # T = 4 * floor(C/5) < C: the shuffled part is real
    xs = [torch.randn(2, C_in, 7, 9, dtype=torch.float64) for _ in range(2)]
    for training in (False, True):
        block.train(training)
        with torch.no_grad():
            ref = authors_bottleneck(block, xs, training)
            mirrored = authors_bottleneck(block, xs, training, ((1, 0), (0, 1), (0, -1), (-1, 0)))
            one_shuffle = authors_bottleneck(block, xs, training, second_shuffle=False)
            with model.encoder.forward_scope():  # the block alone, as one forward
                ours = block(stack_modalities(xs)).unflatten(0, (-1, 2)).transpose(0, 1)
        for m in range(2):
            torch.testing.assert_close(ours[m], ref[m], atol=1e-12, rtol=1e-12)
            assert (ours[m] - mirrored[m]).abs().max() > 1e-2
            assert (ours[m] - one_shuffle[m]).abs().max() > 1e-2


@pytest.mark.parametrize(
    "M,backbone,opts",
    [
        (2, "resnet18", {}),
        (3, "resnet18", {}),
        (2, "resnet50", {"shuffle": False}),
        (2, "efficientnet_lite0", {"shift": False}),
    ],
)
def test_forward_backward_odd_size(M, backbone, opts):
    model = build_model({"name": "asymfusion", "backbone": backbone, **opts}, MODS[M], CHANS, 5)
    assert len(model.encoder.fusion) == 4  # the last block of each stage
    batch = {m: torch.randn(2, CHANS[m], 50, 70) for m in MODS[M]}
    out = model(batch)
    assert out["logits"].shape == (2, 5, 50, 70) and set(out["per_modality"]) == set(MODS[M])
    (out["logits"].mean() + sum(p.mean() for p in out["per_modality"].values())).backward()


def test_fusion_changes_the_output_and_adds_no_parameters():
    uni = build_model({"name": "unimodal"}, ["rgb"], CHANS, 14)
    asym = build_model({"name": "asymfusion"}, MODS[2], CHANS, 14).eval()
    plain = build_model({"name": "multistream"}, MODS[2], CHANS, 14).eval()
    with torch.no_grad():  # timm zero-inits each block's last BN, which would hide the effect
        for mod in asym.modules():
            if isinstance(mod, ModalityBatchNorm):
                mod.weight.uniform_(0.5, 1.5)
    plain.load_state_dict(asym.state_dict())
    n_uni = sum(p.numel() for p in uni.parameters())
    n_asym = sum(p.numel() for p in asym.parameters())
    assert n_asym == sum(p.numel() for p in plain.parameters()) and n_asym < 1.01 * n_uni
    batch = {m: torch.randn(1, CHANS[m], 40, 40) for m in MODS[2]}
    assert not torch.allclose(asym(batch)["logits"], plain(batch)["logits"])


def test_rejects_no_operation():
    with pytest.raises(Exception, match="shuffle or shift"):
        build_model({"name": "asymfusion", "shuffle": False, "shift": False}, MODS[2], CHANS, 5)
