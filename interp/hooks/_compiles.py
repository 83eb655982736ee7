"""Counting compilations: every program JAX prepares in this process, read from JAX's own monitoring events.

JAX reports each backend compilation (``/jax/core/compile/backend_compile_duration``), and among them the ones
served by the persistent compilation cache (``/jax/compilation_cache/cache_hits``). Counting those events sees
every compilation -- the library's jitted functions, the small eager operations around them, and the user's
own ``jax.jit`` calls -- not only the ones a hooked forward pass announces.
"""

from __future__ import annotations

import dataclasses
import threading

import jax

_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT = "/jax/compilation_cache/cache_hits"


@dataclasses.dataclass
class CompileStats:
    """Compilations in this process so far.

    ``programs``: programs prepared for execution (one per miss of JAX's in-memory cache: a new function, new
    shapes or new static arguments); ``compiled``: of those, the ones XLA compiled; ``loaded``: the ones read
    from the persistent compilation cache on disk instead; ``seconds``: wall time spent in both.
    """

    programs: int = 0
    compiled: int = 0
    loaded: int = 0
    seconds: float = 0.0


_STATS = CompileStats()
_LOCK = threading.Lock()


def _on_duration(event: str, duration: float, **_) -> None:
    if event == _BACKEND_COMPILE:
        with _LOCK:
            _STATS.programs += 1
            _STATS.seconds += float(duration)


def _on_event(event: str, **_) -> None:
    if event == _CACHE_HIT:
        with _LOCK:
            _STATS.loaded += 1


jax.monitoring.register_event_duration_secs_listener(_on_duration)
jax.monitoring.register_event_listener(_on_event)


def compile_count() -> int:
    """How many programs JAX has compiled (or loaded from the persistent compilation cache) in this process.

    It counts every compilation, the library's and your own: a hooked forward pass run again with new
    values, with a prompt of a new length inside the same length bucket, or with an equivalent edit function
    adds nothing; new shapes, capture names or edit functions add one or more. Take differences around a call
    to see what it cost. :func:`compile_stats` splits the count and gives the time spent.
    """
    return _STATS.programs


def compile_stats() -> CompileStats:
    """A copy of the compilation counters (see :class:`CompileStats`)."""
    with _LOCK:
        s = dataclasses.replace(_STATS)
    s.compiled = s.programs - s.loaded
    return s
