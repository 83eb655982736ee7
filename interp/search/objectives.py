"""What an input search optimizes: a loss per input (lower is better) and whether the input already succeeds.

An objective is an equinox module: its arrays (target ids, a dictionary's weights) are traced, so a new target of
the same length or a new latent reuses the compiled search programs. It reads either the final residual stream
(``resid [B T D]``, before the final norm; :func:`logits_at` turns chosen positions into logits) or the
activation at one hook point (``acts [B T ...]``), and returns ``(loss [B], success [B])``.

Axis letters: B batch (candidate inputs), T position, D model, V vocabulary, M dictionary latents, N target tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from interp.hooks import NOOP, layer_of, suggest

__all__ = ["REGISTRY", "Contrast", "LatentObjective", "LogProbObjective", "Negated", "Objective", "ScoreObjective",
           "contrast", "latent", "logits_at", "logprob", "make", "negate", "score"]


def logits_at(model, resid: Float[Array, "B T D"], idx: Int[Array, " N"]) -> Float[Array, "B N V"]:
    """Logits at positions ``idx`` only, from the residual stream before the final norm (the norm is per position,
    so unembedding a few positions gives the same values as the full forward there, without ``[B T V]``)."""
    x = model.ln_final(resid[:, idx], NOOP, "ln_final")
    return model.unembed_logits(x).astype(jnp.float32)


class Objective(eqx.Module):
    """Base of the objectives. ``hook``: the hook point whose activation ``evaluate`` reads (None: the final
    residual stream). ``appended``: token ids placed after the searched input (a target continuation)."""

    def hook(self) -> str | None:
        return None

    def appended(self) -> Int[Array, " N"]:
        return jnp.zeros((0,), jnp.int32)

    def stop_layer(self, n_layers: int) -> int | None:
        """Blocks from this one on need not run (None: run them all)."""
        layer = layer_of(self.hook() or "")
        return None if layer is None or self.hook() is None else min(layer + 1, n_layers)

    def evaluate(self, model, resid, acts, tokens: Int[Array, "B T"]) -> tuple[Float[Array, " B"], Bool[Array, " B"]]:
        raise NotImplementedError

    def describe(self, model) -> str:
        return type(self).__name__


class LogProbObjective(Objective):
    """Raise the log-probability of ``target`` right after the input: loss = mean cross-entropy over the target
    tokens (nats/token); success = greedy decoding would emit the whole target (every target token is the argmax)."""

    target: Int[Array, " N"]

    def appended(self) -> Int[Array, " N"]:
        return self.target

    def evaluate(self, model, resid, acts, tokens):
        T, N = tokens.shape[1], self.target.shape[0]
        logits = logits_at(model, resid, jnp.arange(T - N - 1, T - 1))
        logp = jax.nn.log_softmax(logits, axis=-1)
        picked = jnp.take_along_axis(logp, jnp.broadcast_to(self.target, logits.shape[:2])[..., None], axis=-1)[..., 0]
        success = jnp.all(jnp.argmax(logits, axis=-1) == self.target, axis=-1)
        return -picked.mean(axis=-1), success

    def describe(self, model) -> str:
        return f"log-probability of {_text(model, self.target)}"


class ScoreObjective(Objective):
    """Raise ``fn(acts) -> [B]`` (for instance a probe's score) computed from the activation at ``hook_name``
    ``[B T ...]``: loss = -score; success = score above ``threshold``."""

    fn: Callable = eqx.field(static=True)
    hook_name: str = eqx.field(static=True)
    threshold: Float[Array, ""] = eqx.field(default_factory=lambda: jnp.asarray(jnp.inf, jnp.float32))

    def hook(self) -> str | None:
        return self.hook_name

    def evaluate(self, model, resid, acts, tokens):
        s = jnp.asarray(self.fn(acts), jnp.float32).reshape(tokens.shape[0])
        return -s, s > self.threshold

    def describe(self, model) -> str:
        return f"score {getattr(self.fn, '__name__', 'fn')} at {self.hook_name}"


class LatentObjective(Objective):
    """Raise dictionary latent ``latent`` at ``position`` (relative to the input; -1: its last token): loss = minus
    the latent's activation (``dictionary.encode`` of the activation at its ``hook_name``); success = activation
    above ``threshold``."""

    dictionary: eqx.Module
    latent: Int[Array, ""]
    position: int = eqx.field(static=True, default=-1)
    threshold: Float[Array, ""] = eqx.field(default_factory=lambda: jnp.asarray(jnp.inf, jnp.float32))

    def hook(self) -> str | None:
        return self.dictionary.cfg.hook_name

    def evaluate(self, model, resid, acts, tokens):
        z = self.dictionary.encode(acts[:, self.position].astype(jnp.float32))
        a = jnp.take(z, self.latent, axis=-1).astype(jnp.float32)
        return -a, a > self.threshold

    def describe(self, model) -> str:
        return f"latent {int(self.latent)} of {self.hook()} at position {self.position}"


class Negated(Objective):
    """Lower what ``inner`` raises (suppress a behaviour): loss = -inner loss; success = inner does not succeed."""

    inner: Objective

    def hook(self) -> str | None:
        return self.inner.hook()

    def appended(self) -> Int[Array, " N"]:
        return self.inner.appended()

    def evaluate(self, model, resid, acts, tokens):
        loss, success = self.inner.evaluate(model, resid, acts, tokens)
        return -loss, ~success

    def describe(self, model) -> str:
        return f"lower {self.inner.describe(model)}"


class Contrast(Objective):
    """``inner`` on the searched model minus ``weight`` x ``inner`` on a ``baseline`` model that shares its vocabulary
    (what the model does that the baseline does not: a fine-tuned model against its base). The search runs both
    models on the same tokens and takes the gradient through both; success is ``inner``'s success on the searched
    model. Built by :func:`contrast`."""

    inner: Objective
    baseline: eqx.Module
    weight: float = eqx.field(static=True, default=1.0)

    def hook(self) -> str | None:
        return self.inner.hook()

    def appended(self) -> Int[Array, " N"]:
        return self.inner.appended()

    def stop_layer(self, n_layers: int) -> int | None:
        return self.inner.stop_layer(n_layers)

    def evaluate(self, model, resid, acts, tokens):
        raise TypeError("a Contrast runs two models, so it is evaluated by the search itself "
                        "(interp.search.losses / gcg), not from one model's activations")

    def describe(self, model) -> str:
        w = "" if self.weight == 1.0 else f"{self.weight:g} x "
        return f"{self.inner.describe(model)} minus {w}the same on the baseline model"


def _text(model, ids) -> str:
    ids = [int(i) for i in jnp.asarray(ids).reshape(-1)]
    return repr(model.to_string(ids)) if model.tokenizer is not None else f"ids {ids}"


def _threshold(threshold: float | None) -> Array:
    return jnp.asarray(jnp.inf if threshold is None else threshold, jnp.float32)


def logprob(model, target: str | list[int]) -> LogProbObjective:
    """Raise the log-probability of ``target`` (text, tokenized without BOS, or token ids) after the input."""
    if isinstance(target, str):
        if model.tokenizer is None:
            raise ValueError("this model has no tokenizer, so a text target cannot be encoded; pass token ids")
        ids = model.tokenizer.encode(target, prepend_bos=False)
        if not ids:
            raise ValueError(f"target {target!r} tokenizes to no tokens; give a target with at least one character "
                             "(for a next word, include its leading space: ' London')")
    else:
        ids = [int(i) for i in target]
        if not ids:
            raise ValueError("target is an empty list of token ids; give at least one id")
    bad = [i for i in ids if not 0 <= i < model.d_vocab]
    if bad:
        raise ValueError(f"target id {bad[0]} is outside this model's vocabulary 0..{model.d_vocab - 1}")
    return LogProbObjective(jnp.asarray(ids, jnp.int32))


def latent(model, dictionary, latent: int, *, position: int = -1, threshold: float | None = None) -> LatentObjective:
    """Raise latent ``latent`` of ``dictionary`` (any :class:`interp.sae.Dictionary`) at ``position``."""
    width = dictionary.cfg.width
    if not 0 <= int(latent) < width:
        raise ValueError(f"latent {latent} is outside this dictionary's {width} latents (0..{width - 1})")
    _check_hook(model, dictionary.cfg.hook_name)
    return LatentObjective(dictionary, jnp.asarray(int(latent), jnp.int32), int(position), _threshold(threshold))


def score(model, fn: Callable, hook_name: str, *, threshold: float | None = None) -> ScoreObjective:
    """Raise ``fn(acts [B T ...]) -> [B]`` of the activation at ``hook_name`` (e.g. a probe's score)."""
    _check_hook(model, hook_name)
    return ScoreObjective(fn, hook_name, _threshold(threshold))


def negate(objective: Objective) -> Objective:
    """Lower what ``objective`` raises (for a :class:`Contrast`: the contrast of the negated inner objective)."""
    if isinstance(objective, Contrast):
        return Contrast(Negated(objective.inner), objective.baseline, objective.weight)
    return Negated(objective)


def contrast(objective: Objective, baseline, *, model=None, weight: float = 1.0) -> Contrast:
    """``objective`` on the searched model minus ``weight`` x ``objective`` on ``baseline`` (e.g. a fine-tuned model
    against its base: spans that raise a continuation in the one and not in the other). ``baseline`` must share the
    searched model's vocabulary (and tokenizer); pass ``model`` to have that checked here rather than at the search."""
    if not isinstance(objective, Objective) or isinstance(objective, Contrast):
        raise TypeError(f"contrast takes a single-model interp.search Objective; got {type(objective).__name__}")
    if not (isinstance(weight, (int, float)) and weight == weight and abs(weight) != float("inf")):
        raise ValueError(f"weight={weight!r} must be a finite number")
    if model is not None:
        check_same_vocabulary(model, baseline)
    hook = objective.hook()
    if hook is not None:
        _check_hook(baseline, hook)
    return Contrast(objective, baseline, float(weight))


def check_same_vocabulary(model, baseline) -> None:
    """Refuse a baseline whose token ids mean something else than the model's (another vocabulary size, another
    tokenizer vocabulary, or a tokenizer on one side only)."""
    if model.d_vocab != baseline.d_vocab:
        raise ValueError(f"the baseline model has a vocabulary of {baseline.d_vocab} tokens and the searched model "
                         f"{model.d_vocab}: a contrast needs two models over the same token ids (a fine-tuned model "
                         "and its base)")
    a, b = model.tokenizer, baseline.tokenizer
    if (a is None) != (b is None):
        raise ValueError("one model has a tokenizer and the other none: give both models the same tokenizer")
    if a is not None and a is not b and a.hf.get_vocab(with_added_tokens=True) != b.hf.get_vocab(
            with_added_tokens=True):
        raise ValueError("the two models' tokenizers map text to different token ids: a contrast needs the same "
                         "tokenizer on both (a fine-tuned model and its base)")


def _check_hook(model, name: str) -> None:
    names = model.hook_names
    if name not in names:
        raise ValueError(f"unknown hook '{name}'{suggest(name, names)}")


REGISTRY: dict[str, Callable] = {"logprob": logprob, "latent": latent, "score": score}


def make(name: str, model, *args, **kwargs) -> Objective:
    """The objective registered as ``name`` (``logprob``, ``latent``, ``score``; ``not-NAME`` lowers it)."""
    negated = name.startswith("not-")
    base = name.removeprefix("not-")
    if base not in REGISTRY:
        raise ValueError(f"unknown objective {name!r}{suggest(base, REGISTRY)}; choose one of "
                         f"{', '.join(REGISTRY)} (prefix 'not-' to lower it instead)")
    obj = REGISTRY[base](model, *args, **kwargs)
    return negate(obj) if negated else obj
