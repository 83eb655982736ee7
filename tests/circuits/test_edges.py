"""Exact path patching against whole-activation identities, and edge attribution as its first-order estimate."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import interp
from interp.circuits import edge_attribution, metrics, path_patch, receivers, senders
from interp.circuits.edges import _out_names
from tests.numerics import assert_close, model_bound


def logits_bound(model, *tokens):
    """Rounding of a metric computed from logits: the logits' magnitude sets it."""
    return model_bound(*[model(t) for t in tokens], n_layers=model.n_layers)


def test_node_lists(tiny3):
    s, r = senders(tiny3), receivers(tiny3)
    assert len(s) == 1 + 3 * (4 + 1) and s[:2] == ["embed", "L0H0"] and s[5] == "MLP0"
    assert len(r) == 3 * (4 + 2 + 2 + 1) + 1 and r[4:6] == ["L0H0.k", "L0H1.k"] and r[-1] == "logits"


def test_all_senders_into_logits_is_the_source_run(tiny3, pair, answers):
    clean, corrupted = pair
    metric = metrics.logit_diff(*answers)
    value = path_patch(tiny3, clean, corrupted, metric, senders(tiny3), "logits")
    assert_close(value, float(metric(tiny3(clean))), logits_bound(tiny3, clean), "all senders")


def test_embed_into_layer0_heads_is_patching_ln1(tiny3, pair, answers):
    """Layer 0's heads read only the embedding: patching it into all their inputs equals patching the
    normalised input of layer 0's attention, while its own MLP and residual keep the base embedding."""
    clean, corrupted = pair
    metric = metrics.logit_diff(*answers)
    value = path_patch(tiny3, clean, corrupted, metric, "embed", [f"L0H{h}" for h in range(4)])
    _, cache = tiny3.run_with_cache(clean, "blocks.0.ln1.hook_normalized")
    expect = metric(tiny3.run_with_hooks(corrupted, [("blocks.0.ln1.hook_normalized", interp.edits.replace,
                                                      cache["blocks.0.ln1.hook_normalized"])]))
    assert_close(value, float(expect), logits_bound(tiny3, clean, corrupted), "embed into layer 0")
    assert abs(value - float(metric(tiny3(corrupted)))) > 1e-3


def test_everything_before_an_mlp_into_it_is_patching_its_output(tiny3, pair, answers):
    clean, corrupted = pair
    metric = metrics.logit_diff(*answers)
    before = [s for s in senders(tiny3) if s == "embed" or s in ("MLP0",) or s.startswith(("L0", "L1H"))]
    value = path_patch(tiny3, clean, corrupted, metric, before, "MLP1")
    _, cache = tiny3.run_with_cache(clean, "blocks.1.hook_mlp_out")
    expect = metric(tiny3.run_with_hooks(corrupted, [("blocks.1.hook_mlp_out", interp.edits.replace,
                                                      cache["mlp_out", 1])]))
    assert_close(value, float(expect), logits_bound(tiny3, clean, corrupted), "into MLP1")


def test_sender_sweep_and_bad_paths(tiny3, pair, answers):
    clean, corrupted = pair
    metric = metrics.logit_diff(*answers)
    grid = path_patch(tiny3, clean, corrupted, metric, "heads", "L2H1.q")
    assert grid.values.shape == (3, 4) and np.isnan(grid.values[2]).all()
    one = path_patch(tiny3, clean, corrupted, metric, "L1H3", "L2H1.q")
    assert_close(grid.values[1, 3], one, logits_bound(tiny3, clean, corrupted), "sweep vs one")
    with pytest.raises(ValueError, match="forward"):
        path_patch(tiny3, clean, corrupted, metric, "MLP2", "L1H0.q")
    with pytest.raises(ValueError, match="unknown component"):
        path_patch(tiny3, clean, corrupted, metric, "head3", "logits")
    with pytest.raises(ValueError, match="outside"):
        path_patch(tiny3, clean, corrupted, metric, "L0H9", "logits")


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_edge_attribution_is_first_order_path_patching(tiny3, pair, answers, method):
    """With a source run a tiny step from the base run, every edge's EAP score equals the exact effect of
    path patching that edge alone, to first order."""
    clean, corrupted = pair
    metric = metrics.logit_diff(*answers)
    step = jnp.asarray(1e-3 * np.random.default_rng(1).standard_normal(tiny3.d_model), jnp.float32)
    _, near = tiny3.run_with_cache(corrupted, _out_names(tiny3), edits=[("hook_embed", interp.edits.add, step)])
    eap = edge_attribution(tiny3, near, corrupted, metric, method=method)
    base = eap.base
    checked = 0
    for rec in ("L2H1.q", "L1H0.k", "L2H1.v", "MLP1", "logits"):
        sweep = path_patch(tiny3, near, corrupted, metric, senders(tiny3), rec, per_sender=True)
        exact = sweep.values - base
        approx = np.array([eap.score(s, rec) for s in senders(tiny3)])
        ok = ~np.isnan(exact)
        assert np.array_equal(ok, ~np.isnan(approx))
        scale = np.abs(exact[ok]).max()
        assert scale > 1e-6
        np.testing.assert_allclose(approx[ok], exact[ok], atol=0.05 * scale)
        checked += ok.sum()
    assert checked > 40
    top = eap.top(3)
    assert len(top) == 3 and all(np.isfinite(t[2]) for t in top)
