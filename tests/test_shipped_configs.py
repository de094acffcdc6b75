"""Every config under configs/ builds, trains 2 steps and evaluates with its own protocol.

Each config keeps its model, train and eval sections; only what the machine running the tests
cannot have is overridden: the data root (tiny data sets made here: NYUDv2, SUN RGB-D and
Cityscapes in their official formats, prepared through `fusescope data prepare`, and the
known-answer generator for configs/synthetic), the crop size, max_steps, the batch size, data
loader workers, and `pretrained: true`, which becomes a local weight file of the backbone's
shapes (random weights, made here) so nothing is downloaded. Precision stays the config's own
(bf16-mixed for real data).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import timm
from safetensors.torch import save_file

from fusescope.cli import main
from fusescope.config import load_config
from fusescope.engine.evaluate import evaluate_run
from fusescope.engine.train import train
from fusescope.io import write_png
from fusescope.models.backbones import backbone_spec, resolve_alias
from test_cityscapes import write_official_tree
from test_nyudv2 import write_v73
from test_sunrgbd import encode

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(
    p.relative_to(ROOT / "configs").as_posix()
    for p in (ROOT / "configs").glob("*/*.yaml")
    # classification: tests/test_classification_configs.py; _base_: shared parts, not configs
    if p.parent.name not in ("classification", "_base_")
)
FRAME = (32, 40)  # prepared frames (H, W); real-data configs train on crops of this size
CROP = list(FRAME)


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory):
    """Data sets and weight files, made on first use and shared by the module's tests."""
    base = tmp_path_factory.mktemp("shipped")
    made: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in made:
            if kind.startswith("weights/"):
                made[kind] = make_weights(base / "weights", kind.split("/", 1)[1])
            else:
                made[kind] = MAKERS[kind](base / kind)
        return made[kind]

    return get


def make_nyudv2(tmp: Path) -> Path:
    """3 frames in the official files (v7.3 labelled .mat, splits.mat, classMapping40.mat)."""
    tmp.mkdir()
    rng = np.random.default_rng(0)
    n, (h, w) = 3, FRAME
    rgb = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 9.0, (n, h, w))
    write_v73(
        tmp / "labeled.mat",
        {
            "images": rgb.transpose(0, 3, 2, 1),
            "depths": depth.transpose(0, 2, 1),
            "rawDepths": depth.transpose(0, 2, 1),
            "labels": rng.integers(0, 895, (n, h, w)).astype(np.uint16).transpose(0, 2, 1),
        },
    )
    scipy.io.savemat(
        tmp / "splits.mat", {"trainNdxs": np.array([[1], [3]]), "testNdxs": np.array([[2]])}
    )
    names = np.array([f"class{i}" for i in range(40)], dtype=object)
    scipy.io.savemat(
        tmp / "map40.mat",
        {"mapClass": rng.integers(1, 41, 894)[None, :], "className": names[None, :]},
    )
    out = tmp / "nyudv2"
    assert (
        main(
            [
                "data",
                "prepare",
                "nyudv2",
                "--mat",
                str(tmp / "labeled.mat"),
                "--splits",
                str(tmp / "splits.mat"),
                "--mapping",
                str(tmp / "map40.mat"),
                "--hha",  # the SA-Gate configs feed RGB + HHA, as the paper
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def make_sunrgbd(tmp: Path) -> Path:
    """3 frames in the official tree (image, depth_bfx, depth, intrinsics, labels, lists)."""
    rng = np.random.default_rng(1)
    src = tmp / "src"
    lists = {"test": [], "train": []}
    for k in range(1, 4):
        frame = f"SUNRGBD/kv1/NYUdata/NYU{k:04d}"
        img = f"{frame}/image/NYU{k:04d}.jpg"
        lists["test" if k == 1 else "train"].append(img)
        write_png(src / img, rng.integers(0, 256, (*FRAME, 3), dtype=np.uint8))
        mm = rng.integers(500, 9500, FRAME).astype(np.uint16)
        write_png(src / frame / "depth_bfx" / f"NYU{k:04d}.png", encode(mm))
        write_png(src / frame / "depth" / f"NYU{k:04d}.png", encode(mm))
        (src / frame / "intrinsics.txt").write_text("518 0 20\n0 519 16\n0 0 1\n")
        write_png(src / "labels" / f"img-{k:06d}.png", rng.integers(0, 38, FRAME, dtype=np.uint8))
    (src / "sunrgbd_testing_images.txt").write_text("\n".join(lists["test"]) + "\n")
    (src / "sunrgbd_training_images.txt").write_text("\n".join(lists["train"]) + "\n")
    out = tmp / "sunrgbd"
    assert (
        main(
            ["data", "prepare", "sunrgbd", str(src), "--out", str(out), "--any-split-size", "--hha"]
        )
        == 0
    )
    return out


def make_synthetic(tmp: Path, modalities: tuple[str, ...] = ()) -> Path:
    out = tmp / "synthetic"
    extra = ["--modalities", *modalities] if modalities else []
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(out),
                "--num",
                "12",
                "--seed",
                "0",
                "--size",
                *map(str, FRAME),
                *extra,
            ]
        )
        == 0
    )
    return out


