"""The `fusescope data ...` subcommands: prepare (nyudv2, sunrgbd, cityscapes, taskonomy, mmimdb),
synth-posters, hha, inspect.

`register(data_subparsers)` adds them to the `data` command's subparsers; each sets
`func(args)`, which the CLI calls with the parsed namespace. Errors are `FusescopeError`.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from fusescope.errors import FusescopeError

# Sub-command bodies import their modules when they run, so `fusescope --help` and argument
# errors answer without loading torch and the models.


def _prepare_nyudv2(args: argparse.Namespace) -> None:
    from fusescope.data.nyudv2 import prepare_nyudv2

    meta = prepare_nyudv2(
        args.mat,
        args.splits,
        args.mapping,
        args.out,
        mapping13=args.mapping13,
        hha=args.hha,
        overwrite=args.overwrite,
        progress=True,
    )
    print(f"wrote {args.out}: {meta.name}, {meta.num_classes} classes")


def _prepare_sunrgbd(args: argparse.Namespace) -> None:
    from fusescope.data.sunrgbd import prepare_sunrgbd

    meta = prepare_sunrgbd(
        args.src,
        args.out,
        depth_source=args.depth_source,
        raw_depth=not args.no_raw_depth,
        hha=args.hha,
        check_split_sizes=not args.any_split_size,
        overwrite=args.overwrite,
        progress=True,
    )
    print(f"wrote {args.out}: {meta.name}, {meta.num_classes} classes")


def _prepare_cityscapes(args: argparse.Namespace) -> None:
    from fusescope.data.cityscapes import prepare_cityscapes

    meta = prepare_cityscapes(
        args.src,
        args.out,
        depth_mode=args.depth_mode,
        splits=tuple(args.splits),
        overwrite=args.overwrite,
        progress=True,
    )
    print(f"wrote {args.out}: {meta.name}, {meta.num_classes} classes")


def _prepare_taskonomy(args: argparse.Namespace) -> None:
    from fusescope.data.taskonomy import prepare_taskonomy

    meta = prepare_taskonomy(
        args.root,
        args.out,
        train_list=args.train_list,
        val_list=args.val_list,
        size=args.size,
        modalities=args.modalities,
        depth_domain=args.depth_domain,
        overwrite=args.overwrite,
        progress=True,
        follow_links=args.follow_symlinks,
    )
    print(f"wrote {args.out}: {meta.name}, modalities {', '.join(meta.modalities)}")


def _prepare_mmimdb(args: argparse.Namespace) -> None:
    from fusescope.data.mmimdb import prepare_mmimdb

    meta = prepare_mmimdb(
        args.root,
        args.out,
        size=tuple(args.size) if args.size else None,
        overwrite=args.overwrite,
        progress=True,
        follow_links=args.follow_symlinks,
    )
    print(f"wrote {args.out}: {meta.name}, {meta.num_classes} genres")


def _synth_posters(args: argparse.Namespace) -> None:
    from fusescope.data.posters import generate_posters

    generate_posters(
        args.out,
        args.num,
        seed=args.seed,
        size=tuple(args.size),
        image_format=args.format,
        jpeg_quality=args.jpeg_quality,
        progress=not args.quiet,
    )
    print(
        f"wrote {args.num} posters of {args.size[0]}x{args.size[1]} with plots to {args.out} "
        f"(MM-IMDB layout; fusescope data prepare mmimdb --root {args.out} --out DIR)"
    )


def _hha(args: argparse.Namespace) -> None:
    import time

    import numpy as np

    from fusescope.console import warn
    from fusescope.data.hha import GravityOptions, Intrinsics, depth_input_warnings, hha
    from fusescope.io import read_image, write_png

    if not (math.isfinite(args.depth_scale) and args.depth_scale > 0):
        raise FusescopeError(f"--depth-scale must be a positive number, got {args.depth_scale}")
    fx, fy, cx, cy = args.intrinsics
    if not (all(map(math.isfinite, args.intrinsics)) and fx > 0 and fy > 0):
        raise FusescopeError(
            f"--intrinsics {' '.join(map(str, args.intrinsics))}: FX FY CX CY must be finite, "
            f"the focal lengths FX FY positive (pixels)"
        )
    if args.camera_height is not None and not (
        math.isfinite(args.camera_height) and args.camera_height > 0
    ):
        raise FusescopeError(f"--camera-height must be a positive number, got {args.camera_height}")
    if args.gravity is not None and not (
        all(map(math.isfinite, args.gravity)) and any(args.gravity)
    ):
        raise FusescopeError(
            f"--gravity {' '.join(map(str, args.gravity))}: a direction needs finite values, "
            f"not all zero"
        )
    depth = read_image(args.depth)
    if depth.ndim != 2:
        raise FusescopeError(f"{args.depth}: depth must be a single-channel image")
    outdoor = args.gravity is not None or args.camera_height is not None
    for message in depth_input_warnings(depth, args.depth_scale, outdoor=outdoor):
        warn(f"{args.depth}: {message}")
    raw = None
    if args.raw_depth is not None:
        raw = read_image(args.raw_depth)
        if raw.shape != depth.shape:
            raise FusescopeError(
                f"{args.raw_depth}: size {raw.shape} differs from {args.depth}'s {depth.shape}"
            )
        raw = raw.astype(np.float64) * args.depth_scale
    gravity = GravityOptions(
        direction=tuple(args.gravity) if args.gravity is not None else None,
        camera_height_m=args.camera_height,
    )
    t = time.perf_counter()
    out = hha(
        depth.astype(np.float64) * args.depth_scale,
        Intrinsics(*args.intrinsics),
        raw,
        gravity=gravity,
        one_based=not args.zero_based,
    )
    write_png(args.out, out)
    print(f"wrote {args.out} ({time.perf_counter() - t:.2f} s)")


def _inspect(args: argparse.Namespace) -> None:
    from fusescope.data.stats import inspect

    inspect(args.dir, split=args.split, samples=args.samples, num_samples=args.num_samples)


def _add_overwrite(p: argparse.ArgumentParser) -> None:
    """The converters' one rule for an existing output folder (`check_output_folder`)."""
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing fusescope data folder (never a folder without meta.json)",
    )


