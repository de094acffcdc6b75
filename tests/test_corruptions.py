"""The corruption suite: determinism, identity at severity 0, only the right modality changes,
effects grow with severity, clear errors."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from fusescope.data.corruptions import KINDS, make_corruption
from fusescope.data.meta import ClassInfo, DatasetMeta, ModalitySpec
from fusescope.errors import FusescopeError

H, W = 48, 64
DEPTH_KINDS = [k for k, v in KINDS.items() if v.group == "depth"]
RGB_KINDS = [k for k, v in KINDS.items() if v.group == "rgb"]


def make_meta(**modalities):
    mods = modalities or {"rgb": ("color", 3), "depth": ("depth", 1), "hha": ("image", 3)}
    specs = {n: ModalitySpec(k, c, 0.001 if k == "depth" else None) for n, (k, c) in mods.items()}
    return DatasetMeta("t", [ClassInfo("a", 0, (0, 0, 0)), ClassInfo("b", 1, (9, 9, 9))], specs)


def make_sample(seed=0):
    rng = np.random.default_rng(seed)
    depth = np.full((1, H, W), 3.0, np.float32)
    depth[:, 10:30, 15:40] = 1.5  # a box in front of a wall: discontinuities for edge noise
    depth[:, :3, :4] = 0  # existing holes
    yy, xx = np.mgrid[:H, :W]
    rgb = np.stack([(np.sin(xx / 2) + 1) / 2, (np.cos(yy / 3) + 1) / 2, rng.random((H, W))]).astype(
        np.float32
    )  # textured: blur has work to do
    return {
        "rgb": rgb,
        "depth": depth,
        "hha": rng.random((3, H, W), dtype=np.float32),
        "label": rng.integers(0, 2, (H, W)).astype(np.int64),
        "id": "0001",
    }


def run(spec, sample=None, seed=1, meta=None):
    sample = make_sample() if sample is None else sample
    return make_corruption(spec)(sample, np.random.default_rng(seed), meta or make_meta())


@pytest.mark.parametrize("kind", list(KINDS))
def test_deterministic_for_a_seed(kind):
    a, b = run(f"{kind}:3"), run(f"{kind}:3")
    for key in ("rgb", "depth", "hha", "label"):
        np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("kind", ["depth_noise", "depth_holes", "depth_edges", "rgb_lowlight"])
def test_different_seeds_differ(kind):
    key = "rgb" if KINDS[kind].group == "rgb" else "depth"
    assert not np.array_equal(run(f"{kind}:3", seed=1)[key], run(f"{kind}:3", seed=2)[key])


@pytest.mark.parametrize("kind", list(KINDS))
def test_severity_zero_is_identity_and_input_untouched(kind):
    sample = make_sample()
    copy = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in sample.items()}
    out = run(f"{kind}:0", sample)
    assert out is not sample
    for key in sample:
        np.testing.assert_array_equal(out[key], copy[key])
    run(f"{kind}:5", sample)
    for key in sample:  # the input dict's arrays are never modified
        np.testing.assert_array_equal(sample[key], copy[key])


@pytest.mark.parametrize("kind", list(KINDS))
def test_only_the_target_kind_changes(kind):
    sample = make_sample()
    out = run(f"{kind}:4", sample, seed=0)
    changed = {k for k in ("rgb", "depth", "hha") if not np.array_equal(out[k], sample[k])}
    assert changed == ({"rgb"} if KINDS[kind].group == "rgb" else {"depth"})
    np.testing.assert_array_equal(out["label"], sample["label"])
    assert out["id"] == "0001"
    assert out["rgb"].dtype == np.float32 and out["depth"].dtype == np.float32
    assert out["depth"].shape == (1, H, W) and out["rgb"].shape == (3, H, W)


def test_modalities_are_picked_by_kind_not_name():
    meta = make_meta(colour=("color", 3), range=("depth", 1))
    s = make_sample()
    sample = {"colour": s["rgb"], "range": s["depth"], "label": s["label"]}
    out = make_corruption("depth_holes:3")(sample, np.random.default_rng(0), meta)
    assert not np.array_equal(out["range"], sample["range"])
    np.testing.assert_array_equal(out["colour"], sample["colour"])


def test_missing_target_modality_is_an_error():
    meta = make_meta(rgb=("color", 3), hha=("image", 3))
    s = make_sample()
    with pytest.raises(FusescopeError, match="depth"):
        make_corruption("depth_noise:2")(
            {"rgb": s["rgb"], "hha": s["hha"]}, np.random.default_rng(0), meta
        )


def test_torch_tensors_in_torch_tensors_out():
    s = {
        k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in make_sample().items()
    }
    out = run("depth_noise:2", s)
    assert isinstance(out["depth"], torch.Tensor) and out["depth"].dtype == torch.float32
    np.testing.assert_array_equal(out["depth"].numpy(), run("depth_noise:2")["depth"])


# ---- monotone effects ----------------------------------------------------------------------


def measures(kind):
    return [effect(kind, s) for s in range(6)]


def effect(kind, severity):
    s = make_sample()
    out = run(f"{kind}:{severity}", s, seed=7)
    d0, d1 = s["depth"], out["depth"]
    valid = (d0 > 0) & (d1 > 0)
    if kind == "depth_noise":  # std of the error normalised by z^2
        return float(np.std((d1 - d0)[valid] / d0[valid] ** 2))
    if kind == "depth_holes":
        return float((d1 == 0).mean())
    if kind in ("depth_edges", "depth_shift"):
        return float((d1 != d0).mean())
    if kind == "depth_missing":  # fraction of 200 samples whose depth vanished
        return float(
            np.mean([not run(f"{kind}:{severity}", s, seed=i)["depth"].any() for i in range(200)])
        )
    if kind == "rgb_lowlight":
        return -float(out["rgb"].mean())  # darker is worse
    if kind == "rgb_blur":  # less high-frequency energy is worse
        return -float(np.abs(ndimage.laplace(out["rgb"][0])).mean())
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", list(KINDS))
def test_effect_grows_with_severity(kind):
    m = measures(kind)
    assert all(b > a for a, b in zip(m, m[1:], strict=False)), m


def test_noise_std_follows_the_table():
    # the measured std / z^2 matches each level's coefficient
    for severity, coeff in enumerate(KINDS["depth_noise"].levels, start=1):
        assert effect("depth_noise", severity) == pytest.approx(coeff, rel=0.1)


def test_holes_and_shift_are_what_they_say():
    s = make_sample()
    holes = run("depth_holes:3", s)["depth"]
    assert (holes == 0).mean() == pytest.approx(KINDS["depth_holes"].levels[2], abs=0.01)
    shifted = run("depth_shift:4", s, seed=3)["depth"][0]
    # the box moved rigidly by N = 8 pixels along the dominant axis
    box = np.argwhere(shifted == 1.5)
    dy, dx = box.min(0) - np.array([10, 15])
    assert max(abs(dy), abs(dx)) == 8
    assert (
        make_corruption("depth_missing:5")(s, np.random.default_rng(0), make_meta())["depth"].sum()
        == 0
    )


# ---- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        "fog:2",
        "depth_noise",
        "depth_noise:6",
        "depth_noise:-1",
        "depth_noise:x",
        "depth_noise:2.5",
        "",
    ],
)
def test_bad_specs_list_the_known_kinds(spec):
    with pytest.raises(FusescopeError) as err:
        make_corruption(spec)
    for kind in KINDS:
        assert kind in str(err.value)


def test_spec_round_trip():
    c = make_corruption("rgb_blur:2")
    assert c.spec == "rgb_blur:2" and c.parameter == KINDS["rgb_blur"].levels[1]
    assert make_corruption("rgb_blur:0").parameter is None
