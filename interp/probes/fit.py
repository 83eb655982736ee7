"""Fitting probes: logistic regression, difference of means, LDA and unsupervised CCS; their metrics.

Each fit takes activations ``[N, D]`` (an array, or an :class:`interp.probes.Activations` and a hook) and labels
``[N]`` (0/1 or booleans) and returns a :class:`Probe`. Fits are deterministic: the same inputs (and ``seed`` for
CCS) give the same probe. Axis letters: N examples, D features.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from interp.probes import _fit
from interp.probes.probe import Probe

__all__ = ["KINDS", "accuracy", "auroc", "balanced_parts", "check_activations", "check_groups", "check_labels", "fit",
           "fit_ccs", "contrast_credence", "kfold"]

KINDS = ("logistic", "diffmeans", "lda")


# ---------------------------------------------------------------------------------------------- checks
def check_labels(labels, n: int | None = None, what: str = "labels") -> np.ndarray:
    """Labels as float32 0/1 ``[N]``, refusing empty sets, a length other than ``n``, values other than 0/1 and a
    single class, each with the fix."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"{what} must be one label per example (shape [N]); got shape {y.shape}")
    if y.size == 0:
        raise ValueError(f"{what} are empty: a probe needs labelled examples of both classes")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"{n} examples but {y.shape[0]} {what}: pass exactly one label per example")
    if y.dtype == bool:
        y = y.astype(np.float32)
    if not np.issubdtype(y.dtype, np.number) or not np.isin(y, (0, 1)).all():
        bad = [v for v in np.unique(y) if v not in (0, 1)][:3] if np.issubdtype(y.dtype, np.number) else y[:3]
        raise ValueError(f"{what} must be 0/1 (or booleans); found {list(bad)}. Map your classes to 0 and 1")
    y = y.astype(np.float32)
    ones = int(y.sum())
    if ones in (0, y.size):
        raise ValueError(f"{what} hold one class only ({y.size} of class {int(y[0])}); a probe separates two "
                         "classes: add examples of the other class")
    return y


