"""Text generation with a key/value cache, compiled as one program: the prompt fills the cache in one pass and
each new token is one cached step inside ``lax.scan``. Edits and splices apply at every step, so steering with
a direction is one call:

    out = model.generate("I think that", 30, edits=[("blocks.6.hook_resid_pre", edits.add, 4.0 * v)])
    out.texts[0]

Decoding: greedy (``temperature=0``) or sampling with temperature, top-k and top-p (nucleus), from ``seed``.
Batched prompts are left-padded, so every row's next token comes from its own last position; a row stops at
any of ``stop_tokens`` (default: the checkpoint's end-of-sequence token) and is padded after it.
Edit functions see ``[B, T, ...]`` activations with ``T`` = the prompt length on the first call and 1 after.
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


def _sample(logits, key, greedy: bool, temperature, top_k: int | None, top_p):
    logits = logits.astype(jnp.float32)
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    # nucleus: keep the smallest set of most likely tokens whose probability reaches top_p (always the top one)
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    drop_sorted = before >= top_p
    drop = jnp.zeros_like(drop_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
    logits = jnp.where(drop, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@eqx.filter_jit
def _generate(model, tokens, mask, resolved, key, temperature, top_p, stop, pad, n_new: int, greedy: bool,
              top_k: int | None, return_logits: bool):
    B, P = tokens.shape
    cache = model.init_cache(B, P + n_new)
    positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0).astype(jnp.int32)
    logits, cache = model.forward(tokens, HookRunner(resolved), attention_mask=mask, positions=positions, kv=cache)
    last = logits[:, -1]
    pos = positions[:, -1] + 1

    def draw(last, done, key):
        key, sub = jax.random.split(key)
        tok = jnp.where(done, pad, _sample(last, sub, greedy, temperature, top_k, top_p))
        return tok, done | jnp.isin(tok, stop), key

    def kept(last):
        return last if return_logits else jnp.zeros((B, 0), last.dtype)

    def step(carry, _):
        cache, last, pos, done, key = carry
        tok, finished, key = draw(last, done, key)
        live = (~done).astype(jnp.int32)[:, None]
        logits, cache = model.forward(tok[:, None], HookRunner(resolved), attention_mask=live, positions=pos[:, None],
                                      kv=cache)
        return (cache, logits[:, -1], pos + 1, finished, key), (tok, kept(last))

    # every token but the last is fed back through the model; the last one is only drawn
    init = (cache, last, pos, jnp.zeros((B,), bool), key)
    (_, last, _, done, key), (new, dists) = jax.lax.scan(step, init, None, length=n_new - 1)
    tok, _, _ = draw(last, done, key)
    new = jnp.concatenate([new, tok[None]])
    dists = jnp.concatenate([dists, kept(last)[None]])
    return new.T, jnp.swapaxes(dists, 0, 1)


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
    tokens, attention_mask, _ = model._check_inputs(tokens, attention_mask, None)
    if attention_mask is None:
        attention_mask = jnp.ones(tokens.shape, jnp.int32)
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
    resolved = Hooks(capture=(), edits=edits, splices=splices).resolve(model.hook_names)
    stop = jnp.asarray(list(stop_tokens) or [-1], jnp.int32)
    if max_new_tokens:
        new, dists = _generate(model, tokens, attention_mask, resolved, jax.random.key(seed),
                               jnp.float32(max(temperature, 1e-6)), jnp.float32(top_p), stop, jnp.int32(pad),
                               max_new_tokens, temperature == 0.0, top_k, return_logits)
    else:
        new, dists = np.zeros((len(m), 0), np.int32), np.zeros((len(m), 0, model.d_vocab), np.float32)
    new = np.asarray(new)
    stops = np.isin(new, list(stop_tokens)) if stop_tokens else np.zeros(new.shape, bool)
    first = np.where(stops.any(1), stops.argmax(1) + 1, new.shape[1]) if new.shape[1] else np.zeros(len(new), int)
    texts = None
    if model.tokenizer is not None:
        texts = [model.to_string([int(t) for t in row[: n - int(stops[i, n - 1])]]) if n else ""
                 for i, (row, n) in enumerate(zip(new, first))]
    full = np.concatenate([np.asarray(tokens), new], axis=1)
    mask_full = np.concatenate([m, (np.arange(new.shape[1])[None] < first[:, None]).astype(m.dtype)], axis=1)
    return Generation(full, mask_full, new, first, texts, np.asarray(dists) if return_logits else None)