def _add_follow_symlinks(p: argparse.ArgumentParser) -> None:
    """Converters that read a release tree refuse links leaving it unless asked."""
    p.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="read files that symbolic links in --root point to outside it (refused otherwise)",
    )


def register(data_subparsers: argparse._SubParsersAction) -> None:
    """Add `prepare`, `synth-posters`, `hha` and `inspect` to the `fusescope data` subparsers."""
    from fusescope.engine.device import positive_int

    prep = data_subparsers.add_parser("prepare", help="convert an official data set")
    sub = prep.add_subparsers(dest="dataset", required=True, metavar="DATASET")

    p = sub.add_parser("nyudv2", help="NYU Depth V2 from nyu_depth_v2_labeled.mat")
    p.add_argument("--mat", type=Path, required=True, help="nyu_depth_v2_labeled.mat")
    p.add_argument("--splits", type=Path, required=True, help="splits.mat (795 / 654)")
    p.add_argument("--mapping", type=Path, required=True, help="classMapping40.mat")
    p.add_argument("--mapping13", type=Path, help="class13Mapping.mat: use 13 classes")
    p.add_argument("--hha", action="store_true", help="also write hha/ (slower)")
    p.add_argument("--out", type=Path, required=True, help="data folder to write")
    _add_overwrite(p)
    p.set_defaults(func=_prepare_nyudv2)

    p = sub.add_parser("sunrgbd", help="SUN RGB-D, 37 classes, 5285 / 5050")
    p.add_argument("src", type=Path, help="folder with SUNRGBD/, the two image lists, labels/")
    p.add_argument("--out", type=Path, required=True, help="data folder to write")
    p.add_argument(
        "--depth-source",
        choices=["depth_bfx", "depth"],
        default="depth_bfx",
        help="depth/ from the filled depth (depth_bfx) or the raw sensor depth (depth)",
    )
    p.add_argument("--no-raw-depth", action="store_true", help="skip raw_depth/")
    p.add_argument(
        "--hha", action="store_true", help="also write hha/ from depth/ and each frame's intrinsics"
    )
    p.add_argument(
        "--any-split-size",
        action="store_true",
        help="accept lists other than the official 5285 / 5050",
    )
    _add_overwrite(p)
    p.set_defaults(func=_prepare_sunrgbd)

    p = sub.add_parser("cityscapes", help="Cityscapes, 19 classes, with disparity")
    p.add_argument("src", type=Path, help="folder with leftImg8bit/ disparity/ gtFine/ camera/")
    p.add_argument("--out", type=Path, required=True, help="data folder to write")
    p.add_argument(
        "--depth-mode",
        choices=["depth", "disparity"],
        default="depth",
        help="metric depth from the disparity and camera calibration, or the disparity PNGs "
        "unchanged",
    )
    p.add_argument(
        "--splits",
        nargs="+",
        default=["train", "val"],
        choices=["train", "val"],
        help="official splits to convert",
    )
    _add_overwrite(p)
    p.set_defaults(func=_prepare_cityscapes)

    p = sub.add_parser("taskonomy", help="Taskonomy domains for image translation (CEN's names)")
    p.add_argument(
        "--root",
        type=Path,
        required=True,
        help="folder with one sub-folder per domain (rgb/, reshading/, normal/, "
        "depth_zbuffer/, edge_texture/, edge_occlusion/)",
    )
    p.add_argument("--out", type=Path, required=True, help="data folder to write")
    p.add_argument(
        "--train-list",
        type=Path,
        help="frames of the training split, e.g. CEN's train_domain.txt (1,000)",
    )
    p.add_argument(
        "--val-list",
        type=Path,
        help="frames of the validation split, e.g. CEN's val_domain.txt (500); "
        "without both lists every frame is converted and split 2:1 at random",
    )
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="resize every frame (bilinear; depth nearest), e.g. 256 256 as CEN",
    )
    p.add_argument(
        "--modalities",
        nargs="+",
        default=["rgb", "shade", "normal", "depth", "texture", "edge"],
        choices=["rgb", "shade", "normal", "depth", "texture", "edge"],
        help="modalities to write: shade = reshading, texture = edge_texture, "
        "edge = edge_occlusion, depth = --depth-domain",
    )
    p.add_argument(
        "--depth-domain",
        choices=["depth_zbuffer", "depth_euclidean"],
        default="depth_zbuffer",
        help="the Taskonomy domain written as depth",
    )
    _add_overwrite(p)
    _add_follow_symlinks(p)
    p.set_defaults(func=_prepare_taskonomy)

    p = sub.add_parser("mmimdb", help="MM-IMDB posters, plots and 23 genres (multi-label)")
    p.add_argument(
        "--root",
        type=Path,
        required=True,
        help="folder with the release's split.json and dataset/ (<id>.jpeg, <id>.json)",
    )
    p.add_argument("--out", type=Path, required=True, help="data folder to write")
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="resize every poster to H x W (default: keep each poster's size)",
    )
    _add_overwrite(p)
    _add_follow_symlinks(p)
    p.set_defaults(func=_prepare_mmimdb)

    p = data_subparsers.add_parser(
        "synth-posters", help="generate known-answer posters and plots in the MM-IMDB layout"
    )
    p.add_argument("out", type=Path, help="folder to create (new or empty)")
    p.add_argument("--num", type=int, default=1000, help="movies (70/15/15%% train/dev/test)")
    p.add_argument("--seed", type=int, default=0, help="movie i is drawn from (seed, i)")
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=[96, 64],
        metavar=("H", "W"),
        help="poster height and width in pixels",
    )
    p.add_argument(
        "--format",
        choices=["jpeg", "png"],
        default="jpeg",
        help="poster files: jpeg as MM-IMDB (lossy) or png (exact pixels)",
    )
    p.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality 1-100")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_synth_posters)

    p = data_subparsers.add_parser("hha", help="HHA encoding of one depth image")
    p.add_argument("--depth", type=Path, required=True, help="depth image (e.g. uint16 PNG)")
    p.add_argument(
        "--raw-depth",
        type=Path,
        help="raw sensor depth: its zeros are left out of the normal fits (leave it out to "
        "reproduce the published NYUDv2 HHA images, made from the filled depth alone)",
    )
    p.add_argument(
        "--intrinsics",
        type=float,
        nargs=4,
        required=True,
        metavar=("FX", "FY", "CX", "CY"),
        help="pinhole intrinsics of the depth image in pixels",
    )
    p.add_argument(
        "--depth-scale",
        type=float,
        required=True,
        metavar="METRES_PER_UNIT",
        help="e.g. 0.001 for mm, 0.0001 for the NYU HHA reference frame",
    )
    p.add_argument(
        "--zero-based",
        action="store_true",
        help="CX CY count the first pixel as 0 (OpenCV); default 1 (MATLAB, NYU)",
    )
    p.add_argument(
        "--gravity",
        type=float,
        nargs=3,
        metavar=("GX", "GY", "GZ"),
        help="fixed down direction in camera coordinates instead of estimating it",
    )
    p.add_argument(
        "--camera-height",
        type=float,
        metavar="METRES",
        help="height from a ground plane this far below the camera (outdoor)",
    )
    p.add_argument("--out", type=Path, required=True, help="output PNG (R/G/B = H/H/A)")
    p.set_defaults(func=_hha)

    p = data_subparsers.add_parser("inspect", help="class frequencies, weights, depth stats")
    p.add_argument("dir", type=Path, help="data folder (with meta.json)")
    p.add_argument("--split", default="train", help="split to measure")
    p.add_argument(
        "--samples",
        type=Path,
        help="PNG for the sample grid (default: DIR/inspect_samples_<split>.png)",
    )
    p.add_argument("--num-samples", type=positive_int, default=4, help="rows in the sample grid")
    p.set_defaults(func=_inspect)
