"""HHA: known geometry, defined output on holes, and the MATLAB reference frame."""

from pathlib import Path

import numpy as np
import pytest

from fusescope.data.hha import GravityOptions, Intrinsics, hha
from fusescope.errors import FusescopeError
from fusescope.io import read_image

# a real NYUDv2 frame and the original MATLAB code's HHA of it (see the README and licence there)
REF = Path(__file__).resolve().parent / "fixtures" / "hha_reference"
NYU_K = Intrinsics(518.857901174502, 519.469611121275, 325.582449411190, 253.736166334005)


def render_room(pitch_deg, cam_height=1.2, wall=4.0, H=120, W=160, f=120.0):
    """Depth of a floor `cam_height` below a camera pitched down, and a wall `wall` ahead."""
    K = Intrinsics(f, f, W / 2 + 0.5, H / 2 + 0.5)
    v, u = np.mgrid[1 : H + 1, 1 : W + 1].astype(float)
    ray = np.stack([(u - K.cx) / f, (v - K.cy) / f, np.ones_like(u)], -1)
    p = np.deg2rad(pitch_deg)
    # camera -> world (y down): a rotation about x that points the optical axis down by `pitch`
    R = np.array([[1, 0, 0], [0, np.cos(p), np.sin(p)], [0, -np.sin(p), np.cos(p)]])
    rw = ray @ R.T
    with np.errstate(divide="ignore"):
        t_floor = np.where(rw[..., 1] > 0, cam_height / rw[..., 1], np.inf)
        t_wall = np.where(rw[..., 2] > 0, wall / rw[..., 2], np.inf)
    depth = np.minimum(t_floor, t_wall)  # metres along z of the camera (ray z = 1)
    return depth, K, t_floor < t_wall, rw, R


@pytest.mark.parametrize("pitch", [0.0, 15.0, 30.0])
def test_tilted_floor_and_wall(pitch):
    depth, K, floor, rw, R = render_room(pitch)
    out, g = hha(depth, K, return_gravity=True)
    # gravity = world down (0, 1, 0) seen from the camera
    # within 0.6 deg: windows straddling the floor-wall crease tilt the estimate slightly
    np.testing.assert_allclose(g, R.T @ np.array([0.0, 1.0, 0.0]), atol=1e-2)
    inner = np.zeros_like(floor)
    inner[5:-5, 5:-5] = True
    # angle channel: floor normal parallel to gravity (0 deg), wall perpendicular (90 deg)
    edge = np.abs(np.diff(floor.astype(int), axis=0, prepend=0)) > 0
    near_edge = np.zeros_like(edge)
    for dy in range(-4, 5):
        near_edge |= np.roll(edge, dy, axis=0)
    fl, wa = floor & inner & ~near_edge, ~floor & inner & ~near_edge
    assert np.all(out[..., 2][fl] == 38)
    assert np.all(out[..., 2][wa] == 128)
    # height channel: the floor is the lowest point -> 0; wall points at their height in cm
    # (within 2 cm: the small gravity error above tilts the far floor by up to 4 m * 0.4e-2)
    assert np.all(out[..., 1][fl] <= 2)
    height_cm = 120.0 - (depth[..., None] * rw)[..., 1] * 100.0
    expect = np.clip(np.floor(height_cm + 0.5), 0, 255)
    assert np.abs(out[..., 1][wa].astype(int) - expect[wa]).max() <= 2
    # disparity channel: 31000 / depth_cm, depth clamped at 1 m
    disp = np.clip(np.floor(31000 / np.maximum(depth * 100, 100) + 0.5), 0, 255)
    np.testing.assert_array_equal(out[..., 0], disp)


def test_fixed_gravity_and_camera_height():
    depth, K, floor, _, _ = render_room(0.0)
    out = hha(depth, K, gravity=GravityOptions(direction=(0, 1, 0), camera_height_m=1.2))
    inner = floor.copy()
    inner[:, :5] = inner[:, -5:] = False
    inner[-5:] = False
    assert np.all(out[..., 1][inner & floor] == 0)
    assert np.all(out[..., 2][inner & floor & (np.cumsum(floor, 0) > 5)] == 38)


def test_holes_are_defined():
    depth, K, *_ = render_room(20.0)
    depth[40:60, 50:90] = 0.0
    depth[0, 0] = np.nan
    out = hha(depth, K)
    assert out.dtype == np.uint8
    assert np.all(out[40:60, 50:90] == 0)
    assert np.all(out[0, 0] == 0)
    # a raw-depth mask that hides whole windows: those pixels get MATLAB's 180 deg (+38 -> 218)
    raw = depth.copy()
    raw[:, :30] = 0
    out = hha(np.nan_to_num(depth), K, raw)
    assert np.all(out[5:-5, :20, 2][depth[5:-5, :20] > 0] == 218)


def test_bad_inputs():
    depth, K, *_ = render_room(0.0)
    with pytest.raises(FusescopeError, match="shape"):
        hha(depth, K, depth[:10])
    with pytest.raises(FusescopeError, match="gravity"):
        hha(np.zeros((20, 20)), K)


def test_matches_matlab_reference():
    depth = read_image(REF / "depth.png") / 1e4  # units of 0.1 mm
    ref = read_image(REF / "hha_matlab.png").astype(int)
    assert depth.shape == (480, 640) and ref.shape == (480, 640, 3)
    # The reference was made as Depth2HHA's main.m does: RD = D (no raw-depth mask).
    out = hha(depth, NYU_K).astype(int)
    diff = np.abs(out - ref)
    assert diff.max() == 0, [diff[..., c].mean() for c in range(3)]
    # With the raw-depth mask the angle channel changes inside holes (the reference did not use
    # it); the disparity stays exact and the height within one level.
    raw = read_image(REF / "raw_depth.png") / 1e4
    out = hha(depth, NYU_K, raw).astype(int)
    diff = np.abs(out - ref)
    assert diff[..., 0].max() == 0 and diff[..., 1].max() <= 1
    valid = raw > 0
    assert (diff[..., 2][valid] <= 2).mean() > 0.95


def test_command(tmp_path):
    import argparse

    from fusescope.data.commands import register
    from fusescope.io import write_png

    depth, K, *_ = render_room(20.0)
    write_png(tmp_path / "d.png", np.rint(depth * 1000).astype(np.uint16))
    ap = argparse.ArgumentParser()
    register(ap.add_subparsers())
    args = ap.parse_args(
        [
            "hha",
            "--depth",
            str(tmp_path / "d.png"),
            "--intrinsics",
            str(K.fx),
            str(K.fy),
            str(K.cx),
            str(K.cy),
            "--depth-scale",
            "0.001",
            "--out",
            str(tmp_path / "h.png"),
        ]
    )
    args.func(args)
    out = read_image(tmp_path / "h.png")
    assert out.shape == depth.shape + (3,) and out.dtype == np.uint8
    args = ap.parse_args(
        [
            "hha",
            "--depth",
            str(tmp_path / "missing.png"),
            "--intrinsics",
            "1",
            "1",
            "0",
            "0",
            "--depth-scale",
            "0.001",
            "--out",
            "x.png",
        ]
    )
    with pytest.raises(FusescopeError, match="missing.png"):
        args.func(args)
