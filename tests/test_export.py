"""ONNX export: every registered method exports (or says in one line why it cannot), and ONNX
Runtime's logits match PyTorch's; `export` / `predict --onnx` on a run folder, and bad input.

Thresholds: max |ONNX Runtime - PyTorch| logit difference <= 1e-4 (float32; observed ~1e-7)
and argmax agreement >= 99.9% of pixels (a near-tie may flip one).
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import TINY_MODEL, tiny_backbone, write_folder_dataset
from fusescope.cli import main
from fusescope.errors import FusescopeError
from fusescope.models import FUSION_METHODS, build_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from fusescope.tasks.segmentation.export import export_model  # noqa: E402

MAX_ABS_DIFF = 1e-4
MIN_ARGMAX_AGREEMENT = 0.999
CHANNELS = {"rgb": 3, "depth": 1}

TINY_MIT = {
    "name": "mit_b0",
    "depths": [1, 1, 1, 1],
    "embed_dims": [8, 16, 32, 64],
    "num_heads": [1, 1, 2, 2],
}
# tiny settings per method; methods not listed are built with their defaults
TINY = {
    "unimodal": ({"name": "unimodal"}, ["rgb"]),
    "mango": (
        {"name": "mango", "blocks": 1, "flow_width": 8, "attn_dim": 8, "coupling_hidden": 8},
        ["rgb", "depth"],
    ),
    # ops on transformer tokens (a ResNet is refused): on a tiny MiT
    **{
        name: ({"name": name, "backbone": TINY_MIT}, ["rgb", "depth"])
        for name in ("tokenfusion", "geminifusion")
    },
}
# methods that cannot export with dynamic height and width, and the reason they must give
CANNOT_EXPORT = {"mango": "fixed token grid"}


def tiny_model(name):
    cfg, mods = TINY.get(name, ({"name": name}, ["rgb", "depth"]))
    cfg = {"backbone": tiny_backbone(name), **cfg}
    return build_model(cfg, mods, {m: CHANNELS[m] for m in mods}, 3).eval(), mods


def compare(path, model, mods, size):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    xs = {m: torch.randn(2, CHANNELS[m], *size) for m in mods}
    with torch.no_grad():
        ref = model(xs)["logits"].numpy()
    got = session.run(["logits"], {m: x.numpy() for m, x in xs.items()})[0]
    return float(np.abs(got - ref).max()), float((got.argmax(1) == ref.argmax(1)).mean())


@pytest.mark.parametrize("name", FUSION_METHODS.names())
def test_every_method_exports_or_says_why(name, tmp_path):
    model, mods = tiny_model(name)
    out = tmp_path / f"{name}.onnx"
    if name in CANNOT_EXPORT:
        with pytest.raises(FusescopeError, match=CANNOT_EXPORT[name]) as err:
            export_model(model, mods, CHANNELS, out, size=(32, 40))
        assert "\n" not in str(err.value)
        assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written
        return
    export_model(model, mods, CHANNELS, out, size=(32, 40))
    for size in [(32, 40), (45, 61)]:  # the traced size and another: H, W are dynamic
        diff, agree = compare(out, model, mods, size)
        assert diff <= MAX_ABS_DIFF, (name, size, diff)
        assert agree >= MIN_ARGMAX_AGREEMENT, (name, size, agree)


def test_mango_without_grid_says_why(tmp_path):
    cfg = {
        "name": "mango",
        "backbone": "resnet18",
        "blocks": 1,
        "flow_width": 8,
        "attn_dim": 8,
        "coupling_hidden": 8,
        "grid": None,
        "partitions": ["mmca", "imca"],
    }
    model = build_model(cfg, ["rgb", "depth"], CHANNELS, 3).eval()
    with pytest.raises(FusescopeError, match="tracing freezes"):
        export_model(model, ["rgb", "depth"], CHANNELS, tmp_path / "m.onnx", size=(64, 64))


class SizeBaked(torch.nn.Module):
    """A model whose trace freezes the input width: right at the export size only."""

    modalities = ["rgb"]

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, batch):
        x = batch["rgb"]
        return {"logits": self.conv(x) * float(x.shape[-1])}


def test_export_that_disagrees_with_pytorch_is_refused(tmp_path):
    with pytest.raises(FusescopeError, match="differ from PyTorch's"):
        export_model(SizeBaked().eval(), ["rgb"], CHANNELS, tmp_path / "m.onnx", size=(32, 40))
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny finished runs of one config (different seeds) on the conftest data."""
    from fusescope.config import load_config
    from fusescope.engine.train import train
    from test_engine import CONFIG

    root = tmp_path_factory.mktemp("export")
    data = write_folder_dataset(root / "data")
    out = []
    for seed in (0, 1):
        cfg = load_config(
            CONFIG,
            [
                f"data.root={data}",
                "data.synth=null",
                *TINY_MODEL,
                "train.max_steps=2",
                f"train.seed={seed}",
            ],
        )
        out.append(train(cfg, root / f"run{seed}"))
    return data, out


