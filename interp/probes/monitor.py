"""Monitors: a score for every token a model reads or writes, computed while it generates.

A :class:`Monitor` reads one hook point and maps its activation to one number per token: a probe's logit
(``Monitor(probe)``), a dictionary latent's activation (``Monitor.latent(sae, 123)``) or any pure function
(``Monitor(lambda x: x @ v, hook="blocks.6.hook_resid_post")``). Passed to ``model.generate(...,
monitors=[...])``, its scores are computed inside the compiled generation (no second forward) and come back as
``generation.monitor_scores[name] [B, P + N]``::

    m = Monitor(probe, name="deception").calibrate(model, clean_texts, fpr=0.01)
    out = model.generate(prompts, 64, monitors=[m.replace(stop=True)])
    out.flags("deception"), out.spans("deception"), out.stopped_by

``calibrate`` sets the threshold at a false-positive rate on clean text (a quantile of its per-token scores);
with ``stop=True`` a row ends when a new token's score passes it, while the other rows go on.

Axis letters: B batch, T positions, D features of the hook point.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable, Iterable

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, Float

from interp.checks import check_range
from interp.hooks import EditFn, Hooks, suggest
from interp.probes._hash import model_hash

__all__ = ["Monitor", "calibrated_threshold"]


def _probe_score(probe, x):
    return probe.score(x)


def _latent_score(dictionary, x, latent: int):
    return dictionary.encode(x)[..., latent]


def _function_score(fn, _source, x):
    return fn(x)


@eqx.filter_jit
def _apply(fn: EditFn, source, x):
    return fn(source, x)


class Monitor:
    """A per-token score at one hook point, with an optional threshold. Build one from

    - a probe: ``Monitor(probe)`` -- any object with ``hook: str``, a pure jittable ``score(acts [..., D]) ->
      [...]`` and ``model_hash`` (the weights hash of the model it was trained on, or None); a model whose hash
      differs is refused;
    - a dictionary latent: ``Monitor.latent(dictionary, latent)`` -- the latent's activation from the
      dictionary's ``encode`` at its hook (``dictionary.cfg.hook_name`` unless ``hook`` is given);
    - a function: ``Monitor(fn, hook=...)`` -- ``fn(activations [B, T, ...]) -> [B, T]``, pure and jittable.

    ``name`` labels its scores (``generation.monitor_scores[name]``); ``threshold`` (or :meth:`calibrate`) marks
    tokens over it (:meth:`flags`); ``stop=True`` ends a generating row when a new token passes it. A monitor is
    immutable: :meth:`calibrate` and :meth:`replace` return new ones.
    """

    def __init__(self, source, hook: str | None = None, *, name: str | None = None, threshold: float | None = None,
                 stop: bool = False):
        if callable(getattr(source, "score", None)) and isinstance(getattr(source, "hook", None), str):
            self.kind, self.hook = "probe", hook or source.hook
            self.source, self._fn = source, _probe_score
            self.model_hash = getattr(source, "model_hash", None)
            default = f"probe at {self.hook}"
        elif callable(source):
            if not hook:
                raise ValueError("a monitor built from a function needs the hook point it reads: "
                                 "Monitor(fn, hook='blocks.6.hook_resid_post')")
            self.kind, self.hook = "function", hook
            self.source, self._fn = None, functools.partial(_function_score, source)
            self.model_hash = None
            fname = getattr(source, "__name__", "")
            default = fname if fname and fname != "<lambda>" else f"score at {hook}"
        else:
            raise TypeError(f"a monitor reads a probe (with hook, score and model_hash), a dictionary latent "
                            f"(Monitor.latent) or a function of activations; got {type(source).__name__}")
        self._init_common(name or default, threshold, stop)

    def _init_common(self, name, threshold, stop) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a monitor's name must be a non-empty string, got {name!r}")
        if threshold is not None:
            check_range("threshold", threshold)
            threshold = float(threshold)
        if stop not in (True, False):
            raise ValueError(f"stop must be True or False, got {stop!r}")
        self.name, self.threshold, self.stop = name, threshold, bool(stop)
        self.fpr: float | None = None  # the target false-positive rate of the last calibration
        self.n_calibration: int = 0  # clean tokens it was calibrated on
        self._checked: tuple = (None, None)

    @classmethod
    def latent(cls, dictionary, latent: int, hook: str | None = None, *, name: str | None = None,
               threshold: float | None = None, stop: bool = False) -> Monitor:
        """A monitor of one dictionary latent: ``dictionary.encode(activation)[..., latent]`` at ``hook``
        (default: the dictionary's input hook, ``dictionary.cfg.hook_name``)."""
        width = int(dictionary.W_enc.shape[-1])
        check_range("latent", latent, 0, width - 1, integer=True, note=f" (the dictionary has {width} latents)")
        hook = hook or getattr(getattr(dictionary, "cfg", None), "hook_name", None)
        if not hook:
            raise ValueError("this dictionary names no hook point (cfg.hook_name); pass "
                             "Monitor.latent(dictionary, latent, hook='blocks.6.hook_resid_post')")
        self = cls.__new__(cls)
        self.kind, self.hook, self.model_hash = "latent", hook, None
        self.source, self._fn = dictionary, functools.partial(_latent_score, latent=int(latent))
        self._init_common(name or f"latent {int(latent)}", threshold, stop)
        return self

    def replace(self, **changes) -> Monitor:
        """A copy with ``name``, ``threshold`` or ``stop`` changed."""
        unknown = set(changes) - {"name", "threshold", "stop"}
        if unknown:
            raise TypeError(f"Monitor.replace changes name, threshold or stop; got {sorted(unknown)}")
        new = object.__new__(Monitor)
        new.__dict__.update(self.__dict__)
        new._init_common(changes.get("name", self.name), changes.get("threshold", self.threshold),
                         changes.get("stop", self.stop))
        new.fpr, new.n_calibration = self.fpr, self.n_calibration
        return new

    def __repr__(self) -> str:
        th = "no threshold" if self.threshold is None else f"threshold {self.threshold:.4g}"
        if self.fpr is not None:
            th += f" (fpr {self.fpr:g} on {self.n_calibration} clean tokens)"
        return f"Monitor({self.name!r}: {self.kind} at {self.hook}, {th}{', stops' if self.stop else ''})"

    # ----------------------------------------------------------------- what generation calls
    def scorer(self) -> tuple[Callable, object]:
        """``(fn, source)``: ``fn(source, activations [B, T, ...]) -> [B, T]``, pure; ``source`` is a pytree whose
        arrays are traced (the probe or dictionary), so a new probe of the same kind reuses compiled programs."""
        return self._fn, self.source

    def check(self, model) -> None:
        """Refuse a model this monitor cannot read: a hook point it lacks (with the nearest names), a hook whose
        positions are not its second axis, a probe trained on another model, a score of the wrong shape."""
        ref, _ = self._checked
        if ref is not None and ref() is model:
            return
        names = model.hook_names
        if self.hook not in names:
            raise ValueError(f"monitor {self.name!r} reads hook '{self.hook}', which this model lacks"
                             f"{suggest(self.hook, names)} (model.hook_names lists all {len(names)} hook points)")
        axes = model.position_axes().get(self.hook)
        if axes != (1,):
            raise ValueError(f"monitor {self.name!r} reads '{self.hook}', whose positions lie along axes {axes}; a "
                             "monitor scores each token, so it needs an activation shaped [batch, pos, ...] "
                             "(hook_resid_*, hook_*_out, hook_z, mlp.hook_post, ...)")
        if self.model_hash is not None:
            have = model_hash(model)
            if self.model_hash != have:
                raise ValueError(
                    f"monitor {self.name!r}: its probe was trained on a model with weights hash {self.model_hash}, "
                    f"but this model's weights hash (interp.weights.weights_hash) is {have}; its scores would mean "
                    "nothing here. Monitor with the model the probe was trained on, or train the probe again on "
                    "this model's activations")
        shape = model.hook_shapes()[self.hook]
        x = jax.ShapeDtypeStruct(shape, model.W_E.dtype)
        try:
            out = jax.eval_shape(lambda s, a: self._fn(s, a), self.source, x)
        except Exception as e:  # noqa: BLE001 - say which monitor failed and on what input
            raise ValueError(f"monitor {self.name!r}: its score function fails on activations of shape {shape} "
                             f"at '{self.hook}': {type(e).__name__}: {e}") from e
        if getattr(out, "shape", None) != shape[:2]:
            raise ValueError(f"monitor {self.name!r}: its score function returned shape {getattr(out, 'shape', out)} "
                             f"for activations of shape {shape} at '{self.hook}'; it must give one score per token, "
                             f"shape {shape[:2]} (reduce the feature axes of [batch, pos, ...])")
        self._checked = (weakref.ref(model), None)

    # ----------------------------------------------------------------- scores outside generation
    def score_tokens(self, model, tokens, attention_mask=None) -> Float[Array, "B T"]:
        """Per-token scores ``[B, T]`` from one full forward over ``tokens`` (ids ``[B, T]``, a string or a list
        of strings), NaN where ``attention_mask`` is 0. The forward stops after the monitor's layer."""
        self.check(model)
        tokens, attention_mask, _ = model.check_inputs(tokens, attention_mask, None)
        _, cache = model.run(tokens, Hooks(capture=[self.hook]), attention_mask=attention_mask, return_output=False)
        scores = np.asarray(_apply(EditFn(self._fn), self.source, cache[self.hook]), np.float32)
        if attention_mask is not None:
            scores = np.where(np.asarray(attention_mask).astype(bool), scores, np.nan)
        return scores

    def calibrate(self, model, clean, fpr: float = 0.01, *, window: int = 128, batch_size: int = 16) -> Monitor:
        """A copy of this monitor with its threshold at false-positive rate ``fpr`` on clean text: the
        ``1 - fpr`` quantile of the per-token scores of ``clean`` (a string, strings, or ids ``[N, T]``), read in
        windows of ``window`` tokens, ``batch_size`` windows per forward. Needs at least ``10 / fpr`` tokens, so
        that about ten or more clean tokens lie over the threshold."""
        check_range("fpr", fpr, 0, 1, lo_open=True, hi_open=True, note=" (the fraction of clean tokens flagged)")
        check_range("window", window, 1, integer=True)
        check_range("batch_size", batch_size, 1, integer=True)
        self.check(model)
        rows = _windows(model, clean, int(window))
        scores = []
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size]
            T = max(len(r) for r in chunk)
            ids = np.zeros((len(chunk), T), np.int32)
            mask = np.zeros((len(chunk), T), np.int32)
            for j, r in enumerate(chunk):
                ids[j, :len(r)], mask[j, :len(r)] = r, 1
            s = self.score_tokens(model, ids, mask)
            scores.append(s[mask.astype(bool)])
        scores = np.concatenate(scores)
        need = math.ceil(10 / fpr)
        if scores.size < need:
            raise ValueError(f"calibrating at fpr={fpr:g} needs at least {need} clean tokens (about ten over the "
                             f"threshold); got {scores.size}. Pass more clean text or a larger fpr")
        new = self.replace(threshold=calibrated_threshold(scores, fpr))
        new.fpr, new.n_calibration = float(fpr), int(scores.size)
        return new

    # ----------------------------------------------------------------- flags
    def flags(self, scores) -> np.ndarray:
        """Bool array: the tokens whose score is over the threshold (NaN never is). ``scores``: an array, or a
        ``Generation`` made with this monitor (its ``monitor_scores[self.name]``)."""
        if self.threshold is None:
            raise ValueError(f"monitor {self.name!r} has no threshold; calibrate it (Monitor.calibrate) or give "
                             "one (Monitor(..., threshold=...))")
        s = _scores_of(self, scores)
        with np.errstate(invalid="ignore"):
            return s > np.float32(self.threshold)

    def spans(self, scores) -> list[list[tuple[int, int]]]:
        """For each row of ``scores [B, T]`` (or a ``Generation``), the runs ``(start, end)`` of flagged tokens
        (end exclusive)."""
        flags = np.atleast_2d(self.flags(scores))
        out = []
        for row in flags:
            edges = np.diff(np.concatenate([[0], row.astype(np.int8), [0]]))
            out.append(list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist())))
        return out


