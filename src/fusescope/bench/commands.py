"""`fusescope bench ...`: benchmarks that print figures (never pass/fail tests).

    fusescope bench known-answer CONFIG... --out DIR [--steps N]   per-cue-group mIoU table
    fusescope bench robustness RUN... --kind depth_noise --out DIR  mIoU vs severity, AUC, plot

Speed benchmarks that need no trained run live in benchmarks/*.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# Sub-command bodies import their modules when they run, so `fusescope --help` and argument
# errors answer without loading torch and the models.


def cmd_known_answer(args: argparse.Namespace) -> None:
    from fusescope.bench.known_answer import run_benchmark
    from fusescope.engine.device import resolve_device

    # an explicit --device is checked before any training; by default each run is evaluated
    # where it trained
    device = str(resolve_device(args.device)) if args.device else None
    run_benchmark(
        args.configs,
        Path(args.out),
        steps=args.steps,
        num=args.num,
        data_root=Path(args.data) if args.data else None,
        extra=args.set or [],
        device=device,
        batch_size=args.batch_size,
        threads=args.threads,
    )


def cmd_robustness(args: argparse.Namespace) -> None:
    from fusescope.bench.robustness import robustness
    from fusescope.engine.device import resolve_device

    device = str(resolve_device(args.device))
    for kind in args.kind:
        robustness(
            args.runs,
            kind,
            out=args.out,
            split=args.split,
            device=device,
            batch_size=args.batch_size,
        )


def register(subparsers) -> None:
    from fusescope.engine.device import DEVICES, add_device_argument, positive_int

    bench = subparsers.add_parser("bench", help="benchmarks: known-answer table, robustness")
    sub = bench.add_subparsers(dest="bench_command", required=True)
    p = sub.add_parser(
        "known-answer",
        help="train configs under one budget on the known-answer "
        "data; print mIoU overall and per cue group",
    )
    p.add_argument("configs", nargs="+", help="config names under configs/synthetic or paths")
    p.add_argument(
        "--out",
        required=True,
        help="folder for the data, one run per config, results.json and results.md",
    )
    p.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="training steps of every config (default: each config's train.max_steps)",
    )
    p.add_argument("--num", type=positive_int, default=600, help="frames to generate")
    p.add_argument(
        "--data",
        default=None,
        help="existing data folder, used as it is (default: "
        "OUT/data, generated with --num frames of 120x160)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override for every config, e.g. train.batch_size=8",
    )
    p.add_argument(
        "--device",
        default=None,
        help=f"evaluation device: {DEVICES} (default: where each "
        f"run trained, see train.accelerator)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="evaluation batch (default: the config's eval.batch_size)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads for training and evaluation, fixed so the table's digits do "
        "not depend on the machine's core count (default: torch's own, one per core)",
    )
    p.set_defaults(func=cmd_known_answer)
    from fusescope.data.corruptions import KINDS

    p = sub.add_parser("robustness", help="mIoU of runs under growing corruption severity")
    p.add_argument(
        "runs",
        nargs="+",
        help="trained run folders; the first is the reference of "
        "the eff column (put a late-fusion baseline first, as MultiBench does)",
    )
    p.add_argument(
        "--kind",
        action="append",
        required=True,
        choices=sorted(KINDS),
        metavar="KIND",
        help="corruption kind (repeatable), one of %(choices)s",
    )
    p.add_argument(
        "--out",
        default=None,
        help="folder for robustness_<kind>.json and .png (default: print only)",
    )
    p.add_argument("--split", default="test", help="split to evaluate")
    add_device_argument(p)
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="evaluation batch (default: each run's eval.batch_size)",
    )
    p.set_defaults(func=cmd_robustness)
