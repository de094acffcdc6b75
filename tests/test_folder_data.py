"""Bad data stops with one clear message naming the file; good data loads aligned."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import write_folder_dataset
from fusescope.data.folder import FolderDataset
from fusescope.errors import FusescopeError
from fusescope.io import write_png


def load_all(root, modalities=("rgb", "depth")):
    ds = FolderDataset(root, "train", list(modalities))
    return [ds[i] for i in range(len(ds))]


def test_loads_samples_in_natural_units(tiny_data):
    ds = FolderDataset(tiny_data, "train", ["rgb", "depth"])
    s = ds[0]
    assert s["rgb"].shape == (3, 32, 40) and 0 <= s["rgb"].min() and s["rgb"].max() <= 1
    assert s["depth"].shape == (1, 32, 40) and 1.4 < float(s["depth"].median()) < 3.1
    assert s["label"].dtype.is_floating_point is False and s["id"] == "0000"


def test_three_modalities(tmp_path):
    root = write_folder_dataset(tmp_path / "d", modalities=("rgb", "depth", "hha"))
    s = FolderDataset(root, "train", ["rgb", "hha", "depth"])[1]
    assert s["hha"].shape == (3, 32, 40)


def test_missing_file(tiny_data):
    (tiny_data / "depth" / "0003.png").unlink()
    with pytest.raises(FusescopeError, match="depth.*0003.png"):
        FolderDataset(tiny_data, "train", ["rgb", "depth"])


def test_extra_unpaired_file(tiny_data):
    write_png(tiny_data / "rgb" / "9999.png", np.zeros((32, 40, 3), np.uint8))
    with pytest.raises(FusescopeError, match="9999"):
        FolderDataset(tiny_data, "train", ["rgb", "depth"])


def test_missing_modality_folder_and_unknown_modality(tiny_data):
    with pytest.raises(FusescopeError, match="no modality.*hha"):
        FolderDataset(tiny_data, "train", ["rgb", "hha"])


def test_sizes_differ(tiny_data):
    write_png(tiny_data / "depth" / "0001.png", np.full((30, 40), 2000, np.uint16))
    with pytest.raises(FusescopeError, match="0001.png: size 30x40 differs"):
        load_all(tiny_data)


def test_depth_wrong_dtype(tiny_data):
    write_png(tiny_data / "depth" / "0001.png", np.full((32, 40), 200, np.uint8))
    with pytest.raises(FusescopeError, match="0001.png: depth 'depth' must be a 16-bit PNG"):
        load_all(tiny_data)


def test_depth_wrong_units(tiny_data):
    meta = json.loads((tiny_data / "meta.json").read_text())
    meta["modalities"]["depth"]["scale"] = 1.0  # millimetres read as metres
    (tiny_data / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(FusescopeError, match="wrong units"):
        load_all(tiny_data)


def test_label_out_of_range(tiny_data):
    label = np.zeros((32, 40), np.uint8)
    label[3, 4] = 7
    write_png(tiny_data / "label" / "0002.png", label)
    with pytest.raises(FusescopeError, match="0002.png: label id 7 out of range"):
        load_all(tiny_data)


def test_corrupt_image(tiny_data):
    (tiny_data / "rgb" / "0000.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(FusescopeError, match="0000.png: cannot read image"):
        load_all(tiny_data)


def test_truncated_image(tiny_data):
    path = tiny_data / "rgb" / "0001.png"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(FusescopeError, match="0001.png"):
        load_all(tiny_data)


def test_rgb_with_wrong_channels(tiny_data):
    Image.fromarray(np.zeros((32, 40), np.uint8)).save(tiny_data / "rgb" / "0000.png")
    with pytest.raises(FusescopeError, match="0000.png: 'rgb' has 1 channels"):
        load_all(tiny_data)


def test_bad_meta(tiny_data):
    meta = json.loads((tiny_data / "meta.json").read_text())
    meta["classes"][1]["cue"] = "smell"
    (tiny_data / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(FusescopeError, match=r"classes\[1\]: cue 'smell'"):
        FolderDataset(tiny_data, "train", ["rgb"])


def test_missing_split(tiny_data):
    with pytest.raises(FusescopeError, match="splits/nope.txt: split file not found"):
        FolderDataset(tiny_data, "nope", ["rgb"])
