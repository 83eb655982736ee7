"""Ready-made pure edit functions ``fn(x, hook_name, *params)``.

They are module-level functions, so using them again with new parameter values never recompiles.
Head-wise edits act on ``[B T H E]`` hook points (``attn.hook_q/k/v/z``). All but :func:`patch_positions` are
marked :func:`interp.hooks.any_length`: a prompt of a new length inside its length bucket reuses their program.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array

from interp.hooks._spec import any_length


@any_length
def replace(x: Array, name: str, value: Array) -> Array:
    """Replace the activation by ``value`` (broadcast to its shape): activation patching."""
    return jnp.broadcast_to(value, x.shape).astype(x.dtype)


@any_length
def add(x: Array, name: str, delta: Array) -> Array:
    """Add ``delta`` (e.g. a steering vector ``[D]``), broadcast over the leading axes."""
    return x + delta


@any_length
def scale(x: Array, name: str, factor: Array) -> Array:
    """Multiply by ``factor`` (scalar or broadcastable array)."""
    return x * factor


@any_length
def zero(x: Array, name: str) -> Array:
    """Zero-ablate the whole activation."""
    return jnp.zeros_like(x)


@any_length
def mean_ablate(x: Array, name: str, mean: Array) -> Array:
    """Replace by a mean activation (``mean`` broadcast to the activation's shape)."""
    return jnp.broadcast_to(mean, x.shape).astype(x.dtype)


@any_length
def head_mask(x: Array, name: str, mask: Array) -> Array:
    """Multiply heads by ``mask [H]`` (1 keeps, 0 ablates) on a ``[B T H E]`` hook point."""
    return x * mask[:, None].astype(x.dtype)


def patch_positions(x: Array, name: str, value: Array, where: Array) -> Array:
    """Take ``value`` where the boolean ``where [T]`` (or ``[B T]``) is true, keep ``x`` elsewhere."""
    w = where.reshape(where.shape + (1,) * (x.ndim - where.ndim))
    return jnp.where(w, value, x)
