"""Next-token logits of many sequences that share a prefix: the prefix runs once, its keys and values serve every
sequence, and only each sequence's own tokens run on top (scorers and scans whose prompts differ in a few tokens)."""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def round_up(n: int, step: int) -> int:
    return -(-int(n) // step) * step


@eqx.filter_jit
def _prefill(model, ids, mask, positions, kv):
    """The cache after running ``ids [1, P]`` (left-padded) through ``model``."""
    return model.forward(ids, attention_mask=mask, positions=positions, kv=kv)[1]


@eqx.filter_jit
def _extend(model, ids, mask, positions, kv, last):
    """Float32 logits at position ``last [B]`` of each row of ``ids [B, S]`` (right-padded) run after the one-row
    prefix in ``kv``."""
    B = ids.shape[0]
    rows = jax.tree_util.tree_map(lambda a: jnp.repeat(a, B, axis=0) if a.ndim else a, kv)
    logits = model.forward(ids, attention_mask=mask, positions=positions, kv=rows)[0]
    return logits[jnp.arange(B), last].astype(jnp.float32)


def shared_prefix_logits(model, prefix: Sequence[int], suffixes: Sequence[Sequence[int]], *, batch: int = 64,
                         prefix_step: int = 32, suffix_step: int = 16) -> np.ndarray:
    """Float32 next-token logits ``[len(suffixes), V]`` after ``prefix + suffix`` for each suffix (each at least one
    token). The prefix runs once (left-padded to a multiple of ``prefix_step``); the suffixes run ``batch`` at a time
    (a smaller last call runs in the next power of two), right-padded to a multiple of ``suffix_step``, so a few
    compiled programs serve every call."""
    prefix = [int(t) for t in prefix]
    suffixes = [[int(t) for t in s] for s in suffixes]
    if not prefix:
        raise ValueError("shared_prefix_logits needs a prefix of at least one token")
    if any(not s for s in suffixes):
        raise ValueError("every suffix needs at least one token (the logits are read at its last one)")
    if not suffixes:
        return np.zeros((0, model.d_vocab), np.float32)
    pad = model.tokenizer.pad_id if model.tokenizer is not None and model.tokenizer.pad_id is not None else 0
    n_pre = len(prefix)
    P = round_up(n_pre, prefix_step)
    S = round_up(max(len(s) for s in suffixes), suffix_step)
    ids_p = np.full((1, P), pad, np.int32)
    ids_p[0, P - n_pre:] = prefix
    mask_p = (np.arange(P) >= P - n_pre).astype(np.int32)[None]
    pos_p = np.maximum(np.cumsum(mask_p, axis=1) - 1, 0).astype(np.int32)
    kv = _prefill(model, ids_p, mask_p, pos_p, model.init_cache(1, P + S))
    out = []
    for lo in range(0, len(suffixes), batch):
        part = suffixes[lo:lo + batch]
        B = min(batch, 1 << (len(part) - 1).bit_length())
        ids = np.full((B, S), pad, np.int32)
        mask = np.zeros((B, S), np.int32)
        for i, s in enumerate(part):
            ids[i, :len(s)] = s
            mask[i, :len(s)] = 1
        last = np.array([len(s) - 1 for s in part] + [0] * (B - len(part)), np.int32)
        mask[len(part):, 0] = 1  # unused rows: one real token, never read
        pos = np.broadcast_to(n_pre + np.arange(S, dtype=np.int32), (B, S))
        out.append(np.asarray(_extend(model, ids, mask, pos, kv, last))[:len(part)])
    return np.concatenate(out)


__all__ = ["shared_prefix_logits"]
