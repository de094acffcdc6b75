"""Dissection of a multi-stream joint run (TokenFusion on MiT) and taps on transformer tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY_MODEL
from fusescope.cli import main
from fusescope.dissect.protocol import RunInput, feature_taps, joint_features, load_runs
from fusescope.dissect.taps import FeatureTaps, Tap, stream_features
from fusescope.models import build_model
from test_protocol import cue_data

ROOT = Path(__file__).resolve().parents[1]
MIT = "{name: mit_b0, depths: [1, 1, 1, 1], embed_dims: [8, 16, 32, 64], num_heads: [1, 1, 2, 2]}"
CONFIGS = [ROOT / "configs" / "synthetic" / f"{n}.yaml" for n in ("rgb_only", "depth_only")]
CONFIGS.append(ROOT / "configs" / "synthetic" / "tokenfusion.yaml")


@pytest.fixture(scope="module")
def dissected(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dissect_mit")
    data = cue_data(tmp / "data")
    runs = [tmp / n for n in ("rgb", "depth", "joint")]
    overrides = [f"data.root={data}", "data.synth=null", *TINY_MODEL, f"model.backbone={MIT}"]
    code = main(
        [
            "dissect",
            *map(str, runs),
            "--out",
            str(tmp / "report"),
            "--train",
            *map(str, CONFIGS),
            *[f"--set={o}" for o in overrides],
            "--probe-size",
            "0",
            "--batch-size",
            "4",
            "--epochs",
            "2",
            "--gradcam-images",
            "1",
            "--seeds",
            "1",
            "--quiet",
        ]
    )
    assert code == 0
    return tmp


@pytest.mark.slow
def test_a_tokenfusion_joint_run_is_dissected(dissected):
    results = json.loads((dissected / "report" / "results.json").read_text())
    level = str(results["levels"]["net2vec"][-1])
    for feature in ("rgb_joint", "depth_joint", "fused", "cat_joint"):
        assert len(results["set_iou"][level][feature]) == 3
    assert "rgb_joint/3" in json.dumps(results["cka"])


@pytest.mark.slow
def test_joint_streams_are_the_encoders_split_output(dissected):
    runs = load_runs(*(dissected / n for n in ("rgb", "depth", "joint")))
    assert runs.multistream
    taps = feature_taps(runs, [1])
    concat = joint_features(runs, [1])
    batch = {
        "rgb": torch.rand(2, 3, 32, 40),
        "depth": torch.rand(2, 1, 32, 40),
        "label": torch.zeros(2, 32, 40, dtype=torch.long),
    }
    adapt = {n: RunInput(r, "cpu") for n, r in (("rgb", runs.rgb), ("depth", runs.depth))}
    adapt["joint"] = RunInput(runs.joint, "cpu")
    for model in runs.models.values():
        model.eval()
    _, feats = next(iter(stream_features(runs.models, taps, [batch], concat=concat, adapt=adapt)))
    joint = runs.joint.model
    with torch.no_grad():
        stacked = joint.stack_inputs(adapt["joint"](batch))
        level = joint.encoder(stacked)[1].unflatten(0, (-1, 2))  # (B, M, C, h, w)
    torch.testing.assert_close(feats["rgb_joint/1"], level[:, 0])
    torch.testing.assert_close(feats["depth_joint/1"], level[:, 1])
    torch.testing.assert_close(feats["fused/1"], torch.cat([level[:, 0], level[:, 1]], 1))


def test_token_taps_read_blocks_as_maps():
    backbone = {"name": "mit_b0", "depths": [1, 1, 1, 1], "embed_dims": [8, 16, 32, 64]}
    backbone["num_heads"] = [1, 1, 2, 2]
    model = build_model(
        {"name": "tokenfusion", "backbone": backbone}, ["rgb", "depth"], {"rgb": 3, "depth": 1}, 3
    ).eval()
    batch = {"rgb": torch.randn(2, 3, 33, 41), "depth": torch.randn(2, 1, 33, 41)}
    seen = {}
    block = model.encoder.body.stages_1.blocks[0]
    handle = block.register_forward_hook(lambda m, a, out: seen.update(tokens=out.clone()))
    tap = Tap("encoder.body.stages_1.blocks.0", split=("rgb", "depth"), tokens=True)
    with torch.no_grad(), FeatureTaps(model, {"b": tap}) as taps:
        model(batch)
    handle.remove()
    tokens = seen["tokens"]  # (B*M, 5*6, 16): stride 8 of 33 x 41
    assert taps.features["b@rgb"].shape == (2, 16, 5, 6)
    maps = tokens.transpose(1, 2).reshape(4, 16, 5, 6).unflatten(0, (-1, 2))
    torch.testing.assert_close(taps.features["b@depth"], maps[:, 1])
    # a ViT's class token is dropped, and Grad-CAM's gradient reaches a token tap
    from fusescope.dissect.gradcam import GradCAM

    vit = {"name": "vit_tiny_patch16_224", "depth": 4, "embed_dim": 32, "num_heads": 2}
    model = build_model({"name": "unimodal", "backbone": vit}, ["rgb"], {"rgb": 3}, 3).eval()
    cam = GradCAM(model, {"b": Tap("encoder.vit.blocks.1", tokens=True)})
    maps = cam({"rgb": torch.randn(2, 3, 64, 80)}, concept=1, region="predicted")
    assert maps["b"].shape == (2, 64, 80) and torch.isfinite(maps["b"]).all()
