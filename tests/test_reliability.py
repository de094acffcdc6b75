"""A hostile user's inputs (issue 14): no input overwritten, no result lost, one run per folder,
every bad value a one-line error. Each test makes its own bad files."""

import errno
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_MODEL, cli_train, write_folder_dataset
from fusescope.cli import main
from fusescope.config import load_config
from fusescope.errors import FusescopeError
from fusescope.io import write_png

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "synthetic" / "early_concat.yaml"


def tiny_cfg(data, *extra):
    return load_config(CONFIG, [f"data.root={data}", "data.synth=null", *TINY_MODEL, *extra])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fusescope: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny finished run (2 steps) and its data, trained under umask 022."""
    from fusescope.engine.train import train

    base = tmp_path_factory.mktemp("trained")
    old = os.umask(0o022)
    try:
        data = write_folder_dataset(base / "data")
        run = base / "run"
        train(tiny_cfg(data, "train.max_steps=2"), run)
    finally:
        os.umask(old)
    return run, data


# 1. predict never overwrites its inputs ---------------------------------------------------------


def test_predict_refuses_an_output_that_is_an_input(trained, tmp_path, capsys):
    run, data = trained
    frame = tmp_path / "a"
    frame.mkdir()
    shutil.copy(data / "rgb" / "0000.png", frame / "rgb.png")
    shutil.copy(data / "depth" / "0000.png", frame / "depth.png")
    before = (frame / "rgb.png").read_bytes()
    args = [
        "predict",
        str(run),
        "--rgb",
        str(frame / "rgb.png"),
        "--depth",
        str(frame / "depth.png"),
    ]
    # also through another spelling of the same file
    for out in (frame / "rgb.png", frame / ".." / "a" / "rgb.png"):
        assert main([*args, "--out", str(out)]) == 2
        assert "would overwrite the rgb input" in one_line_error(capsys)
    assert (frame / "rgb.png").read_bytes() == before
    # the overlay beside the mask counts too
    shutil.copy(frame / "depth.png", frame / "m_overlay.png")
    assert (
        main([*args[:4], "--depth", str(frame / "m_overlay.png"), "--out", str(frame / "m.png")])
        == 2
    )
    one_line_error(capsys)
    assert not (frame / "m.png").exists()
    # asked for explicitly, it is allowed
    assert main([*args, "--out", str(frame / "rgb.png"), "--overwrite"]) == 0
    assert (frame / "rgb.png").read_bytes() != before


def test_predict_refuses_an_output_folder_inside_an_input_folder(trained, tmp_path, capsys):
    run, data = trained
    rgb, depth = tmp_path / "rgb", tmp_path / "depth"
    shutil.copytree(data / "rgb", rgb)
    shutil.copytree(data / "depth", depth)
    listing = sorted(p.name for p in rgb.iterdir())
    args = ["predict", str(run), "--rgb", str(rgb), "--depth", str(depth)]
    for out in (rgb, rgb / "masks"):
        assert main([*args, "--out", str(out)]) == 2
        assert "is, or is inside, the rgb input" in one_line_error(capsys)
    assert sorted(p.name for p in rgb.iterdir()) == listing
    # an existing file as the output folder is a one-line error, not FileExistsError
    (tmp_path / "afile").write_text("x")
    assert main([*args, "--out", str(tmp_path / "afile")]) == 2
    assert "is a file; with folder inputs" in one_line_error(capsys)
    assert main([*args, "--out", str(tmp_path / "masks")]) == 0
    assert len(list((tmp_path / "masks").glob("*_overlay.png"))) == len(listing)


# 2. eval results are named by what changes them --------------------------------------------------


def test_eval_on_other_data_keeps_the_runs_own_result(trained, tmp_path, capsys):
    run, data = trained
    assert main(["eval", str(run), "--split", "test", "--json"]) == 0
    own = json.loads(capsys.readouterr().out)
    own_file = run / "eval_test_none.json"
    assert json.loads(own_file.read_text()) == own
    assert own["own_data"] is True and own["data_root"] == str(data.resolve())

    other = write_folder_dataset(tmp_path / "other", seed=5)
    assert main(["eval", str(run), "--split", "test", "--data-root", str(other), "--json"]) == 0
    theirs = json.loads(capsys.readouterr().out)
    assert json.loads(own_file.read_text()) == own  # not replaced
    assert theirs["data_root"] == str(other.resolve()) and theirs["own_data"] is False
    assert theirs["data_fingerprint"] != own["data_fingerprint"]
    other_file = run / f"eval_test_none_data-{theirs['data_fingerprint']}.json"
    assert json.loads(other_file.read_text()) == theirs

    assert main(["eval", str(run), "--split", "test", "--window", "16", "24", "--json"]) == 0
    windowed = json.loads(capsys.readouterr().out)
    assert windowed["window"] == [16, 24]
    assert json.loads((run / "eval_test_none_win16x24.json").read_text()) == windowed
    assert json.loads(own_file.read_text()) == own


# 3. one process per run folder -------------------------------------------------------------------


def test_second_process_on_a_run_folder_is_refused(tiny_data, tmp_path, capsys):
    """flock locks belong to an open file description: a second open + flock in this process
    conflicts like another process would (checked here first)."""
    import fcntl

    from fusescope.engine.checkpoint import run_folder_lock

    run = tmp_path / "run"
    run.mkdir()
    with run_folder_lock(run):
        fd = os.open(run / ".lock", os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
        assert cli_train(run, tiny_data) == 2
        line = one_line_error(capsys)
        assert str(run) in line and "another fusescope process" in line
    assert sorted(p.name for p in run.iterdir()) == [".lock"]
    with run_folder_lock(run):  # released when the holder ends
        pass


def test_lock_dies_with_its_process(tmp_path):
    import subprocess
    import sys

    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from fusescope.engine.checkpoint import "
            "run_folder_lock as lock\nwith lock(sys.argv[1]):\n print('held', flush=True)\n "
            "time.sleep(60)",
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        from fusescope.engine.checkpoint import run_folder_lock

        with pytest.raises(FusescopeError, match="another fusescope process"), run_folder_lock(run):
            pass
    finally:
        holder.kill()  # kill -9: the kernel drops its lock
        holder.wait()
    with run_folder_lock(run):
        pass


# 4. resuming with changed settings ---------------------------------------------------------------


def test_resume_refuses_changed_settings_and_records_an_extension(tiny_data, tmp_path, capsys):
    from fusescope.engine.train import train

    run = tmp_path / "run"
    train(tiny_cfg(tiny_data, "train.max_steps=3"), run)
    config_before = (run / "config.yaml").read_text()
    args = [
        "train",
        str(CONFIG),
        "--out",
        str(run),
        f"data.root={tiny_data}",
        "data.synth=null",
        *TINY_MODEL,
        "train.max_steps=3",
    ]
    assert main([*args, "train.lr=0.0001"]) == 2
    line = one_line_error(capsys)
    assert "train.lr (0.002 -> 0.0001)" in line and str(run) in line
    assert (run / "config.yaml").read_text() == config_before  # the config does not lie

    # a run's checkpoint past max_steps is refused; a larger max_steps extends and is recorded
    assert main([*args, "train.max_steps=2"]) == 2
    assert "past train.max_steps=2" in one_line_error(capsys)
    # leftovers of a killed run (issue 14.9): temp files of atomic writes are removed
    leftovers = [
        run / "checkpoints" / ".last.ckpt.k2j3h4g5.tmp",
        run / ".model.safetensors.a1b2c3d4.safetensors",
        run / ".run.json.zz99yy88.json",
    ]
    for path in leftovers:
        path.write_bytes(b"x" * 100)
    (run / "notes.txt").write_text("mine")
    assert main([*args, "train.max_steps=5", "--no-eval"]) == 0
    assert not any(p.exists() for p in leftovers) and (run / "notes.txt").is_file()
    info = json.loads((run / "run.json").read_text())
    assert info["resumed"][-1]["step"] == 3
    assert info["resumed"][-1]["changed"] == {"train.max_steps": [3, 5]}
    from omegaconf import OmegaConf

    assert OmegaConf.load(run / "config.yaml").train.max_steps == 5
    from fusescope.engine.checkpoint import load_checkpoint

    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["step"] == 5
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no step logged twice

    # starting over with other settings is allowed; the old weights do not stay beside them
    def stop(step):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg(tiny_data, "train.lr=0.0001"), run, resume=False, on_step=stop)
    assert OmegaConf.load(run / "config.yaml").train.lr == 0.0001
    assert not (run / "model.safetensors").exists()
    assert not (run / "checkpoints" / "last.ckpt").exists()
    assert (run / "metrics.jsonl").read_text() == ""


# 5. files as readable as the umask says ----------------------------------------------------------


def test_written_files_and_folders_follow_the_umask(trained, tmp_path):
    from fusescope.data.synthetic import generate
    from fusescope.io import write_json

    run, _ = trained
    for name in ("config.yaml", "run.json", "model.safetensors", "checkpoints/last.ckpt"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o644, name
    old = os.umask(0o022)
    try:
        generate(tmp_path / "synth", num=3, size=(24, 32), progress=False)
        write_json(tmp_path / "a.json", {})
        os.umask(0o077)
        write_json(tmp_path / "private.json", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "synth").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "synth" / "meta.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "synth" / "rgb" / "000000.png").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600


# 6. a refused run leaves nothing -----------------------------------------------------------------


@pytest.mark.parametrize(
    "problem, match",
    [
        ("missing_val", "val.txt: split file not found"),
        ("empty_val", "val.txt: split is empty"),
        ("big_batch", "exceeds the 8 samples"),
        ("class_weights", "train.class_weights has 2 values"),
    ],
)
def test_refused_run_leaves_no_folder(tmp_path, capsys, problem, match):
    data = write_folder_dataset(tmp_path / "data")
    extra = []
    if problem == "missing_val":
        (data / "splits" / "val.txt").unlink()
    elif problem == "empty_val":
        (data / "splits" / "val.txt").write_text("\n")
    elif problem == "big_batch":
        extra = ["train.batch_size=9"]
    else:
        extra = ["train.class_weights=[1.0,2.0]"]
    run = tmp_path / "run"
    assert cli_train(run, data, *extra) == 2
    assert match in one_line_error(capsys)
    assert not run.exists()


# 7. one-line errors, not tracebacks --------------------------------------------------------------


@pytest.mark.parametrize(
    "override, match",
    [
        ("train.lr=-1", "train.lr=-1"),
        ("train.lr=nan", "train.lr=nan"),
        ("train.batch_size=0", "train.batch_size=0"),
        ("train.grad_accum=0", "train.grad_accum=0"),
        ("train.ckpt_every=0", "train.ckpt_every=0"),
        ("train.log_every=0", "train.log_every=0"),
        ("train.max_steps=-5", "train.max_steps=-5"),
        ("train.seed=-1", "train.seed=-1"),
        ("data.crop_size=[32]", "data.crop_size=[32] must be two values"),
        ("data.crop_size=[-32,40]", "data.crop_size=-32"),
        ("data.crop_size=[100000,100000]", "more than this machine's"),
        ("data.scale_range=[2.0,1.0]", "data.scale_range"),
        ("data.val_split=../../x", "data.val_split='../../x' must be a plain name"),
        ("train.precision=fp7", "Precision 'fp7' is invalid"),
        ("train.lr=[1", "override 'train.lr=[1': the value is not valid YAML"),
    ],
)
def test_bad_values_are_one_line_errors(tiny_data, tmp_path, capsys, override, match):
    run = tmp_path / "run"
    assert cli_train(run, tiny_data, override) == 2
    assert match in one_line_error(capsys)
    assert not run.exists()


@pytest.mark.parametrize(
    "text, match",
    [
        ("- a\n- b\n", "a config must be a mapping"),
        ("train: {lr: [1\n", "not valid YAML"),
        (b"train:\n  lr: \xff\xfe\n", "not UTF-8"),
    ],
)
def test_bad_config_files(tmp_path, capsys, text, match):
    path = tmp_path / "bad.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    line = one_line_error(capsys)
    assert match in line and str(path) in line


def test_split_file_that_is_not_utf8(tiny_data, capsys):
    (tiny_data / "splits" / "train.txt").write_bytes(b"0000\n\xff\xfe\n")
    assert main(["data", "inspect", str(tiny_data)]) == 2
    assert "train.txt: not UTF-8 text" in one_line_error(capsys)


def _full_disk_after(limit: int):
    """A write wrapper: the first `limit` bytes go to the file, then ENOSPC."""

    def fake_save(obj, f, *args, **kwargs):
        f.write(b"\0" * limit)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return fake_save


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(
    tiny_data, tmp_path, monkeypatch
):
    from fusescope.engine import checkpoint
    from fusescope.engine.train import train

    run = tmp_path / "run"
    real_save = torch.save
    calls = []

    def save_then_fill(obj, f, *args, **kwargs):
        calls.append(obj["step"])
        if len(calls) == 1:
            return real_save(obj, f, *args, **kwargs)
        return _full_disk_after(1000)(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", save_then_fill)
    with pytest.raises(FusescopeError) as err:
        train(tiny_cfg(tiny_data, "train.max_steps=4", "train.ckpt_every=2"), run)
    message = str(err.value)
    assert "\n" not in message and "last.ckpt: no space left on the device" in message
    assert "it needs about" in message and "MB" in message
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert checkpoint.load_checkpoint(run / "checkpoints" / "last.ckpt")["step"] == 2
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.ckpt"]  # no temp left
    train(tiny_cfg(tiny_data, "train.max_steps=4", "train.ckpt_every=2"), run)  # resumes


def test_full_disk_while_writing_weights_and_a_data_set(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from fusescope.engine.checkpoint import save_weights

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"old")

    def fill(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m:
        m.setattr(Path, "write_bytes", fill)
        with pytest.raises(
            FusescopeError,
            match=r"model\.safetensors: no space left .* needs "
            r"about 4\.\d kB",
        ):
            save_weights(weights, torch.nn.Linear(32, 32))
    assert weights.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1

    real = Image.Image.save
    count = []

    def save_until_full(self, fp, *args, **kwargs):
        count.append(fp)
        if len(count) > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_until_full)
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(tmp_path / "synth"),
                "--num",
                "3",
                "--size",
                "24",
                "32",
                "--workers",
                "1",
                "--quiet",
            ]
        )
        == 2
    )
    assert "no space left on the device" in one_line_error(capsys)
    assert not (tmp_path / "synth").exists()


# 8. paths stay inside the data root --------------------------------------------------------------


@pytest.mark.parametrize("entry", ["../../outside/secret", "/etc/passwd", "..", "a\\b"])
def test_split_entries_are_plain_ids(tiny_data, tmp_path, capsys, entry):
    outside = tiny_data.parent / "outside"
    write_png(outside / "secret.png", np.zeros((32, 40), np.uint8))
    (tiny_data / "splits" / "train.txt").write_text(f"0000\n{entry}\n")
    for argv in (
        ["data", "inspect", str(tiny_data), "--samples", str(tmp_path / "s.png")],
        [
            "train",
            str(CONFIG),
            "--out",
            str(tmp_path / "run"),
            f"data.root={tiny_data}",
            "data.synth=null",
            *TINY_MODEL,
        ],
    ):
        assert main(argv) == 2
        assert f"line 2: {entry!r} is not a sample id" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_meta_modality_names_stay_inside_the_root(tiny_data, tmp_path, capsys):
    meta = json.loads((tiny_data / "meta.json").read_text())
    meta["modalities"][".."] = meta["modalities"].pop("depth")
    (tiny_data / "meta.json").write_text(json.dumps(meta))
    assert main(["data", "inspect", str(tiny_data)]) == 2
    assert "modality name '..' must be a folder name inside" in one_line_error(capsys)
    assert (
        main(
            [
                "train",
                str(CONFIG),
                "--out",
                str(tmp_path / "run"),
                f"data.root={tiny_data}",
                "data.synth=null",
                *TINY_MODEL,
                "data.modalities=[rgb,'..']",
            ]
        )
        == 2
    )
    assert "must be a plain name" in one_line_error(capsys)


def test_inspect_refuses_8bit_depth_like_train(tiny_data, tmp_path, capsys):
    write_png(tiny_data / "depth" / "0001.png", np.full((32, 40), 30, np.uint8))
    assert main(["data", "inspect", str(tiny_data), "--samples", str(tmp_path / "s.png")]) == 2
    inspect_line = one_line_error(capsys)
    assert (
        main(
            [
                "train",
                str(CONFIG),
                "--out",
                str(tmp_path / "run"),
                f"data.root={tiny_data}",
                "data.synth=null",
                *TINY_MODEL,
            ]
        )
        == 2
    )
    assert one_line_error(capsys) == inspect_line
    assert "0001.png: depth 'depth' must be a 16-bit PNG" in inspect_line


# 9. leftovers: a run killed before its first step checkpoint keeps its progress ------------------


def test_time_based_checkpoint(tiny_data, tmp_path):
    from fusescope.engine.checkpoint import load_checkpoint
    from fusescope.engine.train import train

    class Killed(Exception):
        pass

    def kill_at_2(step):
        if step == 2:
            raise Killed

    run = tmp_path / "run"
    cfg = tiny_cfg(
        tiny_data, "train.ckpt_every=100", "train.log_every=1", "train.ckpt_minutes=1e-9"
    )
    with pytest.raises(Killed):
        train(cfg, run, on_step=kill_at_2)
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["step"] == 2


# 10. refusing a checkpoint does not read like advice to be unsafe --------------------------------


class _Code:
    def __reduce__(self):
        return (print, ("this ran",))


def test_checkpoint_with_code_is_refused_plainly(trained, tmp_path, capsys):
    run, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "model.safetensors").unlink()
    ckpt = copy / "checkpoints" / "last.ckpt"
    torch.save({"model": _Code(), "step": 1}, ckpt)
    assert main(["eval", str(copy)]) == 2
    line = one_line_error(capsys)
    assert line == (
        f"fusescope: error: {ckpt} is not a fusescope checkpoint or holds code; refusing to load it"
    )
    assert "this ran" not in capsys.readouterr().out
