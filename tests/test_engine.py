"""Training engine: resumption, multi-process equivalence, run folders and the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_MODEL
from fusescope.cli import main
from fusescope.config import load_config
from fusescope.data.batching import GlobalBatchSampler
from fusescope.data.build import eval_dataset
from fusescope.engine.checkpoint import load_run
from fusescope.engine.train import lr_factor, train
from fusescope.io import read_image
from fusescope.tasks.segmentation.evaluation import predict_probs

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "synthetic" / "early_concat.yaml"


def tiny_cfg(data, *extra):
    return load_config(CONFIG, [f"data.root={data}", "data.synth=null", *TINY_MODEL, *extra])


def weights(run):
    return load_file(str(Path(run) / "model.safetensors"))


class Interrupt(Exception):
    pass


def test_killed_and_resumed_run_equals_uninterrupted(tiny_data, tmp_path):
    cfg = tiny_cfg(tiny_data, "train.max_steps=7", "train.ckpt_every=3")
    train(cfg, tmp_path / "whole")

    def kill_at_5(step):
        if step == 5:  # after the checkpoint of step 3, before the one of step 6
            raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "broken", on_step=kill_at_5)
    assert not (tmp_path / "broken" / "model.safetensors").exists()
    train(cfg, tmp_path / "broken")  # resumes from step 3
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "broken")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run differs"

    def logged(run):
        return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]

    # step 4 was logged before the kill and again after resuming from 3: logged once
    assert [r["step"] for r in logged(tmp_path / "broken")] == [2, 4, 6, 7]
    assert [r["loss"] for r in logged(tmp_path / "broken")] == [
        r["loss"] for r in logged(tmp_path / "whole")
    ]


def test_checkpoint_with_other_optimiser_groups(tiny_data, tmp_path):
    """A finished run evaluates without its optimiser state; resuming an unfinished one whose
    optimiser groups do not fit (another version, other train.lr_scales) is a clear error."""
    from fusescope.engine.checkpoint import load_checkpoint, save_checkpoint
    from fusescope.errors import FusescopeError

    run = tmp_path / "run"
    train(tiny_cfg(tiny_data), run)
    ckpt = run / "checkpoints" / "last.ckpt"
    state = load_checkpoint(ckpt)
    state["optimizer"]["param_groups"] = state["optimizer"]["param_groups"][:1]
    save_checkpoint(ckpt, state)
    before = (run / "run.json").read_bytes()
    train(tiny_cfg(tiny_data), run)  # finished: nothing to resume
    assert (run / "run.json").read_bytes() == before  # the record of what trained it stays
    with pytest.raises(FusescopeError, match="optimiser state does not fit"):
        train(tiny_cfg(tiny_data, "train.max_steps=8"), run)


def test_run_folder_records_what_produced_it(tiny_data, tmp_path):
    train(tiny_cfg(tiny_data), tmp_path / "run")
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["fusescope_version"] and len(info["data_fingerprint"]) == 16
    assert set(info["normalization"]) == {"rgb", "depth"}
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_folder_of_another_config_is_refused(tiny_data, tmp_path, capsys):
    train(tiny_cfg(tiny_data), tmp_path / "run")
    code = main(
        [
            "train",
            str(ROOT / "configs/synthetic/late_average.yaml"),
            "--out",
            str(tmp_path / "run"),
            f"data.root={tiny_data}",
            "data.synth=null",
            *TINY_MODEL,
        ]
    )
    assert code == 2 and "another data/model config" in capsys.readouterr().err


def test_checkpoint_of_another_model_is_a_clear_error(tiny_data, tmp_path, capsys):
    train(tiny_cfg(tiny_data), tmp_path / "run")
    other = tmp_path / "other"
    train(tiny_cfg(tiny_data, "model.backbone=resnet34", "train.max_steps=1"), other)
    os.replace(other / "model.safetensors", tmp_path / "run" / "model.safetensors")
    assert main(["eval", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err  # the SHA-256 run.json keeps of its own weights differs
    assert "model.safetensors: its SHA-256 differs" in err and "Traceback" not in err
    # a run from before digests were recorded: the shapes still tell
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    del info["weights_sha256"]
    (tmp_path / "run" / "run.json").write_text(json.dumps(info))
    assert main(["eval", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors: weights do not fit this model" in err and "Traceback" not in err


def test_sampler_shards_one_global_batch():
    full = list(zip(range(3), GlobalBatchSampler(10, 4, 0, 1, seed=1), strict=False))
    r0 = list(zip(range(3), GlobalBatchSampler(10, 4, 0, 2, seed=1), strict=False))
    r1 = list(zip(range(3), GlobalBatchSampler(10, 4, 1, 2, seed=1), strict=False))
    for (_, f), (_, a), (_, b) in zip(full, r0, r1, strict=True):
        assert f == a + b
    resumed = next(iter(GlobalBatchSampler(10, 4, 0, 1, seed=1, start=8)))
    assert resumed == full[2][1]  # position 8 = epoch 1, first batch


def test_lr_scales_by_module_prefix_and_no_decay_on_norms():
    from omegaconf import OmegaConf

    from fusescope.engine.train import make_optimizer
    from fusescope.errors import FusescopeError
    from fusescope.models import build_model
    from fusescope.models.norms import ModalityBatchNorm

    model = build_model(
        {"name": "multistream", "backbone": "resnet18"}, ["rgb", "depth"], {"rgb": 3, "depth": 1}, 5
    )
    cfg = OmegaConf.create(
        {
            "optimizer": "sgd",
            "lr": 0.1,
            "weight_decay": 1e-4,
            "momentum": 0.9,
            "lr_scales": {"decoder": 6.0, "decoder.classifier": 2.0},
        }
    )
    groups = make_optimizer(model, cfg).param_groups
    setting = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        lr, wd = setting[id(p)]
        want = (
            0.2
            if name.startswith("decoder.classifier.")
            else 0.6
            if name.startswith("decoder.")
            else 0.1
        )
        assert lr == pytest.approx(want), name
        owner = model.get_submodule(name.rsplit(".", 1)[0])
        is_norm = isinstance(owner, ModalityBatchNorm) or p.ndim == 1
        assert (wd == 0.0) == is_norm, name  # per-modality BN gammas (M, C) are not decayed
    cfg.lr_scales = {"decoderr": 2.0}
    with pytest.raises(FusescopeError, match="decoderr.*top-level modules are decoder, "):
        make_optimizer(model, cfg)


def test_bad_lr_scales_leave_no_run_folder(tiny_data, tmp_path):
    from fusescope.errors import FusescopeError

    with pytest.raises(FusescopeError, match="no parameter under 'decoderr'"):
        train(tiny_cfg(tiny_data, "train.lr_scales={decoderr: 2.0}"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_lr_schedule():
    assert lr_factor(0, 4, 100, 0.9) == 0.25
    assert lr_factor(4, 4, 100, 0.9) == 1.0
    assert lr_factor(100, 4, 100, 0.9) == 0.0


@pytest.mark.parametrize("method", ["early_concat", "cen"])
def test_two_processes_match_one(tiny_data, tmp_path, method):
    """DDP on 2 CPU processes (gloo) with the global batch split in two: same weights as one
    process, up to float summation order (BatchNorm statistics are synchronised). Dropout is
    off: its masks are drawn per process, so they cannot match one process's draw. SGD, not
    Adam: Adam's first steps are ~sign(gradient) * lr, which turns float summation-order noise
    in near-zero gradients into full-size steps. CEN covers the per-modality BNs."""
    config = CONFIG.with_name(f"{method}.yaml")
    common = [
        sys.executable,
        "-m",
        "fusescope",
        "train",
        str(config),
        f"data.root={tiny_data}",
        "data.synth=null",
        *TINY_MODEL,
        "train.accelerator=cpu",
        "model.decoder={name: light, dropout: 0.0}",
        "train.optimizer=sgd",
        "train.lr=0.05",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for devices, name in ((1, "one"), (2, "two")):
        subprocess.run(
            [*common, "--out", str(tmp_path / name), f"train.devices={devices}"],
            check=True,
            env=env,
            capture_output=True,
            timeout=300,
        )
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    stem = "encoder.bn1" if method == "early_concat" else "encoder.body.bn1"
    assert float(a[f"{stem}.running_mean"].abs().max()) > 1e-3  # training did happen
    diffs = {k: float((a[k].float() - b[k].float()).abs().max()) for k in a}
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] < 1e-4, (worst, diffs[worst])


def test_cli_end_to_end(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                str(CONFIG),
                "--out",
                str(run),
                f"data.root={tiny_data}",
                "data.synth=null",
                *TINY_MODEL,
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["eval", str(run), "--json", "--tta", "flip"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"miou", "pixel_acc", "mean_acc", "per_class_iou"} <= set(result)
    assert len(result["per_class_iou"]) == 3
    assert main(["eval", str(run), "--json", "--window", "24", "24"]) == 0
    capsys.readouterr()
    out = tmp_path / "pred" / "mask.png"
    assert (
        main(
            [
                "predict",
                str(run),
                "--rgb",
                str(tiny_data / "rgb/0000.png"),
                "--depth",
                str(tiny_data / "depth/0000.png"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (tmp_path / "pred" / "mask_overlay.png").is_file()
    # Known answer: the mask is the argmax of evaluation's predict_probs on that frame, with the
    # run's own model and normalisation.
    loaded = load_run(run)
    loaded.cfg.data.root = str(tiny_data)
    frames = eval_dataset(loaded.cfg.data, "train", loaded.stats)  # 0000 is a train frame
    sample = frames[frames.ids.index("0000")]
    kinds = {m: frames.meta.modalities[m].kind for m in frames.modalities}
    with torch.no_grad():
        probs = predict_probs(
            loaded.model, {m: sample[m][None] for m in kinds}, kinds, frames.meta.num_classes
        )
    assert torch.equal(torch.from_numpy(read_image(out)).long(), probs.argmax(1)[0])
    # a depth map of the wrong size is named, nothing is written
    import numpy as np

    from fusescope.io import write_png

    write_png(tmp_path / "small.png", np.full((10, 10), 1000, np.uint16))
    bad = tmp_path / "pred" / "bad.png"
    assert (
        main(
            [
                "predict",
                str(run),
                "--rgb",
                str(tiny_data / "rgb/0000.png"),
                "--depth",
                str(tmp_path / "small.png"),
                "--out",
                str(bad),
            ]
        )
        == 2
    )
    assert "small.png 10x10" in capsys.readouterr().err and not bad.exists()


def test_cli_errors_have_no_traceback(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert main(["train", str(CONFIG), "--out", str(tmp_path / "r"), "train.nope=1"]) == 2
    err = capsys.readouterr().err
    assert "run folder not found" in err and "unknown config key train.nope" in err
    assert "Traceback" not in err


def test_grad_accum_logs_the_steps_loss_not_its_last_micro_batchs(tiny_data, tmp_path):
    """batch 4 x grad_accum 2 sees the same 8 samples per step as batch 8: the same loss is
    logged (BN statistics frozen and no dropout, so a micro-batch's outputs are the whole
    batch's); the last micro-batch's loss alone would be about half of it."""

    def logged(*extra):
        run = train(
            tiny_cfg(
                tiny_data,
                "train.max_steps=2",
                "train.log_every=1",
                "train.freeze_bn_stats=true",
                "train.lr=1e-4",
                "model.decoder={name: light, dropout: 0}",
                *extra,
            ),
            tmp_path / "_".join(extra),
        )
        return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]

    whole = logged("train.batch_size=8")
    split = logged("train.batch_size=4", "train.grad_accum=2")
    assert [r["step"] for r in split] == [1, 2]
    for a, b in zip(whole, split, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=0)
        assert b["ce"] == pytest.approx(a["ce"], rel=1e-5, abs=0)
    assert split[0]["loss"] > 0.1
