"""Rendering: a scene's parts ray cast to every modality of a frame.

Image formation (exact; `fusescope.data.synthetic` documents it for users):

    radiance = albedo * shade                                       (3, H, W), per channel
    rgb      = round(255 * clip(radiance + rgb_noise * N(0, 1), 0, 1))
    texture  = round(255 * albedo / TEXTURE_RANGE)
    shade8   = round(255 * shade / SHADE_RANGE)

so `rgb` = quantised sensor(`RGB_GAIN` * texture * shade) with texture and shade in [0, 1] as
read from their files, up to their 8-bit quantisation. `shade` is the Lambertian shading of
the RGB-visible surface (ambient + key light with distance fall-off + a camera fill light,
times the exposure; 1 x exposure on glowing windows). `albedo` and `shade` never exceed the
ranges (albedo <= 1.2305, see `paint`; shade <= (0.4 + 1 + 0.2) * 1.15 = 1.84), so neither
clip binds.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from fusescope.data.synthetic.classes import scene_parts
from fusescope.data.synthetic.parts import Decal
from fusescope.data.synthetic.raycast import cast, dot, local_normals, ray_dirs
from fusescope.data.synthetic.sampling import sample_scene
from fusescope.data.synthetic.scene import FACE_AXIS, FACE_UV, Frame, Scene
from fusescope.data.synthetic.sensor import (
    noise_fields,
    quantise_depth,
    sensor_depth,
    sensor_rgb,
)
from fusescope.data.synthetic.thermal import render_thermal

TEXTURE_RANGE = 1.25  # albedo that `texture` 255 stands for
SHADE_RANGE = 2.0  # shading that `shade` 255 stands for
RGB_GAIN = TEXTURE_RANGE * SHADE_RANGE  # radiance = RGB_GAIN * texture * shade, all in [0, 1]
EDGE_SCALE = 4.0  # Sobel magnitude / 4: a straight step of s luminance levels reads s

DROPPABLE = {"geometry": "depth", "appearance": "rgb", "thermal": "thermal"}
"""`render(drop=...)` names: a cue group -> the parts only that cue's modality sees."""


def quantise8(x: np.ndarray) -> np.ndarray:
    """uint8 of values in [0, 1] (clipped): round(255 x)."""
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def texture_edges(texture: np.ndarray) -> np.ndarray:
    """The `edge` modality of an 8-bit texture image (H, W, 3): uint8 (H, W).

    The Sobel gradient magnitude of the texture's luminance (0.299 R + 0.587 G + 0.114 B of its
    8-bit values, borders replicated), divided by `EDGE_SCALE` so that a straight step of s
    levels reads s on the pixels either side of it, rounded and clipped to 255.
    """
    t = texture.astype(np.float64)
    lum = 0.299 * t[..., 0] + 0.587 * t[..., 1] + 0.114 * t[..., 2]
    p = np.pad(lum, 1, mode="edge")  # (H+2, W+2)
    # Sobel: a [1, 2, 1] sum across the direction, a difference along it.
    right = p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]
    left = p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2]
    below = p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]
    above = p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:]
    magnitude = np.hypot(right - left, below - above)
    return np.round(np.clip(magnitude / EDGE_SCALE, 0, 255)).astype(np.uint8)


TRANSLATION_MODALITIES = ("texture", "shade", "normal", "edge")
EXTRA_MODALITIES = (*TRANSLATION_MODALITIES, "thermal")


