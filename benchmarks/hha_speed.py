"""HHA speed on the NYUDv2 reference frame (480 x 640) that ships with the tests.

    python benchmarks/hha_speed.py [--repeats 5]

Prints the median wall-clock and CPU seconds per frame, and checks on the way that the output
still equals the original MATLAB code's HHA of that frame (a timing of wrong output is no use).
The time is machine dependent; the unit tests check the values, never the time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from fusescope.data.hha import Intrinsics, hha
from fusescope.io import read_image

REF = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "hha_reference"
NYU_K = Intrinsics(518.857901174502, 519.469611121275, 325.582449411190, 253.736166334005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    depth = read_image(REF / "depth.png") / 1e4  # units of 0.1 mm
    ref = read_image(REF / "hha_matlab.png").astype(int)
    wall, cpu = [], []
    for _ in range(args.repeats):
        w, c = time.perf_counter(), time.process_time()
        out = hha(depth, NYU_K)
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    max_diff = int(np.abs(out.astype(int) - ref).max())
    print(
        f"HHA of a {depth.shape[0]}x{depth.shape[1]} frame: median {statistics.median(wall):.2f} s "
        f"wall, {statistics.median(cpu):.2f} s CPU ({args.repeats} repeats); max difference "
        f"to the MATLAB reference: {max_diff}"
    )


if __name__ == "__main__":
    main()
