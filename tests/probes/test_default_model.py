"""On the real default model, true/false statements about capitals are linearly readable."""

from __future__ import annotations

from interp import probes
from interp.probes import datasets


def test_true_false_probe_beats_chance_at_its_best_layer(default_model):
    data = datasets.true_false(["declarative", "question"])
    layers = range(0, default_model.n_layers, 4)
    acts = probes.collect(default_model, data.texts, [f"blocks.{i}.hook_resid_post" for i in layers], data.labels,
                          batch_size=64)
    res = probes.sweep(acts, kind="logistic", folds=4)
    assert res.auroc[res.best] > 0.8, res  # chance is 0.5
    assert res.auroc[0] < res.auroc[res.best]  # the embedding-side layer reads it worse
