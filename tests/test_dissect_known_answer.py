"""Known answer, guarded against wiring-only passes: training must produce the specialisation.

The tiny data set of conftest is a known-answer set: class 1 is red in RGB and flat in depth
(appearance-only), class 2 is closer in depth and painted like the background (geometry-only).
Even an untrained network passes colour and depth through its first stages, so "RGB features
carry class 1 better than depth features" holds before any training. What training must add is
a larger lead: on two data seeds, an RGB-only and a depth-only model are trained briefly, and
the held-out Set IoU lead of each modality on its own cue group (above the noise floor, read by
the protocol's `specialisation`) must exceed that of untrained models of the same architecture
by a margin, with the protocol's verdict "yes" for the trained ones.

Measured while writing it (48x64 frames, 80 steps, stage 3): specialisation (appearance lead +
geometry lead) 0.47 and 0.39 trained vs 0.29 and 0.22 untrained on data seeds 3 and 4.
"""

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from conftest import TINY_MODEL, write_folder_dataset
from fusescope.config import load_config
from fusescope.data.batching import collate
from fusescope.data.folder import FolderDataset
from fusescope.dissect.net2vec import HeldOutSplit, Net2Vec
from fusescope.dissect.protocol import DissectOptions, RunInput, specialisation
from fusescope.dissect.taps import Tap, stream_features
from fusescope.engine.checkpoint import build_run_model, load_run
from fusescope.engine.train import train
from test_engine import ROOT

CUES = ["both", "appearance", "geometry"]
META = SimpleNamespace(
    class_names=["c0", "c1", "c2"], classes=[SimpleNamespace(cue=c) for c in CUES]
)
SIZE = (48, 64)
LEVEL = 2  # stage 3, stride 16: 3x4 cells; stages 1-2 carry the answer untrained too
MARGIN = 0.1  # trained minus untrained specialisation


def held_out(runs, data):
    """`specialisation` of the separately trained features: held-out Set IoU over 2-fold
    splits (3 of them) and the noise floor, as the protocol computes them (its default
    settings, pixel sampling included)."""
    probe = FolderDataset(data, "test", ["rgb", "depth"])
    loader = torch.utils.data.DataLoader(probe, batch_size=9, collate_fn=collate)
    taps = {m: (m, Tap("encoder", index=LEVEL)) for m in runs}
    adapt = {m: RunInput(run, "cpu") for m, run in runs.items()}
    cache = {m: [] for m in runs}
    for batch, feats in stream_features(
        {m: r.model for m, r in runs.items()}, taps, loader, adapt=adapt
    ):
        for m in runs:
            cache[m].append((feats[m], batch["label"]))
    splits, floors = {}, {}
    opts = DissectOptions()  # the protocol's probe settings (epochs, lr, sampled pixels)
    net2vec = Net2Vec(3, epochs=opts.epochs, lr=opts.lr, pixels=opts.pixels)
    held = [HeldOutSplit(s, floor) for floor in (False, True) for s in range(opts.seeds)]
    for m in runs:
        acts = torch.cat([a for a, _ in cache[m]])
        labels = torch.cat([lab for _, lab in cache[m]])
        scores = net2vec.held_out(acts, labels, held, folds=opts.folds)
        splits[f"{m}_sep"], floors[f"{m}_sep"] = scores[: opts.seeds], scores[opts.seeds :]
    return specialisation(splits, floors, META, level=LEVEL, margin=0.1)


def lead(spec):
    """Appearance lead of RGB plus geometry lead of depth, above the noise floor."""
    return sum(d["lead"] for d in spec["known_answer_detail"].values())


@pytest.mark.slow
@pytest.mark.parametrize("data_seed", [3, 4])
def test_training_makes_rgb_specialise_in_appearance_and_depth_in_geometry(tmp_path, data_seed):
    ids = [f"{i:04d}" for i in range(36)]
    data = write_folder_dataset(
        tmp_path / "data",
        n=36,
        size=SIZE,
        seed=data_seed,
        splits={"train": ids[:18], "val": ids[18:], "test": ids[18:]},
    )
    common = [
        f"data.root={data}",
        "data.synth=null",
        *TINY_MODEL,
        f"data.crop_size=[{SIZE[0]},{SIZE[1]}]",
        "train.max_steps=80",
        "train.ckpt_every=80",
    ]
    trained = {}
    for modality, config in (("rgb", "rgb_only"), ("depth", "depth_only")):
        cfg = load_config(ROOT / "configs" / "synthetic" / f"{config}.yaml", common)
        trained[modality] = load_run(train(cfg, tmp_path / modality))
    torch.manual_seed(data_seed)
    untrained = {
        m: dataclasses.replace(run, model=build_run_model(run.cfg, run.meta).eval())
        for m, run in trained.items()
    }
    after, before = held_out(trained, data), held_out(untrained, data)
    assert after["known_answer"] == {
        "rgb_leads_on_appearance": "yes",
        "depth_leads_on_geometry": "yes",
    }, after["known_answer_detail"]
    assert lead(after) > lead(before) + MARGIN, (
        after["known_answer_detail"],
        before["known_answer_detail"],
    )
