"""Probes on the default model, for the record: where true/false statements and sentiment become linearly
readable, how a probe trained on one template family transfers to another, and weak-to-strong supervision
(Burns et al. 2023) with probes as supervisor and student.

    python benchmarks/oversight.py [--kind logistic] [--folds 5] [--quick]

Every cross-validation and split keeps the datasets' groups whole (a true statement and its false twins, the
sentences about one noun): with folds by row, an early-layer probe learns that a held-out statement's capital was
false in its twin and scores below chance.

Prints the true/false probe's grouped 5-fold held-out AUROC at every layer's residual stream (best layer and
value), its transfer from declarative statements to question-form statements, and the W2S table for two tasks.
The strong student sits at the task's best layer; the weak supervisor is chosen to be clearly imperfect: among
the embedding output and layer 0 averaged over the text's tokens, and the last-token residual streams of the
layers below the student's, the hook whose grouped CV accuracy is nearest to halfway between chance and the
student's (and at least 0.6). ``--quick`` subsamples (two template families, 200 sentiment sentences) to check
that the script runs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import interp
from interp import probes
from interp.hooks import layer_of
from interp.probes import datasets

MEAN_HOOKS = ("hook_embed", "blocks.0.hook_resid_post")


def choose_weak(cv: dict[str, float], strong: str, strong_acc: float) -> tuple[str, float]:
    """The candidate whose CV accuracy is nearest to halfway between chance and ``strong_acc``, among those at
    0.6 or more (all, when none is); candidates are the mean-reduced hooks and last-token layers below ``strong``."""
    target = 0.5 + (strong_acc - 0.5) / 2
    below = {h: a for h, a in cv.items() if h.endswith("(mean)") or (layer_of(h) or 0) < (layer_of(strong) or 0)}
    usable = {h: a for h, a in below.items() if a >= 0.6} or below
    return min(usable, key=lambda h: (abs(usable[h] - target), h)), target


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", default="logistic", choices=probes.KINDS)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="subsample the data to check that the script runs")
    args = ap.parse_args()

    t0 = time.time()
    model = interp.load()
    if args.quick:
        tasks = {"true/false": datasets.true_false(["declarative", "question"]), "sentiment": datasets.sentiment(n=200)}
    else:
        tasks = {"true/false": datasets.true_false(), "sentiment": datasets.sentiment()}
    acts, means = {}, {}
    for name, data in tasks.items():
        t = time.time()
        acts[name] = probes.collect(model, data.texts, "resid_post", data.labels, batch_size=64, groups=data.groups)
        means[name] = probes.collect(model, data.texts, list(MEAN_HOOKS), data.labels, reduce="mean", batch_size=64,
                                     groups=data.groups)
        print(f"collected {name}: {len(data)} texts in {len(set(data.groups))} groups x {len(acts[name].hooks)} "
              f"hooks (+ {len(MEAN_HOOKS)} mean-reduced) in {time.time() - t:.1f}s")

    t = time.time()
    tf = probes.sweep(acts["true/false"], kind=args.kind, folds=args.folds)
    print(f"\ntrue/false statements ({tf.n}, {tf.groups} groups), {args.kind} probe per layer, {args.folds}-fold "
          f"held-out by group ({time.time() - t:.1f}s for all layers):")
    print("layer  AUROC   acc")
    for label, auc, acc in zip(tf.labels, tf.auroc, tf.accuracy):
        print(f"{label:>5}  {auc:.3f}  {acc:.3f}")
    print(f"best: {tf.labels[tf.best]} AUROC {tf.auroc[tf.best]:.3f} +- {tf.auroc_std[tf.best]:.3f}, "
          f"accuracy {tf.accuracy[tf.best]:.3f}")
    rows = probes.sweep(acts["true/false"], kind=args.kind, folds=args.folds, groups=np.arange(tf.n))
    early = ", ".join(f"{a:.3f}" for a in rows.auroc[:3])
    print(f"(folds by row instead, which split a statement from its twins: L0-L2 AUROC {early}; best "
          f"{rows.labels[rows.best]} {rows.auroc[rows.best]:.3f})")

    data = tasks["true/false"]
    fam = list(data.family)
    src = acts["true/false"].subset([f == "declarative" for f in fam])
    tgt = acts["true/false"].subset([f == "question" for f in fam])
    tr = probes.transfer(src, tgt, kind=args.kind, folds=args.folds, names=("declarative", "question"))
    b = tr.best
    print(f"\ntransfer declarative -> question: best {tr.hooks[b]} AUROC {tr.auroc[b]:.3f} (within question "
          f"{tr.target_auroc[b]:.3f}); at the sweep's best layer {tf.hooks[tf.best]}: "
          f"{tr.auroc[tf.best]:.3f}")

    results = []
    print("\nweak-to-strong: the student at the task's best layer (grouped CV AUROC); the supervisor the hook whose "
          "grouped CV accuracy is nearest halfway between chance and the student's, among the mean-reduced "
          f"{' and '.join(MEAN_HOOKS)} and the last-token layers below the student (accuracy >= 0.6 where any is)")
    for name in tasks:
        sw = tf if name == "true/false" else probes.sweep(acts[name], kind=args.kind, folds=args.folds)
        mw = probes.sweep(means[name], kind=args.kind, folds=args.folds)
        cv = {f"{h} (mean)": float(a) for h, a in zip(mw.hooks, mw.accuracy)}
        cv.update({h: float(a) for h, a in zip(sw.hooks, sw.accuracy)})
        strong = sw.best_hook
        weak, target = choose_weak(cv, strong, cv[strong])
        table = {**{f"{h} (mean)": means[name][h] for h in MEAN_HOOKS}, **acts[name].acts}
        results.append(probes.weak_to_strong(table, weak, strong, tasks[name].labels, task=name, kind=args.kind,
                                             groups=tasks[name].groups))
        mean_acc = ", ".join(f"{h} {cv[f'{h} (mean)']:.3f}" for h in MEAN_HOOKS)
        print(f"  {name}: strong {strong} (CV AUROC {sw.auroc[sw.best]:.3f}, accuracy {cv[strong]:.3f}); weak "
              f"{weak} (CV accuracy {cv[weak]:.3f}, target {target:.3f}); mean-reduced CV accuracy: {mean_acc}")
    print("\nweak-to-strong (accuracy on held-out groups; PGR = (strong on weak - weak) / (ceiling - weak)):")
    print(probes.W2STable(tuple(results)).text())
    for r in results:
        print(f"  {r.task}: weak labels {r.weak_label_accuracy:.3f} correct on the student's rows; {r.n_test} "
              "test rows")
    print(f"\ntotal {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
