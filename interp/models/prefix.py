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
def _extend(model, ids, mask, positions, kv, last, hook):
    """At position ``last [B]`` of each row of ``ids [B, S]`` (right-padded) run after the one-row prefix in ``kv``:
    the float32 logits, or with a ``hook`` name the activation there."""
    B = ids.shape[0]
    rows = jax.tree_util.tree_map(lambda a: jnp.repeat(a, B, axis=0) if a.ndim else a, kv)
    grab = _Grab(hook)
    logits = model.forward(ids, grab, attention_mask=mask, positions=positions, kv=rows)[0]
    out = logits if hook is None else grab.x
    return out[jnp.arange(B), last].astype(jnp.float32)


class _Grab:
    """A hook runner that keeps the activation at one hook point."""

    def __init__(self, name):
        self.name, self.x = name, None

    def __call__(self, name, x):
        if name == self.name:
            self.x = x
        return x


def shared_prefix_logits(model, prefix: Sequence[int], suffixes: Sequence[Sequence[int]], *, batch: int = 64,
                         prefix_step: int = 32, suffix_step: int = 16) -> np.ndarray:
    """Float32 next-token logits ``[len(suffixes), V]`` after ``prefix + suffix`` for each suffix (each at least one
    token). The prefix runs once (left-padded to a multiple of ``prefix_step``); the suffixes run ``batch`` at a time
    (a smaller last call runs in the next power of two), right-padded to a multiple of ``suffix_step``, so a few
    compiled programs serve every call."""
    return _shared_prefix(model, prefix, suffixes, None, batch, prefix_step, suffix_step)


def shared_prefix_activations(model, prefix: Sequence[int], suffixes: Sequence[Sequence[int]], hook_name: str, *,
                              batch: int = 64, prefix_step: int = 32, suffix_step: int = 1) -> np.ndarray:
    """Float32 activations at ``hook_name`` at the last token of ``prefix + suffix`` for each suffix (``[N, ...]``:
    the hook's shape without batch and position), run like :func:`shared_prefix_logits`."""
    if hook_name not in model.hook_names:
        from interp.hooks import suggest

        raise ValueError(f"unknown hook '{hook_name}'{suggest(hook_name, model.hook_names)}")
    if hook_name.endswith(("hook_pattern", "hook_attn_scores")):
        raise ValueError(f"'{hook_name}' has one entry per key, and a cached run's keys include the prefix's padding; "
                         "capture it with run_with_cache on the whole sequences")
    return _shared_prefix(model, prefix, suffixes, hook_name, batch, prefix_step, suffix_step)


def _shared_prefix(model, prefix, suffixes, hook, batch, prefix_step, suffix_step) -> np.ndarray:
    prefix = [int(t) for t in prefix]
    suffixes = [[int(t) for t in s] for s in suffixes]
    if not prefix:
        raise ValueError("a shared-prefix run needs a prefix of at least one token")
    if any(not s for s in suffixes):
        raise ValueError("every suffix needs at least one token (the result is read at its last one)")
    if not suffixes:
        if hook is None:
            return np.zeros((0, model.d_vocab), np.float32)
        shape = model.hook_shapes()[hook]
        return np.zeros((0, *shape[2:]), np.float32)
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
        out.append(np.asarray(_extend(model, ids, mask, pos, kv, last, hook))[:len(part)])
    return np.concatenate(out)


__all__ = ["shared_prefix_activations", "shared_prefix_logits"]
