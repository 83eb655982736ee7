"""Generalization experiments: train a probe on one distribution and test it on another, and weak-to-strong
supervision (Burns et al. 2023) with probes: a weak supervisor (a probe on an early layer) labels data on which a
strong student (a probe on a late layer) is trained.

PGR, the performance gap recovered: ``(strong_on_weak - weak) / (ceiling - weak)`` -- 0 when the student only
imitates its supervisor, 1 when it does as well as a student trained on the true labels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from interp.probes.fit import KINDS, accuracy, auroc, balanced_parts, check_groups, check_labels, kfold
from interp.probes.sweep import fit_masked, stacked
from interp.results import Result, Summary

__all__ = ["TransferResult", "W2SResult", "W2STable", "pgr", "transfer", "weak_to_strong"]


def pgr(weak: float, strong_on_weak: float, ceiling: float) -> float:
    """Performance gap recovered ``(strong_on_weak - weak) / (ceiling - weak)``; NaN when the ceiling equals the
    weak performance (no gap to recover)."""
    gap = ceiling - weak
    return float("nan") if gap == 0 or not np.isfinite(gap) else float((strong_on_weak - weak) / gap)


# ---------------------------------------------------------------------------------------------- transfer
@dataclasses.dataclass(frozen=True, eq=False)
class TransferResult(Result):
    """Per hook: AUROC and accuracy of a probe trained on all of ``source`` and tested on ``target``
    (``auroc``, ``accuracy``), beside the cross-validated AUROC within the source (``source_auroc``) and within
    the target (``target_auroc``, the in-distribution ceiling)."""

    hooks: tuple[str, ...]
    kind: str
    source: str
    target: str
    auroc: np.ndarray
    accuracy: np.ndarray
    source_auroc: np.ndarray
    target_auroc: np.ndarray

    @property
    def best(self) -> int:
        return int(np.nanargmax(self.auroc))

    def _summary(self) -> Summary:
        b = self.best
        facts = {"best": self.hooks[b], "transfer AUROC": float(self.auroc[b]),
                 "target CV AUROC": float(self.target_auroc[b]), "source CV AUROC": float(self.source_auroc[b])}
        top = [(h, (float(a), float(t))) for h, a, t in zip(self.hooks, self.auroc, self.target_auroc)]
        return Summary(f"{self.kind} probe transfer {self.source} -> {self.target}", {"hook": len(self.hooks)}, facts,
                       top, "hook: transfer AUROC, target CV AUROC")


def _fold_masks(y, folds, seed, offset, total, groups=None):
    fold = kfold(y, folds, seed, groups)
    masks = np.zeros((folds, total), np.float32)
    for k in range(folds):
        masks[k, offset:offset + len(y)] = fold != k
    return fold, masks


def _cv(logits, fold, y, offset, start):
    n = len(y)
    return np.array([np.mean([auroc(logits[h, start + k, offset:offset + n][fold == k], y[fold == k])
                              for k in range(fold.max() + 1)]) for h in range(logits.shape[0])])


def transfer(source, target, source_labels=None, target_labels=None, *, hooks=None, kind: str = "logistic",
             folds: int = 5, seed: int = 0, names: tuple[str, str] = ("source", "target"), source_groups=None,
             target_groups=None, **options) -> TransferResult:
    """Train on ``source`` and test on ``target`` at every hook (both :class:`Activations` of the same hooks, or
    arrays ``[L, N, D]``), in one compiled call: the probe fitted on all source rows, and ``folds``-fold probes
    within each set for comparison. The within-set folds keep groups whole (``source_groups``/``target_groups``,
    by default the activations' own ``groups`` when they carry them; see :func:`kfold`)."""
    if kind not in KINDS:
        raise ValueError(f"transfer fits one of {', '.join(KINDS)}; got {kind!r}")
    hooks_s, Xs = stacked(source, hooks)
    hooks_t, Xt = stacked(target, hooks_s if hasattr(target, "stack") else hooks)
    if Xs.shape[0] != Xt.shape[0] or Xs.shape[2] != Xt.shape[2]:
        raise ValueError(f"source and target need the same hooks and widths: [L, N, D] = {Xs.shape} and {Xt.shape}")
    ys = check_labels(getattr(source, "labels", None) if source_labels is None else source_labels, Xs.shape[1],
                      "source labels")
    yt = check_labels(getattr(target, "labels", None) if target_labels is None else target_labels, Xt.shape[1],
                      "target labels")
    ns, nt = len(ys), len(yt)
    X, y = np.concatenate([Xs, Xt], axis=1), np.concatenate([ys, yt])
    train = np.zeros((1, ns + nt), np.float32)
    train[0, :ns] = 1
    gs = getattr(source, "groups", None) if source_groups is None else source_groups
    gt = getattr(target, "groups", None) if target_groups is None else target_groups
    fs, ms = _fold_masks(ys, folds, seed, 0, ns + nt, gs)
    ft, mt = _fold_masks(yt, folds, seed, ns, ns + nt, gt)
    _, logits = fit_masked(kind, options, X, y, np.concatenate([train, ms, mt]))
    logits = np.asarray(logits, np.float64)
    out = logits[:, 0, ns:]
    return TransferResult(hooks_s, kind, names[0], names[1], np.array([auroc(o, yt) for o in out]),
                          np.array([accuracy(o, yt) for o in out]), _cv(logits, fs, ys, 0, 1),
                          _cv(logits, ft, yt, ns, 1 + folds))


# ---------------------------------------------------------------------------------------------- weak to strong
@dataclasses.dataclass(frozen=True, eq=False)
class W2SResult(Result):
    """One weak-to-strong experiment, on held-out rows: the weak supervisor's accuracy (``weak``), the strong
    student's trained on the supervisor's labels (``strong_on_weak``) and on the true labels (``ceiling``), the
    same three as AUROC, and the gaps recovered (``pgr`` on accuracy, ``pgr_auroc``)."""

    task: str
    weak_hook: str
    strong_hook: str
    kind: str
    weak: float
    strong_on_weak: float
    ceiling: float
    weak_auroc: float
    strong_on_weak_auroc: float
    ceiling_auroc: float
    weak_label_accuracy: float
    n_test: int

    @property
    def pgr(self) -> float:
        return pgr(self.weak, self.strong_on_weak, self.ceiling)

    @property
    def pgr_auroc(self) -> float:
        return pgr(self.weak_auroc, self.strong_on_weak_auroc, self.ceiling_auroc)

    def row(self) -> dict:
        return {"task": self.task, "weak": self.weak, "strong on weak": self.strong_on_weak, "ceiling": self.ceiling,
                "PGR": self.pgr, "PGR (AUROC)": self.pgr_auroc}

    def _summary(self) -> Summary:
        facts = {"weak": self.weak, "strong on weak": self.strong_on_weak, "ceiling": self.ceiling, "PGR": self.pgr}
        top = [("weak supervisor", self.weak_hook), ("strong student", self.strong_hook),
               ("weak labels correct", self.weak_label_accuracy), ("AUROC weak / student / ceiling",
                                                                   (self.weak_auroc, self.strong_on_weak_auroc,
                                                                    self.ceiling_auroc)),
               ("PGR (AUROC)", self.pgr_auroc), ("held-out examples", self.n_test)]
        return Summary(f"weak-to-strong {self.task!r}, {self.kind} probes (accuracy)", {}, facts, top, "details")


@dataclasses.dataclass(frozen=True, eq=False)
class W2STable(Result):
    """Weak-to-strong results of several tasks, one row each (:meth:`rows`)."""

    results: tuple[W2SResult, ...]

    def rows(self) -> list[dict]:
        return [r.row() for r in self.results]

    def text(self) -> str:
        """The table as aligned text."""
        head = f"{'task':<16}{'weak':>8}{'s-on-w':>8}{'ceiling':>9}{'PGR':>8}{'PGR-AUC':>9}"
        lines = [head] + [f"{r.task:<16}{r.weak:>8.3f}{r.strong_on_weak:>8.3f}{r.ceiling:>9.3f}{r.pgr:>8.3f}"
                          f"{r.pgr_auroc:>9.3f}" for r in self.results]
        return "\n".join(lines)

    def _summary(self) -> Summary:
        top = [(r.task, (r.weak, r.strong_on_weak, r.ceiling, r.pgr)) for r in self.results]
        return Summary("weak-to-strong table (accuracy)", {"task": len(self.results)}, {}, top,
                       "task: weak, strong on weak, ceiling, PGR")


def _split(y, fractions, seed, groups=None):
    """Stratified split of rows into len(fractions) parts; with ``groups``, each group whole in one part (stratified
    as far as the groups allow)."""
    if groups is not None:
        gid = check_groups(groups, len(y))
        if int(gid.max()) + 1 < len(fractions):
            raise ValueError(f"a split by group into {len(fractions)} parts needs at least {len(fractions)} groups; "
                             f"got {int(gid.max()) + 1}")
        return balanced_parts(y, gid, fractions, seed)
    rng = np.random.default_rng(seed)
    part = np.empty(len(y), np.int64)
    cuts = np.cumsum(fractions)[:-1]
    for cls in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == cls))
        bounds = np.round(cuts * len(idx)).astype(int)
        for p, chunk in enumerate(np.split(idx, bounds)):
            part[chunk] = p
    return part


