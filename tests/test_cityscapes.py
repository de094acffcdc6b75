"""Cityscapes preparation from a tiny tree in the official layout."""

import json

import numpy as np
import pytest

from fusescope.data.cityscapes import prepare_cityscapes
from fusescope.data.folder import FolderDataset
from fusescope.data.meta import load_meta, read_split
from fusescope.data.stats import compute_stats
from fusescope.errors import FusescopeError
from fusescope.io import read_image, write_png

H, W = 5, 7
OFFICIAL = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}


def write_official_tree(src, size=(H, W), counts=(("train", 3), ("val", 2)), seed=2):
    """Frames in the official Cityscapes layout (leftImg8bit, disparity, gtFine labelIds,
    camera JSON) under `src`; returns {stem: (split, rgb, disparity, labelIds)}."""
    rng = np.random.default_rng(seed)
    truth = {}
    for split, n in counts:
        for i in range(n):
            stem = f"aachen_{i:06d}_000019" if split == "train" else f"lindau_{i:06d}_000019"
            city = stem.split("_")[0]
            rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            disp = rng.integers(0, 30000, size).astype(np.uint16)
            disp[0, :3] = [0, 1, 2]
            lab = rng.integers(0, 34, size, dtype=np.uint8)
            write_png(src / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", rgb)
            write_png(src / "disparity" / split / city / f"{stem}_disparity.png", disp)
            write_png(src / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", lab)
            cam = {
                "extrinsic": {
                    "baseline": 0.209313,
                    "pitch": 0.038,
                    "roll": 0,
                    "x": 1.7,
                    "y": 0.1,
                    "yaw": -0.0195,
                    "z": 1.22,
                },
                "intrinsic": {"fx": 2262.52, "fy": 2265.30, "u0": 1096.98, "v0": 513.137},
            }
            p = src / "camera" / split / city / f"{stem}_camera.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(cam))
            truth[stem] = (split, rgb, disp, lab)
    return truth


@pytest.fixture
def city(tmp_path):
    src = tmp_path / "src"
    return src, write_official_tree(src)


def test_prepare_depth(city, tmp_path):
    src, truth = city
    out = tmp_path / "out"
    meta = prepare_cityscapes(src, out)
    assert meta.num_classes == 19 and load_meta(out).modalities["depth"].scale == 0.01
    assert len(read_split(out, "train")) == 3 and len(read_split(out, "val")) == 2
    for stem, (_, rgb, disp, lab) in truth.items():
        np.testing.assert_array_equal(read_image(out / "rgb" / f"{stem}.png"), rgb)
        expect_lab = np.array([OFFICIAL.get(int(v), 255) for v in lab.ravel()]).reshape(H, W)
        np.testing.assert_array_equal(read_image(out / "label" / f"{stem}.png"), expect_lab)
        depth = read_image(out / "depth" / f"{stem}.png").astype(float) * 0.01
        d = disp.astype(float)
        valid = d > 1
        z = np.zeros_like(d)
        z[valid] = 0.209313 * 2262.52 / ((d[valid] - 1) / 256)
        z[z > 655.35] = 0
        np.testing.assert_allclose(depth, z, atol=0.0051)
        assert np.all(depth[0, :2] == 0)  # 0 = invalid, 1 = zero disparity (infinity)
        assert depth[0, 2] == 0  # disparity 1/256 px: ~30 km, beyond uint16 cm


def test_prepare_disparity(city, tmp_path):
    src, truth = city
    out = tmp_path / "out"
    prepare_cityscapes(src, out, depth_mode="disparity")
    stem, (_, _, disp, _) = next(iter(truth.items()))
    np.testing.assert_array_equal(read_image(out / "disparity" / f"{stem}.png"), disp)
    # the loaders read the 16-bit disparity as an image in [0, 1] (value / 65535)
    ds = FolderDataset(out, truth[stem][0], ["rgb", "disparity"])
    sample = ds[ds.ids.index(stem)]
    np.testing.assert_allclose(sample["disparity"][0].numpy(), disp / 65535.0, rtol=1e-6)
    stats = compute_stats(FolderDataset(out, "train", ["disparity"]))
    train = np.stack([d for s, (split, _, d, _) in truth.items() if split == "train"]) / 65535.0
    assert stats["disparity"]["mean"][0] == pytest.approx(train.mean(), rel=1e-5)


def test_missing_camera(city, tmp_path):
    src, truth = city
    stem = next(iter(truth))
    (src / "camera" / "train" / "aachen" / f"{stem}_camera.json").unlink()
    with pytest.raises(FusescopeError, match="_camera.json"):
        prepare_cityscapes(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_camera_key(city, tmp_path):
    src, truth = city
    stem = next(iter(truth))
    (src / "camera" / "train" / "aachen" / f"{stem}_camera.json").write_text('{"intrinsic": {}}')
    with pytest.raises(FusescopeError, match="extrinsic"):
        prepare_cityscapes(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
