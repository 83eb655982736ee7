"""Sparse decoder for TopK sparse autoencoders: ``out[n] = sum_j values[n, j] * W_dec[indices[n, j]]``.

Axis letters:
  N rows (tokens, flattened over batch and position), k active latent slots per row,
  M dictionary latents, D output dim (the model width being reconstructed).

A TopK SAE keeps k << M latents per row, so decoding touches k rows of ``W_dec`` instead of all M:
the dense ``z @ W_dec`` wastes M/k of its flops on zeros. There is no decoder bias here; callers add it.

Four entry points:
  ``sparse_decode_reference``  pure jnp; the semantics, and the fastest choice on CPU for large dictionaries.
  ``dense_decode``             the same through dense codes and one matmul; faster for small dictionaries.
  ``sparse_decode_pallas``     a Pallas kernel over blocks of N rows, with a pure-jnp backward.
  ``sparse_decode``            what the library calls: dense for small dictionaries, else the reference on
                               CPU and, when asked for, the kernel elsewhere.

Inputs may be any float dtype; products are accumulated in float32 and the result has ``W_dec``'s dtype.
Cotangents come back in the dtype of the input they belong to.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jaxtyping import Array, Float, Int

from interp.kernels import cpu_sparse

# Sublane-friendly row count; also keeps one block of the output small next to the resident W_dec.
DEFAULT_BLOCK_N = 128


def _check(values, indices, W_dec) -> None:
    if values.ndim != 2 or indices.shape != values.shape:
        raise ValueError(f"values and indices must both be [N, k]; got values {values.shape} and indices "
                         f"{indices.shape}. Flatten leading axes first, e.g. values.reshape(-1, k).")
    if W_dec.ndim != 2:
        raise ValueError(f"W_dec must be [M, D]; got shape {W_dec.shape}.")
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise TypeError(f"indices must be an integer array of latent ids; got dtype {indices.dtype}. "
                        f"Pass the ids returned by jax.lax.top_k, cast with .astype(jnp.int32).")
    if not jnp.issubdtype(values.dtype, jnp.floating) or not jnp.issubdtype(W_dec.dtype, jnp.floating):
        raise TypeError(f"values and W_dec must be floating point; got {values.dtype} and {W_dec.dtype}.")


def _gather_sum(values, indices, W_dec):
    # The barrier stops XLA from fusing the gathers with whatever produced the codes (a top-k, say):
    # that fusion measured 10x slower than gathering from materialized codes.
    values, indices = jax.lax.optimization_barrier((values, indices))
    v = values.astype(jnp.float32)
    acc = jnp.zeros((values.shape[0], W_dec.shape[1]), jnp.float32)
    for j in range(values.shape[1]):
        acc = acc + v[:, j, None] * W_dec[indices[:, j]].astype(jnp.float32)
    return acc.astype(W_dec.dtype)


def scatter_add_rows(weights: Float[Array, "N k"], rows: Float[Array, "N D"], indices: Int[Array, "N k"],
                     n_out: int, *, compiled: bool = True) -> Float[Array, "M D"]:
    """``out [n_out, D]`` (float32) with ``out[indices[n, j]] += weights[n, j] * rows[n]`` for every ``n, j``
    (ids outside ``[0, n_out)`` add nothing; a backward pass never makes them).

    On CPU this runs the compiled kernel of :mod:`interp.kernels.cpu_sparse` over every core;
    ``compiled=False``, or a machine without it, takes the path below.

    One scatter-add of ``N`` rows per slot, in a loop whose accumulator XLA updates in place. Written as an
    unrolled chain of ``k`` scatter-adds (what autodiff of the gathers produces), the decoder's forward and
    backward on a 2-core CPU took 2 to 38 times longer for k from 8 to 128 (``benchmarks/sparse_decode.py``): XLA
    copies the ``[n_out, D]`` accumulator between the steps."""
    if compiled and cpu_sparse.available():
        return cpu_sparse.scatter_rows(weights.astype(jnp.float32), rows.astype(jnp.float32), indices, n_out)
    w = weights.astype(jnp.float32).T  # [k N]: each slot's weights contiguous
    idx = indices.T
    rows = rows.astype(jnp.float32)

    def add_slot(j, out):
        return out.at[idx[j]].add(w[j][:, None] * rows)

    return jax.lax.fori_loop(0, indices.shape[1], add_slot, jnp.zeros((n_out, rows.shape[1]), jnp.float32))


def gather_dot(rows: Float[Array, "N D"], indices: Int[Array, "N k"], table: Float[Array, "M D"], *,
               compiled: bool = True) -> Float[Array, "N k"]:
    """``out [N, k]`` (float32) with ``out[n, j] = <rows[n], table[indices[n, j]]>``: the sparse decoder's
    cotangent for its values. On CPU this runs the compiled kernel of :mod:`interp.kernels.cpu_sparse` over every
    core; ``compiled=False``, or a machine without it, gathers one slot at a time, which keeps intermediates at
    [N, D] rather than [N, k, D]."""
    if compiled and cpu_sparse.available():
        return cpu_sparse.gather_dot(rows.astype(jnp.float32), indices, table.astype(jnp.float32))
    rows = rows.astype(jnp.float32)
    return jnp.stack([jnp.sum(rows * table[indices[:, j]].astype(jnp.float32), axis=-1)
                      for j in range(indices.shape[1])], axis=1)


def _backward(values, indices, W_dec, g):
    """Cotangents of ``values``, ``indices`` (none: float0) and ``W_dec`` for the output cotangent ``g``."""
    g = g.astype(jnp.float32)
    g, indices = jax.lax.optimization_barrier((g, indices))
    d_values = gather_dot(g, indices, W_dec).astype(values.dtype)
    # Scatter-add, not set: the same latent may appear in many rows, or twice in one row.
    d_W = scatter_add_rows(values, g, indices, W_dec.shape[0]).astype(W_dec.dtype)
    return d_values, np.zeros(indices.shape, dtype=jax.dtypes.float0), d_W  # integer inputs: float0


@jax.custom_vjp
def _reference(values, indices, W_dec):
    return _gather_sum(values, indices, W_dec)


def _reference_fwd(values, indices, W_dec):
    return _gather_sum(values, indices, W_dec), (values, indices, W_dec)


def _reference_bwd(res, g):
    return _backward(*res, g)


_reference.defvjp(_reference_fwd, _reference_bwd)


def sparse_decode_reference(
    values: Float[Array, "N k"], indices: Int[Array, "N k"], W_dec: Float[Array, "M D"]
) -> Float[Array, "N D"]:
    """``out [N, D] = sum_j values[:, j] * W_dec[indices[:, j]]``, in pure jnp, with a hand-written backward
    (gathers for ``values``, :func:`scatter_add_rows` for ``W_dec``; reverse mode only).

    One gather of N rows per slot keeps the live intermediate at [N, D]; gathering all [N, k, D] at once
    would hold k times more memory for no speed gain.
    """
    _check(values, indices, W_dec)
    return _reference(values, indices, W_dec)


def _kernel(v_ref, i_ref, w_ref, o_ref):
    # k is static and small (tens): a Python loop unrolls into static column slices, which every backend
    # lowers, where a dynamic column index inside a fori_loop is not supported everywhere.
    acc = jnp.zeros(o_ref.shape, jnp.float32)
    for j in range(v_ref.shape[1]):
        rows = w_ref[i_ref[:, j], :].astype(jnp.float32)
        acc = acc + v_ref[:, j].astype(jnp.float32)[:, None] * rows
    o_ref[...] = acc.astype(o_ref.dtype)


def _forward(values, indices, W_dec, block_n: int, interpret: bool):
    N, k = values.shape
    M, D = W_dec.shape
    n_pad = -N % block_n
    # Padded rows are sliced off below; latent 0 keeps their gathers in bounds (unchecked on accelerators).
    v = jnp.pad(values, ((0, n_pad), (0, 0)))
    i = jnp.pad(indices.astype(jnp.int32), ((0, n_pad), (0, 0)))
    out = pl.pallas_call(
        _kernel,
        out_shape=jax.ShapeDtypeStruct((N + n_pad, D), W_dec.dtype),
        grid=((N + n_pad) // block_n,),
        in_specs=[
            pl.BlockSpec((block_n, k), lambda n: (n, 0)),
            pl.BlockSpec((block_n, k), lambda n: (n, 0)),
            # Any row may be needed by any block, so the whole dictionary is one block for every step.
            pl.BlockSpec((M, D), lambda n: (0, 0)),
        ],
        out_specs=pl.BlockSpec((block_n, D), lambda n: (n, 0)),
        interpret=interpret,
    )(v, i, W_dec)
    return out[:N]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _sparse_decode_pallas(values, indices, W_dec, block_n, interpret):
    return _forward(values, indices, W_dec, block_n, interpret)


def _fwd(values, indices, W_dec, block_n, interpret):
    return _forward(values, indices, W_dec, block_n, interpret), (values, indices, W_dec)


def _bwd(block_n, interpret, res, g):
    return _backward(*res, g)


_sparse_decode_pallas.defvjp(_fwd, _bwd)


def sparse_decode_pallas(
    values: Float[Array, "N k"],
    indices: Int[Array, "N k"],
    W_dec: Float[Array, "M D"],
    *,
    block_n: int = DEFAULT_BLOCK_N,
    interpret: bool | None = None,
) -> Float[Array, "N D"]:
    """Pallas version of :func:`sparse_decode_reference`: same result [N, D], same gradients.

    The grid runs over blocks of ``block_n`` rows (N need not divide; it is padded). ``W_dec`` is held whole
    by every grid step, so it must fit the accelerator's on-chip block limits. The backward is pure jnp
    (a gather for ``d_values``, a scatter-add for ``d_W_dec``); ``indices`` get no gradient.
    ``interpret=None`` means interpret mode on CPU, where Pallas has no compiled backend.
    """
    _check(values, indices, W_dec)
    if block_n < 1:
        raise ValueError(f"block_n must be a positive row count; got {block_n}.")
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    # Small inputs need not be padded to a full default block; 8 keeps the block sublane-aligned.
    block_n = min(block_n, max(8, -(-values.shape[0] // 8) * 8))
    return _sparse_decode_pallas(values, indices, W_dec, block_n, bool(interpret))


# A dictionary with at most this many latents per active slot is decoded by one dense matmul. On a 2-core CPU
# (benchmarks/sparse_decode.py: N 1024-4096, D 576, forward and backward) the dense product took a third of the
# gathers' time at 16 latents per slot, two thirds at 32, 0.8 to 0.9 of it at 64, and 8 to 23 times theirs from
# 512 up, where the gathers touch a small part of the dictionary.
DENSE_LATENTS_PER_SLOT = 32


def dense_decode(values: Float[Array, "N k"], indices: Int[Array, "N k"],
                 W_dec: Float[Array, "M D"]) -> Float[Array, "N D"]:
    """:func:`sparse_decode_reference`'s result through dense codes ``[N M]`` (repeated indices add up) and
    one matmul."""
    _check(values, indices, W_dec)
    rows = jnp.arange(values.shape[0])[:, None]
    z = jnp.zeros((values.shape[0], W_dec.shape[0]), jnp.float32).at[rows, indices].add(values.astype(jnp.float32))
    return (z @ W_dec.astype(jnp.float32)).astype(W_dec.dtype)


def sparse_decode(
    values: Float[Array, "N k"], indices: Int[Array, "N k"], W_dec: Float[Array, "M D"]
) -> Float[Array, "N D"]:
    """Decode TopK SAE codes: ``out [N, D] = sum_j values[:, j] * W_dec[indices[:, j]]``.

    A dictionary with at most :data:`DENSE_LATENTS_PER_SLOT` latents per slot is decoded densely
    (:func:`dense_decode`). Otherwise the pure-jnp gather loop is the default everywhere: on CPU Pallas would only
    run interpreted, and the kernel, which holds the whole of ``W_dec`` per grid step, has not yet been validated on
    an accelerator. Set ``INTERP_PALLAS_DECODE=1`` to route GPU/TPU calls through the Pallas kernel.
    """
    if W_dec.ndim == 2 and values.ndim == 2 and W_dec.shape[0] <= DENSE_LATENTS_PER_SLOT * values.shape[1]:
        return dense_decode(values, indices, W_dec)
    if jax.default_backend() != "cpu" and os.environ.get("INTERP_PALLAS_DECODE") == "1":
        return sparse_decode_pallas(values, indices, W_dec)
    return sparse_decode_reference(values, indices, W_dec)
