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
