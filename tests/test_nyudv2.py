"""NYUDv2 preparation from tiny files in the official formats (v7.3 HDF5 .mat, v5 .mat)."""

import json

import h5py
import numpy as np
import pytest
import scipy.io

from fusescope.data.meta import load_meta, read_split
from fusescope.data.nyudv2 import prepare_nyudv2
from fusescope.errors import FusescopeError
from fusescope.io import read_image

N, H, W = 6, 8, 10


def write_v73(path, arrays):
    """A MATLAB v7.3 file: HDF5 behind a 512-byte header, arrays stored transposed."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5"
    with open(path, "r+b") as fh:
        fh.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM")


@pytest.fixture
def nyu(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (N, H, W, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 9.0, (N, H, W))
    raw = np.where(rng.random((N, H, W)) < 0.3, 0.0, depth)
    labels = rng.integers(0, 895, (N, H, W)).astype(np.uint16)
    mat = tmp_path / "nyu_depth_v2_labeled.mat"
    write_v73(
        mat,
        {
            "images": rgb.transpose(0, 3, 2, 1),
            "depths": depth.transpose(0, 2, 1),
            "rawDepths": raw.transpose(0, 2, 1),
            "labels": labels.transpose(0, 2, 1),
        },
    )
    splits = tmp_path / "splits.mat"
    scipy.io.savemat(
        splits, {"trainNdxs": np.array([[1], [3], [4], [6]]), "testNdxs": np.array([[2], [5]])}
    )
    map40 = rng.integers(1, 41, 894)
    names = np.array([f"class{i}" for i in range(40)], dtype=object)
    mapping = tmp_path / "classMapping40.mat"
    scipy.io.savemat(mapping, {"mapClass": map40[None, :], "className": names[None, :]})
    return dict(
        mat=mat,
        splits=splits,
        mapping=mapping,
        rgb=rgb,
        depth=depth,
        raw=raw,
        labels=labels,
        map40=map40,
        tmp=tmp_path,
    )


def test_prepare_pixel_exact(nyu):
    out = nyu["tmp"] / "out"
    prepare_nyudv2(nyu["mat"], nyu["splits"], nyu["mapping"], out)
    assert read_split(out, "train") == ["0001", "0003", "0004", "0006"]
    assert read_split(out, "test") == ["0002", "0005"]
    assert read_split(out, "val") == read_split(out, "test")
    meta = load_meta(out)
    assert meta.class_names == [f"class{i}" for i in range(40)]
    assert meta.modalities["depth"].scale == 0.001
    assert meta.intrinsics["fx"] == pytest.approx(518.857901174502)
    for k in range(N):
        fid = f"{k + 1:04d}"
        np.testing.assert_array_equal(read_image(out / "rgb" / f"{fid}.png"), nyu["rgb"][k])
        d = read_image(out / "depth" / f"{fid}.png")
        assert d.dtype == np.uint16
        np.testing.assert_array_equal(d, np.rint(nyu["depth"][k] * 1000).astype(np.uint16))
        r = read_image(out / "raw_depth" / f"{fid}.png")
        np.testing.assert_array_equal(r, np.rint(nyu["raw"][k] * 1000).astype(np.uint16))
        lab = read_image(out / "label" / f"{fid}.png")
        raw_lab = nyu["labels"][k].astype(int)
        expect = np.where(raw_lab == 0, 255, nyu["map40"][np.maximum(raw_lab - 1, 0)] - 1)
        np.testing.assert_array_equal(lab, expect)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_13_classes(nyu):
    labels13 = (np.arange(40) % 13) + 1
    m13 = nyu["tmp"] / "class13Mapping.mat"
    scipy.io.savemat(
        m13,
        {
            "classMapping13": {
                "labels13": labels13[None, :],
                "className": np.array(["a"], dtype=object),
            }
        },
    )
    out = nyu["tmp"] / "out13"
    meta = prepare_nyudv2(nyu["mat"], nyu["splits"], nyu["mapping"], out, mapping13=m13)
    assert meta.num_classes == 13
    lab = read_image(out / "label" / "0001.png")
    raw_lab = nyu["labels"][0].astype(int)
    c40 = nyu["map40"][np.maximum(raw_lab - 1, 0)] - 1
    np.testing.assert_array_equal(lab, np.where(raw_lab == 0, 255, labels13[c40] - 1))


def test_real_split_sizes_checked(nyu, tmp_path):
    # splits.mat refers to 1449 frames; a file with 6 frames must be refused, naming the key.
    splits = tmp_path / "big_splits.mat"
    scipy.io.savemat(
        splits, {"trainNdxs": np.arange(1, 796)[:, None], "testNdxs": np.arange(796, 1450)[:, None]}
    )
    with pytest.raises(FusescopeError, match="trainNdxs"):
        prepare_nyudv2(nyu["mat"], splits, nyu["mapping"], tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_mapping_wrong_length(nyu):
    bad = nyu["tmp"] / "bad_map.mat"
    scipy.io.savemat(bad, {"mapClass": np.ones((1, 893))})
    with pytest.raises(FusescopeError, match=r"bad_map\.mat.*mapClass.*893"):
        prepare_nyudv2(nyu["mat"], nyu["splits"], bad, nyu["tmp"] / "o")


def test_mapping_wrong_key(nyu):
    bad = nyu["tmp"] / "bad_map.mat"
    scipy.io.savemat(bad, {"mapping": np.ones((1, 894))})
    with pytest.raises(FusescopeError, match="missing key 'mapClass'"):
        prepare_nyudv2(nyu["mat"], nyu["splits"], bad, nyu["tmp"] / "o")


def test_truncated_mat(nyu):
    data = nyu["mat"].read_bytes()
    bad = nyu["tmp"] / "truncated.mat"
    bad.write_bytes(data[: len(data) // 2])
    out = nyu["tmp"] / "o"
    with pytest.raises(FusescopeError, match="truncated.mat"):
        prepare_nyudv2(bad, nyu["splits"], nyu["mapping"], out)
    assert not out.exists()
    assert [p.name for p in nyu["tmp"].iterdir() if p.name.startswith(".")] == []


def test_wrong_mat_and_missing_key(nyu):
    with pytest.raises(FusescopeError, match="splits.mat"):
        prepare_nyudv2(nyu["splits"], nyu["splits"], nyu["mapping"], nyu["tmp"] / "o")
    bad = nyu["tmp"] / "nolabels.mat"
    with h5py.File(bad, "w") as f:
        f["images"] = np.zeros((1, 3, W, H), np.uint8)
    with pytest.raises(FusescopeError, match="'depths'"):
        prepare_nyudv2(bad, nyu["splits"], nyu["mapping"], nyu["tmp"] / "o")


def test_existing_output_kept(nyu):
    out = nyu["tmp"] / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FusescopeError, match="exists"):
        prepare_nyudv2(nyu["mat"], nyu["splits"], nyu["mapping"], out)
    # overwrite replaces a data folder, never a folder of the user's (issue 27)
    with pytest.raises(FusescopeError, match="not a fusescope data folder"):
        prepare_nyudv2(nyu["mat"], nyu["splits"], nyu["mapping"], out, overwrite=True)
    assert (out / "keep.txt").read_text() == "x"
    (out / "keep.txt").unlink()
    prepare_nyudv2(nyu["mat"], nyu["splits"], nyu["mapping"], out, overwrite=True)  # empty
    prepare_nyudv2(nyu["mat"], nyu["splits"], nyu["mapping"], out, overwrite=True)  # data
    assert json.loads((out / "meta.json").read_text())["name"] == "nyudv2"
