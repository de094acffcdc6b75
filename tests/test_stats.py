"""Class frequencies, median-frequency weights, streaming mean / std, inspect."""

import numpy as np
import pytest

from fusescope.data.folder import FolderDataset
from fusescope.data.meta import ClassInfo, DatasetMeta, ModalitySpec, write_split
from fusescope.data.stats import (
    class_frequencies,
    compute_stats,
    inspect,
    median_frequency_weights,
    modality_stats,
)
from fusescope.errors import FusescopeError
from fusescope.io import read_image, write_png


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "d"
    meta = DatasetMeta(
        "t",
        [ClassInfo(n, i, (i * 40, 0, 0)) for i, n in enumerate("abcd")],
        {"rgb": ModalitySpec("color", 3), "depth": ModalitySpec("depth", 1, 0.001, "mm")},
    )
    meta.save(root)
    rng = np.random.default_rng(0)
    labels, depths = [], []
    for i in range(3):
        lab = rng.choice(np.array([0, 1, 255], dtype=np.uint8), (4, 5))
        if i == 2:
            lab[0, 0] = 2  # class 2 only in one image; class 3 never
        d = rng.integers(0, 5000, (4, 5)).astype(np.uint16)
        d[i, 1] = 0  # a hole per image
        write_png(root / "label" / f"{i}.png", lab)
        write_png(root / "depth" / f"{i}.png", d)
        write_png(root / "rgb" / f"{i}.png", rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
        labels.append(lab)
        depths.append(d)
    write_split(root, "train", ["0", "1", "2"])
    return root, labels, depths


def test_frequencies_and_weights(folder):
    root, labels, _ = folder
    f = class_frequencies(root, "train")
    allv = np.concatenate([lab.ravel() for lab in labels])
    for c in range(3):
        assert f.pixels[c] == (allv == c).sum()
    assert f.pixels[3] == 0 and f.ignored == (allv == 255).sum()
    w = median_frequency_weights(f)
    assert np.all(np.isfinite(w)) and w[3] == 0
    fc = np.array([f.pixels[c] / f.image_pixels[c] for c in range(3)])
    np.testing.assert_allclose(w[:3], np.median(fc) / fc)


def test_depth_stats_streaming(folder):
    root, _, depths = folder
    st = modality_stats(root, "depth")
    v = np.concatenate([d[d > 0].astype(float) * 0.001 for d in depths])
    assert st.mean[0] == pytest.approx(v.mean(), rel=1e-12)
    assert st.std[0] == pytest.approx(v.std(), rel=1e-9)


def test_bad_label_value(folder):
    root, _, _ = folder
    write_png(root / "label" / "1.png", np.full((4, 5), 7, np.uint8))
    with pytest.raises(FusescopeError, match=r"1\.png.*\[7\]"):
        class_frequencies(root)


def test_inspect(folder, tmp_path):
    root, _, _ = folder
    lines = []
    out = inspect(root, samples=tmp_path / "s.png", print_fn=lines.append)
    assert (tmp_path / "s.png").stat().st_size > 0
    assert any("depth: mean" in ln for ln in lines)
    assert out["splits"] == {"train": 3}


def test_compute_stats_is_the_mean_and_std_in_natural_units_without_depth_holes(folder):
    """The normaliser's statistics: images in [0, 1], depth in metres with holes (0) left out."""
    root, _, depths = folder
    rgbs = [read_image(root / "rgb" / f"{i}.png") for i in range(3)]
    # the loader hands float32 to the float64 accumulation: agreement to float32 precision
    stats = compute_stats(FolderDataset(root, "train", ["rgb", "depth"]))
    pixels = np.concatenate([r.reshape(-1, 3) for r in rgbs]).astype(float) / 255
    np.testing.assert_allclose(stats["rgb"]["mean"], pixels.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["rgb"]["std"], pixels.std(0), rtol=1e-6)
    v = np.concatenate([d[d > 0].astype(float) * 0.001 for d in depths])
    assert any((d == 0).any() for d in depths)  # the fixture has holes to leave out
    assert stats["depth"]["mean"][0] == pytest.approx(v.mean(), rel=1e-6)
    assert stats["depth"]["std"][0] == pytest.approx(v.std(), rel=1e-6)
