"""Frames per second of the known-answer benchmark generator (`fusescope.data.synthetic`).

Renders and writes 200 frames of 120x160 in this process and prints frames per wall-clock second
and per CPU second (the second is what the generator costs when the machine is shared), plus the
rendering alone. Usage: `python benchmarks/synth_speed.py [--num N] [--size H W] [--workers K]`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from fusescope.data import synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=200)
    parser.add_argument("--size", type=int, nargs=2, default=(120, 160), metavar=("H", "W"))
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="also time `generate` with this many processes (when > 1)",
    )
    args = parser.parse_args()
    size = tuple(args.size)
    synthetic.render_frame(0, 0, size)  # warm up imports and caches
    for write in (False, True):
        cpu, wall = time.process_time(), time.perf_counter()
        synthetic.frames_per_second(args.num, size, write=write)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        what = "render + write PNGs" if write else "render only        "
        print(
            f"{what}: {args.num / wall:6.1f} frames/s wall, {args.num / cpu:6.1f} frames/s "
            f"per CPU second ({args.num} frames of {size[0]}x{size[1]}, one process)"
        )
    if args.workers > 1:
        with tempfile.TemporaryDirectory() as tmp:
            wall = time.perf_counter()
            synthetic.generate(
                Path(tmp) / "d", args.num, size=size, progress=False, workers=args.workers
            )
            wall = time.perf_counter() - wall
        print(f"generate, {args.workers} workers : {args.num / wall:6.1f} frames/s wall")


if __name__ == "__main__":
    main()
