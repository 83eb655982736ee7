"""A content hash of a model's or a dictionary's weights, recorded by reports and activation caches."""

from __future__ import annotations

import hashlib

import numpy as np


def weights_hash(tree) -> str:
    """sha256 over every array of a pytree (model or dictionary): path, dtype, shape and bytes."""
    import equinox as eqx
    import jax

    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(eqx.filter(tree, eqx.is_array)):
        a = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def file_sha256(path) -> str:
    """sha256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
