"""Compiled CPU kernels for a TopK dictionary's sparse work, spread over every core: the row-wise top-k of the
encoder, the scatter-add of rows that its backward pass and the sparse decoder's need, and the decoder's gathered
dot products (its cotangent for the values).

XLA's CPU backend runs each of these on one core. In a TopK training step on a 2-core CPU (d 576, 16,384 latents,
k 32, 4,096 rows) they took about 170 ms of a 390 ms step whose encoder matmul alone takes 177 ms
(``benchmarks/sae_train.py``). The kernels are C++ (``cpu_sparse.cc``) called through XLA's FFI. They are compiled
with the machine's C++ compiler on first use and kept in ``<interp cache>/kernels`` (``$INTERP_CACHE``, else
``~/.cache/interp``) under a name that hashes the source, the JAX version and the CPU's features, so a new
version or another machine sharing the folder compiles its own.

Their callers, :func:`interp.kernels.top_k`, :func:`interp.kernels.sparse_decode.scatter_add_rows` and
:func:`interp.kernels.sparse_decode.gather_dot`, keep pure-jnp paths with the same results (the tests compare the
two), and take those instead:
  - on any backend but the CPU, and over more than one device;
  - where no compiler is found or compiling fails (one warning says why);
  - when ``INTERP_CPU_KERNELS=0`` is set before the first use;
  - for shapes where the kernel would not pay.
``INTERP_CPU_THREADS=N`` caps the threads a kernel uses (default: every core).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = Path(__file__).with_name("cpu_sparse.cc")
TARGETS = ("interp_top_k", "interp_scatter_rows", "interp_gather_dot")
_lock = threading.Lock()
_state: dict = {}


def _cpu_features() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _library_path(source: bytes) -> Path:
    from interp.weights.default import cache_dir

    key = hashlib.sha256(source + jax.__version__.encode() + _cpu_features().encode() + platform.machine().encode()
                         + os.environ.get("CXX", "").encode()).hexdigest()[:16]
    return cache_dir() / "kernels" / f"cpu_sparse-{key}.so"


def _compile(out: Path) -> None:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not cxx:
        raise RuntimeError("no C++ compiler found (g++, c++ or clang++ on PATH, or $CXX)")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Compile beside the final name and rename into place, so two processes never load a half-written file.
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".partial", dir=out.parent)
    os.close(fd)
    base = [cxx, "-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", f"-I{jax.ffi.include_dir()}", str(SOURCE),
            "-o", tmp]
    try:
        # this machine's vector instructions where the compiler knows the flag, else its defaults
        for cmd in (base[:2] + ["-march=native"] + base[2:], base):
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if done.returncode == 0:
                break
        else:
            raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{done.stderr[-2000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load() -> bool:
    """Compile (once per machine and version), load and register the kernels; False where they are unavailable."""
    with _lock:
        if "ok" in _state:
            return _state["ok"]
        ok = False
        if os.environ.get("INTERP_CPU_KERNELS", "1").strip().lower() not in ("0", "off", "false", "no"):
            try:
                path = _library_path(SOURCE.read_bytes())
                if not path.exists():
                    _compile(path)
                try:
                    lib = ctypes.CDLL(str(path))
                except OSError:  # a damaged file (a full disk, say): build it once more
                    path.unlink(missing_ok=True)
                    _compile(path)
                    lib = ctypes.CDLL(str(path))
                for name in TARGETS:
                    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
                _state["lib"] = lib
                ok = True
            except Exception as e:  # any failure leaves the pure-jnp path, which gives the same results
                warnings.warn(f"interp's compiled CPU kernels are unavailable ({e}); the sparse parts of TopK "
                              "dictionaries run through XLA instead, which is slower on CPU. Install a C++ compiler "
                              "(g++) to use them, or set INTERP_CPU_KERNELS=0 to silence this.", stacklevel=3)
        _state["ok"] = ok
        return ok


def available() -> bool:
    """Whether the compiled kernels run here: the default backend is the CPU with one device, and they compiled
    and loaded. Over several devices (or processes) XLA would gather a sharded operand whole onto each device to
    call a kernel it cannot split, so the sharded runs keep XLA's own operations."""
    return jax.default_backend() == "cpu" and jax.device_count() == 1 and _load()


# The kernels take float32 (indices int32) 2-D arrays; callers check `available()` and cast.

def _top_k_call(x, k: int):
    n = x.shape[0]
    call = jax.ffi.ffi_call("interp_top_k", (jax.ShapeDtypeStruct((n, k), jnp.float32),
                                             jax.ShapeDtypeStruct((n, k), jnp.int32)),
                            vmap_method="sequential")
    return call(x)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def top_k(x, k: int):
    """``(values, indices)`` of the ``k`` largest entries of each row of ``x [N W]`` (float32), as
    ``jax.lax.top_k`` for rows without NaN; differentiable in ``x`` as it is (the values' tangent is the
    tangent's entries at the indices)."""
    return _top_k_call(x, k)


@top_k.defjvp
def _top_k_jvp(k, primals, tangents):
    values, indices = _top_k_call(primals[0], k)
    dv = jnp.take_along_axis(tangents[0], indices, axis=-1)
    return (values, indices), (dv, np.zeros(indices.shape, jax.dtypes.float0))


def scatter_rows(weights, rows, indices, n_out: int):
    """``out [n_out D]`` with ``out[indices[n, j]] += weights[n, j] * rows[n]``; ids outside ``[0, n_out)`` drop."""
    call = jax.ffi.ffi_call("interp_scatter_rows", jax.ShapeDtypeStruct((n_out, rows.shape[1]), jnp.float32),
                            vmap_method="sequential")
    return call(weights, rows, indices.astype(jnp.int32))


def gather_dot(rows, indices, table):
    """``out [N k] = <rows[n], table[indices[n, j]]>``; ids outside the table give 0."""
    call = jax.ffi.ffi_call("interp_gather_dot", jax.ShapeDtypeStruct(indices.shape, jnp.float32),
                            vmap_method="sequential")
    return call(rows, indices.astype(jnp.int32), table)


__all__ = ["available", "gather_dot", "scatter_rows", "top_k"]
