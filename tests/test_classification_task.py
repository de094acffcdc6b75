"""The classification task on the engine: the loss is a mean over the global batch however it
is split, the same guarantees as segmentation (exact resume, two processes = one, bf16), the
evaluation JSON, and one-line errors for bad data through the CLI."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fusescope.cli import main
from fusescope.config import load_config
from fusescope.data.posters import generate_poster_data
from fusescope.engine.train import train
from fusescope.tasks import task_of
from fusescope.tasks.classification import scores

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "classification"
TINY = [
    "data.synth=null",
    "train.batch_size=4",
    "train.max_steps=6",
    "train.log_every=2",
    "train.ckpt_every=3",
    "train.progress=false",
    "train.warmup_steps=2",
    "eval.batch_size=8",
    "model.text_dim=16",
    "model.text_layers=1",
    "model.text_heads=2",
]


@pytest.fixture(scope="module")
def posters(tmp_path_factory):
    """24 known-answer posters (16 train / 4 val / 4 test), small."""
    root = tmp_path_factory.mktemp("posters") / "data"
    generate_poster_data(root, num=24, seed=0, size=(48, 32), progress=False)
    return root


def cfg_of(name, data, *extra):
    return load_config(CONFIGS / f"{name}.yaml", [f"data.root={data}", *TINY, *extra])


def weights(run):
    return load_file(str(Path(run) / "model.safetensors"))


def test_loss_is_the_mean_over_the_global_batch_however_split():
    task = task_of("classification")
    cfg = load_config(None, ["task=classification"])
    g = torch.Generator().manual_seed(0)
    out = {
        "logits": torch.randn(6, 4, generator=g),
        "per_modality": {"a": torch.randn(6, 4, generator=g)},
        "aux_losses": {"flow_nll": torch.tensor(0.5)},
    }
    batch = {"target": (torch.rand(6, 4, generator=g) > 0.5).float()}
    den = task.loss_denominator(batch, None, cfg.train)
    assert float(den) == 24
    whole, parts = task.loss(out, batch, None, cfg.train, den, aux_scale=1.0)
    expected = (
        torch.nn.functional.binary_cross_entropy_with_logits(out["logits"], batch["target"])
        + torch.nn.functional.binary_cross_entropy_with_logits(
            out["per_modality"]["a"], batch["target"]
        )
        + 0.5
    )
    torch.testing.assert_close(whole, expected)
    assert set(parts) == {"bce", "bce_a", "flow_nll"}
    halves = [
        task.loss(
            {
                "logits": out["logits"][s],
                "per_modality": {"a": out["per_modality"]["a"][s]},
                "aux_losses": out["aux_losses"],
            },
            {"target": batch["target"][s]},
            None,
            cfg.train,
            den,
            aux_scale=0.5,
        )[0]
        for s in (slice(0, 2), slice(2, 6))
    ]
    torch.testing.assert_close(halves[0] + halves[1], whole)
    # single-label: cross-entropy over the samples
    single = {"target": torch.tensor([0, 3, 1, 1, 2, 0])}
    den = task.loss_denominator(single, None, cfg.train)
    loss, parts = task.loss({"logits": out["logits"]}, single, None, cfg.train, den)
    torch.testing.assert_close(
        loss, torch.nn.functional.cross_entropy(out["logits"], single["target"])
    )
    result = scores(out["logits"], single["target"], None, None)
    assert result["micro_f1"] == result["accuracy"]


def test_killed_and_resumed_run_equals_uninterrupted(posters, tmp_path):
    # attention: dropout in the fusion layers, so the resumed RNG state matters too
    cfg = cfg_of(
        "posters_attention",
        posters,
        "train.max_steps=5",
        "model.width=16",
        "model.heads=2",
        "model.layers=1",
    )
    train(cfg, tmp_path / "whole")

    class Interrupt(Exception):
        pass

    def kill_at_4(step):
        if step == 4:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "broken", on_step=kill_at_4)
    train(cfg, tmp_path / "broken")  # resumes from step 3
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "broken")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run differs"


def test_two_processes_match_one(posters, tmp_path):
    """DDP on 2 CPU processes (gloo), the global batch split in two: the weights of one
    process up to float summation order (BN statistics synchronised; dropout off; SGD)."""
    common = [
        sys.executable,
        "-m",
        "fusescope",
        "train",
        str(CONFIGS / "posters_late.yaml"),
        f"data.root={posters}",
        *TINY,
        "train.accelerator=cpu",
        "model.text_dropout=0.0",
        "train.optimizer=sgd",
        "train.lr=0.05",
        "train.max_steps=4",
    ]
    # a free port of its own: other test processes may run DDP at the same time
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(port)}
    for devices, name in ((1, "one"), (2, "two")):
        done = subprocess.run(
            [*common, "--out", str(tmp_path / name), f"train.devices={devices}", "--no-eval"],
            check=False,
            env=env,
            capture_output=True,
            timeout=400,
            text=True,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    key = "branches.poster.encoder.bn1.running_mean"
    assert float(a[key].abs().max()) > 1e-3  # training did happen
    diffs = {k: float((a[k].float() - b[k].float()).abs().max()) for k in a}
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] < 1e-4, (worst, diffs[worst])


def test_bf16_training_and_eval_json(posters, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                str(CONFIGS / "posters_mango.yaml"),
                "--out",
                str(run),
                f"data.root={posters}",
                *TINY,
                "train.max_steps=2",
                "model.blocks=1",
                "model.width=16",
                "model.slots=2",
                "train.precision=bf16-mixed",
                "--quiet",
            ]
        )
        == 0
    )
    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log if "loss" in r)
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "classification" and result["split"] == "test"
    for key in ("micro_f1", "macro_f1", "weighted_f1", "samples_f1"):
        assert 0.0 <= result[key] <= 1.0
    assert set(result["cue_group_f1"]) == {"appearance", "text", "both"}
    # the headline at the published 0.5; the validation-tuned F1s beside it
    assert result["threshold"] == 0.5
    tuned = result["tuned"]
    assert tuned["chosen_on"] == "val" and 0 < tuned["threshold"] < 1
    assert set(tuned) >= {"micro_f1", "macro_f1", "per_class_f1", "cue_group_f1"}


def _broken_copy(posters, tmp_path, how):
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(posters, root)
    first = sorted((root / "splits" / "train.txt").read_text().split())[0]
    if how == "empty text":
        (root / "plot" / f"{first}.txt").write_text("  \n")
        return root, f"{first}.txt: empty text"
    if how == "unknown label":
        labels = json.loads((root / "labels.json").read_text())
        labels[first] = ["noir", "musical"]
        (root / "labels.json").write_text(json.dumps(labels))
        return root, "'musical' is not in meta.json's classes"
    (root / "poster" / f"{first}.png").write_bytes(b"not a png")
    return root, f"{first}.png"


@pytest.mark.parametrize("how", ["empty text", "unknown label", "unreadable image"])
def test_bad_data_is_a_one_line_error(posters, tmp_path, capsys, how):
    root, expected = _broken_copy(posters, tmp_path, how)
    code = main(
        [
            "train",
            str(CONFIGS / "posters_late.yaml"),
            "--out",
            str(tmp_path / "run"),
            f"data.root={root}",
            *TINY,
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert expected in err and len(err.splitlines()) == 1, err


def test_single_label_run_reports_accuracy(tmp_path, capsys):
    """A single-label folder (multi_label: false): cross-entropy, and eval's JSON has accuracy,
    mean class accuracy and the macro-F1 of the argmax."""
    from fusescope.data.meta import write_split
    from fusescope.io import write_json

    root = tmp_path / "data"
    words = ["sun", "rain", "snow"]
    write_json(
        root / "meta.json",
        {
            "name": "weather",
            "task": "classification",
            "multi_label": False,
            "classes": [{"name": w, "id": i} for i, w in enumerate(words)],
            "modalities": {"txt": {"kind": "text"}},
        },
    )
    (root / "txt").mkdir(parents=True)
    labels = {}
    for i in range(12):
        sid = f"{i:02d}"
        (root / "txt" / f"{sid}.txt").write_text(f"today {words[i % 3]} again", encoding="utf-8")
        labels[sid] = [words[i % 3]]
    write_json(root / "labels.json", labels)
    ids = sorted(labels)
    for split, part in (("train", ids[:6]), ("val", ids[6:9]), ("test", ids[9:])):
        write_split(root, split, part)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                str(CONFIGS / "posters_text_only.yaml"),
                "--out",
                str(run),
                f"data.root={root}",
                "data.modalities=[txt]",
                *TINY,
                "train.max_steps=2",
                "--quiet",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["multi_label"] is False and result["micro_f1"] == result["accuracy"]
    assert 0.0 <= result["mean_class_accuracy"] <= 1.0 and "macro_f1" in result
    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("ce" in r for r in log)  # cross-entropy, not BCE
