"""``interp.kernels.matmul``: the product in the operands' dtype, accumulated in float32 and rounded once."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from interp.kernels import matmul


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_products_round_once_from_a_float32_sum(dtype):
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(3, 64, 512)), dtype)
    b = jnp.asarray(rng.normal(size=(512, 96)), dtype)
    got = matmul(a, b)
    assert got.dtype == dtype and got.shape == (3, 64, 96)
    exact = np.asarray(a, np.float64) @ np.asarray(b, np.float64)
    # one rounding of a float32 sum: within half a unit in the last place of the result, plus the float32 sum's error
    ulp = np.spacing(np.abs(exact).astype(np.float32)) * 2.0 ** (23 - jnp.finfo(dtype).nmant)
    err = np.abs(np.asarray(got, np.float64) - exact)
    assert (err <= 0.5 * ulp + 1e-4 * np.abs(exact).max()).all()
    # rounding after every partial sum (a low-precision accumulator) would be far off at this length
    assert np.median(err / ulp) < 0.3


def test_float32_is_the_plain_product():
    a = jnp.asarray(np.random.default_rng(1).normal(size=(8, 16)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(matmul(a, a.T)), np.asarray(a @ a.T))
