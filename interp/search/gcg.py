"""Greedy coordinate gradient (GCG, Zou et al. 2023): search a span of input tokens for an objective.

Each step takes the gradient of the loss with respect to the one-hot tokens of the span (an exact zero-valued
term on ``hook_embed`` carries it, so the forward is the model's own), keeps the ``topk`` most promising
replacements at each position among the allowed tokens, samples ``batch`` candidates that each swap
``n_replace`` positions, evaluates them all and moves to the best. Two compiled programs serve a whole search
(the gradient at ``[1, T]`` and the candidate batch at ``[chunk, T]``), whatever the number of steps or restarts.

Axis letters: C candidates, T position, D model, V vocabulary, n span tokens, k candidates per position.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from interp.results import Result, Summary
from interp.search.objectives import Contrast, Objective, check_same_vocabulary, logits_at

__all__ = ["SearchResult", "allowed_tokens", "gcg", "layout", "losses", "token_gradient"]

SPAN_KINDS = ("suffix", "prefix", "slot")
SLOT = "{span}"


# ----------------------------------------------------------------------------------------------- compiled parts
def _evaluate(model, objective: Objective, tokens, start: int, n: int, donehot=None, fluency: bool = True):
    """``(objective loss [B], span NLL [B], success [B])``; a :class:`Contrast` subtracts its baseline's loss (the
    span NLL and success are the searched model's). ``donehot [n V]``: a zero-valued one-hot whose gradient is the
    token gradient (None: no gradient asked)."""
    if isinstance(objective, Contrast):
        loss, flu, success = _evaluate_one(model, objective.inner, tokens, start, n, donehot, fluency)
        base_loss, _, _ = _evaluate_one(objective.baseline, objective.inner, tokens, start, n, donehot, False)
        return loss - objective.weight * base_loss, flu, success
    return _evaluate_one(model, objective, tokens, start, n, donehot, fluency)


def _evaluate_one(model, objective: Objective, tokens, start: int, n: int, donehot=None, fluency: bool = True):
    """One model's ``(loss, span NLL, success)``; the forward stops after the objective's hook unless the span's own
    log-probability (``fluency``) needs the logits."""
    hook, captured = objective.hook(), {}
    delta = None
    if donehot is not None:
        e = donehot @ model.embed.W_E  # zero in value; its gradient is the token gradient
        if model.embed.scale is not None:
            e = e * jnp.asarray(model.embed.scale, e.dtype)
        delta = jnp.zeros((1, tokens.shape[1], e.shape[1]), e.dtype).at[0, start:start + n].set(e)

    def hk(name, x):
        if delta is not None and name == "hook_embed":
            x = x + delta.astype(x.dtype)
        if name == hook:
            captured["acts"] = x
        return x

    stop = None if fluency else objective.stop_layer(model.n_layers)
    resid = model.forward(tokens, hk, stop_at_layer=model.n_layers if stop is None else stop)
    if hook is not None and hook.startswith("ln_final"):
        model.ln_final(resid, hk, "ln_final")
    loss, success = objective.evaluate(model, resid, captured.get("acts"), tokens)
    B = tokens.shape[0]
    idx = np.arange(max(start, 1), start + n)  # span tokens that have a previous token to predict them
    if not fluency or idx.size == 0:
        return loss, jnp.zeros((B,), jnp.float32), success
    logp = jax.nn.log_softmax(logits_at(model, resid, jnp.asarray(idx - 1)), axis=-1)
    picked = jnp.take_along_axis(logp, tokens[:, idx][..., None], axis=-1)[..., 0]
    return loss, -picked.mean(axis=-1), success


@eqx.filter_jit
def _candidates_loss(model, objective, tokens, start, n, weight, fluency):
    loss, flu, success = _evaluate(model, objective, tokens, start, n, fluency=fluency)
    return loss + weight * flu, loss, flu, success


@eqx.filter_jit
def _gradient(model, objective, tokens, start, n, weight, fluency):
    W_E = model.embed.W_E

    def total(onehot):
        donehot = onehot - jax.lax.stop_gradient(onehot)
        loss, flu, _ = _evaluate(model, objective, tokens, start, n, donehot, fluency)
        return (loss + weight * flu).sum()

    onehot = jax.nn.one_hot(tokens[0, start:start + n], W_E.shape[0], dtype=W_E.dtype)
    return jax.grad(total)(onehot)


@eqx.filter_jit
def _top_candidates(grad, penalty, k):
    return jax.lax.top_k(-(grad.astype(jnp.float32) + penalty), k)[1]


# ----------------------------------------------------------------------------------------------- public pieces
@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the span sits: ``before`` + span of ``n`` + ``after`` + the objective's appended tokens."""

    before: np.ndarray
    n: int
    after: np.ndarray
    appended: np.ndarray

    @property
    def start(self) -> int:
        return len(self.before)

    @property
    def length(self) -> int:
        return len(self.before) + self.n + len(self.after) + len(self.appended)

    def tokens(self, spans: np.ndarray) -> np.ndarray:
        """Full inputs ``[C, T]`` for span ids ``[C, n]``."""
        spans = np.atleast_2d(np.asarray(spans, np.int32))
        C = spans.shape[0]
        parts = [np.broadcast_to(a, (C, len(a))) for a in (self.before, self.after, self.appended)]
        return np.concatenate([parts[0], spans, parts[1], parts[2]], axis=1).astype(np.int32)


