"""The known-answer generator's third modality: a 16-bit thermal image with its own cue group
(warm patches only thermal can see), for M = 3 fusion with a known answer.

Cue isolation is exact both ways and compared byte for byte on the final (noisy, quantised)
images: the thermal-only classes leave RGB, depth and the translation modalities unchanged, and
thermal is blind to the geometry-only parts, to the appearance-only decals and to every pair
swap. A data set without thermal is the same bytes as before thermal existed.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import numpy as np
import pytest

from fusescope.cli import main
from fusescope.config import load_config
from fusescope.data import synthetic as syn
from fusescope.data.build import ensure_data
from fusescope.data.folder import FolderDataset
from fusescope.data.meta import load_meta
from fusescope.errors import FusescopeError
from fusescope.io import read_image

SIZE = (48, 64)
THERMAL_IDS = [c.id for c in syn.THERMAL_CLASSES if c.cue == "thermal"]
EVERY = ("rgb", "depth", "texture", "shade", "normal", "edge", "thermal")
OTHERS = ("rgb", "depth", "texture", "shade", "normal", "edge")


@functools.cache
def scenes(n: int = 16) -> tuple[syn.Scene, ...]:
    return tuple(syn.sample_scene(7, i, (60, 80), thermal=True) for i in range(n))


def render(scene, **kwargs):
    return syn.render(scene, extra=EVERY, **kwargs)


def tree(root, prefix=""):
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and str(p.relative_to(root)).startswith(prefix)
    }


def test_the_thermal_classes_and_their_cue():
    assert [c.id for c in syn.THERMAL_CLASSES] == list(range(16))
    assert syn.THERMAL_CLASSES[: len(syn.CLASSES)] == syn.CLASSES  # the same ids before them
    assert [(c.name, c.cue) for c in syn.THERMAL_CLASSES[14:]] == [
        ("floor_heating", "thermal"),
        ("heating_pipe", "thermal"),
    ]
    assert {s.stage for s in syn.THERMAL_SPECS} == {"thermal"}
    assert not set(syn.THERMAL_SPECS) & set(syn.SPECS)  # never placed in a scene without thermal


def test_a_thermal_scene_is_the_same_scene_plus_its_thermal_part():
    for i in range(6):
        plain, warm = syn.sample_scene(3, i, SIZE), syn.sample_scene(3, i, SIZE, thermal=True)
        assert plain.thermal is None and warm.thermal is not None
        n = len(plain.objects)
        cleared = [dataclasses.replace(o, temperature=None) for o in warm.objects[:n]]
        assert cleared == plain.objects  # every other object as it was, in the same order
        assert all(o.cls in ("floor_heating", "heating_pipe") for o in warm.objects[n:])
        for field in dataclasses.fields(plain):  # camera, room, light, sensor: all the same
            if field.name in ("objects", "thermal"):
                continue
            a, b = getattr(plain, field.name), getattr(warm, field.name)
            if field.name == "camera":
                assert all(map(np.array_equal, dataclasses.astuple(a), dataclasses.astuple(b)))
            else:
                assert np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b


def test_without_thermal_the_files_are_those_of_before(tmp_path):
    """The default set and its rgb / depth files do not depend on whether thermal exists:
    a set generated with thermal has byte-identical rgb and depth (and translation) files."""
    syn.generate(tmp_path / "plain", 8, seed=2, size=SIZE, progress=False)
    syn.generate(tmp_path / "warm", 8, seed=2, size=SIZE, progress=False, modalities=EVERY)
    syn.generate(tmp_path / "six", 8, seed=2, size=SIZE, progress=False, modalities=OTHERS)
    plain, warm, six = tree(tmp_path / "plain"), tree(tmp_path / "warm"), tree(tmp_path / "six")
    for key, data in six.items():
        if key.startswith(OTHERS):
            assert warm[key] == data, key
    assert all(warm[k] == plain[k] for k in plain if k.startswith(("rgb/", "depth/", "splits/")))
    meta = json.loads(plain["meta.json"])
    assert "modalities" not in meta["generator"] and len(meta["classes"]) == 14
    assert "thermal" not in meta["cue_groups"]
    # labels: the thermal classes appear where the plain labels show the floor or a wall
    floor_or_wall = [syn.CLASS_ID["floor"], syn.CLASS_ID["wall"]]
    changed = 0
    for i in range(8):
        a = read_image(tmp_path / "plain" / "label" / f"{i:06d}.png")
        b = read_image(tmp_path / "warm" / "label" / f"{i:06d}.png")
        moved = a != b
        assert np.isin(b[moved], THERMAL_IDS).all() and np.isin(a[moved], floor_or_wall).all()
        changed += moved.sum()
    assert changed > 0


def test_rgb_depth_and_the_translation_modalities_are_blind_to_the_thermal_classes():
    changed_thermal = changed_label = 0
    for scene in scenes():
        full, without = render(scene), render(scene, drop=("thermal",))
        for m in OTHERS:
            assert np.array_equal(getattr(full, m), getattr(without, m)), m
        moved = full.label != without.label
        assert np.isin(full.label[moved], THERMAL_IDS).all()
        changed_label += moved.sum()
        clean = render(scene, noise=False).thermal
        changed_thermal += (clean != render(scene, drop=("thermal",), noise=False).thermal).sum()
    assert changed_label > 0 and changed_thermal > 0  # the scenes do hold warm patches


@pytest.mark.parametrize("group", ["geometry", "appearance"])
def test_thermal_is_blind_to_the_geometry_and_appearance_only_parts(group):
    ids = [c.id for c in syn.CLASSES if c.cue == group]
    changed_label = 0
    for scene in scenes():
        for noise in (True, False):
            full, without = render(scene, noise=noise), render(scene, drop=(group,), noise=noise)
            assert np.array_equal(full.thermal, without.thermal)
        moved = full.label != without.label
        changed_label += np.isin(full.label[moved], ids).sum()
    assert changed_label > 0


@pytest.mark.parametrize("pair", [("crate", "box"), ("sign", "dome")])
def test_swapping_a_pair_leaves_thermal_unchanged(pair):
    tested = 0
    for scene in scenes():
        for k, obj in enumerate(scene.objects):
            if obj.cls not in pair:
                continue
            objects = list(scene.objects)
            objects[k] = dataclasses.replace(obj, cls=syn.PAIRS[obj.cls])
            edited = dataclasses.replace(scene, objects=objects)
            a, b = render(scene), render(edited)
            assert np.array_equal(a.thermal, b.thermal)
            tested += int((a.label != b.label).sum() >= 6)  # the swap did show somewhere
    assert tested >= 2


def test_the_thermal_image_formation_on_the_floor():
    """Known answer: a floor pixel without a warm patch reads round((air + floor offset -
    stratification * room height / 2) / 0.01) counts without noise; the noise is the documented
    field times netd."""
    floor, checked = syn.CLASS_ID["floor"], 0
    for scene in scenes(8):
        clean = render(scene, noise=False)
        t = scene.thermal
        expected = round((t.air + t.floor - t.stratification * scene.room.height / 2) / 0.01)
        on_floor = clean.label == floor
        assert np.abs(clean.thermal[on_floor].astype(int) - expected).max() <= 1
        checked += on_floor.sum()
        noisy = render(scene).thermal.astype(np.float64) * syn.THERMAL_SCALE
        residual = noisy - clean.thermal * syn.THERMAL_SCALE - t.netd * syn.thermal_noise(scene)
        assert np.abs(residual).max() <= syn.THERMAL_SCALE + 1e-9  # two roundings of 0.005 K
    assert checked > 0
    # the warm patches are warmer than the surface they sit on
    for scene in scenes():
        frame = render(scene, noise=False)
        for cls, host in (("floor_heating", "floor"), ("heating_pipe", "wall")):
            warm = frame.label == syn.CLASS_ID[cls]
            if warm.sum() > 4:
                ref = frame.thermal[frame.label == syn.CLASS_ID[host]]
                assert np.median(frame.thermal[warm]) > np.median(ref) + 100  # > 1 K


def test_a_thermal_frame_needs_a_thermal_scene():
    with pytest.raises(ValueError, match="thermal=True"):
        syn.render(syn.sample_scene(0, 0, SIZE), extra=("thermal",))


def test_meta_and_the_loader_read_kelvin(tmp_path):
    root = tmp_path / "warm"
    syn.generate(root, 6, seed=1, size=SIZE, progress=False, modalities=["rgb", "depth", "thermal"])
    meta = load_meta(root)
    spec = meta.modalities["thermal"]
    assert (spec.kind, spec.channels, spec.scale) == ("thermal", 1, 0.01)
    assert meta.cue_groups() == {
        "appearance": [7, 8, 9, 10, 11],
        "geometry": [5, 6, 12, 13],
        "thermal": [14, 15],
        "both": [0, 1, 2, 3, 4],
    }
    assert meta.extra["generator"]["modalities"] == ["rgb", "depth", "thermal"]
    assert "thermal" in meta.extra["generator"]["formation"]
    raw = FolderDataset(root, "train", ["rgb", "depth", "thermal"]).load_raw(0)
    kelvin = raw["thermal"]
    assert kelvin.shape == (1, *SIZE) and kelvin.dtype == np.float32
    assert 285 < float(np.median(kelvin)) < 305


def test_config_and_cli_generate_thermal_and_folders_of_other_labels_are_refused(tmp_path, capsys):
    root = tmp_path / "rgbdt"
    common = [f"data.root={root}", "data.synth.num=4", "data.synth.size=[16,20]"]
    warm = load_config(None, [*common, "data.synth.modalities=[rgb,depth,thermal]"])
    assert ensure_data(warm.data, progress=False) == root
    assert list(load_meta(root).modalities) == ["rgb", "depth", "thermal"]
    with pytest.raises(FusescopeError, match="its labels hold the thermal-only classes"):
        ensure_data(load_config(None, common).data, progress=False)
    plain = tmp_path / "rgbd"
    ensure_data(load_config(None, [f"data.root={plain}", *common[1:]]).data, progress=False)
    with pytest.raises(FusescopeError, match=r"no modality thermal here \(it has rgb, depth\)"):
        ensure_data(
            load_config(None, [f"data.root={plain}", *common[1:], *warm_spec()]).data,
            progress=False,
        )
    out = tmp_path / "cli"
    args = ["data", "synth", "--out", str(out), "--num", "3", "--size", "16", "20", "--quiet"]
    assert main([*args, "--modalities", "rgb", "depth", "thermal"]) == 0
    assert "16 classes; rgb, depth, thermal" in capsys.readouterr().out
    assert read_image(out / "thermal" / "000002.png").dtype == np.uint16


def warm_spec():
    return ["data.synth.modalities=[rgb,depth,thermal]"]
