"""HHA encoding of depth (Gupta et al., ECCV 2014): horizontal disparity, height, angle.

This follows the original MATLAB code (`saveHHA.m`, `processDepthImage.m`,
`computeNormalsSquareSupport.m`, `getYDir.m` of s-gupta/rcnn-depth) step by step, vectorised:

1. Points in centimetres from depth and the intrinsics.
2. Normals from a least-squares plane fit over a square window around each pixel, with pixels
   missing in the raw depth left out: window radius 3 for the angle channel, radius 10 for the
   gravity estimate. The window sums are box filters (zero padded, as MATLAB's `filter2`), so a
   frame costs a handful of separable filters instead of a per-pixel loop.
3. Gravity: start from the image "down" axis and alternate 5 + 5 hard assignments (normals
   within 45, then 15 degrees of the current estimate count as horizontal surfaces, normals
   within 45 / 15 degrees of perpendicular as walls), each time taking the eigenvector of the
   smallest eigenvalue of `sum(walls n n^T) - sum(floors n n^T)`.
4. Channels, as `saveHHA.m` writes them: R = 31000 / max(z_cm, 100), G = height above the lowest
   point in cm (if the lowest point is less than 90 cm below the camera it is assumed to be
   130 cm below: a view that misses the floor), B = angle between normal and gravity in degrees
   + 38. Rounded half away from zero and clipped to 0..255 as MATLAB's `uint8` does.

Outdoor scenes (Cityscapes, KITTI) have no reliable floor statistics and a known mounting, so
the gravity direction and the camera height can be fixed instead of estimated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusescope.errors import FusescopeError

# Constants of saveHHA.m / processDepthImage.m.
DISPARITY_NUMERATOR = 31000.0  # R = 31000 / depth_cm
MIN_DEPTH_CM = 100.0  # depths below 1 m are treated as 1 m so R stays <= 310
ANGLE_OFFSET = 128.0 - 90.0  # B = angle + 38 ("keeping some slack")
NORMAL_RADIUS = 3  # window radius of the normals used in the angle channel
GRAVITY_RADIUS = 10  # window radius of the normals used to estimate gravity
GRAVITY_THRESHOLDS = (45.0, 15.0)  # degrees, one round of hard assignments per value
GRAVITY_ITERS = (5, 5)


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels.

    `cx`, `cy` follow the convention of the NYU / SUN RGB-D toolboxes and of the MATLAB HHA code:
    pixel (row 0, column 0) has coordinates (1, 1). Pass `one_based=False` to `hha` for
    intrinsics whose first pixel centre is (0, 0) (OpenCV, Cityscapes).
    """

    fx: float
    fy: float
    cx: float
    cy: float


@dataclass(frozen=True)
class GravityOptions:
    """How the "up" direction and the height origin are found.

    Attributes:
        direction: fixed gravity ("down") direction in camera coordinates (x right, y down,
            z forward), e.g. (0, 1, 0) for a level camera; None estimates it from the normals
            as the MATLAB code does (indoor scenes).
        camera_height_m: if set, height is measured from a ground plane this far below the
            camera instead of from the lowest observed point (outdoor scenes, whose lowest
            point is noise or a kerb).
        thresholds: angle thresholds (degrees) of the estimation rounds.
        iters: iterations per round.
    """

    direction: tuple[float, float, float] | None = None
    camera_height_m: float | None = None
    thresholds: tuple[float, ...] = GRAVITY_THRESHOLDS
    iters: tuple[int, ...] = GRAVITY_ITERS


def point_cloud(z: np.ndarray, K: Intrinsics, one_based: bool = True) -> np.ndarray:
    """Back-project a depth map (any unit) to points in the same unit: (H, W, 3)."""
    H, W = z.shape
    shift = 1.0 if one_based else 0.0
    u = np.arange(W, dtype=np.float64) + shift
    v = np.arange(H, dtype=np.float64) + shift
    x = ((u - K.cx) / K.fx)[None, :] * z
    y = ((v - K.cy) / K.fy)[:, None] * z
    return np.stack([x, y, z], axis=-1)


def _integral(f: np.ndarray, pad: int) -> np.ndarray:
    """Integral image of `f` (H, W, C) zero padded by `pad`: (H + 2 pad + 1, W + 2 pad + 1, C)."""
    H, W, C = f.shape
    p = np.zeros((H + 2 * pad + 1, W + 2 * pad + 1, C))
    p[pad + 1 : pad + 1 + H, pad + 1 : pad + 1 + W] = f
    return p.cumsum(0).cumsum(1)


