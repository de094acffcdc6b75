"""Fuzzing what users type and write (issues 14, 27): any config override, meta.json or split
file, and every command's path and number arguments, either works or is a one-line error (exit
status 2), never a traceback, and a refused run writes nothing. No model is trained here: a
valid command stops where its work (building the model, converting, exporting) would begin."""

import contextlib
import io
import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TINY_MODEL, write_folder_dataset
from fusescope.cli import main
from fusescope.config import _structured, to_container
from fusescope.errors import FusescopeError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "synthetic" / "early_concat.yaml"
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _leaves(d: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            keys += _leaves(v, f"{prefix}{k}.")
        else:
            keys.append(f"{prefix}{k}")
    return keys


# every key of the data, train and eval sections (the model section is each builder's schema)
KEYS = [k for k in _leaves(to_container(_structured())) if not k.startswith("model.")]
KEYS += [
    "data.synth.num",
    "data.synth.size",
    "train.lr_scales.decoder",
    "train.no_such_key",
    "train",
    "data",
]
TRICKY = [
    "",
    "null",
    "true",
    "[",
    "]",
    "{",
    "[1",
    "[1,2]",
    "[0,0]",
    "[-1,5]",
    "[32]",
    "[8,8,8]",
    "[100000,100000]",
    "{a: 1}",
    "${x}",
    "${train.lr}",
    "'..'",
    "../x",
    "/abs",
    "a/b",
    "[rgb,depth]",
    "[rgb,rgb]",
    "[rgb,hha]",
    "[]",
    "{}",
    "1e999",
    "-0.0",
    "0x10",
    "~",
    "&a",
    "*a",
    "%x",
    "`",
    "test",
    "val",
    "train",
    "ddp",
    "cuda",
    "tpu",
    "cpu",
    "bf16-mixed",
    "16-mixed",
    "64-true",
    "sgd",
    "adamw",
    "flip",
    "ms-flip",
]
VALUES = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(TRICKY),
    st.text(max_size=10),
    st.lists(st.integers(-5, 50), max_size=3).map(lambda v: "[" + ",".join(map(str, v)) + "]"),
)


class _ModelReached(Exception):
    """The config passed every check made before the model is built."""


class _OneProcess:
    """Stands in for Fabric after its arguments are checked: train.devices=4 must not make
    this test process launch copies of itself."""

    global_rank, world_size = 0, 1

    def launch(self):
        pass

    def barrier(self):
        pass


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_folder_dataset(tmp_path_factory.mktemp("fuzz") / "data", n=9)


