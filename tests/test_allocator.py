"""The host allocator settings that ``import interp`` applies: freed buffers are reused instead of refaulted."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="the settings apply to glibc on Linux only")

# A worker thread allocates, writes and frees a 600 MB block a few times, as XLA's CPU runtime does with a run's
# buffers (through malloc itself: NumPy would ask for huge pages, which hide the faults). The page faults of the
# later rounds say whether the freed memory was kept for reuse.
_PROBE = textwrap.dedent("""
    import ctypes, json, resource, threading
    import interp

    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)

    faults = []
    def work():
        for i in range(4):
            before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            p = libc.malloc(600_000_000)
            ctypes.memset(p, 1, 600_000_000)  # written in full
            libc.free(p)
            faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
    t = threading.Thread(target=work)
    t.start(); t.join()
    print(json.dumps({"faults": faults[1:], "settings": interp.allocator_settings()}))
""")


def _probe(**env) -> dict:
    full = {k: v for k, v in os.environ.items() if not (k.startswith("MALLOC_") or k == "GLIBC_TUNABLES")}
    full.pop("INTERP_TUNE_MALLOC", None)
    full.update(env)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=full, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_buffers_are_reused_instead_of_refaulted():
    tuned, plain = _probe(), _probe(INTERP_TUNE_MALLOC="0")
    assert tuned["settings"]["reason"] == "applied"
    assert set(tuned["settings"]["applied"]) == {"M_ARENA_MAX", "M_TRIM_THRESHOLD", "M_MMAP_THRESHOLD"}
    assert plain["settings"] == {"applied": {}, "reason": "INTERP_TUNE_MALLOC=0"}
    pages = 600_000_000 // 4096
    # untuned, each round maps the buffer afresh and faults on every page; tuned, the rounds reuse one block
    assert min(plain["faults"]) > pages // 2, plain
    assert max(tuned["faults"]) < pages // 20, tuned


def test_the_users_own_allocator_settings_win():
    out = _probe(MALLOC_ARENA_MAX="4")
    assert out["settings"] == {"applied": {}, "reason": "the environment sets MALLOC_ARENA_MAX"}
