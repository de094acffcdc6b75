"""The benchmarks' one timing rule: contenders interleaved round by round, after warm-up rounds.

Interleaving makes machine-load drift hit every contender alike; medians drop the outliers;
the scripts print ratios between contenders measured in the same run, not absolute times alone.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleave(
    contenders: dict[str, Callable[[], object]], steps: int, warmup: int
) -> dict[str, float]:
    """Median seconds per call of each contender, called round by round."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for i in range(warmup + steps):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}