def _box_sum(ii: np.ndarray, pad: int, r: int, H: int, W: int) -> np.ndarray:
    """Sum over a (2r+1)^2 window per pixel (zero outside the image) from `_integral`."""
    # Exact window sums (no averaging round trip), O(1) per pixel for any radius.
    o = pad - r  # offset of this radius inside the padded integral image
    k = 2 * r + 1
    a = ii[o + k : o + k + H, o + k : o + k + W]
    b = ii[o : o + H, o + k : o + k + W]
    c = ii[o + k : o + k + H, o : o + W]
    d = ii[o : o + H, o : o + W]
    return a - b - c + d


def normals(
    pc: np.ndarray,
    missing: np.ndarray,
    K: Intrinsics,
    radius: int | tuple[int, ...],
    one_based: bool = True,
) -> np.ndarray | list[np.ndarray]:
    """Unit normals from plane fits over square windows (computeNormalsSquareSupport).

    Each window fits `n . (X/Z, Y/Z, 1) = 1/Z` in least squares over its valid pixels; the
    normal is oriented to face the camera's viewing direction as the MATLAB code does.

    Args:
        pc: points (H, W, 3), in centimetres, from the filled depth.
        missing: True where the raw sensor had no depth: left out of every fit.
        K: intrinsics (the fit needs only the rays, i.e. X/Z and Y/Z).
        radius: window radius in pixels, or several (they share one integral image).
        one_based: pixel-coordinate convention of `K`.

    Returns:
        (H, W, 3) normals (a list of them for several radii); NaN where the window holds no
        valid pixel.
    """
    H, W, _ = pc.shape
    radii = (radius,) if isinstance(radius, int) else tuple(radius)
    shift = 1.0 if one_based else 0.0
    xz = np.broadcast_to(((np.arange(W) + shift - K.cx) / K.fx)[None, :], (H, W))
    yz = np.broadcast_to(((np.arange(H) + shift - K.cy) / K.fy)[:, None], (H, W))
    z = pc[..., 2]
    valid = ~missing & (z != 0) & np.isfinite(z)
    with np.errstate(divide="ignore", invalid="ignore"):
        iz = np.where(valid, 1.0 / np.where(valid, z, 1.0), 0.0)
    one = valid.astype(np.float64)
    xz = xz * one
    yz = yz * one
    # (H, W, 9): the 6 distinct entries of A^T A, then the 3 of A^T b.
    raw = np.stack([xz * xz, xz * yz, xz, yz * yz, yz, one, xz * iz, yz * iz, iz], axis=-1)
    pad = max(radii)
    ii = _integral(raw, pad)
    out = []
    for r in radii:
        a1, a2, a3, a4, a5, a6, b1, b2, b3 = np.moveaxis(_box_sum(ii, pad, r, H, W), -1, 0)
        # Adjugate of the symmetric 3x3 A^T A; the determinant only scales the normal, and the
        # MATLAB code leaves it out too (degenerate windows give a zero vector -> NaN).
        c11 = a4 * a6 - a5 * a5
        c12 = -(a2 * a6 - a3 * a5)
        c13 = a2 * a5 - a3 * a4
        c22 = a1 * a6 - a3 * a3
        c23 = -(a1 * a5 - a2 * a3)
        c33 = a1 * a4 - a2 * a2
        n = np.stack(
            [
                c11 * b1 + c12 * b2 + c13 * b3,
                c12 * b1 + c22 * b2 + c23 * b3,
                c13 * b1 + c23 * b2 + c33 * b3,
            ],
            axis=-1,
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            n /= np.sqrt(np.einsum("hwc,hwc->hw", n, n))[..., None]
            # Orientation as in MATLAB: first z >= 0, then along the viewing ray (n . p >= 0);
            # both flips together are one sign per pixel.
            sign = np.where(n[..., 2] < 0, -1.0, 1.0)
            dot = np.einsum("hwc,hwc->hw", n, pc) * sign
        sign = np.where(dot < 0, -sign, sign)
        out.append(n * sign[..., None])
    return out[0] if isinstance(radius, int) else out


def estimate_gravity(
    n: np.ndarray,
    y0: np.ndarray | None = None,
    thresholds: tuple[float, ...] = GRAVITY_THRESHOLDS,
    iters: tuple[int, ...] = GRAVITY_ITERS,
) -> np.ndarray:
    """Gravity ("down") direction from a normal field (getYDir), a unit 3-vector."""
    nn = n.reshape(-1, 3)
    nn = nn[~np.isnan(nn[:, 0])]  # (P, 3)
    # Outer products once, (P, 6): each iteration's scatter matrix is then one mat-vec.
    outer = np.stack(
        [
            nn[:, 0] * nn[:, 0],
            nn[:, 0] * nn[:, 1],
            nn[:, 0] * nn[:, 2],
            nn[:, 1] * nn[:, 1],
            nn[:, 1] * nn[:, 2],
            nn[:, 2] * nn[:, 2],
        ],
        axis=1,
    )
    y = np.array([0.0, 1.0, 0.0]) if y0 is None else np.asarray(y0, dtype=np.float64)
    for thresh, it in zip(thresholds, iters, strict=True):
        cos_t, sin_t = np.cos(np.deg2rad(thresh)), np.sin(np.deg2rad(thresh))
        for _ in range(it):
            sim = np.abs(nn @ y)
            # +1 for walls (perpendicular to gravity), -1 for floors and ceilings (parallel)
            w = (sim < sin_t).astype(np.float64) - (sim > cos_t)
            a = w @ outer
            A = np.array([[a[0], a[1], a[2]], [a[1], a[3], a[4]], [a[2], a[4], a[5]]])
            _, V = np.linalg.eigh(A)  # ascending eigenvalues
            new = V[:, 0]
            y = new * np.sign(y @ new)  # sign 0 gives a zero vector, as in MATLAB; caught below
    if not np.all(np.isfinite(y)) or np.linalg.norm(y) < 0.5:
        raise FusescopeError(
            "HHA: cannot estimate the gravity direction from this depth map "
            "(too few valid surfaces); fix it with a gravity direction"
        )
    return y


def _rotation(yi: np.ndarray, yf: np.ndarray) -> np.ndarray:
    """Rotation taking `yi` to `yf` about their cross product (getRMatrix)."""
    yi = yi / np.linalg.norm(yi)
    yf = yf / np.linalg.norm(yf)
    ax = np.cross(yi, yf)
    phi = np.degrees(np.arccos(np.clip(yi @ yf, -1.0, 1.0)))
    if abs(phi) <= 0.1:  # MATLAB's threshold: below it the camera counts as level
        return np.eye(3)
    ax = ax / np.linalg.norm(ax)
    S = np.array([[0, -ax[2], ax[1]], [ax[2], 0, -ax[0]], [-ax[1], ax[0], 0]])
    phi = np.deg2rad(phi)
    return np.eye(3) + np.sin(phi) * S + (1 - np.cos(phi)) * (S @ S)


def _matlab_uint8(x: np.ndarray) -> np.ndarray:
    """MATLAB's double -> uint8: round half away from zero, saturate, NaN -> 0."""
    x = np.nan_to_num(x, nan=0.0)
    return np.clip(np.floor(np.abs(x) + 0.5) * np.sign(x), 0, 255).astype(np.uint8)


def hha(
    depth_m: np.ndarray,
    K: Intrinsics,
    raw_depth_m: np.ndarray | None = None,
    *,
    gravity: GravityOptions | None = None,
    one_based: bool = True,
    return_gravity: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """HHA image of a depth map, as the MATLAB code writes it.

    Args:
        depth_m: (H, W) depth in metres; the filled (in-painted) depth where there is one.
        K: intrinsics of the depth map.
        raw_depth_m: (H, W) raw sensor depth in metres; its zeros are left out of the normal
            fits. None: the zeros (and non-finite values) of `depth_m` are.
        gravity: gravity options (default: estimate as the MATLAB code does).
        one_based: intrinsics convention (see `Intrinsics`).
        return_gravity: also return the gravity ("down") direction used.

    Returns:
        (H, W, 3) uint8: R = disparity, G = height, B = angle. Pixels without depth get R = 0
        (the MATLAB code gives them the 1 m value 310 -> 255; we keep "no depth" visible),
        and pixels whose whole window is missing get the angle MATLAB gives them (180 deg).
    """
    depth_m = np.asarray(depth_m, dtype=np.float64)
    if depth_m.ndim != 2:
        raise FusescopeError(f"HHA: depth must be a 2-D map, got shape {depth_m.shape}")
    gravity = gravity or GravityOptions()
    hole = ~np.isfinite(depth_m) | (depth_m <= 0)
    z = np.where(hole, 0.0, depth_m) * 100.0  # centimetres, as processDepthImage
    if raw_depth_m is not None:
        raw = np.asarray(raw_depth_m, dtype=np.float64)
        if raw.shape != depth_m.shape:
            raise FusescopeError(f"HHA: raw depth shape {raw.shape} != depth shape {depth_m.shape}")
        missing = ~np.isfinite(raw) | (raw <= 0)
    else:
        missing = hole
    pc = point_cloud(z, K, one_based)
    if gravity.direction is None:
        n1, n2 = normals(pc, missing, K, (NORMAL_RADIUS, GRAVITY_RADIUS), one_based)
        ydir = estimate_gravity(n2, None, gravity.thresholds, gravity.iters)
    else:
        n1 = normals(pc, missing, K, NORMAL_RADIUS, one_based)
        ydir = np.asarray(gravity.direction, dtype=np.float64)
        if ydir.shape != (3,) or not np.linalg.norm(ydir) > 0:
            raise FusescopeError(
                f"HHA: gravity direction must be a non-zero 3-vector, got {gravity.direction}"
            )
        ydir = ydir / np.linalg.norm(ydir)
    R = _rotation(np.array([0.0, 1.0, 0.0]), ydir)
    # pcRot = R^T p; its y component is the coordinate along gravity (down).
    h = -(pc.reshape(-1, 3) @ R)[:, 1].reshape(z.shape)
    if gravity.camera_height_m is not None:
        h = h + gravity.camera_height_m * 100.0
    else:
        valid_h = h[~hole]
        y_min = valid_h.min() if valid_h.size else 0.0
        if y_min > -90.0:
            y_min = -130.0
        h = h - y_min
    # MATLAB's max(-1, NaN) is -1, so a normal-less pixel gets acosd(-1) = 180 degrees.
    cosang = np.sum(n1 * ydir, axis=-1)
    cosang = np.where(np.isnan(cosang), -1.0, np.clip(cosang, -1.0, 1.0))
    angle = np.degrees(np.arccos(cosang))
    disparity = DISPARITY_NUMERATOR / np.maximum(z, MIN_DEPTH_CM)
    out = np.stack([disparity, h, angle + ANGLE_OFFSET], axis=-1)
    out[hole] = (0.0, 0.0, 0.0)
    out = _matlab_uint8(out)
    return (out, ydir) if return_gravity else out


# Median depths (m) of real RGB-D frames: indoor sensors see ~0.5-10 m, street scenes further.
PLAUSIBLE_MEDIAN_M = {"indoor": (0.3, 15.0), "outdoor": (0.3, 150.0)}
# Units depth files are commonly stored in, as metres per unit.
COMMON_SCALES = {
    0.001: "mm",
    0.0001: "0.1 mm (NYUDv2 HHA reference)",
    0.01: "cm",
    0.0002: "1/5000 m (TUM RGB-D)",
    1.0: "m",
}


def depth_input_warnings(depth: np.ndarray, depth_scale: float, outdoor: bool = False) -> list[str]:
    """What looks wrong about a depth file before HHA is computed from it: an 8-bit image (a
    rendering of depth rather than depth), or a median depth no real scene has at this
    `depth_scale`, with the common unit that would give a plausible one.

    Args:
        depth: the file's values (0 = missing).
        depth_scale: metres per unit of the file, as given by the user.
        outdoor: a street scene (gravity or camera height given): allow larger depths.
    """
    found = []
    if depth.dtype == np.uint8:
        found.append(
            "8-bit depth image: at most 256 depth levels, so probably a picture of "
            "depth rather than depth in fixed units; HHA needs the 16-bit (or float) "
            "depth map"
        )
    valid = depth[depth > 0]
    if valid.size == 0:
        return found
    median = float(np.median(valid)) * depth_scale
    low, high = PLAUSIBLE_MEDIAN_M["outdoor" if outdoor else "indoor"]
    if not low <= median <= high:
        msg = (
            f"median depth {median:.3g} m at --depth-scale {depth_scale:g} is implausible "
            f"(expected {low:g}-{high:g} m)"
        )
        fits = [
            s
            for s in COMMON_SCALES
            if s != depth_scale and low <= float(np.median(valid)) * s <= high
        ]
        if fits:
            best = min(fits, key=lambda s: abs(np.log(float(np.median(valid)) * s / 3.0)))
            msg += (
                f"; if the file holds {COMMON_SCALES[best]}, use --depth-scale {best:g} "
                f"(median {float(np.median(valid)) * best:.3g} m)"
            )
        else:
            msg += "; --depth-scale is metres per unit of the file"
        found.append(msg)
    return found