def _run_cli(argv: list[str]) -> tuple[int | None, str]:
    """`main(argv)` -> (exit status or None if it reached the model, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except _ModelReached:
            code = None
    return code, err.getvalue()


def _assert_one_line_error(code, stderr: str) -> None:
    assert "Traceback" not in stderr
    if code is not None:
        assert code == 2, stderr
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("fusescope: error: ") and len(last) > len("fusescope: error: ")


@FUZZ
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_any_override_works_or_is_a_one_line_error(data, monkeypatch, key, value):
    from fusescope.engine import train as train_module
    from fusescope.tasks import task_of

    def stop(*args, **kwargs):
        raise _ModelReached

    real_make_fabric = train_module.make_fabric

    def one_process(t):
        real_make_fabric(t)  # the values are checked, but no process is launched
        return _OneProcess()

    # the model is built only after every check of the config and the data
    monkeypatch.setattr(type(task_of("segmentation")), "build_model", stop)
    monkeypatch.setattr(train_module, "make_fabric", one_process)
    out = Path(tempfile.mkdtemp()) / "run"
    try:
        code, stderr = _run_cli(
            [
                "train",
                str(CONFIG),
                "--out",
                str(out),
                f"data.root={data}",
                "data.synth=null",
                *TINY_MODEL,
                f"{key}={value}",
            ]
        )
        _assert_one_line_error(code, stderr)
        assert not out.exists()  # checks come before the first write
    finally:
        shutil.rmtree(out.parent)


def _json_values():
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-300, 300),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=6),
        st.sampled_from(
            ["..", ".", "/", "a/b", "depth", "rgb", "label", "color", "image", "depth", "geometry"]
        ),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
        ),
        max_leaves=8,
    )


META_PATHS = [
    ("name",),
    ("classes",),
    ("classes", 0),
    ("classes", 0, "id"),
    ("classes", 1, "color"),
    ("classes", 2, "name"),
    ("classes", 0, "cue"),
    ("modalities",),
    ("modalities", "depth"),
    ("modalities", "depth", "scale"),
    ("modalities", "depth", "kind"),
    ("modalities", "rgb", "channels"),
    ("modalities", "rgb", "kind"),
    ("ignore_index",),
    ("intrinsics",),
    ("modalities", "new"),
    ("classes", 0, "color", 1),
]


@FUZZ
@given(
    path=st.sampled_from(META_PATHS),
    value=_json_values(),
    rename=st.one_of(st.none(), st.text(max_size=5), st.sampled_from(["..", ".", "/x", "a/b"])),
)
def test_any_meta_json_works_or_is_a_one_line_error(data, path, value, rename):
    """meta.json read by every reader: training's data set (one sample), inspect's statistics,
    and the run-folder record (meta_from_dict)."""
    from fusescope.data.folder import FolderDataset
    from fusescope.data.meta import load_meta
    from fusescope.data.stats import class_frequencies, modality_stats

    original = (data / "meta.json").read_text()
    meta = json.loads(original)
    target = meta
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    if (
        rename is not None
        and isinstance(meta.get("modalities"), dict)
        and "depth" in meta["modalities"]
    ):
        meta["modalities"][rename] = meta["modalities"].pop("depth")
    try:
        (data / "meta.json").write_text(json.dumps(meta))
        try:
            loaded = load_meta(data)
            names = [m for m in ("rgb", "depth") if m in loaded.modalities]
            if names:
                FolderDataset(data, "train", names)[0]
            class_frequencies(data, "train", loaded)
            for name in loaded.modalities:
                modality_stats(data, name, "train", loaded)
        except FusescopeError as err:
            assert str(err) and "\n" not in str(err)
    finally:
        (data / "meta.json").write_text(original)


@FUZZ
@given(
    lines=st.lists(
        st.one_of(
            st.text(max_size=8).map(lambda t: t.encode("utf-8", "surrogatepass")),
            st.binary(max_size=8),
            st.sampled_from(
                [
                    b"0000",
                    b"0001",
                    b"../0000",
                    b"/etc/passwd",
                    b"..",
                    b".",
                    b"rgb/0000",
                    b"0000.png",
                    b" 0002 ",
                    b"\xff\xfe",
                ]
            ),
        ),
        max_size=5,
    )
)
def test_any_split_file_works_or_is_a_one_line_error(data, lines):
    from fusescope.data.folder import FolderDataset

    split = data / "splits" / "fuzz.txt"
    split.write_bytes(b"\n".join(lines))
    try:
        ds = FolderDataset(data, "fuzz", ["rgb", "depth"])
        for i in range(len(ds)):
            ds[i]
    except FusescopeError as err:
        assert str(err) and "\n" not in str(err)
    finally:
        split.unlink()


# every command's path and number arguments (issue 27) -------------------------------------------


class _WorkReached(Exception):
    """The command passed every check made before its work (writing, training) begins."""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """What the commands read: a data folder, a finished run, a Taskonomy tree, an MM-IMDB
    release, a file where a folder belongs."""
    import numpy as np

    from fusescope.config import load_config
    from fusescope.engine.train import train
    from fusescope.io import write_png
    from test_mmimdb import movies, write_release

    base = tmp_path_factory.mktemp("cli")
    data = write_folder_dataset(base / "data", n=9)
    run = base / "run"
    overrides = [f"data.root={data}", "data.synth=null", *TINY_MODEL, "train.max_steps=1"]
    train(load_config(CONFIG, [*overrides, "model.backbone=test_resnet"]), run)
    rng = np.random.default_rng(0)
    for i in range(3):
        name = f"point_{i}_view_0"
        write_png(
            base / "tk" / "rgb" / f"{name}_domain_rgb.png",
            rng.integers(0, 255, (6, 8, 3), np.uint8),
        )
        write_png(
            base / "tk" / "reshading" / f"{name}_domain_reshading.png",
            rng.integers(0, 255, (6, 8), np.uint8),
        )
    write_release(base / "release", movies())
    (base / "afile").write_text("x")
    (base / "cwd").mkdir()
    return {
        "base": base,
        "data": data,
        "run": run,
        "rgb": data / "rgb" / "0000.png",
        "depth": data / "depth" / "0000.png",
        "tk": base / "tk",
        "release": base / "release",
        "afile": base / "afile",
    }


# hostile inputs and outputs ("{new}" is a fresh folder per example). "/" and other system
# folders are not outputs here: as root a command may write there, as the user asked
HOSTILE_PATHS = st.sampled_from(
    [
        "",
        " ",
        ".",
        "..",
        "/proc",
        "/proc/fusescope/x",
        "/dev/null",
        "/dev/zero",
        "-",
        "~",
        "{afile}",
        "{afile}/x",
        "{new}/a/b",
        "{new}/" + "x" * 300,
        "{new}/é ü",
        "{run}",
        "{data}",
        "{data}/rgb",
        "{depth}",
        "{tk}",
        "{release}",
    ]
)
HOSTILE_INPUTS = st.one_of(HOSTILE_PATHS, st.just("/"))
HOSTILE_NUMBERS = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.integers(-3, 3).map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "1.5", "0x10", "", "abc", "-0", "+3"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
# each argument keeps a value that works 7 times in 8, so one example reaches past the parser
# with one or two hostile values rather than stopping at the first of ten
HOSTILE = st.sampled_from([False] * 7 + [True])


def _commands(p, n, i):
    """argv of each command: outputs `p(plausible)`, inputs `i(plausible)` and numbers
    `n(plausible)`, each either the plausible value or a hostile one."""
    return {
        "synth": lambda: [
            "data",
            "synth",
            "--out",
            p("{new}/synth"),
            "--num",
            n("6"),
            "--seed",
            n("0"),
            "--size",
            n("16"),
            n("16"),
            "--workers",
            n("1"),
            "--quiet",
        ],
        "synth-posters": lambda: [
            "data",
            "synth-posters",
            p("{new}/posters"),
            "--num",
            n("6"),
            "--seed",
            n("0"),
            "--size",
            n("24"),
            n("24"),
            "--jpeg-quality",
            n("90"),
        ],
        "taskonomy": lambda: [
            "data",
            "prepare",
            "taskonomy",
            "--root",
            i("{tk}"),
            "--out",
            p("{new}/tk"),
            "--size",
            n("4"),
            n("4"),
            "--modalities",
            "rgb",
            "shade",
        ],
        "mmimdb": lambda: [
            "data",
            "prepare",
            "mmimdb",
            "--root",
            i("{release}"),
            "--out",
            p("{new}/mm"),
            "--size",
            n("8"),
            n("8"),
        ],
        "hha": lambda: [
            "data",
            "hha",
            "--depth",
            i("{depth}"),
            "--intrinsics",
            n("50"),
            n("50"),
            n("20"),
            n("16"),
            "--depth-scale",
            n("0.001"),
            "--out",
            p("{new}/hha.png"),
        ],
        "inspect": lambda: [
            "data",
            "inspect",
            i("{data}"),
            "--samples",
            p("{new}/s.png"),
            "--num-samples",
            n("2"),
        ],
        "export": lambda: [
            "export",
            i("{run}"),
            "--out",
            p("{new}/m.onnx"),
            "--size",
            n("32"),
            n("40"),
        ],
        "predict": lambda: [
            "predict",
            "{run}",
            "--rgb",
            i("{rgb}"),
            "--depth",
            i("{depth}"),
            "--out",
            p("{new}/m.png"),
            "--batch-size",
            n("1"),
            "--workers",
            n("0"),
            "--threads",
            n("1"),
        ],
        "eval": lambda: [
            "eval",
            i("{run}"),
            "--window",
            n("16"),
            n("16"),
            "--batch-size",
            n("2"),
            "--data-root",
            i("{data}"),
            "--json",
        ],
        "train": lambda: [
            "train",
            str(CONFIG),
            "--out",
            p("{new}/run"),
            "data.root={data}",
            "data.synth=null",
            *TINY_MODEL,
            f"train.max_steps={n('2')}",
        ],
        "compare": lambda: ["compare", i("{run}"), "--out", p("{new}/compare")],
        "dissect": lambda: [
            "dissect",
            "{run}",
            "{run}",
            "{run}",
            "--out",
            p("{new}/report"),
            "--probe-size",
            n("4"),
            "--batch-size",
            n("4"),
            "--epochs",
            n("1"),
            "--lr",
            n("0.05"),
            "--folds",
            n("2"),
            "--seeds",
            n("1"),
            "--level",
            n("1"),
            "--gradcam-images",
            n("1"),
            "--data-root",
            i("{data}"),
        ],
        "demo": lambda: ["demo", "--out", p("{new}/demo"), "--steps", n("2"), "--num", n("6")],
        "bench": lambda: [
            "bench",
            "known-answer",
            "rgb_only",
            "--out",
            p("{new}/bench"),
            "--steps",
            n("2"),
            "--num",
            n("6"),
            "--batch-size",
            n("2"),
        ],
    }


def _stop_where_work_begins(monkeypatch):
    """Every command stops where its checks end and its real work (generating, converting,
    exporting, predicting, evaluating, training, reporting) would begin."""
    import fusescope.bench.known_answer as known_answer
    import fusescope.data.prepare as prepare
    import fusescope.dissect.protocol as protocol
    import fusescope.engine.curves as curves
    import fusescope.tasks.segmentation.export as export
    import fusescope.tasks.segmentation.predict as predict
    from fusescope.engine import train as train_module
    from fusescope.tasks import task_of

    def stop(*args, **kwargs):
        raise _WorkReached

    for module, name in (
        (prepare, "temp_folder"),
        (export, "export_model"),
        (predict, "predict_frame"),
        (predict, "_predict_folder"),
        (curves, "compare_runs"),
        (protocol, "load_runs"),
        (known_answer, "run_benchmark"),
    ):
        monkeypatch.setattr(module, name, stop)
    segmentation = type(task_of("segmentation"))
    monkeypatch.setattr(segmentation, "build_model", stop)
    monkeypatch.setattr(segmentation, "evaluate", stop)
    real_make_fabric = train_module.make_fabric

    def one_process(t):
        real_make_fabric(t)
        return _OneProcess()

    monkeypatch.setattr(train_module, "make_fabric", one_process)


@pytest.mark.parametrize("command", sorted(_commands(None, None, None)))
@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(draw=st.data())
def test_any_path_or_number_argument_works_or_is_a_one_line_error(
    world, monkeypatch, command, draw
):
    monkeypatch.chdir(world["base"] / "cwd")
    _stop_where_work_begins(monkeypatch)
    new = Path(tempfile.mkdtemp(dir=world["base"]))
    places = {k: str(v) for k, v in world.items()} | {"new": str(new)}

    def fill(text: str) -> str:
        for key, value in places.items():
            text = text.replace("{" + key + "}", value)
        return text

    def pick(hostile):
        return lambda plausible: draw.draw(hostile) if draw.draw(HOSTILE) else plausible

    argv = _commands(pick(HOSTILE_PATHS), pick(HOSTILE_NUMBERS), pick(HOSTILE_INPUTS))[command]()
    argv = [fill(a) for a in argv]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except _WorkReached:
                code = 0
            except SystemExit as exit_:  # argparse: a usage line and one error line
                code = exit_.code
        stderr = err.getvalue()
        assert "Traceback" not in stderr
        assert code in (0, 2), (argv, stderr)
        if code == 2:
            visible = [line.rsplit("\r", 1)[-1] for line in stderr.split("\n")]
            last = [line for line in visible if line.strip()][-1]
            assert re.match(r"fusescope( [a-z-]+)*: error: .", last), (argv, stderr)
    finally:
        shutil.rmtree(new, ignore_errors=True)
        for leftover in (world["base"] / "cwd").iterdir():  # what a "." or "~" output made
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
