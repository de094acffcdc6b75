"""The known-answer RGB-D benchmark: procedural rooms ray cast in NumPy to RGB, depth, labels
and, on request, the Taskonomy-style modalities texture, shade, normal and edge, and a 16-bit
thermal image with classes only it can see.

Every class declares the modality that alone identifies it (`cue`): `both` (room structure,
tables, beds), `geometry` (objects RGB cannot see or cannot tell apart), `appearance` (objects
depth cannot see or cannot tell apart) and, in data sets with thermal, `thermal` (warm patches
neither RGB nor depth can see: floor heating, heating pipes in the wall). Models and dissection
tools must rediscover these cues, so the renderer makes them exact rather than approximate.

How cue isolation is made exact. A scene is a list of objects; each object is built from *parts*
and each part is seen by `both` modalities, only by `depth` or only by `rgb`:

- `depth` parts are solids painted exactly like what lies behind them (pillars, cabinets, the
  relief of round signs and domes). The RGB image is cast with these parts absent, so the
  pixels behind show through, shaded with the *background's* normals: no shading, silhouette or
  shadow betrays them (there are no shadows at all, for that reason).
- `rgb` parts are decals painted flat on a room surface (posters, rugs, windows, the disc of a
  round sign or dome). They have no relief, and the depth image is cast with them absent; depth
  sensor drop-outs depend on the infrared reflectance of the *surface under* the decal, never on
  the decal's colour.
- `thermal` parts (in scenes sampled for thermal only, from their own random stream) are warm
  patches on a floor or wall: no paint and no relief, so RGB and depth are the same bytes with
  or without them. The thermal image is cast like RGB (the camouflaged solids absent) and ignores
  every painted decal, so it sees neither the geometry-only nor the appearance-only classes, and
  no swap of a pair changes it (`thermal.py` has its image formation).
- Pairs that only one modality can tell apart share everything but the deciding part: a wooden
  crate and a cardboard box have the same box geometry and infrared reflectance and differ only
  in texture (`appearance`); a round sign and a dome have the same flat disc painted on the wall
  and differ only in relief, a thin flat plate or a spherical cap (`geometry`).

`render(scene, drop=("geometry",))` renders a scene without its depth-only parts,
`render(scene, drop=("appearance",))` without its rgb-only parts and `drop=("thermal",)` without
its warm patches; swapping a pair is
`dataclasses.replace(obj, cls=PAIRS[obj.cls])` on a scene object. The tests use both.

Image formation (`rendering.py`), exact. Per pixel, `albedo` (3 channels) is the paint of the
RGB-visible surface and `shade` its Lambertian shading (ambient + a point key light with
distance fall-off + a camera fill light, times the exposure; glowing windows: 1 x exposure):

    rgb     = round(255 * clip(albedo * shade + rgb_noise * N(0, 1), 0, 1))   uint8 x 3
    texture = round(255 * albedo / 1.25)                                       uint8 x 3
    shade   = round(255 * shade / 2)                                           uint8 x 1
    normal  = round(255 * (n + 1) / 2)                                         uint8 x 3
    edge    = round(min(|Sobel(0.299 R + 0.587 G + 0.114 B of texture)| / 4, 255))  uint8 x 1
    depth   = round(1000 * z), 0 = hole (sensor model below)                   uint16 mm

so with texture and shade read as [0, 1] images, `rgb = round(255 * clip(2.5 * texture * shade
+ noise, 0, 1))` up to their 8-bit quantisation (the test bounds the difference per pixel by
0.5 + 255 * 2.5 * (texture + shade + 1/510) / 510 levels). RGB is fully determined by texture
and shade; texture and shade see exactly what RGB sees (decals yes, camouflaged solids no), and
neither holds noise. `n` is the unit normal of the *depth*-visible surface in camera axes (x
right, y down, z forward), turned to face the camera: depth and normal carry geometry only
(the same bytes whatever the scene's paint), texture, shade and RGB none of the depth-only
parts. `edge` is a function of the written texture alone (Taskonomy's `edge_texture` idea): a
straight step of s luminance levels reads s on the two pixels beside it.

Sensor noise (RGB noise, depth noise growing with z^2, depth holes) is drawn from a per-frame
random stream (`Scene.sensor_seed`, `sensor.noise_fields`) as whole-image fields, before and
independently of what the scene holds, so removing an object changes the noisy images exactly
where the clean ones change. The cue-isolation tests therefore compare the final, noisy,
quantised images byte for byte. Computing texture, shade, normal and edge draws nothing.

Each frame is seeded from `np.random.SeedSequence([seed, index])`: frames are independent of each
other and of the order they are made in, and the same arguments give the same bytes.

Modules, one per concern: `scene` (the editable scene types), `parts` (solids and decals),
`raycast`, `paint` (shared painters and paint draws), `classes` (one spec per class: label
entry, parts, painter, placer), `layout` (free visible spots), `sampling` (`sample_scene`),
`rendering`, `sensor`, `thermal` (the thermal scene and image), `writing` (`generate`).
"""

from fusescope.data.synthetic.classes import (
    CLASS_ID,
    CLASSES,
    PAIRS,
    SPECS,
    THERMAL_CLASSES,
    THERMAL_SPECS,
    ClassSpec,
)
from fusescope.data.synthetic.rendering import (
    DROPPABLE,
    EDGE_SCALE,
    RGB_GAIN,
    SHADE_RANGE,
    TEXTURE_RANGE,
    render,
    render_frame,
    texture_edges,
)
from fusescope.data.synthetic.sampling import sample_scene
from fusescope.data.synthetic.scene import (
    HORIZONTAL_FOV_DEG,
    Camera,
    Frame,
    Room,
    Scene,
    SceneObject,
    intrinsics,
)
from fusescope.data.synthetic.sensor import DEPTH_SCALE, MAX_RANGE, noise_fields
from fusescope.data.synthetic.thermal import NETD, THERMAL_SCALE, thermal_noise
from fusescope.data.synthetic.writing import (
    DEFAULT_MODALITIES,
    GENERATOR_VERSION,
    IGNORE_INDEX,
    MODALITIES,
    check_modalities,
    dataset_meta,
    frame_id,
    frames_per_second,
    generate,
    write_frame,
)

__all__ = [
    "CLASSES",
    "CLASS_ID",
    "DEFAULT_MODALITIES",
    "DEPTH_SCALE",
    "DROPPABLE",
    "EDGE_SCALE",
    "GENERATOR_VERSION",
    "HORIZONTAL_FOV_DEG",
    "IGNORE_INDEX",
    "MAX_RANGE",
    "MODALITIES",
    "NETD",
    "PAIRS",
    "RGB_GAIN",
    "SHADE_RANGE",
    "SPECS",
    "TEXTURE_RANGE",
    "THERMAL_CLASSES",
    "THERMAL_SCALE",
    "THERMAL_SPECS",
    "Camera",
    "ClassSpec",
    "check_modalities",
    "Frame",
    "Room",
    "Scene",
    "SceneObject",
    "dataset_meta",
    "frame_id",
    "frames_per_second",
    "generate",
    "intrinsics",
    "noise_fields",
    "render",
    "render_frame",
    "sample_scene",
    "texture_edges",
    "thermal_noise",
    "write_frame",
]
