"""The known-answer benchmark: determinism, exact cue isolation, the on-disk format, atomicity.

Cue-isolation checks compare the final (noisy, quantised) images byte for byte: sensor noise is
drawn as whole-image fields from a per-frame stream before the scene is looked at, so it cannot
hide or fake a difference. Checks that a modality *does* change compare noise-free renders.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path

import numpy as np
import pytest

from fusescope.data import synthetic as syn
from fusescope.data.meta import load_meta, read_split
from fusescope.data.synthetic import writing
from fusescope.errors import FusescopeError
from fusescope.io import read_image

SIZE = (48, 64)
CUE = {c.id: c.cue for c in syn.CLASSES}
GEOMETRY_IDS = [c.id for c in syn.CLASSES if c.cue == "geometry"]
APPEARANCE_IDS = [c.id for c in syn.CLASSES if c.cue == "appearance"]


@functools.cache
def scenes(n: int = 16, size: tuple[int, int] = (60, 80)) -> tuple[syn.Scene, ...]:
    return tuple(syn.sample_scene(7, i, size) for i in range(n))


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_class_table_declares_every_cue_and_consistent_pairs():
    assert [c.id for c in syn.CLASSES] == list(range(len(syn.CLASSES)))
    assert 12 <= len(syn.CLASSES) <= 16
    assert {c.cue for c in syn.CLASSES} == {"appearance", "geometry", "both"}
    for a, b in syn.PAIRS.items():
        assert syn.PAIRS[b] == a
        assert CUE[syn.CLASS_ID[a]] == CUE[syn.CLASS_ID[b]]


def test_generate_is_deterministic_and_seed_dependent(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        syn.generate(tmp_path / name, 5, seed=seed, size=SIZE, progress=False)
    a, b, c = (tree_bytes(tmp_path / n) for n in "abc")
    assert a == b
    assert len(a) == 5 * 3 + 3 + 1  # three images per frame, three splits, meta.json
    assert all(a[k] != c[k] for k in a if k.startswith("rgb/"))


def test_two_workers_write_the_same_bytes(tmp_path):
    syn.generate(tmp_path / "one", 4, seed=2, size=SIZE, progress=False)
    syn.generate(tmp_path / "two", 4, seed=2, size=SIZE, progress=False, workers=2)
    assert tree_bytes(tmp_path / "one") == tree_bytes(tmp_path / "two")


def test_frames_do_not_depend_on_the_rest_of_the_set(tmp_path):
    syn.generate(tmp_path / "small", 3, seed=5, size=SIZE, progress=False)
    frame = syn.render_frame(5, 2, SIZE)
    assert np.array_equal(read_image(tmp_path / "small/rgb/000002.png"), frame.rgb)
    assert np.array_equal(read_image(tmp_path / "small/depth/000002.png"), frame.depth)
    assert np.array_equal(read_image(tmp_path / "small/label/000002.png"), frame.label)
    # Rendering out of order, or twice, gives the same frame.
    assert np.array_equal(syn.render_frame(5, 2, SIZE).rgb, frame.rgb)


def test_rgb_is_blind_to_depth_only_parts():
    changed_depth = changed_label = changed_normal = 0
    for scene in scenes():
        full = syn.render(scene)
        without = syn.render(scene, drop=("geometry",))
        for appearance in ("rgb", "texture", "shade", "edge"):
            assert np.array_equal(getattr(full, appearance), getattr(without, appearance))
        moved = full.label != without.label
        # Only pixels showing a geometry-cue class may change label.
        assert np.isin(full.label[moved], GEOMETRY_IDS).all()
        changed_label += moved.sum()
        changed_depth += (full.depth != without.depth).sum()
        changed_normal += (full.normal != without.normal).any(axis=2).sum()
    assert changed_depth > 0 and changed_label > 0  # the scenes do hold depth-only parts
    assert changed_normal > 0  # normals are of the depth-visible surface


def test_depth_is_blind_to_rgb_only_parts():
    changed_rgb = changed_label = 0
    for scene in scenes():
        for noise in (True, False):
            full = syn.render(scene, noise=noise)
            without = syn.render(scene, drop=("appearance",), noise=noise)
            assert np.array_equal(full.depth, without.depth)
            assert np.array_equal(full.normal, without.normal)
        moved = full.label != without.label
        assert np.isin(full.label[moved], APPEARANCE_IDS + GEOMETRY_IDS).all()
        changed_label += moved.sum()
        changed_rgb += (full.rgb != without.rgb).any(axis=2).sum()
    assert changed_rgb > 0 and changed_label > 0


def swapped(scene: syn.Scene, k: int) -> syn.Scene:
    objects = list(scene.objects)
    objects[k] = dataclasses.replace(objects[k], cls=syn.PAIRS[objects[k].cls])
    return dataclasses.replace(scene, objects=objects)


# What a pair swap leaves byte-identical and what it must change: geometry (depth, normal) vs
# appearance (rgb, texture); shade is the RGB surface's lighting, so a crate / box swap (one
# geometry) keeps it, and RGB never sees a sign's or dome's relief.
GEOMETRY_SIDE = ("depth", "normal")
APPEARANCE_SIDE = ("rgb", "texture")


@pytest.mark.parametrize("pair", [("crate", "box"), ("sign", "dome")])
def test_pairs_differ_only_in_the_deciding_modality(pair):
    if CUE[syn.CLASS_ID[pair[0]]] == "appearance":
        same, differ = (*GEOMETRY_SIDE, "shade"), APPEARANCE_SIDE
    else:
        same, differ = (*APPEARANCE_SIDE, "shade", "edge"), GEOMETRY_SIDE
    tested = 0
    for scene in scenes():
        for k, obj in enumerate(scene.objects):
            if obj.cls not in pair:
                continue
            a, b = obj.cls, syn.PAIRS[obj.cls]
            edited = swapped(scene, k)
            full, full_edited = syn.render(scene), syn.render(edited)
            for m in same:
                assert np.array_equal(getattr(full, m), getattr(full_edited, m)), m
            before = syn.render(scene, noise=False)
            after = syn.render(edited, noise=False)
            # The label follows the edit: pixels of this object turn from a to b.
            ia, ib, wall = syn.CLASS_ID[a], syn.CLASS_ID[b], syn.CLASS_ID["wall"]
            moved = before.label != after.label
            if moved.sum() < 6:
                continue  # hidden behind something or out of view: nothing else to see
            for m in differ:
                assert not np.array_equal(getattr(before, m), getattr(after, m)), m
            assert (after.label[moved] == ib).any()
            if pair == ("crate", "box"):  # one geometry: the very same pixels change class
                assert (before.label[moved] == ia).all() and (after.label[moved] == ib).all()
            else:  # the reliefs differ in shape, so the outline may gain or lose wall pixels
                assert np.isin(before.label[moved], [ia, wall]).all()
                assert np.isin(after.label[moved], [ib, wall]).all()
            tested += 1
    assert tested >= 2


def test_every_class_shows_up_regularly():
    frames_with = np.zeros(len(syn.CLASSES), dtype=int)
    for i in range(40):
        label = syn.render_frame(11, i, (60, 80)).label
        frames_with[np.unique(label)] += 1
    rare = {syn.CLASSES[k].name: int(n) for k, n in enumerate(frames_with) if n < 3}
    assert not rare, f"classes seen in fewer than 3 of 40 frames: {rare}"


def test_depth_sensor_model():
    errors_near, errors_far, holes, pixels = [], [], 0, 0
    for scene in scenes(8):
        noisy = syn.render(scene).depth.astype(np.float64) / 1000
        clean = syn.render(scene, noise=False).depth.astype(np.float64) / 1000
        valid = noisy > 0
        holes += (~valid).sum()
        pixels += valid.size
        err = noisy - clean
        assert np.abs(err[valid]).max() < 0.5
        errors_near.append(err[valid & (clean < 2.0)])
        errors_far.append(err[valid & (clean > 3.5)])
    near, far = np.concatenate(errors_near).std(), np.concatenate(errors_far).std()
    assert far > 2.5 * near  # noise grows with z^2
    assert 0.005 < holes / pixels < 0.3


def test_folder_layout_meta_and_splits(tmp_path):
    out = tmp_path / "synth"
    meta = syn.generate(out, 7, seed=1, size=SIZE, splits=(0.6, 0.2, 0.2), progress=False)
    loaded = load_meta(out)
    assert loaded.name == "synthetic"
    assert loaded.class_names == [c.name for c in syn.CLASSES]
    assert [c.cue for c in loaded.classes] == [c.cue for c in syn.CLASSES]
    assert loaded.ignore_index == 255
    assert loaded.modalities["depth"].scale == 0.001
    assert loaded.modalities["rgb"].kind == "color"
    assert set(loaded.intrinsics) == {"fx", "fy", "cx", "cy"}
    assert loaded.extra["generator"]["seed"] == 1
    assert loaded.to_dict() == meta.to_dict()
    ids = [read_split(out, s) for s in ("train", "val", "test")]
    every = sorted(i for split in ids for i in split)
    assert every == [f"{i:06d}" for i in range(7)]
    assert len(set(every)) == 7 and [len(s) for s in ids] == [4, 2, 1]
    rgb, depth, label = (read_image(out / m / "000003.png") for m in ("rgb", "depth", "label"))
    assert rgb.shape == (*SIZE, 3) and rgb.dtype == np.uint8
    assert depth.shape == SIZE and depth.dtype == np.uint16
    assert label.shape == SIZE and label.max() < len(syn.CLASSES)


def test_failure_mid_generation_leaves_nothing(tmp_path, monkeypatch):
    written = []
    original = writing.write_frame

    def flaky(root, index, frame, modalities):
        if index == 2:
            raise RuntimeError("disk full")
        original(root, index, frame, modalities)
        written.append(index)

    monkeypatch.setattr(writing, "write_frame", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        syn.generate(tmp_path / "out", 5, size=SIZE, progress=False)
    assert written == [0, 1]
    assert list(tmp_path.iterdir()) == []  # neither `out` nor a temporary folder is left


def test_existing_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FusescopeError, match=re.escape(str(out))):
        syn.generate(out, 3, size=SIZE, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    syn.generate(empty, 3, size=SIZE, progress=False)
    assert (empty / "meta.json").is_file()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num": 0},
        {"splits": (0.5, 0.2, 0.2)},
        {"seed": -1},
        {"num": 2, "splits": (0.5, 0.25, 0.25)},
    ],
)
def test_bad_arguments_are_user_errors(tmp_path, kwargs):
    args = {"num": 4, **kwargs}
    with pytest.raises(FusescopeError):
        syn.generate(tmp_path / "out", size=SIZE, progress=False, **args)
    assert not (tmp_path / "out").exists()


def test_unknown_drop_group_is_an_error():
    with pytest.raises(ValueError, match="known cue groups"):
        syn.render(scenes()[0], drop=("texture",))
