"""Matrix products for low-precision models: the product in the operands' dtype, accumulated in float32."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array


def matmul(a: Array, b: Array) -> Array:
    """``a @ b`` in the operands' dtype, accumulated in at least float32 and rounded once at the end, as the
    reference's kernels do for bfloat16 and float16. Asking XLA for the float32 accumulator explicitly matters on
    CPU: there a bfloat16 product with a float32 result runs on a kernel with about twice the throughput of the
    bfloat16-to-bfloat16 one (1024 x 576 x 1536 and 1024 x 576 x 49152 on a 2-core AVX-512 CPU: 750-830 GFLOP/s
    against 320-390); float16 runs at the same speed either way."""
    dtype = jnp.result_type(a, b)
    acc = dtype if jnp.finfo(dtype).bits >= 32 else jnp.dtype(jnp.float32)
    if acc == dtype:
        return jnp.matmul(a, b)
    return jnp.matmul(a, b, preferred_element_type=acc).astype(dtype)
