"""The blocked top-k (and, where it runs, the compiled kernel in its place) returns exactly what jax.lax.top_k
returns, ties included."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interp.kernels import top_k
from interp.kernels.topk_blocks import _use_blocks


def _check(x, k, block=16):
    assert _use_blocks(x.shape[-1], k, block)  # the blocked path runs, not the fallback
    want_v, want_i = jax.lax.top_k(x, k)
    for compiled in (False, True):
        got_v, got_i = jax.jit(lambda a, c=compiled: top_k(a, k, block=block, compiled=c))(x)
        assert got_i.dtype == want_i.dtype and got_v.shape == want_v.shape and got_v.dtype == x.dtype
        np.testing.assert_array_equal(np.asarray(got_v), np.asarray(want_v))
        np.testing.assert_array_equal(np.asarray(got_i), np.asarray(want_i))


@pytest.mark.parametrize("k", [1, 3, 32])
def test_equal_to_lax_top_k_on_random_rows(k):
    x = jnp.asarray(np.random.default_rng(k).normal(size=(64, 2048)).astype(np.float32))
    _check(x, k)


def test_ties_go_to_the_lower_index_as_in_lax_top_k():
    rng = np.random.default_rng(0)
    # few distinct values: many ties inside blocks, across blocks and at the k-th place
    x = rng.integers(0, 4, size=(128, 1024)).astype(np.float32)
    x[0] = 0.0  # a row of one value
    x[1, ::16] = 5.0  # every block's maximum equal, each in the block's first slot
    x[2, :] = -np.inf
    x[2, 1000] = 1.0
    for k in (1, 7, 16):
        _check(jnp.asarray(x), k)
    # the AuxK pattern: most of a row masked to -inf
    _check(jnp.where(jnp.asarray(rng.random((32, 2048)) < 0.05), jnp.asarray(rng.normal(size=(32, 2048))), -jnp.inf)
           .astype(jnp.float32), 8)


def test_leading_axes_and_bfloat16():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 4096)), jnp.bfloat16)
    _check(x, 32)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_is_ranked_as_float32_with_the_same_result(dtype):
    # few distinct values in a low dtype: ties everywhere; both the blocked path and the fallback
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.integers(-3, 3, size=(16, 1024)) * 0.5 + rng.normal(size=(16, 1024)) * 1e-3, dtype)
    _check(x, 8)
    want_v, want_i = jax.lax.top_k(x[:, :100], 5)
    got_v, got_i = top_k(x[:, :100], 5)
    assert got_v.dtype == dtype
    np.testing.assert_array_equal(np.asarray(got_v), np.asarray(want_v))
    np.testing.assert_array_equal(np.asarray(got_i), np.asarray(want_i))


def test_falls_back_where_blocks_would_not_help_and_refuses_bad_k():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 100)).astype(np.float32))
    assert not _use_blocks(100, 5, 16)
    np.testing.assert_array_equal(np.asarray(top_k(x, 5)[1]), np.asarray(jax.lax.top_k(x, 5)[1]))
    with pytest.raises(ValueError, match="k must be between 1"):
        top_k(x, 0)
    with pytest.raises(ValueError, match="k must be between 1"):
        top_k(x, 101)
