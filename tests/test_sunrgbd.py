"""SUN RGB-D preparation from a tiny tree in the official layout."""

import numpy as np
import pytest

from fusescope.data.meta import load_meta, read_split
from fusescope.data.sunrgbd import decode_depth, prepare_sunrgbd
from fusescope.errors import FusescopeError
from fusescope.io import read_image, write_png

H, W = 6, 9


def encode(mm):
    """The SUN RGB-D storage: millimetres rotated left by 3 bits."""
    mm = mm.astype(np.uint16)
    return (mm << 3) | (mm >> 13)


@pytest.fixture
def sun(tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "src"
    test, train, truth = [], [], {}
    for k in range(1, 6):
        frame = f"SUNRGBD/kv1/NYUdata/NYU{k:04d}"
        img = f"{frame}/image/NYU{k:04d}.jpg"
        (test if k <= 2 else train).append(img)
        rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        # JPEG is lossy: store PNG bytes under the .jpg name (PIL reads by content)
        write_png(src / img, rgb)
        mm = rng.integers(0, 9500, (H, W)).astype(np.uint16)
        mm[0, 0] = 0
        raw = np.where(rng.random((H, W)) < 0.3, 0, mm).astype(np.uint16)
        write_png(src / frame / "depth_bfx" / f"NYU{k:04d}.png", encode(mm))
        write_png(src / frame / "depth" / f"NYU{k:04d}.png", encode(raw))
        (src / frame / "intrinsics.txt").write_text(f"{500 + k} 0 320\n0 510 240\n0 0 1\n")
        lab = rng.integers(0, 38, (H, W), dtype=np.uint8)
        write_png(src / "labels" / f"img-{k:06d}.png", lab)
        truth[k] = (rgb, mm, raw, lab)
    (src / "sunrgbd_testing_images.txt").write_text("\n".join(test) + "\n")
    (src / "sunrgbd_training_images.txt").write_text("\n".join(train) + "\n")
    return src, truth


def test_decode_depth():
    mm = np.array([[0, 1, 1234, 8000, 8001, 9000]], dtype=np.uint16)
    np.testing.assert_array_equal(decode_depth(encode(mm)), [[0, 1, 1234, 8000, 8000, 8000]])


def test_prepare(sun, tmp_path):
    src, truth = sun
    out = tmp_path / "out"
    meta = prepare_sunrgbd(src, out, check_split_sizes=False)
    assert meta.num_classes == 37 and load_meta(out).class_names[0] == "wall"
    assert read_split(out, "test") == ["000001", "000002"]
    assert read_split(out, "train") == ["000003", "000004", "000005"]
    for k, (rgb, mm, raw, lab) in truth.items():
        fid = f"{k:06d}"
        np.testing.assert_array_equal(read_image(out / "rgb" / f"{fid}.png"), rgb)
        np.testing.assert_array_equal(
            read_image(out / "depth" / f"{fid}.png"), np.minimum(mm, 8000)
        )
        np.testing.assert_array_equal(
            read_image(out / "raw_depth" / f"{fid}.png"), np.minimum(raw, 8000)
        )
        np.testing.assert_array_equal(
            read_image(out / "label" / f"{fid}.png"), np.where(lab == 0, 255, lab.astype(int) - 1)
        )
    intr = (out / "intrinsics.json").read_text()
    assert '"fx": 501.0' in intr


def test_prepare_with_hha_uses_each_frames_intrinsics(sun, tmp_path):
    """`--hha` (the SA-Gate configs' input): the HHA of the written depth, each frame with its
    own camera matrix (the frames here differ in fx)."""
    from fusescope.data.hha import Intrinsics, hha

    src, truth = sun
    out = tmp_path / "out"
    meta = prepare_sunrgbd(src, out, check_split_sizes=False, hha=True)
    assert meta.modalities["hha"].kind == "image" and meta.modalities["hha"].channels == 3
    for k, (_, mm, _, _) in truth.items():
        K = Intrinsics(500.0 + k, 510.0, 320.0, 240.0)
        expected = hha(np.minimum(mm, 8000).astype(np.float64) / 1000.0, K)
        np.testing.assert_array_equal(read_image(out / "hha" / f"{k:06d}.png"), expected)


def test_official_sizes_required(sun, tmp_path):
    src, _ = sun
    with pytest.raises(FusescopeError, match="sunrgbd_testing_images.txt.*5050"):
        prepare_sunrgbd(src, tmp_path / "out")


def test_missing_file_writes_nothing(sun, tmp_path):
    src, _ = sun
    (src / "labels" / "img-000004.png").unlink()
    with pytest.raises(FusescopeError, match="img-000004.png"):
        prepare_sunrgbd(src, tmp_path / "out", check_split_sizes=False)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_missing_depth_folder(sun, tmp_path):
    src, _ = sun
    import shutil

    shutil.rmtree(src / "SUNRGBD/kv1/NYUdata/NYU0005/depth_bfx")
    with pytest.raises(FusescopeError, match="NYU0005/depth_bfx"):
        prepare_sunrgbd(src, tmp_path / "out", check_split_sizes=False)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
