"""Probes on activations: collect labelled activations at any hook point, fit linear probes (logistic regression,
difference of means, LDA, unsupervised CCS), sweep every layer with cross-validation in one call, and run
generalization experiments (transfer between distributions, weak-to-strong supervision).

    acts = probes.collect(model, data.texts, "resid_post", data.labels)    # every layer, one pass per batch
    res = probes.sweep(acts)                                               # k-fold accuracy / AUROC per layer
    probe = res.best_probe                                                 # probe.score(x) -> logits, jit-safe
    model.generate(prompt, 20, edits=[(probe.hook, edits.add, 4.0 * probe.direction)])
"""

from interp.probes import datasets
from interp.probes.collect import REDUCTIONS, Activations, collect
from interp.probes.fit import KINDS, accuracy, auroc, contrast_credence, fit, fit_ccs, kfold
from interp.probes.monitor import Monitor
from interp.probes.probe import Probe
from interp.probes.sweep import SweepResult, sweep
from interp.probes.transfer import TransferResult, W2SResult, W2STable, pgr, transfer, weak_to_strong

__all__ = [
    "Activations", "KINDS", "Monitor", "Probe", "REDUCTIONS", "SweepResult", "TransferResult", "W2SResult", "W2STable",
    "accuracy", "auroc", "collect", "contrast_credence", "datasets", "fit", "fit_ccs", "kfold", "pgr", "sweep",
    "transfer", "weak_to_strong",
]