def _decal_hits(dc: Decal, pts: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pixels (indices into `ids`) of a decal's host face inside the decal, and their decal
    coordinates (2, M) in [-1, 1]."""
    iu, iv = FACE_UV[dc.host]
    idx = np.flatnonzero(ids == dc.host)
    q = np.stack(
        [
            (pts[iu, idx] - dc.center[0]) / dc.half[0],
            (pts[iv, idx] - dc.center[1]) / dc.half[1],
        ]
    )  # (2, M)
    if dc.disc:
        inside = q[0] * q[0] + q[1] * q[1] <= 1
    else:
        inside = (np.abs(q[0]) <= 1) & (np.abs(q[1]) <= 1)
    return idx[inside], q[:, inside]


def render(
    scene: Scene,
    drop: Collection[str] = (),
    noise: bool = True,
    extra: Collection[str] = TRANSLATION_MODALITIES,
) -> Frame:
    """Ray cast a scene to RGB, depth, labels and the extra modalities in `extra`.

    Args:
        scene: the scene to render.
        drop: cue groups whose single-modality parts are removed: `"geometry"` removes the parts
            only depth sees (camouflaged solids, sign plates, dome caps), `"appearance"` the
            parts only RGB sees (decals), `"thermal"` the warm patches only thermal sees. RGB is
            unchanged by the first and the third, depth by the second and the third, thermal
            by the first two.
        noise: add sensor noise (depth holes, thermal noise); without it depth is only
            quantised. Texture, shade, normal and edge are noise-free either way.
        extra: which of `EXTRA_MODALITIES` to compute (the others are None in the frame; `edge`
            brings `texture`; `thermal` needs a scene sampled with `thermal=True`); they cost
            time, not random draws. Naming rgb or depth is allowed: they are always made.

    Returns:
        The frame; labels come from the parts that remain.
    """
    unknown = set(drop) - set(DROPPABLE)
    if unknown:
        raise ValueError(f"cannot drop {sorted(unknown)}; known cue groups: {sorted(DROPPABLE)}")
    if set(extra) - {"rgb", "depth", *EXTRA_MODALITIES}:
        raise ValueError(f"unknown modality in {sorted(extra)}; known: {EXTRA_MODALITIES}")
    if "thermal" in extra and scene.thermal is None:
        raise ValueError("thermal needs a scene sampled for it: sample_scene(..., thermal=True)")
    cam = scene.camera
    hgt, wid = cam.height, cam.width
    solids, all_decals = scene_parts(scene)
    decals = [d for d in all_decals if d.seen_by == "rgb"]
    warm = [d for d in all_decals if d.seen_by == "thermal"]
    if "geometry" in drop:
        solids = [s for s in solids if s.seen_by != "depth"]
    if "appearance" in drop:
        decals = []
    if "thermal" in drop:
        warm = []

    dirs = ray_dirs(cam)  # (3, H, W)
    origin = cam.position.astype(np.float32)
    t_depth, id_depth, t_rgb, id_rgb = cast(cam, solids, dirs)

    n_pix = hgt * wid
    d_flat = dirs.reshape(3, n_pix)
    id_d, id_c = id_depth.ravel(), id_rgb.ravel()
    p_depth = origin[:, None] + t_depth.reshape(1, n_pix) * d_flat  # (3, N) world hit points
    # Where no camouflaged solid is in front, both casts met the same surface.
    p_rgb = origin[:, None] + t_rgb.reshape(1, n_pix) * d_flat
    n_depth = np.zeros_like(p_depth)
    n_rgb = np.zeros_like(p_rgb)
    albedo = np.zeros_like(p_rgb)
    ir = np.zeros(n_pix, dtype=np.float32)
    label = np.zeros(n_pix, dtype=np.uint8)
    for k in np.union1d(id_d, id_c):
        s = solids[k]
        for pts, ids, normals, is_depth in (
            (p_depth, id_d, n_depth, True),
            (p_rgb, id_c, n_rgb, False),
        ):
            idx = np.flatnonzero(ids == k)
            if idx.size == 0:
                continue
            if s.shape == "plane":
                axis, sign = FACE_AXIS[k]
                local_p = pts[:, idx]
                local_n = np.zeros_like(local_p)
                local_n[axis] = sign
                normals[axis, idx] = sign
            else:
                local_p = s.rot.T @ (pts[:, idx] - s.center[:, None])
                local_n = local_normals(s, local_p)
                normals[:, idx] = s.rot @ local_n
            if is_depth:
                ir[idx] = s.ir
                label[idx] = s.cls
            else:
                albedo[:, idx] = s.paint(local_p, local_n)

    emissive = np.zeros(n_pix, dtype=bool)
    for dc in decals:
        for pts, ids, is_depth in ((p_depth, id_d, True), (p_rgb, id_c, False)):
            idx, q = _decal_hits(dc, pts, ids)
            if is_depth:
                label[idx] = dc.cls
            else:
                albedo[:, idx] = dc.paint(q)
                emissive[idx] = dc.emissive
    # warm patches: labelled where depth sees their host face (as decals are), felt by the
    # thermal image on the RGB-visible surface; they change neither albedo nor geometry
    warmth = np.zeros(n_pix, dtype=np.float64)
    for dc in warm:
        idx, _ = _decal_hits(dc, p_depth, id_d)
        label[idx] = dc.cls
        idx, q = _decal_hits(dc, p_rgb, id_c)
        warmth[idx] += dc.paint(q)

    # Lambertian shading of the RGB-visible surface by a key light and a camera fill.
    view = d_flat / np.sqrt(dot(d_flat, d_flat))  # (3, N) unit
    facing = dot(n_rgb, view)
    n_rgb *= np.where(facing > 0, -1.0, 1.0).astype(np.float32)  # normals face the camera
    to_light = scene.light.astype(np.float32)[:, None] - p_rgb
    dist2 = dot(to_light, to_light)
    cos_key = np.maximum(dot(n_rgb, to_light) / np.sqrt(dist2), 0)
    cos_fill = np.abs(facing)
    shade = scene.ambient + scene.light_power * cos_key / (1 + 0.1 * dist2) + 0.2 * cos_fill
    shade = np.where(emissive, 1.0, shade) * scene.exposure
    fields = noise_fields(scene) if noise else None
    rgb8 = sensor_rgb(
        (albedo * shade).reshape(3, hgt, wid),
        None if fields is None else fields.rgb,
        scene.rgb_noise,
    )

    z = t_depth
    if fields is not None:
        cos_view = np.abs(dot(n_depth, view)).reshape(hgt, wid)
        z = sensor_depth(
            z, cos_view, ir.reshape(hgt, wid), fields.depth, fields.holes, scene.depth_noise
        )
    depth = quantise_depth(z)

    # Translation modalities: functions of what was cast above, no random draw.
    frame = Frame(np.ascontiguousarray(rgb8), depth, label.reshape(hgt, wid))
    if "texture" in extra or "edge" in extra:
        texture = quantise8(albedo / TEXTURE_RANGE).reshape(3, hgt, wid).transpose(1, 2, 0)
        frame.texture = np.ascontiguousarray(texture)
        if "edge" in extra:
            frame.edge = texture_edges(frame.texture)
    if "shade" in extra:
        frame.shade = quantise8(shade / SHADE_RANGE).reshape(hgt, wid)
    if "normal" in extra:
        # Normals of the depth-visible surface (geometry, like depth), turned to face the
        # camera, in camera axes (x right, y down, z forward).
        toward = np.where(dot(n_depth, view) > 0, -n_depth, n_depth)
        normal = quantise8((cam.rotation.T.astype(np.float32) @ toward + 1) / 2)  # (3, N)
        frame.normal = np.ascontiguousarray(normal.reshape(3, hgt, wid).transpose(1, 2, 0))
    if "thermal" in extra:
        frame.thermal = render_thermal(scene, solids, id_c, p_rgb, warmth, noise)
    return frame


def render_frame(
    seed: int,
    index: int,
    size: tuple[int, int] = (120, 160),
    extra: Collection[str] = TRANSLATION_MODALITIES,
) -> Frame:
    """Frame `index` of a data set generated with `seed`, exactly as `generate` writes it (a
    data set with thermal, `"thermal" in extra`, has its thermal-only classes in every frame)."""
    scene = sample_scene(seed, index, size, thermal="thermal" in extra)
    return render(scene, extra=extra)
