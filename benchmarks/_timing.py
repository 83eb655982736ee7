"""Timing shared by the benchmark scripts."""

from __future__ import annotations

import contextlib
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


def timed_pair(fn, ref, reps: int, warmup: int = 1) -> tuple[float, float, float]:
    """``(median seconds of fn, median seconds of ref, median of the per-round ratios fn / ref)``, the two called
    alternately ``reps`` times after ``warmup`` calls of each: a ratio of two runs next to each other in time, which
    drift on a noisy machine moves less than one of two separate blocks of runs."""
    for _ in range(warmup):
        fn()
        ref()
    a, b = [], []
    for _ in range(reps):
        for f, out in ((fn, a), (ref, b)):
            t0 = time.perf_counter()
            f()
            out.append(time.perf_counter() - t0)
    return statistics.median(a), statistics.median(b), statistics.median(x / y for x, y in zip(a, b))


@contextlib.contextmanager
def running_peer(name: str, notes: list[str]):
    """Run a peer's part of a benchmark: if the peer is not installed or fails, say so in ``notes`` (its figures
    are then absent, never made up) and go on with the others."""
    try:
        yield
    except ImportError as e:
        notes.append(f"{name} not installed ({e.name})")
    except Exception as e:  # noqa: BLE001 - report why the peer could not run, keep the other figures
        notes.append(f"{name} could not run here: {type(e).__name__}: {str(e)[:200]}")
