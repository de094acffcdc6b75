"""`fusescope export` and `fusescope compare`: deploying and comparing finished runs.

fusescope export RUN --out model.onnx [--size H W]   ONNX graph + normalisation JSON beside it
fusescope compare RUN... --out DIR                   table (markdown + JSON) and overlaid curves
"""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_export(args: argparse.Namespace) -> None:
    from fusescope.engine.checkpoint import load_run, require_task
    from fusescope.engine.export import _require_onnx, export_run, sidecar_path

    _require_onnx()
    run = load_run(args.run)
    require_task(run, "segmentation", "fusescope export")
    info = export_run(
        run, args.out, size=tuple(args.size) if args.size else None, progress=not args.quiet
    )
    print(
        f"wrote {args.out} (opset {info['opset']}, inputs "
        f"{', '.join(info['modalities'])} normalised, output logits; ONNX Runtime vs PyTorch "
        f"max |diff| {info['max_abs_diff_vs_torch']:.2g}) and {sidecar_path(args.out)}"
    )


def cmd_compare(args: argparse.Namespace) -> None:
    from fusescope.engine.curves import compare_runs

    written = compare_runs(args.runs, Path(args.out))
    print("wrote " + ", ".join(str(p) for p in written))


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a run to ONNX (inputs normalised; the "
        "normalisation is written beside it as JSON)",
    )
    p.add_argument("run", help="run folder written by `fusescope train`")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="example input size for tracing (height and width stay dynamic; "
        "default: the run's crop size)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser("compare", help="compare runs: a table and overlaid training curves")
    p.add_argument("runs", nargs="+", help="run folders written by `fusescope train`")
    p.add_argument("--out", required=True, help="folder for compare.md, compare.json, curves.png")
    p.set_defaults(func=cmd_compare)