def make_synthetic_thermal(tmp: Path) -> Path:
    """The known-answer rooms with the thermal modality (and its thermal-only classes)."""
    return make_synthetic(tmp, ("rgb", "depth", "thermal"))


def make_weights(tmp: Path, name: str) -> Path:
    """A timm state dict of `name` (random init) as safetensors: the shapes of real weights
    (an alias such as mit_b3 is its timm model with the alias's arguments)."""
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"{name}.safetensors"
    arch, kwargs = resolve_alias(name)
    state = timm.create_model(arch, pretrained=False, **kwargs).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def make_translation(tmp: Path) -> Path:
    """The known-answer generator with the translation modalities."""
    out = tmp / "translation"
    modalities = ["rgb", "depth", "texture", "shade", "normal", "edge"]
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(out),
                "--num",
                "12",
                "--seed",
                "0",
                "--size",
                *map(str, FRAME),
                "--modalities",
                *modalities,
            ]
        )
        == 0
    )
    return out


def make_cityscapes(tmp: Path) -> Path:
    """3 train and 2 val frames in the official tree, prepared with disparity (SA-Gate's
    RGB + disparity)."""
    write_official_tree(tmp / "src", size=FRAME)
    out = tmp / "cityscapes"
    args = ["data", "prepare", "cityscapes", str(tmp / "src"), "--out", str(out)]
    assert main([*args, "--depth-mode", "disparity"]) == 0
    return out


MAKERS = {
    "cityscapes": make_cityscapes,
    "nyudv2": make_nyudv2,
    "sunrgbd": make_sunrgbd,
    "synthetic": make_synthetic,
    "synthetic_thermal": make_synthetic_thermal,
    "translation": make_translation,
}


@pytest.mark.parametrize("config", CONFIGS)
def test_config_trains_and_evaluates(config, tiny_sets, tmp_path):
    path = ROOT / "configs" / config
    shipped = load_config(path)
    kind = config.split("/")[0]
    if "thermal" in shipped.data.modalities:
        kind += "_thermal"
    overrides = [
        f"data.root={tiny_sets(kind)}",
        "data.synth=null",
        "data.num_workers=0",
        "train.max_steps=2",
        "train.batch_size=2",
        "train.progress=false",
    ]
    if shipped.data.crop_size is not None:
        overrides.append(f"data.crop_size={CROP}")
    if shipped.eval.window is not None:
        overrides.append(f"eval.window={CROP}")
    if shipped.model.get("pretrained") is True:
        name, _ = backbone_spec(shipped.model.backbone)
        overrides.append(f"model.pretrained={tiny_sets('weights/' + name)}")
    cfg = load_config(path, overrides)
    assert cfg.train.precision == shipped.train.precision
    run = train(cfg, tmp_path / "run")
    try:
        log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert log[-1]["step"] == 2 and math.isfinite(log[-1]["loss"])
        result = evaluate_run(run)  # the config's own split, tta and scales
        assert result["split"] == shipped.eval.split and result["tta"] == shipped.eval.tta
        if shipped.task == "translation":
            assert 0.0 < result["l1"] < 1.0 and math.isfinite(result["fid"])
            assert result["feature_network"]
        else:
            assert 0.0 <= result["miou"] <= 1.0
            if "thermal" in shipped.data.modalities:  # the M = 3 known answer's own group
                assert "thermal" in result["cue_group_miou"]
    finally:
        # a ResNet-101 run folder holds GBs (checkpoint + weights): free the disk per config
        shutil.rmtree(run, ignore_errors=True)