def check_activations(X, what: str = "activations") -> np.ndarray:
    """Activations as float32 ``[N, D]``: refuses empty sets, other ranks, NaN and infinities (naming the rows)."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{what} must have shape [N, D] (one row per example); got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{what} are empty (shape {X.shape}): collect activations for at least one example")
    X = X.astype(np.float32)
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(f"{what} hold NaN or infinite values in {rows.size} of {X.shape[0]} rows (first: row "
                         f"{rows[0]}); the model or hook produced non-finite numbers: check the inputs and the "
                         "model's dtype, or drop those rows")
    return X


def _xy(acts, labels, hook):
    """(X [N D], y [N], hook, model_hash) from an array or an ``Activations`` and a hook."""
    if hasattr(acts, "acts") and hasattr(acts, "hooks"):
        if hook is None:
            if len(acts.hooks) != 1:
                raise ValueError(f"these activations hold {len(acts.hooks)} hooks; name one with hook=... "
                                 f"({', '.join(acts.hooks[:4])}{', ...' if len(acts.hooks) > 4 else ''})")
            hook = acts.hooks[0]
        X = acts[hook]
        labels = acts.labels if labels is None else labels
        model_hash = acts.model_hash
    else:
        X, model_hash = acts, None
    if labels is None:
        raise ValueError("no labels: pass labels=[...] (or collect the activations with labels)")
    X = check_activations(X, f"activations at {hook}" if hook else "activations")
    return X, check_labels(labels, X.shape[0]), hook or "unknown", model_hash


# ---------------------------------------------------------------------------------------------- fits
def fit(acts, labels=None, kind: str = "logistic", *, hook: str | None = None, model_hash: str | None = None,
        **options) -> Probe:
    """A probe of ``kind`` fitted on all rows.

    ``acts``: ``[N, D]`` array, or :class:`Activations` (then ``hook`` picks one of its hooks, labels default to
    its own, and the model hash is recorded). ``kind``: ``"logistic"`` (options ``l2=1e-2``, ``steps=20``; on
    standardised inputs), ``"diffmeans"``, or ``"lda"`` (``shrinkage=None`` for Ledoit-Wolf, or a weight in
    [0, 1]). See :func:`fit_ccs` for the unsupervised CCS.
    """
    if kind not in KINDS:
        from interp.hooks import suggest

        raise ValueError(f"unknown probe kind {kind!r}{suggest(str(kind), KINDS)}; choose one of {', '.join(KINDS)} "
                         "(or fit_ccs for contrast pairs)")
    X, y, hook, found = _xy(acts, labels, hook)
    opts = check_options(kind, options)
    (w, b, mu, sd), _ = _fit_one(kind, opts, jnp.asarray(X), jnp.asarray(y), jnp.ones(len(y), jnp.float32))
    return Probe(w, b, mu, sd, hook=hook, kind=kind, model_hash=model_hash or found)


def check_options(kind: str, options: dict) -> tuple:
    allowed = {"logistic": {"l2", "steps"}, "diffmeans": set(), "lda": {"shrinkage"}}[kind]
    extra = set(options) - allowed
    if extra:
        raise TypeError(f"{kind} takes the options {sorted(allowed) or 'none'}; got {sorted(extra)}")
    if "l2" in options and not (np.isfinite(options["l2"]) and options["l2"] > 0):
        raise ValueError(f"l2 must be a positive finite number, got {options['l2']!r}")
    if "steps" in options and (not isinstance(options["steps"], (int, np.integer)) or options["steps"] < 1):
        raise ValueError(f"steps must be a positive int, got {options['steps']!r}")
    s = options.get("shrinkage")
    if s is not None and not (isinstance(s, (int, float)) and 0 <= s <= 1):
        raise ValueError(f"shrinkage must be None (Ledoit-Wolf) or a number in [0, 1], got {s!r}")
    return tuple(sorted(options.items()))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _fit_one(kind, options, X, y, m):
    return _fit.fit_and_score(kind, options, X, y, m)


def fit_ccs(pos, neg, *, hook: str | None = None, model_hash: str | None = None, restarts: int = 10,
            steps: int = 1000, lr: float = 1e-2, weight_decay: float = 0.0, seed: int = 0) -> Probe:
    """Contrast-consistent search (Burns et al. 2022), unsupervised: ``pos[i]``/``neg[i]`` are the activations of
    the two halves of contrast pair ``i`` ("... Yes" / "... No"), ``[N, D]`` arrays or :class:`Activations`
    (then ``hook`` picks one). Each side is normalised by its own mean and standard deviation; the probe minimises
    consistency + confidence from ``restarts`` random starts (seeded) and keeps the lowest loss. The sign is not
    identified (truth or its negation); read pairs with :func:`contrast_credence`."""
    if isinstance(restarts, bool) or not isinstance(restarts, (int, np.integer)) or restarts < 1:
        raise ValueError(f"restarts must be a positive int, got {restarts!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    hashes = []
    sides = []
    for side, name in ((pos, "positive"), (neg, "negative")):
        if hasattr(side, "acts") and hasattr(side, "hooks"):
            h = hook or (side.hooks[0] if len(side.hooks) == 1 else None)
            if h is None:
                raise ValueError(f"the {name} activations hold {len(side.hooks)} hooks; name one with hook=...")
            hashes.append(side.model_hash)
            hook, side = h, side[h]
        sides.append(check_activations(side, f"{name} activations"))
    Xp, Xn = sides
    if Xp.shape != Xn.shape:
        raise ValueError(f"contrast pairs need one negative per positive: shapes {Xp.shape} and {Xn.shape} differ")
    if Xp.shape[0] < 2:
        raise ValueError("CCS normalises each side over the pairs, so it needs at least two pairs")
    theta, _, mu, sd = _ccs(int(restarts), int(steps), float(lr), float(weight_decay), jnp.asarray(Xp),
                            jnp.asarray(Xn), jax.random.PRNGKey(seed))
    found = next((h for h in hashes if h), None)
    return Probe(theta[:-1], theta[-1], mu, sd, hook=hook or "unknown", kind="ccs", model_hash=model_hash or found)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _ccs(restarts, steps, lr, weight_decay, Xp, Xn, key):
    with jax.numpy_dtype_promotion("standard"):  # optax mixes int step counts into float math
        return _fit.ccs(Xp, Xn, key, restarts=restarts, steps=steps, lr=lr, weight_decay=weight_decay)


def contrast_credence(probe: Probe, pos: Float[Array, "N D"], neg: Float[Array, "N D"]) -> Float[Array, " N"]:
    """CCS's credence that the positive half of each pair is true: ``(p(pos) + 1 - p(neg)) / 2``, each side
    centred on its own mean (as in training) and scaled by the probe's scale."""
    pos, neg = jnp.asarray(pos), jnp.asarray(neg)

    def p(x):
        return jax.nn.sigmoid(((x - x.mean(0)) / probe.scale) @ probe.weight + probe.bias)

    return (p(pos) + 1 - p(neg)) / 2


