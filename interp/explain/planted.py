"""Dictionaries with known answers, to check the explain-and-score pipeline: every latent is an exact detector of
chosen tokens at ``hook_embed``, built from the model's own embeddings, so the right explanation of each is known.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


def _scores(E: np.ndarray, direction: np.ndarray) -> np.ndarray:
    return E @ direction


def planted_detectors(model, groups: Sequence[Sequence[int]], *, margin: float = 0.05):
    """A standard SAE on ``hook_embed`` whose latent ``i`` fires exactly on the token ids ``groups[i]`` (one or two
    ids each) and on no other token of the vocabulary: its encoder row is the sum of the tokens' unit embeddings and
    its bias sits halfway between the weakest of them and the strongest other token. Raises when a group cannot be
    separated that way with relative ``margin``; :func:`separable_groups` picks groups that can."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from interp.sae import StandardConfig, StandardSAE

    E = np.asarray(model.W_E, np.float32)
    rows, bias = [], []
    for g in groups:
        ok, w, b = _detector(E, list(g), margin)
        if not ok:
            raise ValueError(f"tokens {list(g)} cannot be told apart from the rest of the vocabulary by one "
                             "direction of the embeddings; pick others (separable_groups finds some)")
        rows.append(w)
        bias.append(b)
    cfg = StandardConfig(d_in=E.shape[1], width=len(rows), hook_name="hook_embed")
    d = StandardSAE.init(cfg, jax.random.key(0))
    W_enc = jnp.asarray(np.stack(rows, 1))
    return eqx.tree_at(lambda x: (x.W_enc, x.b_enc, x.W_dec, x.b_dec), d,
                       (W_enc, jnp.asarray(np.array(bias, np.float32)), W_enc.T, jnp.zeros(E.shape[1])))


def _detector(E: np.ndarray, ids: list[int], margin: float):
    unit = E[ids] / np.linalg.norm(E[ids], axis=1, keepdims=True)
    w = unit.sum(0)
    w = w / np.linalg.norm(w)
    s = _scores(E, w)
    inside = s[ids].min()
    outside = np.max(np.delete(s, ids))
    ok = inside > outside + margin * abs(outside) + 1e-6
    return ok, w.astype(np.float32), float(-(inside + outside) / 2)


def separable_groups(model, tokens: np.ndarray, *, singles: int = 30, pairs: int = 10, min_count: int = 10,
                     max_count: int | None = None, margin: float = 0.05) -> list[list[int]]:
    """Token groups that occur in ``tokens`` (ids, first position of each row left out) and that
    :func:`planted_detectors` can detect exactly: ``singles`` single tokens, most frequent first among those seen
    ``min_count``..``max_count`` times, then ``pairs`` pairs of two such tokens."""
    E = np.asarray(model.W_E, np.float32)
    tokens = np.asarray(tokens)
    counts = Counter(tokens[:, 1:].reshape(-1).tolist())
    hi = max_count or max(counts.values(), default=0)
    frequent = [t for t, c in counts.most_common() if min_count <= c <= hi]
    chosen, used = [], set()
    for t in frequent:
        if len(chosen) >= singles:
            break
        if _detector(E, [t], margin)[0]:
            chosen.append([t])
            used.add(t)
    rest = [t for t in frequent if t not in used]
    n_pairs = 0
    for a, b in zip(rest[0::2], rest[1::2]):
        if n_pairs >= pairs:
            break
        if _detector(E, [a, b], margin)[0]:
            chosen.append([a, b])
            n_pairs += 1
    return chosen