def layout(model, objective: Objective, prompt: str | Sequence[int] = "", span: str | int = "suffix:20") -> Layout:
    """Place a span (``"suffix:N"``, ``"prefix:N"``, or ``"slot:N"`` where ``prompt`` holds ``{span}`` once) in
    ``prompt`` (text, or token ids for suffix/prefix) before the objective's appended tokens."""
    kind, n = _parse_span(span)
    if isinstance(prompt, str):
        if kind == "slot":
            if prompt.count(SLOT) != 1:
                raise ValueError(f"span 'slot:{n}' needs the prompt to hold {SLOT} exactly once (found "
                                 f"{prompt.count(SLOT)}): write e.g. 'Tell me {SLOT} about Paris'")
            before_text, after_text = prompt.split(SLOT)
        elif kind == "suffix":
            before_text, after_text = prompt, ""
        else:
            before_text, after_text = "", prompt
        tok = model.tokenizer
        if tok is None and (before_text or after_text):
            raise ValueError("this model has no tokenizer, so a text prompt cannot be encoded; pass token ids")
        before = tok.encode(before_text) if tok is not None else []  # the checkpoint's BOS rule applies here
        after = tok.encode(after_text, prepend_bos=False) if tok is not None and after_text else []
    else:
        if kind == "slot":
            raise ValueError("span 'slot:N' needs a text prompt holding {span}; with token ids use suffix or prefix")
        ids = [int(i) for i in prompt]
        before, after = (ids, []) if kind == "suffix" else ([], ids)
    lay = Layout(np.asarray(before, np.int32), n, np.asarray(after, np.int32),
                 np.asarray(objective.appended(), np.int32))
    bad = [i for i in np.concatenate([lay.before, lay.after]) if not 0 <= i < model.d_vocab]
    if bad:
        raise ValueError(f"prompt id {bad[0]} is outside this model's vocabulary 0..{model.d_vocab - 1}")
    ctx = model.n_ctx
    if ctx is not None and lay.length > ctx:
        raise ValueError(f"a span of {n} tokens with {len(lay.before) + len(lay.after)} prompt and "
                         f"{len(lay.appended)} target tokens takes {lay.length} positions, more than this model's "
                         f"context of {ctx}; shorten the span to at most {ctx - lay.length + n}")
    return lay


def _parse_span(span: str | int) -> tuple[str, int]:
    if isinstance(span, (int, np.integer)):
        kind, count = "suffix", str(int(span))
    else:
        kind, _, count = str(span).partition(":")
    if kind not in SPAN_KINDS or not count.strip().isdigit() or int(count) < 1:
        raise ValueError(f"span {span!r} is not understood; write KIND:N with KIND one of {', '.join(SPAN_KINDS)} "
                         "and N >= 1 tokens, e.g. 'suffix:10'")
    return kind, int(count)


