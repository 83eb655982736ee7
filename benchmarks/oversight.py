"""Probes on the default model, for the record: where true/false statements and sentiment become linearly
readable, how a probe trained on one template family transfers to another, and weak-to-strong supervision
(Burns et al. 2023) with probes as supervisor and student.

    python benchmarks/oversight.py [--kind logistic] [--weak 2]

Prints the true/false probe's 5-fold held-out AUROC at every layer's residual stream (best layer and value),
its transfer from declarative statements to question-form statements, and the W2S table (weak supervisor at an
early layer, strong student at the task's best layer; accuracy on held-out rows and PGR) for two tasks.
"""

from __future__ import annotations

import argparse
import time

import interp
from interp import probes
from interp.probes import datasets


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", default="logistic", choices=probes.KINDS)
    ap.add_argument("--weak", type=int, default=2, help="the weak supervisor's layer")
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args()

    t0 = time.time()
    model = interp.load()
    tasks = {"true/false": datasets.true_false(), "sentiment": datasets.sentiment()}
    acts = {}
    for name, data in tasks.items():
        t = time.time()
        acts[name] = probes.collect(model, data.texts, "resid_post", data.labels, batch_size=64)
        print(f"collected {name}: {len(data)} texts x {len(acts[name].hooks)} hooks in {time.time() - t:.1f}s")

    t = time.time()
    tf = probes.sweep(acts["true/false"], kind=args.kind, folds=args.folds)
    print(f"\ntrue/false statements ({tf.n}), {args.kind} probe per layer, {args.folds}-fold held-out "
          f"({time.time() - t:.1f}s for all layers):")
    print("layer  AUROC   acc")
    for label, auc, acc in zip(tf.labels, tf.auroc, tf.accuracy):
        print(f"{label:>5}  {auc:.3f}  {acc:.3f}")
    print(f"best: {tf.labels[tf.best]} AUROC {tf.auroc[tf.best]:.3f} +- {tf.auroc_std[tf.best]:.3f}, "
          f"accuracy {tf.accuracy[tf.best]:.3f}")

    data = tasks["true/false"]
    fam = list(data.family)
    src = acts["true/false"].subset([f == "declarative" for f in fam])
    tgt = acts["true/false"].subset([f == "question" for f in fam])
    tr = probes.transfer(src, tgt, kind=args.kind, folds=args.folds, names=("declarative", "question"))
    b = tr.best
    print(f"\ntransfer declarative -> question: best {tr.hooks[b]} AUROC {tr.auroc[b]:.3f} (within question "
          f"{tr.target_auroc[b]:.3f}); at the sweep's best layer {tf.hooks[tf.best]}: "
          f"{tr.auroc[tf.best]:.3f}")

    rows = []
    for name in tasks:
        sw = tf if name == "true/false" else probes.sweep(acts[name], kind=args.kind, folds=args.folds)
        strong = sw.hooks[sw.best]
        rows.append(probes.weak_to_strong(acts[name], f"blocks.{args.weak}.hook_resid_post", strong, task=name,
                                          kind=args.kind))
        print(f"{name}: weak blocks.{args.weak}.hook_resid_post, strong {strong} (CV AUROC "
              f"{sw.auroc[sw.best]:.3f})")
    print("\nweak-to-strong (accuracy on held-out rows; PGR = (strong on weak - weak) / (ceiling - weak)):")
    print(probes.W2STable(tuple(rows)).text())
    print(f"\ntotal {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