def test_export_then_predict_onnx_equals_pytorch(runs, tmp_path, capsys):
    data, (run, other) = runs
    onnx_path = tmp_path / "model.onnx"
    assert main(["export", str(run), "--out", str(onnx_path)]) == 0
    assert "opset 17" in capsys.readouterr().out
    info = json.loads((tmp_path / "model.onnx.json").read_text())
    stats = json.loads((run / "run.json").read_text())["normalization"]
    assert list(info["modalities"]) == ["rgb", "depth"]
    assert info["modalities"]["depth"]["mean"] == stats["depth"]["mean"]
    assert [c["name"] for c in info["classes"]] == ["c0", "c1", "c2"]
    frame = ["--rgb", str(data / "rgb/0000.png"), "--depth", str(data / "depth/0000.png")]
    assert main(["predict", str(run), *frame, "--out", str(tmp_path / "torch.png")]) == 0
    assert (
        main(
            [
                "predict",
                str(run),
                *frame,
                "--onnx",
                str(onnx_path),
                "--threads",
                "1",
                "--out",
                str(tmp_path / "onnx.png"),
            ]
        )
        == 0
    )
    from fusescope.io import read_image

    a, b = read_image(tmp_path / "torch.png"), read_image(tmp_path / "onnx.png")
    assert (a == b).mean() >= MIN_ARGMAX_AGREEMENT

    # bad input: one line, exit 2, nothing written
    capsys.readouterr()
    assert (
        main(
            [
                "predict",
                str(other),
                *frame,
                "--onnx",
                str(onnx_path),
                "--out",
                str(tmp_path / "x.png"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "exported from another run" in err and err.count("\n") == 1
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    assert (
        main(
            [
                "predict",
                str(run),
                *frame,
                "--onnx",
                str(tmp_path / "junk.onnx"),
                "--out",
                str(tmp_path / "x.png"),
            ]
        )
        == 2
    )
    assert "junk.onnx: not an ONNX model" in capsys.readouterr().err
    assert main(["export", str(run), "--out", str(tmp_path / "model.txt")]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "model.txt").exists()


def test_exported_file_runs_without_fusescope(runs, tmp_path):
    """A deployment needs only onnxruntime, numpy and the JSON beside the model."""
    data, (run, _) = runs
    assert main(["export", str(run), "--out", str(tmp_path / "m.onnx")]) == 0
    script = f"""
import json, numpy as np, onnxruntime as ort
from PIL import Image
info = json.load(open({str(tmp_path / "m.onnx.json")!r}))
s = ort.InferenceSession({str(tmp_path / "m.onnx")!r}, providers=["CPUExecutionProvider"])
rgb = np.asarray(Image.open({str(data / "rgb/0000.png")!r}), np.float32).transpose(2, 0, 1) / 255
d = np.asarray(Image.open({str(data / "depth/0000.png")!r})).astype(np.float32)[None]
d = d * info["modalities"]["depth"]["scale_m_per_unit"]
norm = lambda x, m: (x - np.reshape(m["mean"], (-1, 1, 1))) / np.reshape(m["std"], (-1, 1, 1))
feeds = {{"rgb": norm(rgb, info["modalities"]["rgb"])[None].astype(np.float32),
          "depth": np.where(d > 0, norm(d, info["modalities"]["depth"]),
                            0)[None].astype(np.float32)}}
np.save({str(tmp_path / "ids.npy")!r}, s.run(["logits"], feeds)[0][0].argmax(0))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (
        main(
            [
                "predict",
                str(run),
                "--rgb",
                str(data / "rgb/0000.png"),
                "--depth",
                str(data / "depth/0000.png"),
                "--out",
                str(tmp_path / "torch.png"),
            ]
        )
        == 0
    )
    from fusescope.io import read_image

    ids, ref = np.load(tmp_path / "ids.npy"), read_image(tmp_path / "torch.png")
    assert ids.shape == ref.shape == (32, 40)
    assert (ids == ref).mean() >= MIN_ARGMAX_AGREEMENT


@pytest.fixture(scope="module")
def cen3(tmp_path_factory):
    """A tiny CEN run over three modalities (rgb, depth, hha), some gammas below theta so that
    channels are exchanged (M > 2: the mean of the other two)."""
    from fusescope.config import load_config
    from fusescope.engine.train import train
    from test_engine import ROOT

    root = tmp_path_factory.mktemp("cen3")
    data = write_folder_dataset(root / "data", modalities=("rgb", "depth", "hha"))
    cfg = load_config(
        ROOT / "configs" / "synthetic" / "cen.yaml",
        [
            f"data.root={data}",
            "data.synth=null",
            "data.modalities=[rgb,depth,hha]",
            *TINY_MODEL,
            "train.max_steps=2",
            "model.theta=0.999",  # gammas start at 1 and move: some fall below
        ],
    )
    return data, train(cfg, root / "run")


def test_three_modality_cen_exports_and_predicts_like_pytorch(cen3, tmp_path, capsys):
    data, run = cen3
    onnx_path = tmp_path / "cen3.onnx"
    assert main(["export", str(run), "--out", str(onnx_path), "--quiet"]) == 0
    info = json.loads((tmp_path / "cen3.onnx.json").read_text())
    assert list(info["modalities"]) == ["rgb", "depth", "hha"]
    frame = [f"--{m}={data / m / '0000.png'}" for m in ("rgb", "depth", "hha")]
    for name, extra in (("torch", []), ("onnx", ["--onnx", str(onnx_path)])):
        out = tmp_path / f"{name}.png"
        assert main(["predict", str(run), *frame, *extra, "--out", str(out)]) == 0
    from fusescope.io import read_image

    a, b = read_image(tmp_path / "torch.png"), read_image(tmp_path / "onnx.png")
    assert (a == b).mean() >= MIN_ARGMAX_AGREEMENT


def test_onnx_with_a_modality_absent_follows_the_pytorch_rule(runs, cen3, tmp_path, capsys):
    """Left out: PyTorch combines only the present streams' logits (CEN's ensemble
    renormalised); the ONNX file gives the streams' logits and the same rule is applied, so the
    two agree (before, ONNX fed zeros to every stream and kept the absent one's logits)."""
    from fusescope.engine.checkpoint import load_run
    from fusescope.engine.missing import ModalityAbsent
    from fusescope.tasks.segmentation.export import OnnxSegmentor

    data, run = cen3
    onnx_path = tmp_path / "cen3.onnx"
    assert main(["export", str(run), "--out", str(onnx_path), "--quiet"]) == 0
    loaded = load_run(run)
    channels = {m: loaded.meta.modalities[m].channels for m in ("rgb", "depth", "hha")}
    batch = {m: torch.randn(2, channels[m], 32, 40) for m in ("rgb", "hha")}
    for absent in (["depth"], ["depth", "hha"]):
        present = {m: x for m, x in batch.items() if m not in absent}
        with torch.no_grad():
            ref = ModalityAbsent(loaded.model.eval(), absent, channels)(present)["logits"]
        onnx = OnnxSegmentor(onnx_path, loaded, threads=1)
        got = ModalityAbsent(onnx, absent, channels)(present)["logits"]
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
        # the old way (every stream fed, the ensemble over all of them) differs
        full = onnx({**present, **{m: torch.zeros(2, channels[m], 32, 40) for m in absent}})
        assert (full["logits"] - ref).abs().max() > 1e-3

    frame = ["--rgb", str(data / "rgb/0000.png"), "--hha", str(data / "hha/0000.png")]
    for name, extra in (("torch", []), ("onnx", ["--onnx", str(onnx_path)])):
        out = tmp_path / f"{name}_rgb_hha.png"
        assert main(["predict", str(run), *frame, *extra, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.count("only the present streams' logits are combined") == 2
    from fusescope.io import read_image

    masks = [read_image(tmp_path / f"{n}_rgb_hha.png") for n in ("torch", "onnx")]
    assert (masks[0] == masks[1]).mean() >= MIN_ARGMAX_AGREEMENT

    # a file exported before the streams were outputs cannot follow the rule: one line
    onnx = OnnxSegmentor(onnx_path, loaded, threads=1)
    onnx.streams = {}
    with pytest.raises(FusescopeError, match="export the run again"):
        ModalityAbsent(onnx, ["depth"], channels)