def _scores_of(monitor: Monitor, scores) -> np.ndarray:
    table = getattr(scores, "monitor_scores", None)
    if table is None:
        return np.asarray(scores, np.float32)
    if monitor.name not in table:
        raise KeyError(f"this generation has no scores of monitor {monitor.name!r}; it has {sorted(table)}")
    return np.asarray(table[monitor.name], np.float32)


def calibrated_threshold(scores: Float[np.ndarray, " N"], fpr: float) -> float:
    """The threshold over which a fraction ``fpr`` of clean ``scores`` lies: their ``1 - fpr`` quantile (the
    next observed score above it, so that the calibration tokens themselves are flagged at most at ``fpr``).
    NaN scores (padding) are left out."""
    check_range("fpr", fpr, 0, 1, lo_open=True, hi_open=True, note=" (the fraction of clean tokens flagged)")
    s = np.asarray(scores, np.float64).reshape(-1)
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise ValueError("no clean scores to calibrate on (empty, or all NaN)")
    return float(np.quantile(s, 1.0 - fpr, method="higher"))


def _windows(model, clean, window: int) -> list[np.ndarray]:
    """Rows of at most ``window`` token ids from a string, strings, or ids ``[N, T]`` / a list of ``[T]``."""
    if isinstance(clean, str):
        clean = [clean]
    if isinstance(clean, np.ndarray) or isinstance(clean, jax.Array):
        clean = list(np.asarray(clean).reshape(-1, np.asarray(clean).shape[-1]))
    items = list(clean) if isinstance(clean, Iterable) else None
    if items is None:
        raise TypeError(f"clean text must be a string, strings or token ids; got {type(clean).__name__}")
    rows = []
    for item in items:
        if isinstance(item, str):
            if not item.strip():
                continue
            ids = np.asarray(model.to_tokens(item))[0]
        else:
            ids = np.asarray(item, np.int64).reshape(-1)
        rows += [ids[i:i + window] for i in range(0, len(ids), window)]
    if not rows:
        raise ValueError("the clean text is empty: calibration needs clean text (strings or token ids) whose "
                         "per-token scores set the threshold")
    return rows
