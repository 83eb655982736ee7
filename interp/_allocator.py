"""Host-memory allocator settings for JAX on CPU.

On Linux with glibc, each thread that allocates gets a malloc arena of its own. XLA's CPU runtime allocates a run's
buffers from its worker threads, so they come from those arenas. A worker arena gives its freed memory back to the
kernel as soon as it is free, so the next run touches fresh pages and pays a page fault for every 4 KiB it writes.
Caching every hook point of the default model at 8 x 128 tokens writes about 1.6 GB, and paid about 200,000 page
faults per run on a 2-core machine.

``import interp`` therefore asks glibc, before JAX starts its threads, for one arena (``M_ARENA_MAX``) that keeps up
to 1 GiB of freed memory (``M_TRIM_THRESHOLD``) and serves blocks under 1 GiB itself rather than mapping each on its
own (``M_MMAP_THRESHOLD``; a dictionary's training step at 4,096 x 16,384 latents makes 256 MiB arrays). Freed
buffers are then reused by the next run. On that machine (``python benchmarks/forward.py``, once as it is and once
with ``INTERP_TUNE_MALLOC=0``) the plain forward went from 0.92 to 0.83 s, caching every hook from 0.97 to 0.86 s,
and the process's system time from 25 to 8 s. In a separate loop of cache-all and plain runs (timed with
``getrusage``), the peak resident memory fell from 4.2 to 2.6 GB.

The settings are process-wide, and have costs. The process may keep up to 1 GiB of freed memory that it would have
given back. Threads that allocate a lot at the same time now share one arena: multi-threaded Rust tokenization
(``tokenizers``' ``encode_batch``) ran about 3x slower on that machine (0.34 to 1.0 s for WikiText-2's test set
twice; the one place the project batches, listing GCG's printable tokens, went from 0.36 to 0.59 s). Arenas are
fixed when a thread first allocates, so a thread that JAX started before ``import interp`` keeps its own.

``INTERP_TUNE_MALLOC=0`` leaves the allocator as it is; so does any ``MALLOC_*`` variable or ``GLIBC_TUNABLES`` in the
environment (the user's own choice wins), a C library other than glibc, and any platform other than Linux.
:func:`allocator_settings` says what was done.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_SETTINGS = {"M_ARENA_MAX": (_M_ARENA_MAX, 1), "M_TRIM_THRESHOLD": (_M_TRIM_THRESHOLD, 1 << 30),
             "M_MMAP_THRESHOLD": (_M_MMAP_THRESHOLD, 1 << 30)}
_STATE: dict = {"applied": {}, "reason": "not tried"}


def _skip_reason() -> str | None:
    if os.environ.get("INTERP_TUNE_MALLOC", "").strip().lower() in ("0", "false", "no", "off"):
        return "INTERP_TUNE_MALLOC=0"
    user = sorted(k for k in os.environ if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES")
    if user:
        return f"the environment sets {', '.join(user)}"
    if not sys.platform.startswith("linux"):
        return f"not Linux ({sys.platform})"
    libc, _ = platform.libc_ver()
    if libc != "glibc":
        return f"the C library is not glibc ({libc or 'unknown'})"
    return None


def tune_allocator() -> dict[str, int]:
    """Apply the settings described in this module's docstring (once; later calls change nothing); returns those
    applied (empty when skipped: :func:`allocator_settings` says why)."""
    if _STATE["reason"] != "not tried":
        return dict(_STATE["applied"])
    reason = _skip_reason()
    if reason is None:
        try:
            mallopt = ctypes.CDLL(None).mallopt
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            for name, (param, value) in _SETTINGS.items():
                if mallopt(param, value) == 1:
                    _STATE["applied"][name] = value
            reason = "applied" if _STATE["applied"] else "mallopt refused every setting"
        except (OSError, AttributeError) as e:
            reason = f"mallopt is not available ({e})"
    _STATE["reason"] = reason
    return dict(_STATE["applied"])


def allocator_settings() -> dict:
    """``{"applied": {setting: value}, "reason": why (or "applied")}`` for this process."""
    return {"applied": dict(_STATE["applied"]), "reason": _STATE["reason"]}
