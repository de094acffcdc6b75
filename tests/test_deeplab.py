"""DeepLabV3+ decoder: output contract on odd sizes, the auxiliary head, and use by any model."""

import pytest
import torch

from fusescope.errors import FusescopeError
from fusescope.models import (
    build_model,
    deeplab,  # noqa: F401  (registers deeplabv3plus)
)
from fusescope.models.backbones import create_encoder, feature_channels, feature_reductions
from fusescope.models.decoders import build_decoder
from fusescope.models.deeplab import (
    DeepLabV3Plus,
    aux_logits,
    default_rates,
    supports_aux,
    with_aux,
)
from fusescope.models.segmentor import AuxLogits, Segmentor
from fusescope.tasks.segmentation.loss import total_loss

CHANNELS, REDUCTIONS = [8, 12, 16, 24], [4, 8, 16, 32]


def fake_features(h: int, w: int, batch: int = 2) -> list[torch.Tensor]:
    # ceil division, as strided convs produce on odd sizes
    levels = zip(CHANNELS, REDUCTIONS, strict=True)
    return [torch.randn(batch, c, -(-h // r), -(-w // r)) for c, r in levels]


@pytest.mark.parametrize("size", [(37, 53), (64, 64), (33, 97)])
def test_logits_at_finest_level_on_odd_sizes(size):
    dec = build_decoder(
        {"name": "deeplabv3plus", "width": 16, "low_level_width": 8},
        CHANNELS,
        REDUCTIONS,
        num_classes=5,
    )
    feats = fake_features(*size)
    out = dec(feats)
    assert out.shape == (2, 5, *feats[0].shape[-2:])
    out.sum().backward()
    assert all(p.grad is not None for p in dec.parameters())


def test_real_encoder_end_to_end_odd_input():
    enc = create_encoder("resnet18")
    dec = build_decoder("deeplabv3plus", feature_channels(enc), feature_reductions(enc), 4)
    x = torch.randn(1, 3, 45, 71)
    dec.eval()  # batch 1: BN in eval mode
    assert dec(enc(x)).shape == (1, 4, 12, 18)


def test_rates_scale_with_output_stride():
    assert default_rates(16) == [6, 12, 18]
    assert default_rates(32) == [3, 6, 9]
    assert default_rates(8) == [12, 24, 36]
    dec = DeepLabV3Plus(CHANNELS, REDUCTIONS, 3, width=8, rates=[2, 4])
    assert dec.rates == [2, 4] and len(dec.aspp.branches) == 3


def test_image_pooling_trains_with_batch_one():
    dec = DeepLabV3Plus(CHANNELS, REDUCTIONS, 3, width=8).train()
    dec(fake_features(40, 40, batch=1)).sum().backward()


def test_aux_head_only_when_asked():
    plain = build_decoder("deeplabv3plus", CHANNELS, REDUCTIONS, 3)
    assert not supports_aux(plain) and plain.aux_head is None
    with pytest.raises(RuntimeError):
        plain.aux_logits(fake_features(32, 32))
    dec = build_decoder(with_aux({"name": "deeplabv3plus", "width": 8}), CHANNELS, REDUCTIONS, 3)
    feats = fake_features(64, 96)
    assert supports_aux(dec)
    assert dec.aux_logits(feats).shape == (2, 3, 2, 3)  # the last level's resolution
    dec2 = build_decoder(
        {"name": "deeplabv3plus", "width": 8, "aux": True, "aux_level": 1}, CHANNELS, REDUCTIONS, 3
    )
    assert dec2.aux_logits(feats).shape == (2, 3, 8, 12)


def test_with_aux_leaves_other_decoders_and_explicit_choice_alone():
    assert with_aux("light") == "light"
    assert with_aux("deeplabv3plus") == {"name": "deeplabv3plus", "aux": True}
    assert with_aux({"name": "deeplabv3plus", "aux": False})["aux"] is False


def test_aux_logits_contract():
    dec = build_decoder(
        {"name": "deeplabv3plus", "width": 8, "aux": True}, CHANNELS, REDUCTIONS, 3
    ).train()
    feats = fake_features(32, 32)
    torch.manual_seed(1)  # the head's dropout draws the same mask in both passes
    aux = aux_logits(dec, feats, 0.2, (32, 32))
    torch.manual_seed(1)
    assert set(aux) == {"aux_head"} and aux["aux_head"].weight == 0.2
    expected = torch.nn.functional.interpolate(
        dec.aux_head(feats[-1]), size=(32, 32), mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(aux["aux_head"].logits, expected)
    assert aux_logits(dec, feats, 0.0, (32, 32)) == {}  # weight 0
    assert aux_logits(dec.eval(), feats, 0.2, (32, 32)) == {}  # not training


def test_engine_supervises_aux_logits_with_the_data_sets_ignore_index_and_class_weights():
    torch.manual_seed(0)
    main, aux = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    label = torch.randint(0, 3, (2, 4, 5))
    label[0, 0] = 7  # this data set's ignore index (not 255)
    weights = torch.tensor([1.0, 2.0, 0.5])
    out = Segmentor(["rgb"], main.shape[1]).output(
        main, aux_logits={"aux_head": AuxLogits(aux, 0.2)}
    )
    _, parts = total_loss(out, label, ignore_index=7, class_weights=weights)
    # by hand: sum over labelled pixels of w[y] * -log softmax(aux)[y], over the sum of w[y]
    valid = label != 7
    logp = aux.log_softmax(1).permute(0, 2, 3, 1)[valid]  # (N, K)
    y = label[valid]
    w = weights[y]
    expected = 0.2 * (w * -logp[torch.arange(len(y)), y]).sum() / w.sum()
    torch.testing.assert_close(parts["aux_head"], expected)
    # the global-batch denominator divides it too (gradient accumulation, DDP)
    _, parts = total_loss(out, label, 7, class_weights=weights, denominator=2 * w.sum())
    torch.testing.assert_close(parts["aux_head"], expected / 2)


def test_every_fusion_method_can_use_it():
    model = build_model(
        {"name": "two_stream_concat", "decoder": {"name": "deeplabv3plus", "width": 16}},
        ["rgb", "depth"],
        {"rgb": 3, "depth": 1},
        4,
    )
    out = model({"rgb": torch.randn(2, 3, 33, 47), "depth": torch.randn(2, 1, 33, 47)})
    assert out["logits"].shape == (2, 4, 33, 47)


def test_unknown_option_is_an_error():
    with pytest.raises(FusescopeError, match="model.decoder.widht"):
        build_decoder({"name": "deeplabv3plus", "widht": 8}, CHANNELS, REDUCTIONS, 3)
