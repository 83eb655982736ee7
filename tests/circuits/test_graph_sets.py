"""Attribution graphs over skip transcoders and cross-layer transcoders: the replacement model is exact, edges sum
to their targets, a frozen ablation moves a logit by its edge, and a CLT feature has edges into every later layer."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interp.circuits import graph as G
from interp.sae.clt import init_clt
from tests.circuits.test_graph import _targets, check_frozen_ablation
from tests.conftest import random_transcoders
from tests.numerics import assert_model_close


def random_clt(model, width=24, seed=0, threshold=0.5):
    """A CLT whose decoders to later layers are as large as those to a feature's own layer, and whose thresholds
    let about a third of the features fire."""
    clt = init_clt(model.n_layers, model.d_model, width, jax.random.key(seed))
    keys = jax.random.split(jax.random.key(seed + 1), 3 + model.n_layers)
    W_dec = tuple(0.3 * jax.random.normal(keys[3 + l], w.shape) / np.sqrt(model.d_model)
                  for l, w in enumerate(clt.W_dec))
    return dataclasses.replace(clt, W_dec=W_dec, b_enc=0.1 * jax.random.normal(keys[0], clt.b_enc.shape),
                               b_dec=0.05 * jax.random.normal(keys[1], clt.b_dec.shape),
                               threshold=jnp.full(clt.threshold.shape, threshold))


def skip_transcoders(model):
    tc = random_transcoders(model)
    ds = []
    for l, d in enumerate(tc.dictionaries):
        cfg = dataclasses.replace(d.cfg, skip=True)
        W_skip = 0.1 * jax.random.normal(jax.random.key(50 + l), (model.d_model, model.d_model))
        ds.append(dataclasses.replace(d, cfg=cfg, W_skip=W_skip))
    return G.Transcoders(tuple(ds), skip_positions=1)


@pytest.fixture(scope="module", params=["skip", "clt"])
def case(request, tiny3, pair):
    tc = skip_transcoders(tiny3) if request.param == "skip" else random_clt(tiny3)
    graph = G.trace(tiny3, tc, pair[0][0], max_feature_nodes=10_000, max_logits=3, batch_size=8)
    return request.param, tc, graph


def test_replacement_reproduces_the_model(tiny3, pair, case):
    _, tc, _ = case
    tokens = pair[0][:1]
    frozen = G.intervene(tiny3, tc, tokens, [], mode="frozen")
    assert_model_close(frozen.after, frozen.before, tiny3, "frozen replacement")
    real = G.intervene(tiny3, tc, tokens, [], mode="real")
    assert_model_close(real.after, real.before, tiny3, "spliced model")


def test_edges_sum_to_their_targets(tiny3, pair, case):
    kind, tc, g = case
    tokens = pair[0][:1]
    assert 0 < g.n_features <= g.info["n_active_features"]
    full, const = _targets(tiny3, tc, tokens, g, False), _targets(tiny3, tc, tokens, g, True)
    s = g.slices()
    n = g.adjacency.shape[1]
    assert_model_close(g.adjacency[s["feature"]].sum(1) + const[0], full[0], tiny3, "feature inputs", terms=n)
    assert_model_close(g.adjacency[s["logit"]].sum(1) + const[1], full[1], tiny3, "logit inputs", terms=n)
    _, cache = tiny3.run_with_cache(tokens, [tc.hook_in.format(layer=l) for l in range(3)])
    for j in range(0, g.n_features, 5):
        l, p, f = int(g.feature_layer[j]), int(g.feature_pos[j]), int(g.feature_id[j])
        a = tc.encode_layer(l, cache[tc.hook_in.format(layer=l)][0, p])[f]
        assert float(a) == pytest.approx(float(g.feature_act[j]), rel=1e-5)
    for t in range(g.n_features):
        for src in np.flatnonzero(g.adjacency[t, s["feature"]]):
            assert g.feature_layer[src] < g.feature_layer[t] and g.feature_pos[src] <= g.feature_pos[t]


def test_frozen_ablation_moves_a_logit_by_its_edge(tiny3, pair, case):
    _, tc, g = case
    j = int(np.argmax(np.abs(g.adjacency[g.slices()["logit"].start, : g.n_features])))
    check_frozen_ablation(tiny3, tc, pair[0][:1], g, j)


def test_a_clt_feature_writes_past_its_own_layer(tiny3, pair):
    """A layer-0 CLT feature's edge to a layer-2 feature is the sum of its paths through each MLP output it writes
    to; with its writes beyond layer 0 removed, the edge is what the per-layer path alone gives."""
    clt = random_clt(tiny3)
    g = G.trace(tiny3, clt, pair[0][0], max_feature_nodes=10_000, max_logits=3, batch_size=8)
    own = dataclasses.replace(clt, W_dec=tuple(w.at[:, 1:].set(0.0) for w in clt.W_dec))
    g_own = G.trace(tiny3, own, pair[0][0], max_feature_nodes=10_000, max_logits=3, batch_size=8)
    key = lambda gr, j: (int(gr.feature_layer[j]), int(gr.feature_pos[j]), int(gr.feature_id[j]))  # noqa: E731
    index_own = {key(g_own, j): j for j in range(g_own.n_features)}
    src = [j for j in range(g.n_features) if g.feature_layer[j] == 0]
    dst = [j for j in range(g.n_features) if g.feature_layer[j] == 2]
    assert src and dst
    differ = 0
    for t in dst:
        for j in src:
            if key(g, t) in index_own and key(g, j) in index_own:
                a, b = g.adjacency[t, j], g_own.adjacency[index_own[key(g, t)], index_own[key(g, j)]]
                differ += abs(a - b) > 1e-4 * max(abs(a), abs(b), 1e-3)
    assert differ > 0, "the writes of layer-0 features to later MLP outputs changed no edge"
    # and the edge from a layer-0 feature to a logit is what ablating it in the frozen model does, through all its
    # writes (the frozen intervention adds its decoder rows to every later MLP output independently of tracing)
    logit = g.slices()["logit"].start
    j = max(src, key=lambda i: abs(g.adjacency[logit, i]))
    check_frozen_ablation(tiny3, clt, pair[0][:1], g, j)
    assert abs(g.adjacency[logit, j] - g_own.adjacency[g_own.slices()["logit"].start, index_own[key(g, j)]]) > 1e-4
    # the nodes are the same features either way (the activations do not depend on the decoders)
    assert set(index_own) == {key(g, j) for j in range(g.n_features)}


def test_the_clt_splice_rebuilds_each_layer_from_every_earlier_one(tiny3, pair):
    """Spliced into the model, the set's reconstruction of each MLP output equals its own ``decode`` of the
    latents of that layer and every earlier one."""
    clt = random_clt(tiny3)
    tokens = pair[0][:1]
    splices = clt.splices(error_term=False)
    names = [clt.latent_hook(l) for l in range(3)] + [f"{clt.hook_out.format(layer=l)}.sae.hook_recons"
                                                       for l in range(3)]
    _, cache = tiny3.run_with_cache(tokens, names, splices=splices)
    z = jnp.stack([cache[clt.latent_hook(l)][0] for l in range(3)])  # [L T F]
    recon = clt.decode(z)
    for l in range(3):
        assert_model_close(cache[f"{clt.hook_out.format(layer=l)}.sae.hook_recons"][0, 1:], recon[l, 1:], tiny3,
                           f"layer {l} reconstruction")


def test_trained_skip_transcoders_keep_their_skip_term(tiny3, tmp_path):
    from interp.sae import train_transcoders

    tokens = np.random.default_rng(0).integers(0, tiny3.d_vocab, size=(32, 16)).astype(np.int32)
    tc, _ = train_transcoders(tiny3, width=32, k=4, total_tokens=40 * 8 * 15, corpus=tokens, context_size=16,
                              model_batch=8, lr=1e-2, out_dir=tmp_path / "set", progress=False, skip=True)
    for d in tc.dictionaries:
        assert d.cfg.skip and float(jnp.abs(d.W_skip).max()) > 1e-3  # trained from zero
    back = G.Transcoders.load(tmp_path / "set")
    np.testing.assert_array_equal(np.asarray(back.dictionaries[2].W_skip), np.asarray(tc.dictionaries[2].W_skip))
    # the skip term is part of each layer's reconstruction in the spliced model
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, tiny3.d_model)), jnp.float32)
    d = back.dictionaries[1]
    np.testing.assert_allclose(np.asarray(d(x)), np.asarray(d.decode(d.encode(x)) + x @ d.W_skip), rtol=1e-5,
                               atol=1e-6)
