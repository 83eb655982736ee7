"""The compiled CPU kernels against jax.lax.top_k and the pure-jnp paths they stand in for."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interp.kernels import cpu_sparse, top_k
from interp.kernels.sparse_decode import gather_dot, scatter_add_rows

ROOT = Path(__file__).resolve().parents[2]

needs_kernels = pytest.mark.skipif(not cpu_sparse.available(), reason="the compiled kernels did not load here")


def test_the_kernels_compile_wherever_a_compiler_is_found():
    if jax.default_backend() != "cpu":
        pytest.skip("the kernels are for the CPU backend")
    if not (os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        pytest.skip("no C++ compiler on this machine")
    assert cpu_sparse.available()


def _same_as_lax(x, k):
    want_v, want_i = jax.lax.top_k(x, k)
    got_v, got_i = jax.jit(lambda a: cpu_sparse.top_k(a, k))(x)
    assert got_v.dtype == jnp.float32 and got_i.dtype == jnp.int32 and got_v.shape == want_v.shape
    np.testing.assert_array_equal(np.asarray(got_i), np.asarray(want_i))
    np.testing.assert_array_equal(np.asarray(got_v), np.asarray(want_v))


@needs_kernels
@pytest.mark.parametrize("width,k", [(16384, 32), (4096, 8), (5000, 3), (300, 2), (1024, 1024), (700, 699)])
def test_top_k_equals_lax_top_k_on_random_rows(width, k):
    # widths that are and are not whole chunks of 512, rows shorter than a chunk, and k up to the whole row
    x = np.random.default_rng(width + k).normal(size=(37, width)).astype(np.float32)
    _same_as_lax(jnp.asarray(x), k)


@needs_kernels
def test_top_k_ties_and_infinities_as_lax_top_k():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(64, 2048)).astype(np.float32)  # ties everywhere, at the k-th place too
    x[0] = 0.0  # one value throughout
    x[1, ::16] = 5.0
    x[2, :] = -np.inf  # every entry -inf
    x[3, :] = -np.inf
    x[3, 1000] = 1.0  # one finite entry, fewer than k
    x[4, :] = np.inf
    x[5, 2040:] = np.inf  # the largest in the tail
    for k in (1, 7, 16):
        _same_as_lax(jnp.asarray(x), k)
    # the AuxK pattern: most of each row masked to -inf
    masked = np.where(rng.random((32, 4096)) < 0.01, rng.normal(size=(32, 4096)), -np.inf).astype(np.float32)
    _same_as_lax(jnp.asarray(masked), 32)


@needs_kernels
def test_top_k_puts_nan_after_every_other_entry():
    x = np.random.default_rng(1).normal(size=(4, 2048)).astype(np.float32)
    x[0, [3, 700, 2047]] = np.nan
    x[1, :] = np.nan
    x[1, [10, 20]] = [2.0, 1.0]
    v, i = cpu_sparse.top_k(jnp.asarray(x), 5)
    clean = np.where(np.isnan(x[0]), -np.inf, x[0])
    np.testing.assert_array_equal(np.asarray(i[0]), np.argsort(-clean, kind="stable")[:5])
    np.testing.assert_array_equal(np.asarray(i[1]), [10, 20, 0, 1, 2])  # then the lowest-indexed NaN
    assert np.isnan(np.asarray(v[1, 2:])).all()


@needs_kernels
def test_top_k_differentiates_and_maps_as_lax_top_k():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(8, 1024)).astype(np.float32))
    w = jnp.asarray(np.random.default_rng(3).normal(size=(8, 4)).astype(np.float32))
    got = jax.grad(lambda a: jnp.sum(w * jnp.sin(cpu_sparse.top_k(a, 4)[0])))(x)
    want = jax.grad(lambda a: jnp.sum(w * jnp.sin(jax.lax.top_k(a, 4)[0])))(x)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    batched = jax.vmap(lambda a: cpu_sparse.top_k(a, 4))(x.reshape(2, 4, 1024))
    np.testing.assert_array_equal(np.asarray(batched[1]).reshape(8, 4), np.asarray(jax.lax.top_k(x, 4)[1]))


@needs_kernels
def test_library_top_k_takes_the_kernel_where_it_pays():
    x = jnp.zeros((2, 3, 4096), jnp.float32)
    assert "interp_top_k" in str(jax.jit(lambda a: top_k(a, 32)).lower(x).as_text())
    assert "interp_top_k" not in str(jax.jit(lambda a: top_k(a, 32, compiled=False)).lower(x).as_text())
    assert "interp_top_k" not in str(jax.jit(lambda a: top_k(a, 64)).lower(x).as_text())  # k too large for it
    v, i = top_k(jnp.asarray(np.random.default_rng(4).normal(size=(2, 3, 4096)), jnp.bfloat16), 32)
    assert v.dtype == jnp.bfloat16 and v.shape == (2, 3, 32)


def _numpy_scatter(weights, rows, indices, n_out):
    out = np.zeros((n_out, rows.shape[1]), np.float64)
    for n in range(rows.shape[0]):
        for j in range(indices.shape[1]):
            if 0 <= indices[n, j] < n_out:
                out[indices[n, j]] += float(weights[n, j]) * rows[n].astype(np.float64)
    return out


@needs_kernels
@pytest.mark.parametrize("spread", ["uniform", "one latent", "skewed"])
def test_scatter_rows_adds_every_update(spread):
    rng = np.random.default_rng(5)
    N, k, D, M = 300, 6, 40, 96
    if spread == "uniform":
        idx = rng.integers(0, M, size=(N, k))
    elif spread == "one latent":
        idx = np.full((N, k), 17)
    else:
        idx = rng.zipf(1.5, size=(N, k)) % M
    idx[0, :2] = idx[0, 2]  # the same latent twice in one row
    w = rng.normal(size=(N, k)).astype(np.float32)
    rows = rng.normal(size=(N, D)).astype(np.float32)
    want = _numpy_scatter(w, rows, idx, M)
    got = scatter_add_rows(jnp.asarray(w), jnp.asarray(rows), jnp.asarray(idx, jnp.int32), M)
    xla = scatter_add_rows(jnp.asarray(w), jnp.asarray(rows), jnp.asarray(idx, jnp.int32), M, compiled=False)
    scale = np.abs(want).max()
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5 * scale)
    np.testing.assert_allclose(np.asarray(xla), want, atol=1e-5 * scale)
    again = scatter_add_rows(jnp.asarray(w), jnp.asarray(rows), jnp.asarray(idx, jnp.int32), M)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(again))  # the same sums in the same order


@needs_kernels
def test_scatter_rows_drops_ids_outside_the_output_like_xla():
    rng = np.random.default_rng(6)
    idx = np.array([[0, 9], [-1, 3], [10, 4]], np.int32)
    w = rng.normal(size=(3, 2)).astype(np.float32)
    rows = rng.normal(size=(3, 5)).astype(np.float32)
    got = cpu_sparse.scatter_rows(jnp.asarray(w), jnp.asarray(rows), jnp.asarray(idx), 10)
    np.testing.assert_allclose(np.asarray(got), _numpy_scatter(w, rows, idx, 10), rtol=1e-6)
    assert not np.asarray(got)[[1, 2, 5, 6, 7, 8]].any()


@needs_kernels
def test_gather_dot_equals_the_slot_by_slot_gathers():
    rng = np.random.default_rng(7)
    N, k, D, M = 200, 5, 70, 50  # D not a multiple of the kernel's 16 lanes
    rows = jnp.asarray(rng.normal(size=(N, D)).astype(np.float32))
    table = jnp.asarray(rng.normal(size=(M, D)).astype(np.float32))
    idx = jnp.asarray(rng.integers(0, M, size=(N, k)), jnp.int32)
    want = np.einsum("nd,nkd->nk", np.asarray(rows, np.float64), np.asarray(table, np.float64)[np.asarray(idx)])
    np.testing.assert_allclose(np.asarray(gather_dot(rows, idx, table)), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gather_dot(rows, idx, table, compiled=False)), want, rtol=1e-5, atol=1e-5)
    bad = idx.at[0, 0].set(M).at[1, 1].set(-1)
    got = np.asarray(cpu_sparse.gather_dot(rows, bad, table))
    assert got[0, 0] == 0 and got[1, 1] == 0


PROBE = textwrap.dedent("""
    import json, warnings
    import jax, jax.numpy as jnp, numpy as np
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from interp.kernels import cpu_sparse, top_k
        ok = cpu_sparse.available()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 4096)).astype(np.float32))
    same = bool((top_k(x, 8)[1] == jax.lax.top_k(x, 8)[1]).all())
    print(json.dumps({"ok": ok, "same": same, "warnings": [str(w.message) for w in caught]}))
