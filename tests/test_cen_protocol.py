"""Translation under the protocol of CEN's own code (configs/translation/cen_authors.yaml): its
input mapping against the loader's steps written out, the per-stream discriminator against a
loop over streams as the CEN code runs it, scoring in training mode, and the per-stream report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fusescope.config import load_config
from fusescope.data.batching import collate
from fusescope.data.meta import ModalitySpec, load_meta
from fusescope.data.paired import CenInputMap
from fusescope.errors import FusescopeError
from fusescope.tasks.translation import (
    TranslationTask,
    adversarial_losses,
    gan_criterion,
    scoring_mode,
)
from translation_helpers import write_translation_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_translation_dataset(tmp_path_factory.mktemp("cen") / "data", n=8, size=(32, 32))


def config(root, *overrides):
    return load_config(
        ROOT / "configs" / "translation" / "cen_authors.yaml",
        [
            f"data.root={root}",
            "data.synth=null",
            "data.modalities=[shade,depth]",
            "model.depth=3",
            "model.width=4",
            "model.dropout=2",
            "model.disc_width=4",
            "model.disc_layers=2",
            "train.batch_size=2",
            "eval.batch_size=4",
            *overrides,
        ],
    )


def cen_loader_reference(png: np.ndarray, domain: str) -> np.ndarray:
    """CEN's utils/dataset.py + ToTensor + Normalize(0.5, 0.5) on one PNG array, step by step:
    depth -> log(1 + x); depth and edges scaled by 255 / max_v; cast to uint8; / 255; 2x - 1."""
    max_v = {"edge_texture": 11355, "depth_zbuffer": 11.1}
    img = png.astype(np.float64)
    if "depth" in domain:
        img = np.log(1 + img)
    if domain in max_v:
        img = img * 255.0 / max_v[domain]
    return (img.astype(np.uint8) / 255.0 - 0.5) / 0.5


def test_inputs_are_mapped_as_cens_loader_maps_them():
    raw_depth = np.array([[0, 1, 7, 512, 2000], [6000, 20000, 40000, 65000, 65534]], np.uint16)
    shade = np.array([[0, 1, 127, 128, 255]], np.uint8)
    specs = {
        "depth": ModalitySpec("depth", 1, 1 / 512, "1/512 m"),
        "shade": ModalitySpec("image", 1),
    }
    # what `load_modality` gives: depth in metres (float32), 8-bit images in [0, 1]
    sample = {
        "depth": torch.from_numpy(raw_depth.astype(np.float32) * np.float32(1 / 512))[None],
        "shade": torch.from_numpy(shade / np.float32(255))[None],
    }
    out = CenInputMap(specs)(sample)
    np.testing.assert_allclose(
        out["depth"][0].numpy(), cen_loader_reference(raw_depth, "depth_zbuffer"), atol=1e-6
    )
    np.testing.assert_allclose(
        out["shade"][0].numpy(), cen_loader_reference(shade, "reshading"), atol=1e-6
    )
    # Taskonomy's edge texture is written 8-bit as floor(raw x 255 / 11355) at preparation
    # (data/taskonomy.py), which the map then takes to [-1, 1] as the loader does
    raw_edge = np.array([[0, 44, 45, 5000, 11355]], np.uint16)
    written = np.floor(raw_edge.astype(np.float64) * 255 / 11355).astype(np.uint8)
    edge = CenInputMap({"texture": ModalitySpec("image", 1)})(
        {"texture": torch.from_numpy(written / np.float32(255))[None]}
    )["texture"]
    np.testing.assert_allclose(
        edge[0].numpy(), cen_loader_reference(raw_edge, "edge_texture"), atol=1e-6
    )


def test_the_dataset_uses_the_map_and_the_option_is_checked(data):
    task = TranslationTask()
    cfg = config(data)
    stats = task.normalisation_stats(cfg)
    sample = task.eval_dataset(cfg, "val", stats)[0]
    for m in ("shade", "depth"):
        assert -1 <= float(sample[m].min()) and float(sample[m].max()) <= 1
    plain = task.eval_dataset(config(data, "data.input_map=train_stats"), "val", stats)[0]
    assert not torch.allclose(plain["depth"], sample["depth"])
    with pytest.raises(FusescopeError, match="data.input_map='cent' unknown; known: train_stats"):
        config(data, "data.input_map=cent")
    with pytest.raises(FusescopeError, match="maps translation inputs; task is segmentation"):
        load_config(None, ["data.input_map=cen"])


def test_each_stream_is_judged_given_its_own_input(data):
    """`disc_condition: stream`: the loss's adversarial terms equal the CEN code's loop over
    streams, D(x_l, fake_l) and D(x_l, y) with stream l's input alone (depth tiled to 3
    channels as the generator tiles it), and differ from judging given every input."""
    task = TranslationTask()
    cfg = config(data, "data.modalities=[normal,depth]")
    meta = load_meta(data)
    model = task.build_model(cfg, meta)
    assert model.discriminator.net[0].in_channels == 3 + 3  # one stream's input + the image
    stats = task.normalisation_stats(cfg)
    ds = task.train_dataset(cfg, stats, seed=0)
    batch = {k: v for k, v in collate([ds[(0, i)] for i in range(2)]).items() if k != "id"}
    out = model(batch)
    critic = out["critic"]
    assert isinstance(critic.condition, list) and len(critic.condition) == 2
    torch.testing.assert_close(critic.condition[1], batch["depth"].expand(-1, 3, -1, -1))
    y = batch["target:rgb"]
    fakes = list(out["per_modality"].values())
    g, d = adversarial_losses(critic.discriminator, critic.condition, y, fakes, "vanilla")
    D = model.discriminator
    g_ref = sum(
        gan_criterion(D(x, f), True, "vanilla")
        for x, f in zip(critic.condition, fakes, strict=True)
    )
    d_ref = sum(
        0.5 * (gan_criterion(D(x, y), True, "vanilla") + gan_criterion(D(x, f), False, "vanilla"))
        for x, f in zip(critic.condition, fakes, strict=True)
    )
    torch.testing.assert_close(g, g_ref)
    torch.testing.assert_close(d, d_ref)
    # and it can fail: one condition for both streams gives other terms
    g_one, _ = adversarial_losses(D, [critic.condition[0]] * 2, y, fakes, "vanilla")
    assert (g_one - g).abs().max() > 1e-6
    # a single-stream generator of several inputs has no stream to condition on
    with pytest.raises(FusescopeError, match="disc_condition: stream conditions each stream"):
        task.build_model(
            load_config(
                None,
                [
                    "task=translation",
                    f"data.root={data}",
                    "data.modalities=[normal,depth]",
                    "data.targets=[rgb]",
                    "model={name: early_concat, depth: 3, width: 4, dropout: 0}",
                    "model.disc_condition=stream",
                ],
            ),
            meta,
        )


def test_scoring_in_training_mode_keeps_dropout_on_repeats_and_moves_nothing(data):
    task = TranslationTask()
    meta = load_meta(data)
    cfg = config(data)
    model = task.build_model(cfg, meta)
    model.register_buffer("probe", torch.arange(3.0))  # any buffer must come back unchanged
    stats = task.normalisation_stats(cfg)
    ds = task.eval_dataset(cfg, "val", stats)
    batch = {k: v for k, v in collate([ds[i] for i in range(2)]).items() if k != "id"}

    def image(mode):
        with torch.no_grad(), scoring_mode(model, mode):
            assert model.training == (mode == "train")
            model.probe += 1  # a buffer moved during scoring
            return model(batch)["image"]

    model.eval()
    plain = image("eval")
    assert torch.equal(model.probe, torch.arange(3.0) + 1)  # eval mode restores nothing
    model.probe.copy_(torch.arange(3.0))
    first, second = image("train"), image("train")
    assert not model.training and torch.equal(model.probe, torch.arange(3.0))
    assert torch.equal(first, second)  # the dropout masks come from a fixed seed
    assert (first - plain).abs().max() > 1e-4  # dropout is on
    # without dropout, instance norms without running statistics normalise alike in both modes
    no_dropout = task.build_model(config(data, "model.dropout=0"), meta)
    with torch.no_grad(), scoring_mode(no_dropout, "train"):
        a = no_dropout(batch)["image"]
    with torch.no_grad(), scoring_mode(no_dropout, "eval"):
        b = no_dropout(batch)["image"]
    torch.testing.assert_close(a, b)


def test_eval_scores_each_stream_and_the_ensemble(data, tmp_path, capsys):
    from fusescope.cli import main

    run = tmp_path / "run"
    args = [
        "train",
        str(ROOT / "configs" / "translation" / "cen_authors.yaml"),
        "--out",
        str(run),
        f"data.root={data}",
        "data.synth=null",
        "model.depth=3",
        "model.width=4",
        "model.dropout=2",
        "model.disc_width=4",
        "model.disc_layers=2",
        "train.batch_size=2",
        "train.max_steps=2",
        "train.eval_every=1",
        "train.log_every=1",
        "train.progress=false",
        "eval.batch_size=4",
        "--quiet",
    ]
    assert main(args) == 0
    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in log if "val_best_fid" in r]
    assert [r["step"] for r in evaluations] == [1]  # the last step's evaluation is `eval`'s
    assert math.isfinite(evaluations[0]["val_best_fid"]) and "val_fid" in evaluations[0]
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["generator_mode"] == "train" and result["input_map"] == "cen"
    streams = result["per_stream"]
    assert set(streams) == {"shade", "texture", "ensemble"}
    for key in ("l1", "psnr", "ssim", "fid", "kid"):
        assert streams["ensemble"][key] == result[key]  # the scored image is the ensemble
    assert streams["shade"]["fid"] != streams["texture"]["fid"]
    best = min(streams, key=lambda k: streams[k]["fid"])
    assert result["best_output"] == {
        "output": best,
        **{k: streams[best][k] for k in ("fid", "kid", "l1")},
    }
    assert result["per_modality_l1"] == {m: streams[m]["l1"] for m in ("shade", "texture")}
    assert result["comparable_to_published"] is False
    # EfficientNet-Lite0 features: not even FID's network
    assert result["published_pipeline_differences"] == ["not FID's Inception-v3 features"]
    assert main(["eval", str(run)]) == 0
    text = capsys.readouterr().out
    assert "lowest FID (CEN's report)" in text and "training mode" in text
