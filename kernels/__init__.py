"""Accelerator kernels with pure-jnp references that define their semantics."""

from interp.kernels.sparse_decode import (
    dense_decode,
    sparse_decode,
    sparse_decode_pallas,
    sparse_decode_reference,
)

__all__ = ["dense_decode", "sparse_decode", "sparse_decode_pallas", "sparse_decode_reference"]