""")


def _probe(env_extra: dict) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT), **env_extra}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_without_a_compiler_the_jnp_paths_run_and_one_warning_says_why(tmp_path):
    got = _probe({"CXX": str(tmp_path / "no-such-compiler"), "INTERP_CACHE": str(tmp_path / "cache")})
    assert got["ok"] is False and got["same"]
    (message,) = [w for w in got["warnings"] if "compiled CPU kernels" in w]
    assert "no-such-compiler" in message and "INTERP_CPU_KERNELS=0" in message


def test_kernels_can_be_turned_off(tmp_path):
    got = _probe({"INTERP_CPU_KERNELS": "0", "INTERP_CACHE": str(tmp_path / "cache")})
    assert got == {"ok": False, "same": True, "warnings": []}
    assert not (tmp_path / "cache" / "kernels").exists()


@needs_kernels
def test_two_processes_compiling_at_once_both_load_one_library(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT), "INTERP_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", PROBE], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        got = json.loads(out.strip().splitlines()[-1])
        assert got["ok"] and got["same"] and not got["warnings"]
    # one finished library, no half-written files left beside it
    assert [p.suffix for p in (tmp_path / "kernels").iterdir()] == [".so"]


def test_several_devices_keep_xla_operations(tmp_path):
    # a kernel XLA cannot split would make it gather sharded pre-activations whole onto every device
    got = _probe({"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "INTERP_CACHE": str(tmp_path / "cache")})
    assert got == {"ok": False, "same": True, "warnings": []}


@needs_kernels
def test_a_damaged_library_file_is_built_again(tmp_path):
    env = {**os.environ, "INTERP_CACHE": str(tmp_path)}
    code = "from interp.kernels import cpu_sparse; print(cpu_sparse._library_path(cpu_sparse.SOURCE.read_bytes()))"
    path = Path(subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(ROOT)}, check=True,
                               capture_output=True, text=True).stdout.strip().splitlines()[-1])
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a shared library")
    got = _probe({"INTERP_CACHE": str(tmp_path)})
    assert got["ok"] and got["same"] and not got["warnings"]
    assert path.read_bytes() != b"not a shared library"
