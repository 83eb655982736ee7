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

Monitors (``monitors=[...]``, see :class:`interp.probes.Monitor`) score every token the model reads or writes
inside the same compiled program: the prompt pass and every cached step capture the monitor's hook activation
and apply its score function there, so no second forward runs. The last new token is then fed too (its
activations exist only once it is read), and a monitor with ``stop=True`` and a threshold ends a row when a new
token's score passes the threshold (the other rows go on). Scores come back in ``Generation.monitor_scores``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from interp.checks import check_range
from interp.hooks import EditFn, HookRunner, Hooks
from interp.models._buckets import bucket_length
from interp.models._model import to_device
from interp.models._tl_compat import check_hook_leaks
from interp.results import Result, Summary, token_strings


@dataclasses.dataclass(frozen=True)
class Generation(Result):
    """``tokens [B, P + N]``: the left-padded prompts then the new tokens; ``new_tokens [B, N]`` (the pad id after
    a row stopped); ``lengths [B]``: new tokens per row, a stop token included; ``texts``: the new text of each
    row without its stop token (when the model has a tokenizer); ``logits [B, N, V]`` with
    ``return_logits=True``: the distribution each new token was drawn from.

    With monitors: ``monitor_scores[name] [B, P + N]``, the score of every token of ``tokens`` (NaN where
    ``attention_mask`` is 0: padding, and slots after a row stopped); ``monitor_thresholds[name]`` (None when the
    monitor has none); ``stopped_by[b]``: the monitor that ended row ``b``, else None; ``str_tokens``: each token
    as text, for the views."""

    tokens: np.ndarray
    attention_mask: np.ndarray
    new_tokens: np.ndarray
    lengths: np.ndarray
    texts: list[str] | None
    logits: np.ndarray | None = None
    monitor_scores: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    monitor_thresholds: dict[str, float | None] = dataclasses.field(default_factory=dict)
    stopped_by: list[str | None] | None = None
    str_tokens: list[list[str]] | None = None

    @property
    def prompt_length(self) -> int:
        """``P``: the positions before the new tokens (left padding included)."""
        return self.tokens.shape[1] - self.new_tokens.shape[1]

    def flags(self, name: str) -> np.ndarray:
        """``[B, P + N]`` bool: the tokens whose score under monitor ``name`` is over its threshold."""
        scores = self._scores(name)
        threshold = self.monitor_thresholds.get(name)
        if threshold is None:
            raise ValueError(f"monitor {name!r} has no threshold; calibrate it (Monitor.calibrate) or give one "
                             "(Monitor(..., threshold=...)) before generating")
        with np.errstate(invalid="ignore"):
            return scores > threshold

    def spans(self, name: str) -> list[list[tuple[int, int]]]:
        """For each row, the runs ``(start, end)`` (end exclusive, positions of ``tokens``) of flagged tokens."""
        return [_runs(row) for row in self.flags(name)]

    def _scores(self, name: str) -> np.ndarray:
        if name not in self.monitor_scores:
            have = ", ".join(map(repr, self.monitor_scores)) or "none (pass monitors=[...] to generate)"
            raise KeyError(f"no monitor named {name!r} in this generation; monitors: {have}")
        return self.monitor_scores[name]

    def _summary(self) -> Summary:
        B, N = self.new_tokens.shape
        facts: dict = {"new tokens per row": " ".join(str(int(n)) for n in self.lengths)}
        for name, s in self.monitor_scores.items():
            finite = s[np.isfinite(s)]
            facts[f"{name}: max score"] = float(finite.max()) if finite.size else float("nan")
            if self.monitor_thresholds.get(name) is not None:
                facts[f"{name}: flagged tokens"] = int(self.flags(name).sum())
        if self.stopped_by and any(self.stopped_by):
            facts["rows stopped by a monitor"] = sum(x is not None for x in self.stopped_by)
        top = [(f"row {b}", t if len(t) <= 80 else t[:77] + "...") for b, t in enumerate(self.texts or [])]
        return Summary("generation" + (f" with {len(self.monitor_scores)} monitor(s)" if self.monitor_scores else ""),
                       {"batch": B, "prompt": self.prompt_length, "new tokens": N}, facts, top, "new text")


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def _monitor_scores(fns, sources, hooks, cache, valid):
    """``[M B T]`` float32 scores of the captured activations (NaN where ``valid [B T]`` is False)."""
    out = []
    for fn, source, hook in zip(fns, sources, hooks):
        x = cache[hook]
        s = fn(source, x)
        if getattr(s, "shape", None) != x.shape[:2]:
            got = getattr(s, "shape", type(s))
            raise ValueError(f"the score function of a monitor at '{hook}' returned shape {got} for activations of "
                             f"shape {x.shape}; it must give one score per token, shape {x.shape[:2]} (reduce the "
                             "feature axes of [batch, pos, ...])")
        out.append(jnp.where(valid, s.astype(jnp.float32), jnp.nan))
    return jnp.stack(out)


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
              greedy: bool, return_logits: bool, sources=(), thresholds=None, fns: tuple = (), hooks: tuple = ()):
    """``n_new`` (traced, at most ``capacity``) new tokens after the left-padded prompts ``tokens [B P]``.

    The loop runs while a row is still live, so every ``n_new`` up to ``capacity`` shares one program; the
    key/value cache has ``P + capacity`` slots. Monitors: ``fns[m](sources[m], activation at hooks[m])`` scores
    ``[M B P + capacity]``; a new token scoring over ``thresholds [M]`` (inf: never) ends its row."""
    B, P = tokens.shape
    M = len(fns)
    cache = model.init_cache(B, P + capacity)
    positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0).astype(jnp.int32)
    hk = HookRunner(resolved)
    logits, cache = model.forward(tokens, hk, attention_mask=mask, positions=positions, kv=cache)
    V = logits.shape[-1]
    new = jnp.full((B, capacity), pad, jnp.int32)
    dists = jnp.zeros((B, capacity if return_logits else 0, V), logits.dtype)
    scores = jnp.full((M, B, P + capacity), jnp.nan, jnp.float32)
    if M:
        scores = scores.at[:, :, :P].set(_monitor_scores(fns, sources, hooks, hk.cache, mask.astype(bool)))

    def live(carry):
        i, _, _, _, done, _, _, _, _ = carry
        # with return_logits every step is kept, as the distributions after a stop are returned too
        return (i < n_new) & (return_logits | ~jnp.all(done))

    def step(carry):
        i, cache, last, pos, done, key, new, dists, scores = carry
        key, sub = jax.random.split(key)
        tok = jnp.where(done, pad, _sample(last, sub, greedy, temperature, top_k, top_p))
        new = jax.lax.dynamic_update_index_in_dim(new, tok, i, axis=1)
        if return_logits:
            dists = jax.lax.dynamic_update_index_in_dim(dists, last, i, axis=1)
        finished = done | jnp.isin(tok, stop)

        def feed(cache):
            rows = (~done).astype(jnp.int32)[:, None]
            hk = HookRunner(resolved)
            logits, cache = model.forward(tok[:, None], hk, attention_mask=rows, positions=pos[:, None], kv=cache)
            return cache, logits[:, -1], hk.cache

        if M:  # a monitor reads every new token, the last one included
            cache, last, captured = feed(cache)
            s = _monitor_scores(fns, sources, hooks, captured, ~done[:, None])
            scores = jax.lax.dynamic_update_slice_in_dim(scores, s, P + i, axis=2)
            finished = finished | jnp.any(s[:, :, 0] > thresholds[:, None], axis=0)
        else:  # the last new token is only drawn, never fed back
            cache, last = jax.lax.cond(i + 1 < n_new, lambda c: feed(c)[:2], lambda c: (c, last), cache)
        return i + 1, cache, last, pos + 1, finished, key, new, dists, scores

    init = (jnp.int32(0), cache, logits[:, -1], positions[:, -1] + 1, jnp.zeros((B,), bool), key, new, dists, scores)
    *_, new, dists, scores = jax.lax.while_loop(live, step, init)
    return new, dists, scores


