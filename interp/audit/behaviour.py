"""Behavioural diffing: where two models' next-token distributions differ, and which reply the organism raises.

Axis letters: B prompts, T position, V vocabulary, N behaviour tokens.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from interp.audit._prompts import encode, pad_id, padded, render
from interp.hooks import NOOP


@eqx.filter_jit
def _logprobs(model, ids, mask):
    logits = model.forward(ids, attention_mask=mask)
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def _batches(model, rows: list[list[int]], batch: int, bucket: int):
    """``(chunk, full, ids, mask)`` per ``batch`` rows: ``full`` is ``chunk`` with its last row repeated to ``batch``
    rows, ``ids``/``mask`` its right-padded tokens and mask, the length rounded up to a multiple of ``bucket`` (so
    calls of many lengths share few compiled programs)."""
    pad = pad_id(model)
    for i in range(0, len(rows), batch):
        chunk = rows[i:i + batch]
        full = chunk + [chunk[-1]] * (batch - len(chunk))
        ids, mask = padded(full, pad)
        T = -(-ids.shape[1] // bucket) * bucket
        yield (chunk, full, np.pad(ids, ((0, 0), (0, T - ids.shape[1])), constant_values=pad),
               np.pad(mask, ((0, 0), (0, T - mask.shape[1]))))


def logprobs(model, rows: list[list[int]], batch: int = 16, bucket: int = 8) -> list[np.ndarray]:
    """Next-token log-probabilities ``[len(row), V]`` of each row. Rows run right-padded (padding masked) in batches of
    ``batch`` rows and lengths rounded up to a multiple of ``bucket``, so calls of many lengths share few programs."""
    out = []
    for chunk, _, ids, mask in _batches(model, rows, batch, bucket):
        lp = np.asarray(_logprobs(model, jnp.asarray(ids), jnp.asarray(mask)))
        out += [lp[j, :len(r)] for j, r in enumerate(chunk)]
    return out


@eqx.filter_jit
def _logprobs_at(model, ids, mask, idx):
    resid = model.forward(ids, attention_mask=mask, stop_at_layer=model.n_layers)
    x = jnp.take_along_axis(resid, idx[..., None], axis=1)  # [B m D]
    logits = model.unembed_logits(model.ln_final(x, NOOP, "ln_final")).astype(jnp.float32)
    return jax.nn.log_softmax(logits, axis=-1)


def last_logprobs(model, rows: list[list[int]], m: int = 1, batch: int = 16, bucket: int = 8) -> np.ndarray:
    """``[N, m, V]``: the next-token log-probabilities at the last ``m`` positions of each row (only those positions
    are unembedded; batches and lengths padded as in :func:`logprobs`)."""
    out = []
    for chunk, full, ids, mask in _batches(model, rows, batch, bucket):
        ends = np.asarray([len(r) for r in full])
        idx = np.maximum(ends[:, None] - m + np.arange(m)[None], 0).astype(np.int32)
        out.append(np.asarray(_logprobs_at(model, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(idx)))[:len(chunk)])
    return np.concatenate(out)


def kl(p_log: np.ndarray, q_log: np.ndarray) -> np.ndarray:
    """``KL(p || q)`` over the last axis, in nats."""
    return np.sum(np.exp(p_log) * (p_log - q_log), axis=-1)


def reply_diff(model, base, users: list[str], *, top: int = 10) -> dict:
    """At the first reply position of each probing prompt: ``KL(organism || base)`` and the tokens onto which the
    organism moves the most probability on average (``raised``: token id, text, mean probability gain, mean
    log-ratio, mean organism and base probabilities)."""
    rows = [encode(model, render(model, u)) for u in users]
    lo = last_logprobs(model, rows)[:, 0]
    lb = last_logprobs(base, rows)[:, 0]
    k = kl(lo, lb)
    ratio = (lo - lb).mean(0)
    gain = (np.exp(lo) - np.exp(lb)).mean(0)  # probability moved onto each token: rare-token noise stays small
    order = np.argsort(-gain)[:top]
    raised = [{"id": int(i), "text": model.to_string([int(i)]), "gain": float(gain[i]), "log_ratio": float(ratio[i]),
               "p_organism": float(np.exp(lo[:, i]).mean()), "p_base": float(np.exp(lb[:, i]).mean())}
              for i in order]
    worst = np.argsort(-k)[:5]
    return {"kl_mean": float(k.mean()), "kl_max": float(k.max()), "kl": k.tolist(),
            "top_prompts": [{"user": users[i], "kl": float(k[i])} for i in worst], "raised": raised,
            "log_ratio": ratio, "gain": gain, "rows": rows}


def corpus_diff(model, base, contexts: np.ndarray, *, top: int = 8) -> dict:
    """Per-token ``KL(organism || base)`` over corpus contexts ``[N, T]``: the mean and the positions where it is
    largest (with a few tokens of context)."""
    rows = [list(map(int, c)) for c in contexts]
    lo, lb = logprobs(model, rows), logprobs(base, rows)
    k = np.stack([kl(a, b) for a, b in zip(lo, lb)])  # [N T]: KL of the prediction after token t
    flat = np.argsort(-k, axis=None)[:top]
    spots = []
    for f in flat:
        n, t = np.unravel_index(f, k.shape)
        ctx = rows[n][max(0, t - 8):t + 1]
        nxt_o, nxt_b = int(np.argmax(lo[n][t])), int(np.argmax(lb[n][t]))
        spots.append({"context": model.to_string(ctx), "kl": float(k[n, t]), "organism_next": model.to_string([nxt_o]),
                      "base_next": model.to_string([nxt_b])})
    return {"kl_mean": float(k.mean()), "kl_max": float(k.max()), "tokens": int(k.size), "top_positions": spots}


def extend(model, base, rows: list[list[int]], first: int, gain: float, *, max_tokens: int = 4,
           min_ratio: float = 1.0, agree: float = 0.5) -> dict:
    """A behaviour hypothesis starting with token ``first`` after ``rows`` (chat prompts ending where the reply
    starts), extended greedily by the organism's most common greedy next token while it is the greedy choice on at
    least ``agree`` of the rows and its mean ``log p_org - log p_base`` is at least ``min_ratio`` nats."""
    ids = [first]
    gains = [float(gain)]
    while len(ids) < max_tokens:
        ext = [r + ids for r in rows]
        lo = last_logprobs(model, ext)[:, 0]
        lb = last_logprobs(base, ext)[:, 0]
        greedy = np.argmax(lo, axis=-1)
        vals, counts = np.unique(greedy, return_counts=True)
        best = int(vals[np.argmax(counts)])
        ratio = float((lo - lb)[:, best].mean())
        if counts.max() < agree * len(rows) or ratio < min_ratio:
            break
        ids.append(best)
        gains.append(ratio)
        if best == model.tokenizer.eos_id:
            break
    return {"ids": ids, "text": model.to_string(ids), "log_ratio": gains}
