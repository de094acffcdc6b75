"""Ray casting: where each pixel's ray first meets a solid, and the surface normal there.

Rays are scaled so that the ray parameter t is the camera z (depth), not the distance.
"""

from __future__ import annotations

import numpy as np

from fusescope.data.synthetic.parts import Solid
from fusescope.data.synthetic.scene import Camera

EPS = 1e-4


def dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-column dot product of component-major (3, M) arrays: three multiply-adds."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def intersect(s: Solid, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Ray parameter t of the first hit for rays o + t d, inf on a miss. o (3,), d (3,M)."""
    if s.shape == "plane":
        axis, value = int(s.dims[0]), s.dims[1]
        with np.errstate(divide="ignore"):
            t = (value - o[axis]) / d[axis]
        return np.where(t > EPS, t, np.inf)
    o = s.rot.T @ (o - s.center)  # into the local frame
    d = s.rot.T @ d
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if s.shape == "box":
            near = np.full(d.shape[1], -np.inf, dtype=np.float32)
            far = np.full(d.shape[1], np.inf, dtype=np.float32)
            for axis, h in enumerate(s.dims):
                t1 = (-h - o[axis]) / d[axis]
                t2 = (h - o[axis]) / d[axis]
                near = np.maximum(near, np.minimum(t1, t2))
                far = np.minimum(far, np.maximum(t1, t2))
            return np.where((near <= far) & (near > EPS), near, np.inf)
        if s.shape == "cylinder":  # along local y, radius r, half height hh, with caps
            r, hh = s.dims
            a = d[0] * d[0] + d[2] * d[2]
            b = 2 * (o[0] * d[0] + o[2] * d[2])
            c = o[0] ** 2 + o[2] ** 2 - r * r
            disc = b * b - 4 * a * c
            ts = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
            y = o[1] + ts * d[1]
            ts = np.where((disc >= 0) & (ts > EPS) & (np.abs(y) <= hh), ts, np.inf)
            # From outside, only the cap on the origin's side can be met before the side wall.
            tc = (np.copysign(hh, o[1]) - o[1]) / d[1]
            x, z = o[0] + tc * d[0], o[2] + tc * d[2]
            tc = np.where((tc > EPS) & (x * x + z * z <= r * r), tc, np.inf)
            return np.minimum(ts, tc)
        if s.shape == "cap":  # sphere of radius R centred at local (0, -c, 0), kept where y >= 0
            big_r, c = s.dims
            oc = o + np.array([0.0, c, 0.0], dtype=np.float32)
            a = dot(d, d)
            b = 2 * dot(d, oc)
            disc = b * b - 4 * a * (oc @ oc - big_r * big_r)
            t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
            y = o[1] + t * d[1]
            return np.where((disc >= 0) & (t > EPS) & (y >= 0), t, np.inf)
    raise ValueError(f"unknown shape {s.shape!r}")


def local_normals(s: Solid, p: np.ndarray) -> np.ndarray:
    """Outward normals (3,M) at local hit points p (3,M)."""
    n = np.zeros_like(p)
    if s.shape == "box":
        q = p / np.asarray(s.dims, dtype=np.float32)[:, None]
        axis = np.abs(q).argmax(axis=0)
        cols = np.arange(p.shape[1])
        n[axis, cols] = np.sign(q[axis, cols])
    elif s.shape == "cylinder":
        r, hh = s.dims
        on_cap = np.abs(p[1]) / hh > np.sqrt(p[0] ** 2 + p[2] ** 2) / r
        n[0] = np.where(on_cap, 0, p[0] / r)
        n[2] = np.where(on_cap, 0, p[2] / r)
        n[1] = np.where(on_cap, np.sign(p[1]), 0)
    elif s.shape == "cap":
        big_r, c = s.dims
        n = (p + np.array([[0.0], [c], [0.0]], dtype=np.float32)) / big_r
    return n


def _corners(s: Solid) -> np.ndarray:
    """World corners (8,3) of a local bounding box, to find the pixels a solid can cover."""
    if s.shape == "box":
        hi = np.asarray(s.dims)
        lo = -hi
    elif s.shape == "cylinder":
        r, hh = s.dims
        lo, hi = np.array([-r, -hh, -r]), np.array([r, hh, r])
    else:  # cap
        big_r, c = s.dims
        base = np.sqrt(big_r**2 - c**2)
        lo, hi = np.array([-base, 0.0, -base]), np.array([base, big_r - c, base])
    grid = np.array(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij")).reshape(3, 8).T
    local = np.where(grid == 1, hi, lo)  # (8, 3)
    return local @ s.rot.T + s.center


def _pixel_box(cam: Camera, s: Solid) -> tuple[slice, slice]:
    """Rows and columns of the image the solid can cover (the whole image if unsure)."""
    full = (slice(0, cam.height), slice(0, cam.width))
    if s.shape == "plane":
        return full
    pc = (_corners(s) - cam.position) @ cam.rotation  # (8, 3) camera coordinates
    if (pc[:, 2] < 0.05).any():
        return full
    u = cam.fx * pc[:, 0] / pc[:, 2] + cam.cx
    v = cam.fy * pc[:, 1] / pc[:, 2] + cam.cy
    u0, u1 = max(int(np.floor(u.min())) - 1, 0), min(int(np.ceil(u.max())) + 2, cam.width)
    v0, v1 = max(int(np.floor(v.min())) - 1, 0), min(int(np.ceil(v.max())) + 2, cam.height)
    return slice(v0, max(v0, v1)), slice(u0, max(u0, u1))


def ray_dirs(cam: Camera) -> np.ndarray:
    """World ray directions (3, H, W) scaled so that t along them is the camera z (depth)."""
    x = (np.arange(cam.width, dtype=np.float32) - cam.cx) / cam.fx
    y = (np.arange(cam.height, dtype=np.float32) - cam.cy) / cam.fy
    d = np.empty((3, cam.height, cam.width), dtype=np.float32)
    d[0] = x[None, :]
    d[1] = y[:, None]
    d[2] = 1.0
    return (cam.rotation.astype(np.float32) @ d.reshape(3, -1)).reshape(d.shape)


def cast(
    cam: Camera, solids: list[Solid], dirs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two casts in one sweep: depth sees every solid, RGB only the non-camouflaged ones.

    Returns:
        `(t_depth, id_depth, t_rgb, id_rgb)`, each (H, W): the depth of the first hit and the
        index of the solid hit, per cast.
    """
    hgt, wid = cam.height, cam.width
    origin = cam.position.astype(np.float32)
    t_depth = np.full((hgt, wid), np.inf, dtype=np.float32)
    t_rgb = np.full((hgt, wid), np.inf, dtype=np.float32)
    id_depth = np.zeros((hgt, wid), dtype=np.int32)
    id_rgb = np.zeros((hgt, wid), dtype=np.int32)
    for k, s in enumerate(solids):
        rows, cols = _pixel_box(cam, s)
        sub = dirs[:, rows, cols]  # (3, h, w)
        if sub.size == 0:
            continue
        t = intersect(s, origin, sub.reshape(3, -1)).reshape(sub.shape[1:])
        for best, ids, on in ((t_depth, id_depth, True), (t_rgb, id_rgb, s.seen_by == "both")):
            if on:
                closer = t < best[rows, cols]
                best[rows, cols] = np.where(closer, t, best[rows, cols])
                ids[rows, cols][closer] = k
    return t_depth, id_depth, t_rgb, id_rgb