@functools.lru_cache(maxsize=8)
def _printable_tokens(tokenizer, V: int, ascii_only: bool) -> np.ndarray:
    hf = tokenizer.hf
    special = {i for i, t in hf.get_added_tokens_decoder().items() if t.special}
    special |= {i for i in (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) if i is not None}
    texts = [hf.decode([i], skip_special_tokens=False) for i in range(V)]
    again = hf.encode_batch(texts, add_special_tokens=False)
    ok = np.zeros(V, bool)
    for i, (t, e) in enumerate(zip(texts, again)):
        ok[i] = (i not in special and bool(t) and t.isprintable() and (t.isascii() or not ascii_only)
                 and e.ids == [i])
    return ok


def allowed_tokens(model, *, ascii_only: bool = True) -> Bool[np.ndarray, " V"]:
    """The default allowed set ``[V]``: no special tokens, and text that is printable (ASCII when ``ascii_only``) and
    encodes back to the same single token. Every token for a model without a tokenizer."""
    if model.tokenizer is None:
        return np.ones(model.d_vocab, bool)
    return _printable_tokens(model.tokenizer, model.d_vocab, ascii_only).copy()


def _allowed_mask(model, allowed) -> np.ndarray:
    V = model.d_vocab
    if allowed is None:
        mask = allowed_tokens(model)
    else:
        a = np.asarray(allowed)
        if a.dtype == bool:
            if a.shape != (V,):
                raise ValueError(f"an allowed-token mask must have shape ({V},) (the vocabulary); got {a.shape}")
            mask = a.copy()
        else:
            ids = a.reshape(-1).astype(np.int64)
            bad = ids[(ids < 0) | (ids >= V)]
            if bad.size:
                raise ValueError(f"allowed token id {int(bad[0])} is outside this model's vocabulary 0..{V - 1}")
            mask = np.zeros(V, bool)
            mask[ids] = True
    if not mask.any():
        raise ValueError("the allowed-token set is empty, so there is nothing to search over; pass allowed=None for "
                         "the default (printable text tokens) or list some token ids")
    return mask


def losses(model, objective: Objective, tokens: Int[Array, "C T"], *, start: int, n: int,
           fluency: float = 0.0) -> dict[str, np.ndarray]:
    """The search's own numbers for full inputs ``[C, T]`` (span at ``start`` of length ``n``): ``total``
    (objective + ``fluency`` x span NLL), ``objective``, ``fluency`` (mean NLL of the span tokens, nats) and
    ``success``."""
    w = jnp.asarray(fluency, jnp.float32)
    out = _candidates_loss(model, objective, jnp.asarray(tokens, jnp.int32), start, n, w, True)
    return dict(zip(("total", "objective", "fluency", "success"), (np.asarray(o) for o in out)))


def token_gradient(model, objective: Objective, tokens: Int[Array, "1 T"], *, start: int, n: int,
                   fluency: float = 0.0) -> Float[Array, "n V"]:
    """Gradient of the total loss with respect to the one-hot tokens of the span ``[n, V]``."""
    w = jnp.asarray(fluency, jnp.float32)
    return _gradient(model, objective, jnp.asarray(tokens, jnp.int32), start, n, w, fluency != 0)


