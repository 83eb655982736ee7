"""Kernels with pure-jnp references that define their semantics, and the numerics they share."""

from interp.kernels import cpu_sparse
from interp.kernels.products import matmul
from interp.kernels.sparse_decode import (
    dense_decode,
    sparse_decode,
    sparse_decode_pallas,
    sparse_decode_reference,
)
from interp.kernels.topk_blocks import top_k

__all__ = ["cpu_sparse", "dense_decode", "matmul", "sparse_decode", "sparse_decode_pallas", "sparse_decode_reference",
           "top_k"]