def weak_to_strong(acts, weak_hook: str, strong_hook: str, labels=None, *, task: str = "task",
                   kind: str = "logistic", split: Sequence[float] = (0.3, 0.4, 0.3), seed: int = 0, groups=None,
                   **options) -> W2SResult:
    """Weak-to-strong supervision with probes on :class:`Activations` ``acts`` (or a dict hook -> ``[N, D]``).

    The rows are split (stratified, seeded) by ``split`` into: the supervisor's training rows (true labels), the
    student's training rows, and held-out test rows. The weak supervisor is a probe at ``weak_hook`` trained on
    the first part; its predictions label the second part, on which the strong student is trained at
    ``strong_hook``; the ceiling is the same student trained on the second part's true labels. All three are scored
    on the third part.

    ``groups`` (one id per row; default: ``acts.groups`` when the activations carry them): the split keeps each
    group whole, so no test row has a near-duplicate among the supervisor's or the student's training rows."""
    if kind not in KINDS:
        raise ValueError(f"weak_to_strong fits one of {', '.join(KINDS)}; got {kind!r}")
    fr = np.asarray(split, np.float64)
    if fr.shape != (3,) or (fr <= 0).any() or not np.isclose(fr.sum(), 1.0):
        raise ValueError(f"split must be three positive fractions summing to 1 (supervisor, student, test); got "
                         f"{tuple(split)}")
    for h in (weak_hook, strong_hook):
        if h not in (acts.hooks if hasattr(acts, "hooks") else acts):
            from interp.hooks import suggest

            hooks = acts.hooks if hasattr(acts, "hooks") else list(acts)
            raise ValueError(f"no activations at '{h}'{suggest(h, hooks)}; collect that hook first")
    _, Xw = stacked(acts, [weak_hook])
    _, Xs = stacked(acts, [strong_hook])
    y = check_labels(getattr(acts, "labels", None) if labels is None else labels, Xw.shape[1])
    groups = getattr(acts, "groups", None) if groups is None else groups
    part = _split(y, fr, seed, groups)
    for p, name in enumerate(("supervisor", "student", "test")):
        if len(np.unique(y[part == p])) < 2:
            raise ValueError(f"the {name} split has one class only; give more examples or change split={tuple(split)}")
    sup, stu, test = (part == p for p in range(3))
    _, lw = fit_masked(kind, options, Xw, y, sup[None].astype(np.float32))
    lw = np.asarray(lw[0, 0], np.float64)
    weak_labels = (lw > 0).astype(np.float32)
    if len(np.unique(weak_labels[stu])) < 2:
        raise ValueError("the weak supervisor labelled every student example alike, so no student can be trained; "
                         "use a stronger supervisor hook or more data")
    y_student = np.where(stu, weak_labels, y)
    masks = stu[None].astype(np.float32)
    _, l_sw = fit_masked(kind, options, Xs, y_student, masks)
    _, l_ceil = fit_masked(kind, options, Xs, y, masks)
    l_sw, l_ceil = np.asarray(l_sw[0, 0], np.float64), np.asarray(l_ceil[0, 0], np.float64)
    yt = y[test]
    return W2SResult(task, weak_hook, strong_hook, kind, accuracy(lw[test], yt), accuracy(l_sw[test], yt),
                     accuracy(l_ceil[test], yt), auroc(lw[test], yt), auroc(l_sw[test], yt), auroc(l_ceil[test], yt),
                     float((weak_labels[stu] == y[stu]).mean()), int(test.sum()))
