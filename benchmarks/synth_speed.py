"""Speed of the known-answer benchmark generator (`fusescope.data.synthetic`), as ratios.

Contenders run interleaved round by round after warm-up rounds (benchmarks/timing.py), each
round generating `--num` frames of `--size`: rendering alone, rendering and writing the PNGs,
and (with `--workers K`) `generate` with K processes. Prints the median frames per second of
each and the ratios that hold across machines: the cost of writing against rendering alone,
and the speed-up of K workers against one process doing the same work.

Usage: `python benchmarks/synth_speed.py [--num N] [--size H W] [--workers K] [--steps 3]
[--warmup 1]`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from timing import interleave  # benchmarks/timing.py

from fusescope.data import synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=50, help="frames per round")
    parser.add_argument("--size", type=int, nargs=2, default=(120, 160), metavar=("H", "W"))
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="also time `generate` with this many processes against one (when > 1)",
    )
    parser.add_argument("--steps", type=int, default=3, help="timed rounds (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    args = parser.parse_args()
    size = tuple(args.size)

    def generate(workers: int):
        def run():
            with tempfile.TemporaryDirectory() as tmp:
                synthetic.generate(
                    Path(tmp) / "d", args.num, size=size, progress=False, workers=workers
                )

        return run

    contenders = {
        "render only": lambda: synthetic.frames_per_second(args.num, size, write=False),
        "render + write PNGs": lambda: synthetic.frames_per_second(args.num, size, write=True),
    }
    if args.workers > 1:
        contenders["generate, 1 process"] = generate(1)
        contenders[f"generate, {args.workers} workers"] = generate(args.workers)
    t = interleave(contenders, args.steps, args.warmup)
    print(
        f"{args.num} frames of {size[0]}x{size[1]} per round; median of {args.steps} interleaved "
        f"rounds after {args.warmup} warm-up"
    )
    for name, seconds in t.items():
        print(f"  {name:24s} {args.num / seconds:7.1f} frames/s")
    ratio = t["render + write PNGs"] / t["render only"]
    print(f"writing PNGs: x{ratio:.2f} the time of rendering alone")
    if args.workers > 1:
        speedup = t["generate, 1 process"] / t[f"generate, {args.workers} workers"]
        print(f"{args.workers} workers: x{speedup:.2f} the speed of one process")


if __name__ == "__main__":
    main()