# ----------------------------------------------------------------------------------------------- the result
@dataclasses.dataclass(frozen=True)
class SearchResult(Result):
    """What a search found. ``tokens``: the best span ``[n]``; ``text``: it as text (None without a tokenizer);
    ``input``: the whole input it sits in (appended target tokens excluded) and ``input_text``; ``loss`` (total),
    ``objective`` and ``fluency`` (span NLL, nats/token) of the best; ``success``; ``history``: per restart, the
    loss of the candidate each step moved to, and ``step_seconds`` when each step ended (since the start);
    ``seconds``, ``seconds_to_success`` (None: never)."""

    tokens: np.ndarray
    text: str | None
    input: np.ndarray
    input_text: str | None
    loss: float
    objective: float
    fluency: float
    fluency_weight: float
    success: bool
    history: tuple
    step_seconds: tuple
    steps: int
    restart: int
    seconds: float
    seconds_to_success: float | None
    description: str = ""

    def _summary(self) -> Summary:
        facts = {"success": self.success, "loss": self.loss, "objective": self.objective,
                 "span NLL": self.fluency, "steps": self.steps, "seconds": round(self.seconds, 2)}
        if self.seconds_to_success is not None:
            facts["seconds to success"] = round(self.seconds_to_success, 2)
        top = [("span", repr(self.text) if self.text is not None else " ".join(map(str, self.tokens.tolist())))]
        if self.input_text is not None:
            top.append(("input", repr(self.input_text)))
        return Summary(f"GCG search: {self.description}", {"span": len(self.tokens), "restarts": len(self.history)},
                       facts, top, "best")

    def to_dict(self) -> dict:
        """Plain JSON-ready values."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["tokens"], d["input"] = self.tokens.tolist(), self.input.tolist()
        d["history"] = [list(map(float, h)) for h in self.history]
        d["step_seconds"] = [[round(t, 4) for t in h] for h in self.step_seconds]
        return d


# ----------------------------------------------------------------------------------------------- the search
def gcg(
    model,
    objective: Objective,
    prompt: str | Sequence[int] = "",
    *,
    span: str | int = "suffix:20",
    steps: int = 200,
    topk: int = 256,
    batch: int = 512,
    chunk: int | None = None,
    n_replace: int = 1,
    allowed=None,
    fluency: float = 0.0,
    restarts: int = 1,
    init: str | Sequence[int] | None = None,
    seed: int = 0,
    stop_on_success: bool = True,
    stop_loss: float | None = None,
    retokenize: bool = True,
    progress: bool = True,
) -> SearchResult:
    """Search the span for the lowest ``objective`` loss (plus ``fluency`` x the span's own NLL under the model).

    ``prompt``/``span``: see :func:`layout`. ``topk``: replacements kept per position from the gradient; ``batch``:
    candidates per step, evaluated ``chunk`` at a time (default: all at once); ``allowed``: a bool mask ``[V]`` or
    token ids (default :func:`allowed_tokens`). ``restarts``: independent runs (restart 0 starts from ``init`` when
    given, the others from random allowed tokens); the best over all is returned. A run stops early when a candidate
    succeeds (``stop_on_success``) or reaches ``stop_loss``. ``retokenize``: drop candidates whose text encodes to
    other tokens, so the found text means what the ids do. The same ``seed`` gives the same result.
    """
    from interp.checks import out_of_range

    for name, value, lo in (("steps", steps, 1), ("topk", topk, 1), ("batch", batch, 1), ("n_replace", n_replace, 1),
                            ("restarts", restarts, 1), ("chunk", chunk or 1, 1)):
        problem = out_of_range(value, lo, integer=True)
        if problem:
            raise ValueError(f"{name}={value} {problem}")
    if not isinstance(objective, Objective):
        raise TypeError(f"objective must be an interp.search Objective (see interp.search.objective); got "
                        f"{type(objective).__name__}")
    if not np.isfinite(fluency) or fluency < 0:
        raise ValueError(f"fluency={fluency} must be a finite weight >= 0")
    if isinstance(objective, Contrast):
        check_same_vocabulary(model, objective.baseline)
    lay = layout(model, objective, prompt, span)
    n, start = lay.n, lay.start
    if n_replace > n:
        raise ValueError(f"n_replace={n_replace} exceeds the span's {n} tokens")
    mask = _allowed_mask(model, allowed)
    k = min(topk, int(mask.sum()))
    chunk = min(chunk or batch, batch)
    n_chunks = -(-batch // chunk)
    penalty = jnp.asarray(np.where(mask, 0.0, np.inf), jnp.float32)
    weight, use_flu = jnp.asarray(fluency, jnp.float32), fluency != 0
    tok = model.tokenizer if retokenize else None
    init_ids = _init_ids(model, init, n, mask)
    allowed_ids = np.flatnonzero(mask)

    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    best = (True, np.inf, None, 0)  # (not success, loss, span ids, restart)
    history, times, t_success, total_steps = [], [], None, 0
    bar = tqdm(total=restarts * steps, desc="gcg", disable=not progress, leave=False)
    for r in range(restarts):
        rng = np.random.default_rng([seed, r])
        ids = init_ids.copy() if (r == 0 and init_ids is not None) else rng.choice(allowed_ids, n).astype(np.int32)
        hist, when = [], []
        for _ in range(steps):
            grad = _gradient(model, objective, jax.device_put(lay.tokens(ids)), start, n, weight, use_flu)
            top = np.asarray(_top_candidates(grad, penalty, k))
            cands = _sample(rng, ids, top, n_chunks * chunk, n_replace)
            if tok is not None:
                cands[~_round_trips(tok, cands)] = ids
            full = lay.tokens(cands)
            outs = [_candidates_loss(model, objective, jax.device_put(full[i * chunk:(i + 1) * chunk]), start, n,
                                     weight, use_flu) for i in range(n_chunks)]
            total, _, _, succ = (np.concatenate([np.asarray(o[j]) for o in outs]) for j in range(4))
            total = np.where(np.isfinite(total), total, np.inf)
            j = int(np.argmin(np.where(succ, total, np.inf))) if succ.any() else int(np.argmin(total))
            ids = cands[j].copy()
            hist.append(float(total[j]))
            when.append(time.perf_counter() - t0)
            total_steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{total[j]:.3f}", restart=r)
            if (not succ[j], total[j]) < best[:2]:
                best = (not bool(succ[j]), float(total[j]), ids.copy(), r)
            if succ[j] and t_success is None:
                t_success = time.perf_counter() - t0
            if (succ[j] and stop_on_success) or (stop_loss is not None and total[j] <= stop_loss):
                break
        history.append(tuple(hist))
        times.append(tuple(when))
        if (not best[0] and stop_on_success) or (stop_loss is not None and best[1] <= stop_loss):
            break
    bar.close()
    seconds = time.perf_counter() - t0
    final = losses(model, objective, lay.tokens(best[2]), start=start, n=n, fluency=fluency)
    full = lay.tokens(best[2])[0, :lay.length - len(lay.appended)]
    text = model.to_string(best[2]) if model.tokenizer is not None else None
    return SearchResult(
        tokens=best[2], text=text, input=full,
        input_text=model.to_string(full) if model.tokenizer is not None else None,
        loss=float(final["total"][0]), objective=float(final["objective"][0]), fluency=float(final["fluency"][0]),
        fluency_weight=float(fluency), success=bool(final["success"][0]), history=tuple(history),
        step_seconds=tuple(times), steps=total_steps, restart=best[3], seconds=seconds, seconds_to_success=t_success,
        description=objective.describe(model))


def _init_ids(model, init, n: int, mask: np.ndarray) -> np.ndarray | None:
    if init is None:
        return None
    if isinstance(init, str):
        if model.tokenizer is None:
            raise ValueError("this model has no tokenizer, so a text init cannot be encoded; pass token ids")
        ids = model.tokenizer.encode(init, prepend_bos=False)
    else:
        ids = [int(i) for i in init]
    if len(ids) != n:
        raise ValueError(f"init has {len(ids)} tokens but the span has {n}; give an init of exactly {n} tokens")
    ids = np.asarray(ids, np.int32)
    if ((ids < 0) | (ids >= len(mask))).any():
        raise ValueError(f"init ids must lie in this model's vocabulary 0..{len(mask) - 1}")
    return ids


def _sample(rng: np.random.Generator, ids: np.ndarray, top: np.ndarray, C: int, r: int) -> np.ndarray:
    """``C`` candidates ``[C, n]``: each replaces ``r`` distinct positions by one of that position's top tokens."""
    n, k = top.shape
    pos = np.argsort(rng.random((C, n)), axis=1)[:, :r] if r > 1 else rng.integers(0, n, (C, 1))
    vals = top[pos, rng.integers(0, k, (C, r))]
    cands = np.repeat(ids[None], C, axis=0)
    np.put_along_axis(cands, pos, vals, axis=1)
    return cands


def _round_trips(tokenizer, cands: np.ndarray) -> np.ndarray:
    hf = tokenizer.hf
    texts = hf.decode_batch(cands.tolist(), skip_special_tokens=False)
    again = hf.encode_batch(texts, add_special_tokens=False)
    return np.array([e.ids == c for e, c in zip(again, cands.tolist())], bool)
