"""`fusescope compare`: finished runs of one task compared.

fusescope compare RUN... --out DIR                   table (markdown + JSON) and overlaid curves

(`fusescope export`, segmentation's ONNX export, is `fusescope.cli`'s, beside `predict`.)
"""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_compare(args: argparse.Namespace) -> None:
    from fusescope.engine.curves import compare_runs

    written = compare_runs(args.runs, Path(args.out))
    print("wrote " + ", ".join(str(p) for p in written))


def register(subparsers) -> None:
    p = subparsers.add_parser("compare", help="compare runs: a table and overlaid training curves")
    p.add_argument("runs", nargs="+", help="run folders written by `fusescope train`")
    p.add_argument("--out", required=True, help="folder for compare.md, compare.json, curves.png")
    p.set_defaults(func=cmd_compare)
