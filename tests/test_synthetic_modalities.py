"""The generator's translation modalities (texture, shade, normal, edge): the documented image
formation checked on the written files, the loaders, and the `data.synth.modalities` contract.

The geometry / appearance split of these modalities under scene edits is tested with the other
cue-isolation checks in `test_synthetic.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fusescope.cli import main
from fusescope.config import load_config
from fusescope.data import synthetic as syn
from fusescope.data.build import ensure_data
from fusescope.data.folder import FolderDataset
from fusescope.data.meta import load_meta
from fusescope.data.stats import compute_stats
from fusescope.data.transforms import Normalize
from fusescope.errors import FusescopeError
from fusescope.io import read_image

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic" / "early_concat.yaml"
ALL = ("rgb", "depth", "texture", "shade", "normal", "edge")
SIZE = (48, 64)
SEED = 3
NUM = 10


@pytest.fixture(scope="module")
def full_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "all"
    syn.generate(root, NUM, seed=SEED, size=SIZE, progress=False, modalities=ALL)
    return root


def tree_bytes(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_extra_modalities_leave_the_default_files_unchanged(tmp_path, full_set):
    syn.generate(tmp_path / "default", NUM, seed=SEED, size=SIZE, progress=False)
    syn.generate(
        tmp_path / "reordered",
        NUM,
        seed=SEED,
        size=SIZE,
        progress=False,
        modalities=["depth", "rgb"],
    )
    default, full = tree_bytes(tmp_path / "default"), tree_bytes(full_set)
    assert tree_bytes(tmp_path / "reordered") == default  # the same set, meta.json included
    shared = [k for k in default if k != "meta.json"]
    assert len(shared) == 3 * NUM + 3
    assert all(full[k] == default[k] for k in shared)  # rgb, depth, label, splits
    assert "modalities" not in json.loads(default["meta.json"])["generator"]
    meta = json.loads(full["meta.json"])
    assert meta["generator"]["modalities"] == list(ALL)
    assert set(full) - set(default) - {"meta.json"} == {
        f"{m}/{i:06d}.png" for m in ("texture", "shade", "normal", "edge") for i in range(NUM)
    }


def test_rgb_is_texture_times_shade_up_to_quantisation(full_set):
    """rgb = round(255 clip(RGB_GAIN T S + noise)) with T, S the written 8-bit images / 255.

    T and S are each within 1/510 of the exact values t, s, so |T S - t s| <= T/510 +
    (S + 1/510)/510, and clipping is 1-Lipschitz: the written RGB is within 0.5 (its own
    rounding) + 255 RGB_GAIN (T + S + 1/510) / 510 levels of the recomposition, per pixel. The
    noise is the frame's documented field (`noise_fields`); 1e-3 levels allow for float32
    arithmetic in the renderer.
    """
    step = 1 / 510
    errors, bounds = [], []
    for i in range(NUM):
        name = f"{i:06d}.png"
        rgb = read_image(full_set / "rgb" / name).astype(np.float64)
        texture = read_image(full_set / "texture" / name) / 255.0  # (H, W, 3)
        shade = read_image(full_set / "shade" / name)[..., None] / 255.0  # (H, W, 1)
        scene = syn.sample_scene(SEED, i, SIZE)
        noise = scene.rgb_noise * syn.noise_fields(scene).rgb.transpose(1, 2, 0)
        recomposed = 255 * np.clip(syn.RGB_GAIN * texture * shade + noise, 0, 1)
        bound = 0.5 + 255 * syn.RGB_GAIN * (texture + shade + step) * step
        errors.append(np.abs(rgb - recomposed))
        bounds.append(bound)
    errors, bounds = np.stack(errors), np.stack(bounds)
    assert (errors <= bounds + 1e-3).all(), float((errors - bounds).max())
    assert bounds.max() < 3.1  # the bound itself: about 3 levels at worst
    assert errors.mean() < 1.0
    # Either factor alone cannot make RGB: with the other replaced by its mean, it is far off.
    texture_only = 255 * np.clip(syn.RGB_GAIN * texture * shade.mean(), 0, 1)
    assert np.abs(rgb - texture_only).mean() > 5


def test_texture_and_shade_never_saturate():
    """The ranges hold the documented maxima (albedo <= 1.2305, shade <= 1.84): no clip binds."""
    top_texture = top_shade = 0
    for i in range(24):
        frame = syn.render_frame(11, i, (40, 52))
        top_texture = max(top_texture, int(frame.texture.max()))
        top_shade = max(top_shade, int(frame.shade.max()))
    assert top_texture <= round(255 * 1.2305 / syn.TEXTURE_RANGE) < 255
    assert top_shade <= round(255 * 1.84 / syn.SHADE_RANGE) < 255


def test_edge_is_the_documented_sobel_of_the_texture(full_set):
    step = np.zeros((6, 8, 3), dtype=np.uint8)
    step[:, :4] = 40
    step[:, 4:] = 140  # a vertical step of 100 luminance levels (grey: every weight applies)
    edge = syn.texture_edges(step)
    assert (edge[:, 3:5] == 100).all() and (edge[:, :3] == 0).all() and (edge[:, 5:] == 0).all()
    assert np.array_equal(syn.texture_edges(step.transpose(1, 0, 2)), edge.T)
    red = np.zeros((4, 4, 3), dtype=np.uint8)
    red[:, 2:, 0] = 200  # luminance 0.299 * 200 = 59.8
    assert (syn.texture_edges(red)[:, 1:3] == 60).all()
    for i in range(NUM):  # the written edge is a function of the written texture alone
        name = f"{i:06d}.png"
        written = read_image(full_set / "edge" / name)
        assert np.array_equal(written, syn.texture_edges(read_image(full_set / "texture" / name)))


def test_normals_are_camera_frame_unit_vectors_facing_the_camera(full_set):
    floor = syn.CLASS_ID["floor"]
    checked = 0
    for i in range(NUM):
        n = read_image(full_set / "normal" / f"{i:06d}.png") / 255.0 * 2 - 1  # (H, W, 3)
        assert np.abs(np.linalg.norm(n, axis=-1) - 1).max() < 2 * np.sqrt(3) / 255
        cam = syn.sample_scene(SEED, i, SIZE).camera
        # Known answer: the floor's normal is world up, in camera axes.
        up = cam.rotation.T @ np.array([0.0, 1.0, 0.0])
        on_floor = read_image(full_set / "label" / f"{i:06d}.png") == floor
        assert np.abs(n[on_floor] - up).max() <= 1 / 255 + 1e-6
        checked += on_floor.sum()
        # Facing the camera: the normal points against the pixel's viewing ray.
        u, v = np.meshgrid(np.arange(SIZE[1]), np.arange(SIZE[0]))
        rays = np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones(SIZE)], axis=-1)
        assert ((n * rays).sum(-1) < 0.05).all()
    assert checked > 0


def test_meta_kinds_and_the_loaders(full_set):
    meta = load_meta(full_set)
    kinds = {m: (s.kind, s.channels) for m, s in meta.modalities.items()}
    assert kinds == {
        "rgb": ("color", 3),
        "depth": ("depth", 1),
        "texture": ("color", 3),
        "shade": ("image", 1),
        "normal": ("normal", 3),
        "edge": ("image", 1),
    }
    ds = FolderDataset(full_set, "train", list(ALL))
    raw = ds.load_raw(0)
    assert {m: raw[m].shape[0] for m in ALL} == {m: c for m, (_, c) in kinds.items()}
    shade = read_image(full_set / "shade" / f"{ds.ids[0]}.png")
    assert np.array_equal(raw["shade"][0], shade / np.float32(255))
    stats = compute_stats(ds)
    ds.normalize = Normalize({m: meta.modalities[m] for m in ALL}, stats)
    sample = ds[0]
    for m in ALL:
        assert sample[m].dtype == torch.float32 and torch.isfinite(sample[m]).all()
    mean = torch.stack([ds[i]["shade"].mean() for i in range(len(ds))]).mean()
    assert abs(float(mean)) < 1e-5  # normalised with the split's own statistics


def test_config_modalities_generate_and_are_checked(tmp_path):
    root = tmp_path / "synthetic"
    common = [f"data.root={root}", "data.synth.num=4", "data.synth.size=[16,20]"]
    cfg = load_config(CONFIG, [*common, "data.synth.modalities=[rgb,depth,shade,texture]"])
    assert ensure_data(cfg.data, progress=False) == root
    assert list(load_meta(root).modalities) == ["rgb", "depth", "texture", "shade"]
    assert ensure_data(cfg.data, progress=False) == root  # the folder it asks for: used
    assert ensure_data(load_config(CONFIG, common).data, progress=False) == root  # a subset
    cfg = load_config(CONFIG, [*common, "data.synth.modalities=[rgb,normal,edge]"])
    with pytest.raises(FusescopeError) as err:
        ensure_data(cfg.data, progress=False)
    msg = str(err.value)
    assert "no modality normal, edge here (it has rgb, depth, texture, shade)" in msg
    assert "num" not in msg.split(";")[0] and f"delete {root}" in msg
    cfg = load_config(CONFIG, [f"data.root={tmp_path / 'new'}", "data.synth.modalities=[rgb,hha]"])
    with pytest.raises(FusescopeError, match=r"data.synth.modalities: unknown modality 'hha'"):
        ensure_data(cfg.data, progress=False)
    assert not (tmp_path / "new").exists()


def test_cli_modalities(tmp_path, capsys):
    out = tmp_path / "d"
    args = ["data", "synth", "--out", str(out), "--num", "3", "--size", "16", "20", "--quiet"]
    assert main([*args, "--modalities", "shade", "rgb"]) == 0
    assert "rgb, shade" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["label", "meta.json", "rgb", "shade", "splits"]
    assert main([*args[:3], str(tmp_path / "e"), *args[4:], "--modalities", "rgb", "hha"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown modality 'hha'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "e").exists()
