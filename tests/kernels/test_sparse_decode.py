"""Sparse decoder: the jnp reference against the dense matmul, and the Pallas kernel (interpret mode on CPU)
against the reference in forward and gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interp.kernels import dense_decode, sparse_decode, sparse_decode_pallas, sparse_decode_reference
from interp.kernels.sparse_decode import DENSE_LATENTS_PER_SLOT
from tests.numerics import assert_close, magnitude, reduction_bound

N, K, M, D = 37, 5, 64, 24
BLOCK_N = 8  # 37 rows -> 5 blocks with the last one padded


def make_inputs(seed: int = 0, unique: bool = True):
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((N, K)).astype(np.float32)
    if unique:
        indices = np.argsort(rng.random((N, M)), axis=1)[:, :K]
    else:
        indices = rng.integers(0, M, size=(N, K))
    W_dec = rng.standard_normal((M, D)).astype(np.float32)
    g = rng.standard_normal((N, D)).astype(np.float32)
    return jnp.asarray(values), jnp.asarray(indices, jnp.int32), jnp.asarray(W_dec), jnp.asarray(g)


def densify(values, indices, n_latents: int):
    rows = jnp.arange(values.shape[0])[:, None]
    return jnp.zeros((values.shape[0], n_latents), values.dtype).at[rows, indices].set(values)


def numpy_decode(values, indices, W_dec):
    values, indices, W_dec = map(np.asarray, (values, indices, W_dec))
    out = np.zeros((values.shape[0], W_dec.shape[1]), np.float64)
    for n in range(values.shape[0]):
        for j in range(values.shape[1]):
            out[n] += values[n, j] * W_dec[indices[n, j]]
    return out


def pallas(values, indices, W_dec):
    return sparse_decode_pallas(values, indices, W_dec, block_n=BLOCK_N, interpret=True)


def close(actual, expected, length: int, *factors) -> None:
    """Equal up to the rounding of sums of ``length`` products of the ``factors``' entries."""
    scale = float(np.prod([magnitude(f) for f in factors]))
    assert_close(actual, expected, reduction_bound(scale, length=length))


def grads(fn, values, indices, W_dec, g):
    return jax.grad(lambda v, w: jnp.sum(fn(v, indices, w) * g), argnums=(0, 1))(values, W_dec)


def test_reference_matches_dense_matmul():
    values, indices, W_dec, _ = make_inputs()
    expected = densify(values, indices, M) @ W_dec
    out = sparse_decode_reference(values, indices, W_dec)
    assert out.shape == (N, D) and out.dtype == jnp.float32
    close(out, expected, K, values, W_dec)


def test_reference_gradients_match_dense_matmul():
    values, indices, W_dec, g = make_inputs()
    d_v, d_w = grads(sparse_decode_reference, values, indices, W_dec, g)
    # Dense: d_z = g @ W^T read at the active slots; d_W = z^T @ g.
    z = densify(values, indices, M)
    close(d_v, jnp.take_along_axis(g @ W_dec.T, indices, axis=1), D, g, W_dec)
    close(d_w, z.T @ g, N * K, values, g)


def test_pallas_forward_matches_reference():
    values, indices, W_dec, _ = make_inputs()
    out = pallas(values, indices, W_dec)
    assert out.shape == (N, D) and out.dtype == jnp.float32
    close(out, sparse_decode_reference(values, indices, W_dec), K, values, W_dec)


@pytest.mark.parametrize("unique", [True, False], ids=["unique", "repeats"])
def test_pallas_gradients_match_reference(unique):
    values, indices, W_dec, g = make_inputs(seed=1, unique=unique)
    d_v, d_w = grads(pallas, values, indices, W_dec, g)
    ref_v, ref_w = grads(sparse_decode_reference, values, indices, W_dec, g)
    assert d_v.shape == values.shape and d_w.shape == W_dec.shape
    close(d_v, ref_v, D, g, W_dec)
    close(d_w, ref_w, N * K, values, g)
    # Latents that no row selects get exactly zero gradient.
    unused = np.setdiff1d(np.arange(M), np.asarray(indices))
    assert unused.size > 0
    np.testing.assert_array_equal(np.asarray(d_w)[unused], 0.0)


