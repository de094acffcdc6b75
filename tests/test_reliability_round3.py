"""A hostile trial, round 3 (issue 27): data lost or mixed, a resume that is not exact, integrity
checks that check, one-line errors, nothing left behind, nothing silently accepted. Numbered as
the issue's points; each test makes its own bad files."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import fusescope
from conftest import TINY_MODEL, write_folder_dataset
from fusescope.cli import main
from fusescope.config import load_config
from fusescope.engine.train import train
from fusescope.errors import FusescopeError
from fusescope.io import write_png
from test_mmimdb import movies, write_release
from translation_helpers import write_translation_dataset

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "synthetic" / "early_concat.yaml"
# timm's 0.4 M-parameter test ResNet: a run's files are megabytes, not 170 MB
FAST = [*TINY_MODEL, "model.backbone=test_resnet"]


class Interrupt(Exception):
    pass


def interrupt_at(step_wanted):
    def on_step(step):
        if step == step_wanted:
            raise Interrupt

    return on_step


def tiny_cfg(data, *extra, config=CONFIG):
    return load_config(config, [f"data.root={data}", "data.synth=null", *FAST, *extra])


def one_line_error(capsys) -> str:
    """The one line a terminal shows on stderr (progress bars that the error interrupted are
    erased: what follows their last carriage return is what stays visible)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line.rsplit("\r", 1)[-1] for line in err.split("\n")]
    lines = [line for line in lines if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fusescope: error: "), err
    return lines[0]


def refused(capsys, argv) -> str:
    """`main(argv)` exits 2 with one line; returns it."""
    assert main(argv) == 2
    return one_line_error(capsys)


def listing(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    """Tiny segmentation data, a finished run (2 steps) and an unfinished one (1 of 3)."""
    base = tmp_path_factory.mktemp("seg")
    data = write_folder_dataset(base / "data")
    finished, unfinished = base / "run", base / "unfinished"
    train(tiny_cfg(data, "train.max_steps=2"), finished)
    with pytest.raises(Interrupt):
        train(
            tiny_cfg(data, "train.max_steps=3", "train.ckpt_every=1", "train.seed=1"),
            unfinished,
            on_step=interrupt_at(1),
        )
    return data, finished, unfinished


def predict_args(run, rgb, depth, out, *extra):
    return [
        "predict",
        str(run),
        "--rgb",
        str(rgb),
        "--depth",
        str(depth),
        "--out",
        str(out),
        *extra,
    ]


# 1. predict never writes what it reads, links included ------------------------------------------


def test_predict_refuses_an_output_that_input_links_lead_to(seg, tmp_path, capsys):
    data, run, _ = seg
    shutil.copytree(data / "rgb", tmp_path / "orig_rgb")
    shutil.copytree(data / "depth", tmp_path / "depth")
    (tmp_path / "rgb").mkdir()
    for f in sorted((tmp_path / "orig_rgb").iterdir()):
        (tmp_path / "rgb" / f.name).symlink_to(f)
    before = listing(tmp_path / "orig_rgb")
    line = refused(
        capsys,
        predict_args(
            run, tmp_path / "rgb", tmp_path / "depth", tmp_path / "orig_rgb", "--workers", "0"
        ),
    )
    assert "would overwrite the rgb input" in line and "0000.png" in line
    assert listing(tmp_path / "orig_rgb") == before


# 2. prepare never deletes its input or a folder of the user's ------------------------------------


def _taskonomy_tree(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for i in range(3):
        frame = f"point_{i}_view_0"
        write_png(
            root / "rgb" / f"{frame}_domain_rgb.png", rng.integers(0, 255, (6, 8, 3), np.uint8)
        )
        write_png(
            root / "reshading" / f"{frame}_domain_reshading.png",
            rng.integers(0, 255, (6, 8), np.uint8),
        )
    return root


@pytest.mark.parametrize("dataset", ["mmimdb", "taskonomy"])
@pytest.mark.parametrize("where", ["root", "parent", "inside", "user_folder"])
def test_prepare_refuses_an_output_holding_an_input_or_the_users_files(
    tmp_path, capsys, dataset, where
):
    base = tmp_path / "work"
    if dataset == "mmimdb":
        root = write_release(base / "release", movies())
        extra = []
    else:
        root = _taskonomy_tree(base / "release")
        extra = ["--modalities", "rgb", "shade"]
    user = tmp_path / "mine"
    (user / "notes").mkdir(parents=True)
    (user / "notes" / "thesis.tex").write_text("years of work")
    out = {"root": root, "parent": base, "inside": root / "prepared", "user_folder": user}[where]
    before = listing(tmp_path)
    line = refused(
        capsys,
        ["data", "prepare", dataset, "--root", str(root), "--out", str(out), "--overwrite", *extra],
    )
    assert str(out) in line
    assert listing(tmp_path) == before


# 3. one training per run folder: lock first, then create -----------------------------------------


def test_two_trainings_started_together_on_a_new_folder(tmp_path, monkeypatch):
    """The second command reaches the folder while the first is still checking its data; the
    folder did not exist when either started. Exactly one trains; the other is refused."""
    from fusescope.engine import train as train_module

    data = write_folder_dataset(tmp_path / "data")
    run = tmp_path / "run"
    outcome = {}
    real_ensure = train_module.ensure_data

    def meanwhile(*args, **kwargs):
        if not outcome:
            outcome["second"] = "running"
            try:
                train(tiny_cfg(data, "train.max_steps=1", "train.log_every=1"), run)
                outcome["second"] = "trained"
            except FusescopeError as err:
                outcome["second"] = str(err)
        return real_ensure(*args, **kwargs)

    monkeypatch.setattr(train_module, "ensure_data", meanwhile)
    train(tiny_cfg(data, "train.max_steps=1"), run)
    assert "another fusescope process is training in this run folder" in outcome["second"]
    assert "\n" not in outcome["second"]
    # the folder holds the first command's run alone
    assert "log_every: 2" in (run / "config.yaml").read_text()


def test_forked_loader_workers_do_not_keep_the_lock(tmp_path):
    from fusescope.engine.checkpoint import run_folder_lock

    data = write_folder_dataset(tmp_path / "data")
    run = tmp_path / "run"
    script = f"""
import sys, time
sys.path.insert(0, {str(ROOT / "tests")!r})
from conftest import TINY_MODEL
from fusescope.config import load_config
from fusescope.engine.train import train

def hold(step):
    print("training", flush=True)
    time.sleep(120)

overrides = [f"data.root={str(data)}", "data.synth=null", *TINY_MODEL, "data.num_workers=1",
             "model.backbone=test_resnet"]
train(load_config({str(CONFIG)!r}, overrides), {str(run)!r}, on_step=hold)
"""
    trainer = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        # the fusescope under test, wherever it is imported from
        env={**os.environ, "PYTHONPATH": str(Path(fusescope.__file__).parents[1])},
        start_new_session=True,  # its loader workers too, for the clean-up below
    )
    try:
        assert trainer.stdout.readline().strip() == "training"
        os.kill(trainer.pid, signal.SIGKILL)  # the trainer alone: its workers live on a while
        trainer.wait()
        with run_folder_lock(run):  # at once, not when the orphaned workers exit
            pass
    finally:
        try:  # the orphaned workers, by the process group this test started
            os.killpg(trainer.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        trainer.wait()


# 4. a run's own data, config and results ---------------------------------------------------------


def test_eval_from_another_directory_scores_the_runs_own_data(tmp_path, monkeypatch, capsys):
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    write_folder_dataset(here / "data")
    write_folder_dataset(elsewhere / "data", seed=5)  # same relative path, other frames
    monkeypatch.chdir(here)
    run = (here / "run").resolve()
    train(tiny_cfg("data", "train.max_steps=1"), run)
    assert main(["eval", str(run), "--json"]) == 0
    own = json.loads(capsys.readouterr().out)
    monkeypatch.chdir(elsewhere)
    assert main(["eval", str(run), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["data_root"] == str((here / "data").resolve()) and again["own_data"] is True
    assert again["miou"] == own["miou"]
    # the other folder, named explicitly, is other data: its own file, the run's stays
    assert main(["eval", str(run), "--json", "--data-root", "data"]) == 0
    theirs = json.loads(capsys.readouterr().out)
    assert theirs["own_data"] is False
    assert json.loads((run / "eval_val_none.json").read_text())["miou"] == own["miou"]


def test_training_the_config_file_in_the_output_folder_is_refused(tiny_data, tmp_path, capsys):
    folder = tmp_path / "experiment"
    folder.mkdir()
    mine = (
        "# my notes on this experiment: why this backbone, what to try next\n"
        f"data: {{root: {tiny_data}, synth: null, crop_size: [32, 40]}}\n"
        "model: {name: early_concat, backbone: test_resnet}  # the small one first\n"
        "train: {max_steps: 2, batch_size: 4, progress: false}\n"
    )
    (folder / "config.yaml").write_text(mine)
    line = refused(
        capsys, ["train", str(folder / "config.yaml"), "--out", str(folder), "--no-eval"]
    )
    assert "config.yaml: the config being trained is the file the run writes" in line
    assert (folder / "config.yaml").read_text() == mine
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml"]


def test_starting_over_drops_the_old_runs_results(seg, tmp_path, capsys):
    data, finished, _ = seg
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    assert main(["eval", str(run), "--json"]) == 0
    capsys.readouterr()
    assert (run / "eval_val_none.json").is_file()
    with pytest.raises(Interrupt):
        train(tiny_cfg(data, "train.lr=0.0001"), run, resume=False, on_step=interrupt_at(1))
    assert not list(run.glob("eval_*.json"))  # compare cannot report them as this run's


# 5. evaluation during training changes nothing, and resumes exactly, for every task -------------


def _segmentation(tmp_path):
    return tiny_cfg(write_folder_dataset(tmp_path / "data"))


def _translation(tmp_path):
    data = write_translation_dataset(tmp_path / "data", n=8, size=(32, 32))
    return load_config(
        ROOT / "configs" / "translation" / "cen.yaml",
        [
            f"data.root={data}",
            "data.synth=null",
            "model.depth=3",
            "model.width=4",
            "model.dropout=1",  # noise the random state drives
            "model.disc_width=4",
            "train.batch_size=2",
            "train.progress=false",
            "train.warmup_steps=1",
            "eval.batch_size=4",
        ],
    )


def _classification(tmp_path):
    from fusescope.data.posters import generate_poster_data

    data = tmp_path / "data"
    generate_poster_data(data, num=24, seed=0, size=(48, 32), progress=False)
    return load_config(
        ROOT / "configs" / "classification" / "posters_attention.yaml",
        [
            f"data.root={data}",
            "data.synth=null",
            "train.batch_size=4",
            "train.progress=false",
            "train.warmup_steps=1",
            "eval.batch_size=8",
            "model.text_dim=16",
            "model.text_layers=1",
            "model.text_heads=2",
            "model.width=16",
            "model.heads=2",
            "model.layers=1",
            "model.backbone=test_resnet",
        ],
    )


@pytest.mark.parametrize("task", ["segmentation", "translation", "classification"])
def test_eval_every_neither_changes_training_nor_breaks_an_exact_resume(tmp_path, task):
    """Killed at step 3 (after the checkpoint and the evaluation of step 2) and resumed, so the
    resumed part evaluates too (step 4): the same weights as a run that never evaluated, which
    is both claims at once (evaluating changes nothing; the resume is exact)."""
    cfg = {"segmentation": _segmentation, "translation": _translation}.get(task, _classification)(
        tmp_path
    )
    common = [
        "train.max_steps=6",
        "train.ckpt_every=2",
        "train.log_every=1",
        "train.ckpt_minutes=0",
    ]

    def with_(*extra):
        from omegaconf import OmegaConf

        return OmegaConf.merge(cfg, OmegaConf.from_dotlist([*common, *extra]))

    train(with_("train.eval_every=0"), tmp_path / "whole")
    evaluating = with_("train.eval_every=2")
    with pytest.raises(Interrupt):
        train(evaluating, tmp_path / "broken", on_step=interrupt_at(3))
    train(evaluating, tmp_path / "broken")
    a, b = (
        load_file(tmp_path / "whole" / "model.safetensors"),
        load_file(tmp_path / "broken" / "model.safetensors"),
    )
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, e.g. {differ[:3]}"
    logged = (tmp_path / "broken" / "metrics.jsonl").read_text()
    assert '"val_' in logged  # it did evaluate


# 6. integrity checks that check -----------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(seg, tmp_path_factory):
    """Both runs exported, a killed export's temp file beside them beforehand; returns the
    folder, the warnings the exports gave and that temp file's path."""
    pytest.importorskip("onnxruntime")
    import warnings

    data, finished, unfinished = seg
    folder = tmp_path_factory.mktemp("onnx")
    stale = folder / ".model.onnx.k2j3h4g5.onnx"
    stale.write_bytes(b"\0" * 1000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["export", str(finished), "--out", str(folder / "model.onnx")]) == 0
        assert main(["export", str(unfinished), "--out", str(folder / "other.onnx")]) == 0
    return folder, [str(w.message) for w in caught], stale


def test_onnx_with_changed_weights_or_another_graph_is_refused(seg, exported, tmp_path, capsys):
    import onnx
    from onnx import numpy_helper

    data, run, _ = seg
    exported = exported[0]
    frame = [str(data / "rgb/0000.png"), str(data / "depth/0000.png")]
    args = ["predict", str(run), "--rgb", frame[0], "--depth", frame[1], "--threads", "1"]
    # the largest initializer's bytes changed, the metadata kept
    proto = onnx.load(str(exported / "model.onnx"))
    big = max(proto.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
    values = numpy_helper.to_array(big).copy()
    values.reshape(-1)[: values.size // 2] *= -1
    big.CopyFrom(numpy_helper.from_array(values, big.name))
    onnx.save(proto, str(tmp_path / "flipped.onnx"))
    line = refused(
        capsys, [*args, "--onnx", str(tmp_path / "flipped.onnx"), "--out", str(tmp_path / "a.png")]
    )
    assert "changed since it was exported" in line
    # another run's graph carrying this run's metadata
    theirs = onnx.load(str(exported / "other.onnx"))
    ours = onnx.load(str(exported / "model.onnx"))
    del theirs.metadata_props[:]
    theirs.metadata_props.extend(ours.metadata_props)
    onnx.save(theirs, str(tmp_path / "copied.onnx"))
    refused(
        capsys, [*args, "--onnx", str(tmp_path / "copied.onnx"), "--out", str(tmp_path / "b.png")]
    )
    assert not list(tmp_path.glob("*.png"))
    # the file as exported is accepted
    assert (
        main([*args, "--onnx", str(exported / "model.onnx"), "--out", str(tmp_path / "c.png")]) == 0
    )


def test_damaged_weights_are_refused_and_nan_is_no_agreement(seg, tmp_path, capsys):
    from fusescope.tasks.segmentation.export import export_model

    _, finished, _ = seg
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    weights = run / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5000:-4000] = bytes(b ^ 0xFF for b in data[-5000:-4000])  # tensor bytes, not header
    weights.write_bytes(bytes(data))
    for argv in (["export", str(run), "--out", str(tmp_path / "m.onnx")], ["eval", str(run)]):
        assert "SHA-256 differs" in refused(capsys, argv)
    assert not (tmp_path / "m.onnx").exists()

    pytest.importorskip("onnxruntime")
    model = torch.nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")

    class Segmentor(torch.nn.Module):
        modalities = ["rgb"]

        def __init__(self):
            super().__init__()
            self.conv = model

        def forward(self, batch):
            return {"logits": self.conv(batch["rgb"])}

    with pytest.raises(FusescopeError, match="not finite"):
        export_model(Segmentor().eval(), ["rgb"], {"rgb": 3}, tmp_path / "nan.onnx", size=(8, 8))
    assert not (tmp_path / "nan.onnx").exists()


# 7. reading only what belongs to the data -------------------------------------------------------


def _memory_capped(extra_bytes: int):
    """Caps this process's address space at its current size plus `extra_bytes` while the
    block runs, so a reader that would read without bound fails fast instead of exhausting
    the machine."""
    import contextlib
    import resource

    @contextlib.contextmanager
    def cap():
        size = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        old = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (size + extra_bytes, old[1]))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_AS, old)

    return cap()


def test_text_linked_to_a_device_is_refused(tmp_path):
    from fusescope.data.text import read_text

    (tmp_path / "plot.txt").symlink_to("/dev/zero")
    with _memory_capped(2**30), pytest.raises(FusescopeError, match="not a regular file"):
        read_text(tmp_path / "plot.txt")


def test_links_leaving_the_data_folder_are_refused(tmp_path, capsys):
    from fusescope.data.folder import FolderDataset

    data = write_folder_dataset(tmp_path / "data")
    outside = tmp_path / "elsewhere.png"
    shutil.move(data / "rgb" / "0001.png", outside)
    (data / "rgb" / "0001.png").symlink_to(outside)
    with pytest.raises(FusescopeError, match="symbolic link leading outside"):
        FolderDataset(data, "train", ["rgb", "depth"])

    root = write_release(tmp_path / "release", movies())
    secret = tmp_path / "secret.json"
    shutil.move(root / "dataset" / "0000003.json", secret)
    (root / "dataset" / "0000003.json").symlink_to(secret)
    args = ["data", "prepare", "mmimdb", "--root", str(root), "--out", str(tmp_path / "out")]
    line = refused(capsys, args)
    assert "0000003.json: a symbolic link leading outside" in line and "--follow-symlinks" in line
    assert not (tmp_path / "out").exists()
    assert main([*args, "--follow-symlinks"]) == 0
    capsys.readouterr()

    tree = _taskonomy_tree(tmp_path / "taskonomy")
    moved = tmp_path / "moved.png"
    shutil.move(tree / "rgb" / "point_1_view_0_domain_rgb.png", moved)
    (tree / "rgb" / "point_1_view_0_domain_rgb.png").symlink_to(moved)
    args = ["data", "prepare", "taskonomy", "--root", str(tree), "--out", str(tmp_path / "tk")]
    args += ["--modalities", "rgb", "shade"]
    assert "symbolic link leading outside" in refused(capsys, args)
    assert main([*args, "--follow-symlinks"]) == 0


# 8. one-line errors, not tracebacks --------------------------------------------------------------


def _png_header(height: int, width: int) -> bytes:
    """A PNG whose header declares height x width RGB pixels (no pixel data to speak of)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def test_decompression_bombs_are_one_line(seg, tmp_path, capsys):
    data, run, _ = seg
    bomb = _png_header(30000, 30000)
    (tmp_path / "bomb.png").write_bytes(bomb)
    line = refused(
        capsys,
        predict_args(run, tmp_path / "bomb.png", data / "depth/0000.png", tmp_path / "m.png"),
    )
    assert "bomb.png: image of 900,000,000 pixels" in line

    root = write_release(tmp_path / "release", movies())
    (root / "dataset" / "0000003.jpeg").write_bytes(bomb)
    args = ["data", "prepare", "mmimdb", "--root", str(root), "--out", str(tmp_path / "out")]
    assert "0000003.jpeg: image of 900,000,000 pixels" in refused(capsys, args)

    tree = _taskonomy_tree(tmp_path / "taskonomy")
    (tree / "reshading" / "point_2_view_0_domain_reshading.png").write_bytes(bomb)
    args = ["data", "prepare", "taskonomy", "--root", str(tree), "--out", str(tmp_path / "tk")]
    line = refused(capsys, [*args, "--modalities", "rgb", "shade"])
    assert "point_2_view_0_domain_reshading.png: image of 900,000,000 pixels" in line


def test_memory_settings_are_one_line(seg, tmp_path, capsys, monkeypatch):
    data, run, _ = seg
    line = refused(capsys, ["eval", str(run), "--window", "100000", "100000", "--json"])
    assert "--window 100000 100000" in line and "GiB" in line
    line = refused(
        capsys,
        ["data", "synth", "--out", str(tmp_path / "s"), "--num", "3", "--size", "100000", "100000"],
    )
    assert "size 100000x100000" in line and "GiB" in line
    translation = write_translation_dataset(tmp_path / "tr", n=8, size=(32, 32))
    line = refused(
        capsys,
        [
            "train",
            str(ROOT / "configs/translation/cen.yaml"),
            "--out",
            str(tmp_path / "r1"),
            f"data.root={translation}",
            "data.synth=null",
            "model.depth=40",
        ],
    )
    assert "model.depth=40" in line and "GiB" in line
    from fusescope.data.posters import generate_poster_data

    posters = tmp_path / "posters"
    generate_poster_data(posters, num=6, seed=0, size=(24, 24), progress=False)
    line = refused(
        capsys,
        [
            "train",
            str(ROOT / "configs/classification/posters_late.yaml"),
            "--out",
            str(tmp_path / "r2"),
            f"data.root={posters}",
            "data.synth=null",
            "train.batch_size=2",
            "data.vocab_size=100000000000",
        ],
    )
    assert "data.vocab_size=100000000000" in line and "GiB" in line
    # frames too large for any estimate (8000 x 8000): torch's allocation error, named
    from fusescope.tasks.segmentation import predict

    def out_of_memory(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 768000000000 bytes. Error code 12"
        )

    monkeypatch.setattr(predict, "predict_probs", out_of_memory)
    frame = predict_args(run, data / "rgb/0000.png", data / "depth/0000.png", tmp_path / "m.png")
    line = refused(capsys, frame)
    assert "out of memory predicting 1 frame(s) of 32x40" in line and "715.3 GiB" in line
    assert not list(tmp_path.glob("*r1*")) and not (tmp_path / "r2").exists()


def test_outputs_where_nothing_can_be_written_are_one_line(seg, tmp_path, capsys):
    data, run, _ = seg
    (tmp_path / "afile").write_text("x")
    frame = [data / "rgb/0000.png", data / "depth/0000.png"]
    for argv in (
        ["export", str(run), "--out", str(tmp_path / "afile" / "m.onnx")],
        ["export", str(run), "--out", "/proc/m.onnx"],
        predict_args(run, *frame, tmp_path / "afile" / "m.png"),
        predict_args(run, *frame, "/proc/fusescope/m.png"),
        ["train", str(CONFIG), "--out", str(tmp_path / "afile" / "run"), f"data.root={data}"],
        ["data", "synth", "--out", "/proc/synth", "--num", "3", "--size", "16", "16"],
        ["dissect", str(run), str(run), str(run), "--out", str(tmp_path / "afile" / "report")],
        ["export", str(run), "--out", str(tmp_path / "m.onnx"), "--size", "-5", "7"],
    ):
        refused(capsys, argv)
    # a sidecar path that is a folder: refused before the graph is written
    (tmp_path / "m.onnx.json").mkdir()
    assert "m.onnx.json: is a folder" in refused(
        capsys, ["export", str(run), "--out", str(tmp_path / "m.onnx")]
    )
    assert not (tmp_path / "m.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "m.onnx.json"]


@pytest.mark.parametrize("option", ["--workers", "--threads"])
def test_negative_counts_are_refused_by_the_parser(seg, tmp_path, capsys, option):
    data, run, _ = seg
    with pytest.raises(SystemExit) as code:
        main([*predict_args(run, data / "rgb", data / "depth", tmp_path / "m"), option, "-1"])
    assert code.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"argument {option}" in err
    assert not (tmp_path / "m").exists()


def test_damaged_run_folders_and_files_are_one_line(seg, tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    data, finished, _ = seg
    frame = [data / "rgb/0000.png", data / "depth/0000.png"]
    # ONNX metadata that is not a JSON object
    graph = helper.make_graph(
        [helper.make_node("Identity", ["rgb"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("rgb", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph)
    helper.set_model_props(model, {"fusescope": "[1, 2]"})
    onnx.save(model, str(tmp_path / "list.onnx"))
    line = refused(
        capsys,
        [
            *predict_args(finished, *frame, tmp_path / "m.png"),
            "--onnx",
            str(tmp_path / "list.onnx"),
        ],
    )
    assert "metadata is not a JSON object" in line

    # safetensors metadata step="abc" (the digest in run.json made to match)
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    save_file(load_file(run / "model.safetensors"), run / "model.safetensors", {"step": "abc"})
    import hashlib

    info = json.loads((run / "run.json").read_text())
    info["weights_sha256"] = hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    (run / "run.json").write_text(json.dumps(info))
    assert "metadata step 'abc'" in refused(capsys, ["eval", str(run)])

    # corrupt config.yaml, run.json
    (run / "config.yaml").write_text("train: {max_steps: [\n")
    assert "config.yaml: cannot read the run's config" in refused(capsys, ["eval", str(run)])
    shutil.copy(finished / "config.yaml", run / "config.yaml")
    (run / "run.json").write_text("[]")
    assert "run.json: not a run record" in refused(capsys, ["eval", str(run)])


def test_bad_release_and_config_values_are_one_line(tmp_path, capsys):
    bad = movies()
    bad["0000003"]["plot"] = ["A lone \ud800 surrogate."]
    root = write_release(tmp_path / "a", bad)
    args = ["data", "prepare", "mmimdb", "--root", str(root), "--out", str(tmp_path / "out")]
    assert "0000003.json: the plot has a character that is not valid Unicode" in refused(
        capsys, args
    )
    root = write_release(tmp_path / "b", movies())  # a file system takes no 300-byte name
    split = json.loads((root / "split.json").read_text())
    split["test"] = ["7" * 300]
    (root / "split.json").write_text(json.dumps(split))
    args = ["data", "prepare", "mmimdb", "--root", str(root), "--out", str(tmp_path / "out")]
    assert "is not a sample id" in refused(capsys, args)
    assert not (tmp_path / "out").exists()

    # taskonomy without rgb/ and without lists: the frames of the first modality asked for
    tree = _taskonomy_tree(tmp_path / "tk")
    shutil.rmtree(tree / "rgb")
    out = tmp_path / "tk_out"
    assert (
        main(
            [
                "data",
                "prepare",
                "taskonomy",
                "--root",
                str(tree),
                "--out",
                str(out),
                "--modalities",
                "shade",
            ]
        )
        == 0
    )
    assert sorted((out / "shade").iterdir())
    capsys.readouterr()

    translation = write_translation_dataset(tmp_path / "tr", n=8, size=(32, 32))
    line = refused(
        capsys,
        [
            "train",
            str(ROOT / "configs/translation/cen.yaml"),
            "--out",
            str(tmp_path / "r"),
            f"data.root={translation}",
            "data.synth=null",
            "data.targets=[rgb,rgb]",
        ],
    )
    assert "data.targets=['rgb', 'rgb'] names one twice" in line


def test_full_disk_inside_torch_save_is_one_line(tiny_data, tmp_path, monkeypatch):
    """torch.save writes through the file object; a full disk there comes back from torch as
    a RuntimeError ("unexpected pos") chained to the OSError, not as the OSError."""
    from fusescope.engine import checkpoint

    class FullDisk(io.FileIO):
        """The disk fills after the first kilobyte, in the middle of torch's zip records."""

        written = 0

        def write(self, b):
            if self.written + len(b) > 1000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.written += len(b)
            return super().write(b)

    real_open = open

    def open_full(path, mode="r", *args, **kwargs):
        if "w" in mode and str(path).endswith(".tmp"):
            return FullDisk(path, "w")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "open", open_full, raising=False)
    with pytest.raises(FusescopeError) as err:
        train(tiny_cfg(tiny_data, "train.max_steps=1"), tmp_path / "run")
    assert "last.ckpt: no space left on the device" in str(err.value)
    assert "\n" not in str(err.value)


# 9. nothing left behind --------------------------------------------------------------------------


def test_refused_training_leaves_no_generated_data_and_no_folder(tmp_path, capsys):
    data, run = tmp_path / "made" / "data", tmp_path / "run"
    line = refused(
        capsys,
        [
            "train",
            str(CONFIG),
            "--out",
            str(run),
            f"data.root={data}",
            "data.synth={num: 6, seed: 0, size: [16, 24]}",
            *FAST,
            "train.batch_size=6",  # more than the 4 training frames of 6
        ],
    )
    assert "exceeds the 4 samples" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_crashed_run_leaves_no_stub_folder(tiny_data, tmp_path):
    run = tmp_path / "new" / "run"
    cfg = tiny_cfg(tiny_data, "train.ckpt_every=100", "train.ckpt_minutes=0")
    with pytest.raises(Interrupt):
        train(cfg, run, on_step=interrupt_at(1))
    assert not (tmp_path / "new").exists()


def test_temps_of_killed_commands_are_removed_live_ones_kept(tmp_path):
    import fcntl

    from fusescope.data.synthetic import generate

    dead = tmp_path / ".synth.tmp-abcd1234"
    (dead / "rgb").mkdir(parents=True)
    (dead / "rgb" / "000000.png").write_bytes(b"\0" * 1000)
    live = tmp_path / ".synth.tmp-live5678"
    live.mkdir()
    fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another command is writing it right now
    try:
        generate(tmp_path / "synth", num=3, size=(16, 16), progress=False)
        assert not dead.exists() and live.exists()
    finally:
        os.close(fd)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".synth.tmp-live5678", "synth"]


def test_bad_frame_in_a_folder_leaves_no_partial_output(seg, tmp_path, capsys):
    data, run, _ = seg
    rgb, depth = tmp_path / "rgb", tmp_path / "depth"
    shutil.copytree(data / "rgb", rgb)
    shutil.copytree(data / "depth", depth)
    (rgb / "0006.png").write_bytes((rgb / "0006.png").read_bytes()[:200])  # truncated
    out = tmp_path / "masks"
    assert "0006.png" in refused(capsys, predict_args(run, rgb, depth, out, "--workers", "0"))
    assert not out.exists()
    out.mkdir()
    (out / "mine.txt").write_text("kept")
    refused(capsys, predict_args(run, rgb, depth, out, "--workers", "0"))
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# 10. nothing silently accepted -------------------------------------------------------------------


def test_a_schedule_longer_than_any_run_is_refused():
    # checked as the config is read (a test of the training command would train for ever)
    for key in ("max_steps", "warmup_steps"):
        with pytest.raises(FusescopeError, match=f"train.{key}=10{{26}} must be at most 1e"):
            load_config(CONFIG, [f"train.{key}=1{'0' * 26}"])


@pytest.mark.parametrize(
    "override, match",
    [
        ("model.theta=.nan", "model.theta=nan must be a finite number"),
        ("model.theta=nan", "model.theta='nan' must be a finite number"),
    ],
)
def test_non_numbers_for_model_options_are_refused(tiny_data, tmp_path, capsys, override, match):
    config = ROOT / "configs" / "synthetic" / "cen.yaml"
    line = refused(
        capsys,
        [
            "train",
            str(config),
            "--out",
            str(tmp_path / "r"),
            f"data.root={tiny_data}",
            "data.synth=null",
            *FAST,
            override,
        ],
    )
    assert match in line
    assert not (tmp_path / "r").exists()


def test_discriminator_layers_must_be_positive(tmp_path, capsys):
    data = write_translation_dataset(tmp_path / "tr", n=8, size=(32, 32))
    line = refused(
        capsys,
        [
            "train",
            str(ROOT / "configs/translation/cen.yaml"),
            "--out",
            str(tmp_path / "r"),
            f"data.root={data}",
            "data.synth=null",
            "model.disc_layers=-1",
        ],
    )
    assert "model.disc_layers=-1 must be an integer in 1..16" in line


def test_empty_out_and_a_jpeg_mask_are_refused(seg, tmp_path, capsys, monkeypatch):
    data, run, _ = seg
    monkeypatch.chdir(tmp_path)
    assert "--out is empty" in refused(
        capsys, ["train", str(CONFIG), "--out", "", f"data.root={data}", "data.synth=null"]
    )
    frame = [data / "rgb/0000.png", data / "depth/0000.png"]
    assert "give a file name ending in .png" in refused(
        capsys, predict_args(run, *frame, "mask.jpg")
    )
    assert list(tmp_path.iterdir()) == []


def test_two_files_of_one_frame_are_refused(seg, tmp_path, capsys):
    from PIL import Image

    from fusescope.data.folder import FolderDataset

    data, run, _ = seg
    rgb, depth = tmp_path / "rgb", tmp_path / "depth"
    shutil.copytree(data / "rgb", rgb)
    shutil.copytree(data / "depth", depth)
    Image.open(rgb / "0003.png").save(rgb / "0003.jpg")
    line = refused(capsys, predict_args(run, rgb, depth, tmp_path / "m", "--workers", "0"))
    assert "two files for 0003: 0003.jpg and 0003.png" in line
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    Image.open(copy / "rgb" / "0003.png").save(copy / "rgb" / "0003.jpg")
    with pytest.raises(FusescopeError, match="two files for 0003"):
        FolderDataset(copy, "train", ["rgb", "depth"])


@pytest.mark.parametrize("problem", ["twice", "cue"])
def test_prepare_refuses_genres_its_loader_would_reject(tmp_path, capsys, problem):
    root = write_release(tmp_path / "release", movies())
    genres = [{"name": "Drama", "cue": "appearance"}, {"name": "Comedy", "cue": "text"}]
    genres += [{"name": g} for g in ("Sci-Fi", "Film-Noir", "Western", "Short", "News")]
    if problem == "twice":
        genres.append({"name": "Drama", "cue": "both"})
    else:
        genres[1]["cue"] = "smell"
    (root / "genres.json").write_text(json.dumps({"genres": genres}))
    line = refused(
        capsys, ["data", "prepare", "mmimdb", "--root", str(root), "--out", str(tmp_path / "out")]
    )
    assert "genres.json" in line and ("twice" in line if problem == "twice" else "'smell'" in line)
    assert not (tmp_path / "out").exists()


def test_export_of_an_unfinished_run_says_so_and_records_its_step(exported):
    folder, warned, _ = exported
    assert [w for w in warned if "unfinished run" in w and "step 1 of 3" in w]
    info = json.loads((folder / "other.onnx.json").read_text())
    assert (info["step"], info["max_steps"], info["finished"]) == (1, 3, False)
    info = json.loads((folder / "model.onnx.json").read_text())
    assert (info["step"], info["finished"]) == (2, True)


def test_a_killed_exports_temp_file_is_removed_by_the_next_export(exported):
    assert not exported[2].exists()
