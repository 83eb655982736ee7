"""Timing shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time


def timed(fn, reps: int, warmup: int = 1) -> float:
    """Median seconds per call of ``fn`` (which must block until its work is done) over ``reps`` calls,
    after ``warmup`` calls that absorb compilation."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
