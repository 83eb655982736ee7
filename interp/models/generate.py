"""Text generation with a key/value cache, compiled as one program: the prompt fills the cache in one pass and
each new token is one cached step inside ``lax.scan``. Edits and splices apply at every step, so steering with
a direction is one call:

    out = model.generate("I think that", 30, edits=[("blocks.6.hook_resid_pre", edits.add, 4.0 * v)])
    out.texts[0]

Decoding: greedy (``temperature=0``) or sampling with temperature, top-k and top-p (nucleus), from ``seed``.
Batched prompts are left-padded, so every row's next token comes from its own last position; a row stops at
any of ``stop_tokens`` (default: the checkpoint's end-of-sequence token) and is padded after it.
Edit functions see ``[B, T, ...]`` activations with ``T`` = the prompt length on the first call and 1 after; the
prompt is left-padded to its length bucket (``interp.models.length_buckets``), so ``T`` is the bucket length and
``x[:, -1]`` is still each row's last prompt token. Prompts of new lengths, new ``max_new_tokens`` within their
bucket and new ``temperature``/``top_k``/``top_p``/``seed`` reuse the compiled program.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from interp.checks import check_range
from interp.hooks import HookRunner, Hooks
from interp.models._buckets import bucket_length
from interp.models._model import to_device
from interp.models._tl_compat import check_hook_leaks


@dataclasses.dataclass(frozen=True)
class Generation:
    """``tokens [B, P + N]``: the left-padded prompts then the new tokens; ``new_tokens [B, N]`` (the pad id after
    a row stopped); ``lengths [B]``: new tokens per row, a stop token included; ``texts``: the new text of each
    row without its stop token (when the model has a tokenizer); ``logits [B, N, V]`` with
    ``return_logits=True``: the distribution each new token was drawn from."""

    tokens: np.ndarray
    attention_mask: np.ndarray
    new_tokens: np.ndarray
    lengths: np.ndarray
    texts: list[str] | None
    logits: np.ndarray | None = None


def _sample(logits, key, greedy: bool, temperature, top_k, top_p):
    """The next token of each row from ``logits [B V]``; ``temperature``, ``top_k`` and ``top_p`` are traced, so
    new values reuse the compiled program (``top_k`` = V keeps every token)."""
    logits = logits.astype(jnp.float32)
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    # top-k: keep what reaches the k-th largest logit (ties with it included, as the reference does)
    kth = jax.lax.dynamic_index_in_dim(sorted_logits, top_k - 1, axis=-1)
    sorted_logits = jnp.where(sorted_logits < kth, -jnp.inf, sorted_logits)
    # nucleus: keep the smallest set of most likely tokens whose probability reaches top_p (always the top one)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    drop_sorted = (before >= top_p) | (sorted_logits == -jnp.inf)
    drop = jnp.zeros_like(drop_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
    logits = jnp.where(drop, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@eqx.filter_jit
def _generate(model, tokens, mask, resolved, key, temperature, top_k, top_p, stop, pad, n_new, capacity: int,
              greedy: bool, return_logits: bool):
    """``n_new`` (traced, at most ``capacity``) new tokens after the left-padded prompts ``tokens [B P]``.

    The loop runs while a row is still live, so every ``n_new`` up to ``capacity`` shares one program; the
    key/value cache has ``P + capacity`` slots."""
    B, P = tokens.shape
    cache = model.init_cache(B, P + capacity)
    positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0).astype(jnp.int32)
    logits, cache = model.forward(tokens, HookRunner(resolved), attention_mask=mask, positions=positions, kv=cache)
    V = logits.shape[-1]
    new = jnp.full((B, capacity), pad, jnp.int32)
    dists = jnp.zeros((B, capacity if return_logits else 0, V), logits.dtype)

    def live(carry):
        i, _, _, _, done, _, _, _ = carry
        # with return_logits every step is kept, as the distributions after a stop are returned too
        return (i < n_new) & (return_logits | ~jnp.all(done))

    def step(carry):
        i, cache, last, pos, done, key, new, dists = carry
        key, sub = jax.random.split(key)
        tok = jnp.where(done, pad, _sample(last, sub, greedy, temperature, top_k, top_p))
        new = jax.lax.dynamic_update_index_in_dim(new, tok, i, axis=1)
        if return_logits:
            dists = jax.lax.dynamic_update_index_in_dim(dists, last, i, axis=1)
        finished = done | jnp.isin(tok, stop)

        def feed(cache):  # the last new token is only drawn, never fed back
            rows = (~done).astype(jnp.int32)[:, None]
            logits, cache = model.forward(tok[:, None], HookRunner(resolved), attention_mask=rows,
                                          positions=pos[:, None], kv=cache)
            return cache, logits[:, -1]

        cache, last = jax.lax.cond(i + 1 < n_new, feed, lambda cache: (cache, last), cache)
        return i + 1, cache, last, pos + 1, finished, key, new, dists

    init = (jnp.int32(0), cache, logits[:, -1], positions[:, -1] + 1, jnp.zeros((B,), bool), key, new, dists)
    *_, new, dists = jax.lax.while_loop(live, step, init)
    return new, dists


def generate(model, prompts, max_new_tokens: int = 32, *, temperature: float = 0.0, top_k: int | None = None,
             top_p: float = 1.0, seed: int = 0, stop_tokens: Sequence[int] | int | None = None, edits=(),
             splices=(), attention_mask=None, return_logits: bool = False) -> Generation:
    """Continue ``prompts`` (a string, a list of strings, or ids ``[B, P]`` with an optional left-padding
    ``attention_mask``) by ``max_new_tokens`` tokens (0 returns the prompts). See the module docstring.

    ``temperature``: 0 is greedy, else a finite positive number; ``top_k``: the most likely tokens kept when
    sampling, 1..vocab (None or 0: all); ``top_p``: in (0, 1]; ``seed``: an int. The prompt and the new tokens
    together must fit the model's context (``model.n_ctx``).
    """
    check_range("max_new_tokens", max_new_tokens, 0, integer=True)
    check_range("temperature", temperature, 0, note=" (0 is greedy)")
    check_range("top_p", top_p, 0, 1, lo_open=True, note=" (1 keeps every token)")
    if top_k is not None:
        check_range("top_k", top_k, 0, model.d_vocab, integer=True, note=" (the vocabulary; 0 keeps every token)")
    check_range("seed", seed, integer=True)
    max_new_tokens, temperature, top_p, seed = int(max_new_tokens), float(temperature), float(top_p), int(seed)
    top_k = (int(top_k) or None) if top_k is not None else None
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts, (list, tuple)) and prompts and isinstance(prompts[0], str):
        tokens, attention_mask = model.to_tokens(list(prompts), padding_side="left", return_mask=True)
    else:
        tokens = prompts
    tokens, attention_mask, _ = model.check_inputs(tokens, attention_mask, None)
    if attention_mask is None:
        attention_mask = np.ones(tokens.shape, np.int32)
    m = np.asarray(attention_mask)
    if (np.diff(m, axis=1) < 0).any():
        raise ValueError("prompts must be left-padded (padding before the tokens): the new tokens follow each "
                         "row's last position; tokenize with padding_side='left'")
    longest = int(m.sum(axis=1).max())
    if model.n_ctx is not None and longest + max_new_tokens > model.n_ctx:
        raise ValueError(f"a prompt of {longest} tokens and max_new_tokens={max_new_tokens} need "
                         f"{longest + max_new_tokens} positions, past this model's context of {model.n_ctx}; ask for "
                         f"at most {max(model.n_ctx - longest, 0)} new tokens or shorten the prompt")
    cfg = model.config
    eos = getattr(cfg, "eos_token_id", None)
    if stop_tokens is None:
        stop_tokens = [] if eos is None else [eos]
    elif isinstance(stop_tokens, (int, np.integer)):
        stop_tokens = [int(stop_tokens)]
    pad = getattr(cfg, "pad_token_id", None)
    pad = pad if pad is not None else (eos if eos is not None else 0)
    resolved = model._with_context_edits(Hooks(capture=(), edits=edits, splices=splices)).resolve(model.hook_names)
    stop = to_device(list(stop_tokens) or [-1], np.int32)
    if max_new_tokens:
        # the prompt is left-padded to its length bucket and the new tokens get a bucket of slots, so prompts
        # of new lengths and new max_new_tokens reuse the compiled program (edits see the padded prompt)
        P = tokens.shape[1]
        padded = bucket_length(P)
        capacity = bucket_length(max_new_tokens)
        tokens_in = np.pad(np.asarray(tokens), [(0, 0), (padded - P, 0)], constant_values=pad)
        mask_in = np.pad(m, [(0, 0), (padded - P, 0)])
        new, dists = _generate(model, to_device(tokens_in, np.int32), to_device(mask_in, np.int32), resolved,
                               jax.random.key(seed), to_device(max(temperature, 1e-6), np.float32),
                               to_device(top_k or model.d_vocab, np.int32), to_device(top_p, np.float32), stop,
                               to_device(pad, np.int32), to_device(max_new_tokens, np.int32), capacity,
                               temperature == 0.0, return_logits)
        check_hook_leaks()
        new = np.asarray(new)[:, :max_new_tokens]
        dists = np.asarray(dists)[:, :max_new_tokens]
    else:
        new, dists = np.zeros((len(m), 0), np.int32), np.zeros((len(m), 0, model.d_vocab), np.float32)
    stops = np.isin(new, list(stop_tokens)) if stop_tokens else np.zeros(new.shape, bool)
    first = np.where(stops.any(1), stops.argmax(1) + 1, new.shape[1]) if new.shape[1] else np.zeros(len(new), int)
    texts = None
    if model.tokenizer is not None:
        texts = [model.to_string([int(t) for t in row[: n - int(stops[i, n - 1])]]) if n else ""
                 for i, (row, n) in enumerate(zip(new, first))]
    full = np.concatenate([np.asarray(tokens), new], axis=1)
    mask_full = np.concatenate([m, (np.arange(new.shape[1])[None] < first[:, None]).astype(m.dtype)], axis=1)
    return Generation(full, mask_full, new, first, texts, np.asarray(dists) if return_logits else None)
