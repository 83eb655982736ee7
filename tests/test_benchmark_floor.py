"""The matmul floor that ``benchmarks/forward.py`` times: every product of a traced function, found through nested jits
and scans, with its shapes, dtypes and flop count; and a runner for exactly those products."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _floor import floor, matmuls  # noqa: E402


def test_products_are_found_inside_jits_and_scans_with_their_counts_and_flops():
    w1 = jnp.ones((8, 16), jnp.bfloat16)
    w2 = jnp.ones((3, 16, 16), jnp.float32)

    @jax.jit
    def inner(x):
        return jnp.matmul(x, w1, preferred_element_type=jnp.float32)

    def fn(x):
        h = inner(x)  # [4 16]
        h, _ = jax.lax.scan(lambda c, w: (jnp.tanh(c @ w), None), h, w2)  # 3 products of [4 16] x [16 16]
        return jnp.einsum("bi,bj->bij", h, h)  # a product with no contraction: [4 16 16], batch 4

    dots = matmuls(fn, jnp.ones((4, 8), jnp.bfloat16))
    assert [(d.lhs, d.rhs, d.count) for d in dots] == [
        (((4, 8), "bfloat16"), ((8, 16), "bfloat16"), 1),
        (((4, 16), "float32"), ((16, 16), "float32"), 3),
        (((4, 16), "float32"), ((4, 16), "float32"), 1),
    ]
    assert dots[0].params["preferred_element_type"] == jnp.float32
    assert [d.flops for d in dots] == [2 * 4 * 8 * 16, 3 * 2 * 4 * 16 * 16, 2 * 4 * 16 * 16]
    floor(dots)()  # runs all five products


def test_a_loop_of_unknown_length_holding_products_has_no_fixed_floor():
    def fn(x):
        return jax.lax.while_loop(lambda c: c[0, 0] < 10, lambda c: c @ c + 1, x)

    with pytest.raises(ValueError, match="not static"):
        matmuls(fn, jnp.asarray(np.eye(3, dtype=np.float32)))
