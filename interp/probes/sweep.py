"""A probe for every layer at once: k-fold cross-validated accuracy and AUROC per hook, one compiled call.

The layers' activations are stacked ``[L, N, D]``; folds are row masks ``[K+1, N]`` (the last one keeps every row,
for the probes fitted on all data), and the fit runs under ``vmap`` over masks and ``vmap`` over layers. Metrics are
computed from the held-out logits of each fold, on the host. Axis letters: L hooks, K folds, N examples, D features.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from interp.hooks import layer_of
from interp.probes import _fit
from interp.probes.fit import KINDS, accuracy, auroc, check_activations, check_labels, check_options, kfold
from interp.probes.probe import Probe
from interp.results import Result, Summary

__all__ = ["SweepResult", "sweep", "fit_masked"]


@dataclasses.dataclass(frozen=True, eq=False)
class SweepResult(Result):
    """Cross-validated probe quality per hook: ``accuracy [L]``, ``auroc [L]`` (means over ``folds`` folds) and
    their standard deviations over folds; ``probes[l]`` is the probe of hook ``l`` fitted on every row. ``groups``:
    how many groups the folds kept whole (None: folds by row)."""

    hooks: tuple[str, ...]
    kind: str
    folds: int
    n: int
    accuracy: np.ndarray
    auroc: np.ndarray
    accuracy_std: np.ndarray
    auroc_std: np.ndarray
    probes: tuple[Probe, ...]
    groups: int | None = None

    @property
    def labels(self) -> list[str]:
        """Axis labels: ``"L{layer}"`` for block hooks of one kind, else the hook names."""
        layers = [layer_of(h) for h in self.hooks]
        suffixes = {h.split(".", 2)[-1] for h in self.hooks}
        if None not in layers and len(suffixes) == 1:
            return [f"L{layer}" for layer in layers]
        return list(self.hooks)

    @property
    def best(self) -> int:
        """Index of the hook with the highest AUROC."""
        return int(np.nanargmax(self.auroc))

    @property
    def best_hook(self) -> str:
        return self.hooks[self.best]

    @property
    def best_probe(self) -> Probe:
        return self.probes[self.best]

    def probe(self, hook: str | int) -> Probe:
        """The probe fitted on every row at ``hook`` (a name or an index)."""
        return self.probes[hook if isinstance(hook, int) else self.hooks.index(hook)]

    def _summary(self) -> Summary:
        b = self.best
        facts = {"best": self.hooks[b], "AUROC": float(self.auroc[b]), "accuracy": float(self.accuracy[b]),
                 "examples": self.n}
        top = [(f"{lab}", float(v)) for lab, v in
               sorted(zip(self.labels, self.auroc), key=lambda t: -np.nan_to_num(t[1], nan=-1))]
        how = f"{self.folds}-fold CV" + ("" if self.groups is None else f" by group ({self.groups} groups)")
        return Summary(f"{self.kind} probe sweep, {how}", {"hook": len(self.hooks)}, facts, top,
                       "held-out AUROC by hook")


@functools.partial(jax.jit, static_argnums=(0, 1))
def _sweep(kind, options, X, y, masks):
    """Fit on each mask's rows at each hook: params ``[L, M, ...]`` and logits of every row ``[L, M, N]``."""
    per_mask = jax.vmap(lambda X, m: _fit.fit_and_score(kind, options, X, y, m), in_axes=(None, 0))
    return jax.vmap(per_mask, in_axes=(0, None))(X, masks)


def fit_masked(kind: str, options: dict, X: Float[Array, "L N D"], y: Float[Array, " N"],
               masks: Float[Array, "M N"]):
    """Probes of ``kind`` fitted at every hook ``l`` on the rows of each mask ``m`` (one compiled call):
    ``((weight [L M D], bias [L M], mean [L M D], scale [L M D]), logits [L M N])``."""
    opts = check_options(kind, options)
    return _sweep(kind, opts, jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.float32),
                  jnp.asarray(masks, jnp.float32))


def stacked(acts, hooks=None) -> tuple[tuple[str, ...], np.ndarray]:
    """(hook names, ``[L, N, D]``) from :class:`Activations`, a dict hook -> ``[N, D]``, or an array."""
    if hasattr(acts, "stack") and hasattr(acts, "hooks"):
        hooks = tuple(acts.hooks if hooks is None else hooks)
        X = acts.stack(hooks)
    elif isinstance(acts, dict):
        hooks = tuple(acts if hooks is None else hooks)
        X = np.stack([np.asarray(acts[h]) for h in hooks]) if hooks else np.zeros((0, 0, 0))
    else:
        X = np.asarray(acts)
        if X.ndim == 2:
            X = X[None]
        if X.ndim != 3:
            raise ValueError(f"activations for a sweep must be [L, N, D] (or [N, D]); got shape {X.shape}")
        hooks = tuple(hooks) if hooks is not None else tuple(f"layer {i}" for i in range(X.shape[0]))
    if X.shape[0] == 0:
        raise ValueError("no hooks to sweep: collect activations at one hook point at least")
    for h, x in zip(hooks, X):
        check_activations(x, f"activations at '{h}'")
    return hooks, X.astype(np.float32)


def _hash(acts):
    return getattr(acts, "model_hash", None)


def sweep(acts, labels=None, *, hooks=None, kind: str = "logistic", folds: int = 5, seed: int = 0, groups=None,
          **options) -> SweepResult:
    """A probe of ``kind`` at every hook of ``acts`` (:class:`Activations`, a dict hook -> ``[N, D]`` or an array
    ``[L, N, D]``), scored by stratified ``folds``-fold cross-validation (:func:`kfold` with ``seed``): per hook
    the mean and standard deviation over folds of the held-out accuracy and AUROC. Also fits each hook's probe on
    every row (``result.probes``). ``options`` go to the fit (see :func:`interp.probes.fit`).

    ``groups`` (one id per row; default: ``acts.groups`` when the activations carry them): folds keep each group
    whole, so a held-out row's near-duplicates are never among the training rows."""
    if kind not in KINDS:
        raise ValueError(f"a sweep fits one of {', '.join(KINDS)}; got {kind!r}")
    hooks, X = stacked(acts, hooks)
    labels = getattr(acts, "labels", None) if labels is None else labels
    if labels is None:
        raise ValueError("no labels: pass labels=[...] (or collect the activations with labels)")
    y = check_labels(labels, X.shape[1])
    groups = getattr(acts, "groups", None) if groups is None else groups
    fold = kfold(y, folds, seed, groups)
    n_groups = None if groups is None else len(set(np.asarray(groups).tolist()))
    masks = np.concatenate([(fold[None] != np.arange(folds)[:, None]), np.ones((1, len(y)), bool)]).astype(np.float32)
    (w, b, mu, sd), logits = fit_masked(kind, options, X, y, masks)
    logits = np.asarray(logits, np.float64)
    acc = np.array([[accuracy(logits[h, k, fold == k], y[fold == k]) for k in range(folds)] for h in range(len(hooks))])
    auc = np.array([[auroc(logits[h, k, fold == k], y[fold == k]) for k in range(folds)] for h in range(len(hooks))])
    probes = tuple(Probe(w[h, -1], b[h, -1], mu[h, -1], sd[h, -1], hook=hooks[h], kind=kind, model_hash=_hash(acts))
                   for h in range(len(hooks)))
    return SweepResult(hooks, kind, folds, len(y), acc.mean(1), auc.mean(1), acc.std(1), auc.std(1), probes,
                       n_groups)