def test_repeated_indices_in_a_row_accumulate():
    values, _, W_dec, g = make_inputs(seed=2)
    # Every row names latent 3 twice and latent 7 three times.
    indices = jnp.tile(jnp.asarray([3, 7, 3, 7, 7], jnp.int32), (N, 1))
    expected = numpy_decode(values, indices, W_dec)
    close(sparse_decode_reference(values, indices, W_dec), expected, K, values, W_dec)
    close(pallas(values, indices, W_dec), expected, K, values, W_dec)

    d_v, d_w = grads(pallas, values, indices, W_dec, g)
    v, gg, w = np.asarray(values), np.asarray(g), np.asarray(W_dec)
    expected_dw = np.zeros((M, D))
    expected_dw[3] = ((v[:, 0] + v[:, 2])[:, None] * gg).sum(0)
    expected_dw[7] = ((v[:, 1] + v[:, 3] + v[:, 4])[:, None] * gg).sum(0)
    close(d_w, expected_dw, N * K, values, g)
    close(d_v, (gg @ w.T)[:, [3, 7, 3, 7, 7]], D, g, W_dec)


def test_under_jit():
    values, indices, W_dec, g = make_inputs(seed=3)
    expected = numpy_decode(values, indices, W_dec)
    for fn in (sparse_decode_reference, pallas, sparse_decode):
        close(jax.jit(fn)(values, indices, W_dec), expected, K, values, W_dec)
    d_v, d_w = jax.jit(lambda v, i, w: grads(pallas, v, i, w, g))(values, indices, W_dec)
    ref_v, ref_w = grads(sparse_decode_reference, values, indices, W_dec, g)
    close(d_v, ref_v, D, g, W_dec)
    close(d_w, ref_w, N * K, values, g)


def test_interpret_defaults_to_true_on_cpu():
    values, indices, W_dec, _ = make_inputs(seed=4)
    if jax.default_backend() != "cpu":
        pytest.skip("interpret=None only means interpret mode on CPU")
    out = sparse_decode_pallas(values, indices, W_dec)  # default block_n, one padded block
    close(out, sparse_decode_reference(values, indices, W_dec), K, values, W_dec)


def test_bad_shapes_name_the_cause():
    values, indices, W_dec, _ = make_inputs()
    with pytest.raises(ValueError, match=r"values and indices must both be \[N, k\]"):
        sparse_decode(values, indices[:, :3], W_dec)
    with pytest.raises(TypeError, match="indices must be an integer array"):
        sparse_decode_pallas(values, values, W_dec)


@pytest.mark.parametrize("unique", [True, False], ids=["unique", "repeats"])
def test_dense_decode_matches_the_reference_in_value_and_gradient(unique):
    values, indices, W_dec, g = make_inputs(seed=5, unique=unique)
    close(dense_decode(values, indices, W_dec), numpy_decode(values, indices, W_dec), K, values, W_dec)
    d_v, d_w = grads(dense_decode, values, indices, W_dec, g)
    ref_v, ref_w = grads(sparse_decode_reference, values, indices, W_dec, g)
    close(d_v, ref_v, D, g, W_dec)
    close(d_w, ref_w, N * K, values, g)


@pytest.mark.parametrize("n_latents", [DENSE_LATENTS_PER_SLOT * K, DENSE_LATENTS_PER_SLOT * K + 1])
def test_the_library_decoder_is_exact_on_either_side_of_the_dense_threshold(n_latents):
    rng = np.random.default_rng(6)
    values = jnp.asarray(rng.standard_normal((N, K)), jnp.float32)
    indices = jnp.asarray(rng.integers(0, n_latents, (N, K)), jnp.int32)  # repeats included
    W_dec = jnp.asarray(rng.standard_normal((n_latents, D)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((N, D)), jnp.float32)
    close(jax.jit(sparse_decode)(values, indices, W_dec), numpy_decode(values, indices, W_dec), K, values, W_dec)
    d_v, d_w = grads(sparse_decode, values, indices, W_dec, g)
    v, gg, w, i = map(np.asarray, (values, g, W_dec, indices))
    expected_dw = np.zeros(w.shape)
    np.add.at(expected_dw, i.reshape(-1), (v[:, :, None] * gg[:, None, :]).reshape(-1, D))
    close(d_w, expected_dw, N * K, values, g)
    close(d_v, np.take_along_axis(gg @ w.T, i, axis=1), D, g, W_dec)


def test_bfloat16_cotangents_keep_their_dtype():
    values, indices, W_dec, g = make_inputs(seed=7)
    for fn in (sparse_decode_reference, dense_decode):
        d_v, d_w = grads(fn, values.astype(jnp.bfloat16), indices, W_dec.astype(jnp.bfloat16), g.astype(jnp.bfloat16))
        assert d_v.dtype == jnp.bfloat16 and d_w.dtype == jnp.bfloat16
        assert fn(values, indices, W_dec.astype(jnp.bfloat16)).dtype == jnp.bfloat16