# ---------------------------------------------------------------------------------------------- metrics
def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve: the chance that a random class-1 example scores above a random class-0 one
    (ties count half), from ranks (Mann-Whitney U). NaN when a class is missing."""
    s, y = np.asarray(scores, np.float64).reshape(-1), np.asarray(labels).reshape(-1).astype(bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    _, start, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = start + (counts + 1) / 2.0  # 1-based average rank of each group of ties
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def accuracy(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Fraction of examples whose logit has the label's sign (positive for class 1)."""
    s, y = np.asarray(scores, np.float64).reshape(-1), np.asarray(labels).reshape(-1).astype(bool)
    return float(((s > 0) == y).mean()) if len(s) else float("nan")


def check_groups(groups, n: int, what: str = "groups") -> np.ndarray:
    """Group ids (any hashable values, one per example) as ints ``[N]`` in ``0..G-1`` (numbered by first
    appearance); refuses a length other than ``n``."""
    if isinstance(groups, str):
        raise TypeError(f"{what} must be one id per example, not one string")
    g = list(np.asarray(groups, dtype=object).reshape(-1)) if np.ndim(groups) else None
    if g is None or len(g) != n:
        got = "a scalar" if g is None else len(g)
        raise ValueError(f"{n} examples but {got} {what}: pass one group id per example (rows of one group, such as "
                         "a statement and its false twin, share an id)")
    try:
        ids: dict = {}
        return np.array([ids.setdefault(v, len(ids)) for v in g], np.int64)
    except TypeError:
        raise TypeError(f"{what} must be hashable ids (ints or strings)") from None


def balanced_parts(y: np.ndarray, gid: np.ndarray, weights: Sequence[float], seed: int) -> np.ndarray:
    """Part of each example (``[N]`` ints) with every group ``gid`` whole in one part, the parts' class counts as
    near to ``weights`` (fractions) as the groups allow: groups are shuffled (seeded), taken largest first and each
    put where it raises ``sum over parts and classes count**2 / (weight * class total**2)`` least (ties: the part
    with fewer rows, then the lower index)."""
    y = np.asarray(y).astype(bool)
    w = np.asarray(weights, np.float64)
    G = int(gid.max()) + 1
    counts = np.zeros((G, 2))
    np.add.at(counts, (gid, y.astype(np.int64)), 1)
    order = np.random.default_rng(seed).permutation(G)
    order = order[np.argsort(-counts[order].sum(1), kind="stable")]
    total = np.maximum(counts.sum(0), 1)
    have = np.zeros((len(w), 2))
    part_of = np.empty(G, np.int64)
    for g in order:
        c = counts[g]
        cost = ((((have + c) ** 2 - have ** 2) / total ** 2).sum(1)) / w
        best = np.lexsort((np.arange(len(w)), have.sum(1) / w, np.round(cost, 12)))[0]
        part_of[g] = best
        have[best] += c
    return part_of[gid]


def kfold(labels: Sequence[int], k: int = 5, seed: int = 0, groups=None) -> np.ndarray:
    """Stratified fold of each example (``[N]`` ints in ``0..k-1``): each class is shuffled (seeded) and dealt
    round-robin, so every fold holds both classes whenever each class has at least ``k`` examples.

    ``groups`` (one id per example): every example of a group lands in the same fold, so near-duplicates (a true
    statement and its false twin, one template filled with the same noun) are never split between training and
    held-out rows; folds are then stratified as far as the groups allow (:func:`balanced_parts`)."""
    y = np.asarray(labels).reshape(-1).astype(bool)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ValueError(f"folds must be an int >= 2, got {k!r}")
    if groups is not None:
        gid = check_groups(groups, len(y))
        n_groups = int(gid.max()) + 1 if len(gid) else 0
        if n_groups < k:
            raise ValueError(f"{k}-fold cross-validation by group needs at least {k} groups; got {n_groups}. Use "
                             "fewer folds or more groups")
        for cls, name in ((True, "class 1"), (False, "class 0")):
            having = len(np.unique(gid[y == cls]))
            if having < k:
                raise ValueError(f"{k}-fold cross-validation by group needs at least {k} groups holding {name} "
                                 f"examples; {having} do. Use fewer folds or more groups")
        fold = balanced_parts(y, gid, np.full(k, 1.0 / k), seed)
        for f in range(k):
            if len(np.unique(y[fold == f])) < 2:
                raise ValueError(f"grouped fold {f} of {k} holds one class only (the groups are too few or too "
                                 "one-sided to stratify); use fewer folds or more groups")
        return fold
    smallest = min(int(y.sum()), int((~y).sum()))
    if smallest < k:
        raise ValueError(f"{k}-fold cross-validation needs at least {k} examples of each class; the smaller class "
                         f"has {smallest}. Use fewer folds or add examples")
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), np.int64)
    offset = 0
    for cls in (False, True):
        idx = rng.permutation(np.flatnonzero(y == cls))
        fold[idx] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)
    return fold
