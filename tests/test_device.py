"""--device and --batch-size of eval, predict, bench and dissect; the end-of-training evaluation
runs where training ran. On CPU: CUDA is made unavailable where a test needs it to be."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_MODEL, write_folder_dataset
from fusescope.cli import main
from fusescope.engine.device import resolve_device, training_device
from fusescope.errors import FusescopeError
from fusescope.io import read_image

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "synthetic" / "early_concat.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("device")
    data = write_folder_dataset(base / "data")
    run = base / "run"
    args = ["train", str(CONFIG), "--out", str(run), f"data.root={data}", "data.synth=null"]
    assert main([*args, *TINY_MODEL, "--no-eval"]) == 0
    return run, data


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_default_is_cuda_when_available_else_cpu(no_cuda, monkeypatch):
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device(None) == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(FusescopeError, match="has 1 CUDA device"):
        resolve_device("cuda:3")


def test_bad_or_missing_devices_are_one_line_errors(no_cuda):
    for spec, words in (
        ("foo", "'foo' is not a device"),
        ("cuda", "CUDA is not available here"),
        ("cuda:1", "CUDA is not available here"),
        ("mps", "MPS is not available here"),
        ("meta", "unsupported device type"),
    ):
        with pytest.raises(FusescopeError, match=words) as err:
            resolve_device(spec)
        assert "\n" not in str(err.value)


def test_training_device_follows_fabrics_choice(no_cuda, monkeypatch):
    assert training_device("cpu") == torch.device("cpu")
    assert training_device("auto") == torch.device("cpu")
    assert training_device("cuda") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert training_device("auto") == torch.device("cuda")
    assert training_device("gpu") == torch.device("cuda")
    assert training_device("cpu") == torch.device("cpu")


def test_end_of_training_eval_runs_where_training_ran(tmp_path, monkeypatch, capsys):
    import fusescope.engine.evaluate as evaluate_module

    data = write_folder_dataset(tmp_path / "data")
    seen = []
    real = evaluate_module.evaluate_run

    def spy(run_dir, **kwargs):
        seen.append(kwargs.get("device"))
        return real(run_dir, **kwargs)

    monkeypatch.setattr(evaluate_module, "evaluate_run", spy)
    args = ["train", str(CONFIG), "--out", str(tmp_path / "run"), f"data.root={data}"]
    assert main([*args, "data.synth=null", *TINY_MODEL, "train.accelerator=cpu"]) == 0
    assert seen == ["cpu"]
    assert "mIoU" in capsys.readouterr().out


def test_eval_on_cpu_and_device_errors_exit_2(trained, capsys, no_cuda):
    run, _ = trained
    assert main(["eval", str(run), "--device", "cpu", "--batch-size", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["miou"] is not None
    for device, words in (("foo", "'foo' is not a device"), ("cuda", "CUDA is not available")):
        assert main(["eval", str(run), "--device", device]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err and "Traceback" not in err


def test_predict_batches_frames_and_matches_one_at_a_time(trained, tmp_path, capsys):
    run, data = trained
    common = ["predict", str(run), "--rgb", str(data / "rgb"), "--depth", str(data / "depth")]
    assert main([*common, "--out", str(tmp_path / "one"), "--device", "cpu"]) == 0
    assert main([*common, "--out", str(tmp_path / "five"), "--batch-size", "5"]) == 0
    masks = sorted((tmp_path / "one").glob("0*[0-9].png"))
    assert len(masks) == 12
    for mask in masks:
        np.testing.assert_array_equal(read_image(mask), read_image(tmp_path / "five" / mask.name))
    assert main([*common, "--out", str(tmp_path / "x"), "--device", "foo"]) == 2
    assert "'foo' is not a device" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_bench_and_dissect_check_the_device_first(tmp_path, capsys):
    """A bad --device fails before any training, evaluation or loading."""
    missing = str(tmp_path / "none")
    commands = [
        ["bench", "known-answer", "rgb_only", "--out", missing, "--device", "foo"],
        ["bench", "robustness", missing, "--kind", "depth_noise", "--device", "foo"],
        ["dissect", missing, missing, missing, "--out", missing, "--device", "foo"],
    ]
    for command in commands:
        assert main(command) == 2
        assert "'foo' is not a device" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_robustness_evaluates_on_the_device_with_the_batch_size(trained, tmp_path, capsys):
    run, _ = trained
    out = tmp_path / "robust"
    command = ["bench", "robustness", str(run), "--kind", "depth_noise", "--out", str(out)]
    assert main([*command, "--device", "cpu", "--batch-size", "2"]) == 0
    curve = json.loads((out / "robustness_depth_noise.json").read_text())["runs"][0]["miou"]
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "test", "--json"]) == 0
    clean = json.loads(capsys.readouterr().out)["miou"]
    assert len(curve) == 6 and curve[0] == pytest.approx(clean, abs=1e-9)


def test_predict_on_folders_writes_the_models_argmax(trained, tmp_path):
    """Known answer: each mask `fusescope predict` writes for a folder of frames is the argmax
    of the run's own model on that frame, normalised as evaluation normalises it."""
    from fusescope.data.build import eval_dataset
    from fusescope.engine.checkpoint import load_run

    run_dir, data = trained
    out = tmp_path / "masks"
    args = ["predict", str(run_dir), "--rgb", str(data / "rgb"), "--depth", str(data / "depth")]
    assert main([*args, "--out", str(out), "--device", "cpu"]) == 0
    run = load_run(run_dir)
    run.cfg.data.root = str(data)
    compared = 0
    for split in ("train", "val"):  # write_folder_dataset's splits: every frame once
        ds = eval_dataset(run.cfg.data, split, run.stats)
        for i in range(len(ds)):
            sample = ds[i]
            with torch.no_grad():
                logits = run.model({m: sample[m][None] for m in ("rgb", "depth")})["logits"]
            want = logits.argmax(1)[0].numpy().astype(np.uint8)
            np.testing.assert_array_equal(read_image(out / f"{sample['id']}.png"), want)
            compared += 1
    assert compared == 12