def generate(model, prompts, max_new_tokens: int = 32, *, temperature: float = 0.0, top_k: int | None = None,
             top_p: float = 1.0, seed: int = 0, stop_tokens: Sequence[int] | int | None = None, edits=(),
             splices=(), attention_mask=None, return_logits: bool = False, monitors=()) -> Generation:
    """Continue ``prompts`` (a string, a list of strings, or ids ``[B, P]`` with an optional left-padding
    ``attention_mask``) by ``max_new_tokens`` tokens (0 returns the prompts). See the module docstring.

    ``temperature``: 0 is greedy, else a finite positive number; ``top_k``: the most likely tokens kept when
    sampling, 1..vocab (None or 0: all); ``top_p``: in (0, 1]; ``seed``: an int. The prompt and the new tokens
    together must fit the model's context (``model.n_ctx``). ``monitors``: :class:`interp.probes.Monitor` objects
    (anything with ``name``, ``hook``, ``threshold``, ``stop``, ``check(model)`` and ``scorer() -> (fn, source)``,
    ``fn(source, activations [B, T, ...]) -> [B, T]`` pure and jittable); each scores every token read or written.
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
    monitors = list(monitors)
    names = [mon.name for mon in monitors]
    if len(set(names)) < len(names):
        raise ValueError(f"monitor names must differ, got {names}; give each a name (Monitor(..., name=...))")
    for mon in monitors:
        mon.check(model)  # its hook exists, its probe belongs to this model
    scorers = [mon.scorer() for mon in monitors]
    fns = tuple(EditFn(fn) for fn, _ in scorers)
    sources = tuple(source for _, source in scorers)
    hooks = tuple(mon.hook for mon in monitors)
    thresholds = to_device([mon.threshold if mon.stop and mon.threshold is not None else np.inf
                            for mon in monitors] or [np.inf], np.float32)
    resolved = model._with_context_edits(Hooks(capture=hooks, edits=edits, splices=splices)).resolve(model.hook_names)
    stop = to_device(list(stop_tokens) or [-1], np.int32)
    P = tokens.shape[1]
    scores = np.zeros((len(monitors), len(m), P + max_new_tokens), np.float32)
    if max_new_tokens or monitors:
        # the prompt is left-padded to its length bucket and the new tokens get a bucket of slots, so prompts
        # of new lengths and new max_new_tokens reuse the compiled program (edits see the padded prompt)
        padded = bucket_length(P)
        capacity = bucket_length(max(max_new_tokens, 1))
        tokens_in = np.pad(np.asarray(tokens), [(0, 0), (padded - P, 0)], constant_values=pad)
        mask_in = np.pad(m, [(0, 0), (padded - P, 0)])
        new, dists, scores = _generate(model, to_device(tokens_in, np.int32), to_device(mask_in, np.int32), resolved,
                                       jax.random.key(seed), to_device(max(temperature, 1e-6), np.float32),
                                       to_device(top_k or model.d_vocab, np.int32), to_device(top_p, np.float32), stop,
                                       to_device(pad, np.int32), to_device(max_new_tokens, np.int32), capacity,
                                       temperature == 0.0, return_logits, sources, thresholds, fns, hooks)
        check_hook_leaks()
        new = np.asarray(new)[:, :max_new_tokens]
        dists = np.asarray(dists)[:, :max_new_tokens]
        scores = np.asarray(scores)[:, :, padded - P: padded + max_new_tokens]
    else:
        new, dists = np.zeros((len(m), 0), np.int32), np.zeros((len(m), 0, model.d_vocab), np.float32)
    stops = np.isin(new, list(stop_tokens)) if stop_tokens else np.zeros(new.shape, bool)
    first = np.where(stops.any(1), stops.argmax(1) + 1, new.shape[1]) if new.shape[1] else np.zeros(len(new), int)
    stopped_by = _monitor_stops(monitors, scores[:, :, P:], first) if monitors else None
    if stopped_by is not None:
        first = np.array([n if by is None else by[1] for n, by in zip(first, stopped_by)])
        stopped_by = [None if by is None else by[0] for by in stopped_by]
    texts = None
    if model.tokenizer is not None:
        texts = [model.to_string([int(t) for t in row[: n - int(stops[i, n - 1])]]) if n else ""
                 for i, (row, n) in enumerate(zip(new, first))]
    full = np.concatenate([np.asarray(tokens), new], axis=1)
    mask_full = np.concatenate([m, (np.arange(new.shape[1])[None] < first[:, None]).astype(m.dtype)], axis=1)
    str_tokens = [token_strings(model, row) for row in full] if monitors else None
    return Generation(full, mask_full, new, first, texts, np.asarray(dists) if return_logits else None,
                      {mon.name: scores[k] for k, mon in enumerate(monitors)},
                      {mon.name: mon.threshold for mon in monitors}, stopped_by, str_tokens)


def _monitor_stops(monitors, new_scores, first) -> list[tuple[str, int] | None]:
    """For each row, the first stopping monitor to fire on a new token before the row's stop token, and the row's
    length then, else None (the loop compared the same float32 scores, so it stopped there too)."""
    out: list[tuple[str, int] | None] = [None] * len(first)
    for k, mon in enumerate(monitors):
        if not mon.stop or mon.threshold is None:
            continue
        with np.errstate(invalid="ignore"):
            fired = new_scores[k] > np.float32(mon.threshold)
        for b in np.flatnonzero(fired.any(axis=1)):
            n = int(fired[b].argmax()) + 1
            if n <= first[b] and (out[b] is None or n < out[b][1]):
                out[b] = (mon.name, n)
    return out
