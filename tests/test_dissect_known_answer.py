"""Known answer, on a small fixed run: RGB features carry the appearance-only class and depth
features the geometry-only class.

The tiny data set of conftest is a known-answer set: class 1 is red in RGB and flat in depth
(appearance-only), class 2 is closer in depth and painted like the background (geometry-only).
An RGB-only and a depth-only model are trained briefly; Net2Vec probes their stride-8 features;
the protocol's reading of the Set IoUs must name class 1 for RGB and class 2 for depth.
"""

from types import SimpleNamespace

import pytest
import torch

from conftest import TINY_MODEL, write_folder_dataset
from fusescope.config import load_config
from fusescope.data.folder import FolderDataset
from fusescope.dissect.net2vec import Net2Vec
from fusescope.dissect.protocol import RunInput, specialisation
from fusescope.dissect.taps import Tap, stream_features
from fusescope.engine.checkpoint import load_run
from fusescope.engine.train import collate, train
from test_engine import ROOT

CUES = ["both", "appearance", "geometry"]


@pytest.mark.slow
def test_rgb_specialises_in_appearance_and_depth_in_geometry(tmp_path):
    data = write_folder_dataset(tmp_path / "data", n=36, seed=3)
    common = [
        f"data.root={data}",
        "data.synth=null",
        *TINY_MODEL,
        "train.max_steps=40",
        "train.ckpt_every=40",
    ]
    runs = {}
    for modality, config in (("rgb", "rgb_only"), ("depth", "depth_only")):
        cfg = load_config(ROOT / "configs" / "synthetic" / f"{config}.yaml", common)
        runs[modality] = load_run(train(cfg, tmp_path / modality))
    probe = FolderDataset(data, "test", ["rgb", "depth"])
    loader = torch.utils.data.DataLoader(probe, batch_size=6, collate_fn=collate)
    level = 1  # stride 8: 4x5 cells on 32x40 frames
    taps = {m: (m, Tap("encoder", index=level)) for m in runs}
    adapt = {m: RunInput(run, "cpu") for m, run in runs.items()}
    cache = {m: [] for m in runs}
    for batch, feats in stream_features(
        {m: r.model for m, r in runs.items()}, taps, loader, adapt=adapt
    ):
        for m in runs:
            cache[m].append((feats[m], batch["label"]))
    set_iou = {}
    for m in runs:
        torch.manual_seed(0)
        set_iou[f"{m}_sep"] = (
            Net2Vec(3, epochs=30, lr=0.05).fit(lambda m=m: iter(cache[m])).set_iou.tolist()
        )
    meta = SimpleNamespace(
        class_names=["c0", "c1", "c2"], classes=[SimpleNamespace(cue=c) for c in CUES]
    )
    spec = specialisation(set_iou, meta, level=level, margin=0.1)
    assert spec["known_answer"] == {
        "rgb_leads_on_appearance": True,
        "depth_leads_on_geometry": True,
    }, set_iou
    assert spec["rgb"]["classes"] == ["c1"] and spec["depth"]["classes"] == ["c2"], set_iou
