import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusescope.data.meta import ModalitySpec
from fusescope.data.transforms import Normalize, TrainTransform

SPECS = {
    "rgb": ModalitySpec("color", 3),
    "depth": ModalitySpec("depth", 1, 0.001),
    "hha": ModalitySpec("image", 3),
}


def coded_sample(h, w):
    """Every modality and the label carry the same pixel code, so misalignment shows."""
    code = torch.arange(h * w).reshape(h, w) % 251
    return {
        "rgb": (code / 255.0).expand(3, h, w).clone(),
        "depth": (code.float() + 1)[None],
        "hha": (code / 255.0).expand(3, h, w).clone(),
        "label": code.long(),
    }


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(8, 40),
    w=st.integers(8, 40),
    seed=st.integers(0, 10**6),
    crop=st.one_of(st.none(), st.tuples(st.integers(4, 48), st.integers(4, 48))),
    lo=st.floats(0.5, 1.0),
    hi=st.floats(1.0, 2.0),
)
def test_geometry_is_identical_across_modalities_and_label(h, w, seed, crop, lo, hi):
    t = TrainTransform(SPECS, crop, (lo, hi), hflip=True, color_jitter=0.0)
    out = t(coded_sample(h, w), np.random.default_rng(seed))
    label, depth = out["label"], out["depth"][0]
    valid = label != 255
    # depth and label are resized by nearest, so they agree exactly where not padded
    assert torch.equal(depth[valid].long() - 1, label[valid])
    assert torch.all(depth[~valid] == 0)
    assert tuple(label.shape) == (tuple(crop) if crop is not None else (h, w))
    assert out["rgb"].shape[-2:] == label.shape == out["hha"].shape[-2:]


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10**6))
def test_flip_and_crop_keep_image_aligned_without_rescale(seed):
    t = TrainTransform(SPECS, (12, 16), (1.0, 1.0), hflip=True, color_jitter=0.0)
    out = t(coded_sample(20, 30), np.random.default_rng(seed))
    # with scale 1 bilinear resize is the identity, so images carry the exact code
    assert torch.allclose(out["hha"][0] * 255, (out["label"] % 251).float(), atol=1e-3)


def test_photometric_jitter_touches_colour_only():
    t = TrainTransform(SPECS, None, (1.0, 1.0), hflip=False, color_jitter=0.5)
    sample = coded_sample(10, 12)
    out = t(sample, np.random.default_rng(1))
    assert not torch.equal(out["rgb"], sample["rgb"])
    assert torch.equal(out["hha"], sample["hha"])
    assert torch.equal(out["depth"], sample["depth"])


def test_same_seed_same_augmentation():
    t = TrainTransform(SPECS, (8, 8), (0.7, 1.4), color_jitter=0.3)
    a = t(coded_sample(16, 16), np.random.default_rng([0, 3, 5]))
    b = t(coded_sample(16, 16), np.random.default_rng([0, 3, 5]))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_normalize_keeps_depth_holes_at_zero():
    n = Normalize({"depth": SPECS["depth"]}, {"depth": {"mean": [3.0], "std": [2.0]}})
    out = n({"depth": torch.tensor([[[0.0, 5.0]]])})
    assert out["depth"].tolist() == [[[0.0, 1.0]]]


def test_a_mirrored_normal_map_faces_the_other_way_along_x():
    """Flipping an image mirrors the surfaces in it: a normal pointing right then points left,
    so x changes sign ((n + 1) / 2 encoding: x -> 1 - x) while y and z only move with pixels."""
    n = torch.rand(3, 4, 5)
    label = torch.zeros(4, 5, dtype=torch.int64)
    specs = {"normal": ModalitySpec("normal", 3), "shade": ModalitySpec("image", 1)}
    t = TrainTransform(specs, crop_size=None, scale_range=(1.0, 1.0), hflip=True, color_jitter=0)
    sample = {"normal": n, "shade": n[:1].clone(), "label": label}
    flipped = [
        out
        for seed in range(20)
        if not torch.equal((out := t(sample, np.random.default_rng(seed)))["shade"], n[:1])
    ]
    assert flipped  # some seed flips
    for out in flipped:
        assert torch.allclose(out["normal"][0], 1 - n[0].flip(-1))
        assert torch.equal(out["normal"][1:], n[1:].flip(-1))
        assert torch.equal(out["shade"], n[:1].flip(-1))  # an ordinary image just moves
