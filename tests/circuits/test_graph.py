"""Attribution graphs: the replacement model is exact, edges sum to their targets, pruning/scores/supernodes,
files, interventions, and the known path of a toy model trained on a lookup task."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from interp.circuits import graph as G
from tests.conftest import random_transcoders
from tests.numerics import assert_model_close


@pytest.fixture(scope="module")
def tc(tiny3):
    return random_transcoders(tiny3)


@pytest.fixture(scope="module")
def traced(tiny3, tc, pair):
    return G.trace(tiny3, tc, pair[0][0], max_feature_nodes=10_000, max_logits=3, batch_size=8)


def test_replacement_reproduces_the_model(tiny3, tc, pair):
    tokens = pair[0][:1]
    frozen = G.intervene(tiny3, tc, tokens, [], mode="frozen")
    assert_model_close(frozen.after, frozen.before, tiny3, "frozen replacement")
    real = G.intervene(tiny3, tc, tokens, [], mode="real")
    assert_model_close(real.after, real.before, tiny3, "spliced model")


def _targets(model, tc, tokens, graph, zero_sources):
    """Feature pre-activations (minus b_enc) and logits minus their mean in the replacement model (any set: per-layer,
    skip or cross-layer), with every source written as in the run or with every source zeroed (what the decoder
    biases and skip terms alone give)."""
    _, cache = model.run_with_cache(tokens, G._frozen_names(model, tc))
    frozen = {n: cache[n] for n in cache if n.endswith("hook_scale") or n.endswith("attn.hook_pattern")}
    L = model.n_layers
    n2 = jnp.stack([cache[tc.hook_in.format(layer=l)] for l in range(L)])
    if zero_sources:
        embed = jnp.zeros_like(cache["hook_embed"])
        writes = jnp.broadcast_to(tc.output_bias()[:, None, None], (L,) + cache["hook_embed"].shape)
    else:
        embed = cache["hook_embed"]
        writes = jnp.stack([cache[tc.hook_out.format(layer=l)] - tc.skip(l, n2[l]) for l in range(L)])
    n2, _, logits = G.frozen_forward(model, tc, tokens, frozen, embed, writes)
    feats = np.array([float(n2[l, 0, p] @ tc.encoder_direction(int(l), int(f)))
                      for l, p, f in zip(graph.feature_layer, graph.feature_pos, graph.feature_id)])
    last = np.asarray(logits[0, -1])
    return feats, last[graph.logit_tokens] - last.mean()


def check_frozen_ablation(model, tc, tokens, g, j: int) -> None:
    """Ablating feature node ``j`` in the frozen replacement model moves the top logit by exactly its edge; in the
    real (spliced) model it moves the logits too."""
    logit_node = g.slices()["logit"].start
    res = G.intervene(model, tc, tokens, G.feature_changes(g, [j], 0.0), mode="frozen")
    v = g.logit_tokens[0]
    moved = (res.after[v] - res.after.mean()) - (res.before[v] - res.before.mean())
    assert moved == pytest.approx(-g.adjacency[logit_node, j], rel=1e-3, abs=1e-5)
    real = G.intervene(model, tc, tokens, G.feature_changes(g, [j], 0.0), mode="real")
    assert np.abs(real.after - real.before).max() > 1e-6


def test_edges_sum_to_their_targets(tiny3, tc, pair, traced):
    g = traced
    tokens = pair[0][:1]
    # every active feature that can reach the logits is traced (the rest sit where nothing reads them)
    assert 0 < g.n_features <= g.info["n_active_features"]
    assert (g.feature_layer < 2).any() and set(g.feature_pos[g.feature_layer == 2]) == {5}
    full, const = _targets(tiny3, tc, tokens, g, False), _targets(tiny3, tc, tokens, g, True)
    s = g.slices()
    n = g.adjacency.shape[1]
    assert_model_close(g.adjacency[s["feature"]].sum(1) + const[0], full[0], tiny3, "feature inputs", terms=n)
    assert_model_close(g.adjacency[s["logit"]].sum(1) + const[1], full[1], tiny3, "logit inputs", terms=n)
    # feature activations match the transcoders run on the model's own MLP inputs
    _, cache = tiny3.run_with_cache(tokens, [tc.hook_in.format(layer=l) for l in range(3)])
    for j in range(0, g.n_features, 7):
        l, p, f = g.feature_layer[j], g.feature_pos[j], g.feature_id[j]
        a = tc.dictionaries[l].encode(cache[tc.hook_in.format(layer=int(l))][0, p])[f]
        assert float(a) == pytest.approx(float(g.feature_act[j]), rel=1e-5)
    # edges only go forward: no feature drives one at its own or an earlier layer, nor a later position
    for t in range(g.n_features):
        for src in np.flatnonzero(g.adjacency[t, s["feature"]]):
            assert g.feature_layer[src] < g.feature_layer[t] and g.feature_pos[src] <= g.feature_pos[t]


def test_frozen_forward_up_to_a_layer(tiny3, tc, pair):
    """With ``top`` only blocks 0..top run: their transcoder inputs, and gradients of what reads them, are those of
    the whole replacement model; the inputs above come back as zeros."""
    import jax

    tokens = pair[0][:1]
    _, cache = tiny3.run_with_cache(tokens, G._frozen_names(tiny3, tc))
    frozen = {n: cache[n] for n in cache if n.endswith("hook_scale") or n.endswith("attn.hook_pattern")}
    L = tiny3.n_layers
    writes = jnp.stack([cache[tc.hook_out.format(layer=l)] for l in range(L)])
    full, final, logits = G.frozen_forward(tiny3, tc, tokens, frozen, cache["hook_embed"], writes)
    probe = jax.random.normal(jax.random.key(0), full.shape[-1:])

    def read(top, layer):
        def f(e, w):
            n2 = G.frozen_forward(tiny3, tc, tokens, frozen, e, w, top)[0]
            return jnp.sum(n2[layer, 0] @ probe)
        return jax.grad(f, argnums=(0, 1))(cache["hook_embed"], writes)

    for top in range(L):
        n2, _, _ = jax.jit(lambda t: G.frozen_forward(tiny3, tc, tokens, frozen, cache["hook_embed"], writes, t))(top)
        np.testing.assert_allclose(n2[:top + 1], full[:top + 1], rtol=1e-6, atol=1e-6)
        assert not np.asarray(n2[top + 1:]).any()
        for a, b in zip(jax.tree.leaves(read(jnp.asarray(top), top)), jax.tree.leaves(read(None, top))):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    _, final_top, logits_top = G.frozen_forward(tiny3, tc, tokens, frozen, cache["hook_embed"], writes, L)
    np.testing.assert_allclose(logits_top, logits, rtol=1e-5, atol=1e-5)


def test_reranking_every_few_batches_keeps_the_edges(tiny3, tc, pair, traced):
    """Every feature traced either way: re-ranking after every batch of 4 gives the same graph, node for node, as
    re-ranking every 4 batches of 8 (each sorted by layer, so most skip the upper blocks)."""
    g = G.trace(tiny3, tc, pair[0][0], max_feature_nodes=10_000, max_logits=3, batch_size=4, rerank_every=1)
    key = lambda gr: list(zip(gr.feature_layer.tolist(), gr.feature_pos.tolist(), gr.feature_id.tolist()))  # noqa: E731
    where = {k: i for i, k in enumerate(key(g))}
    assert sorted(where) == sorted(key(traced))
    F = traced.n_features
    order = np.r_[[where[k] for k in key(traced)], np.arange(F, g.adjacency.shape[0])]
    np.testing.assert_allclose(g.adjacency[np.ix_(order, order)], traced.adjacency, rtol=1e-4, atol=1e-5)


def test_frozen_ablation_moves_a_logit_by_its_edge(tiny3, tc, pair, traced):
    g = traced
    j = int(np.argmax(np.abs(g.adjacency[g.slices()["logit"].start, : g.n_features])))
    check_frozen_ablation(tiny3, tc, pair[0][:1], g, j)


def test_tracing_influence_is_the_sum_over_paths():
    """The influence that picks the next targets: direct effect on the logits plus every path through traced
    features, checked against summing the paths one length at a time."""
    from interp.circuits.graph._trace import _Rows

    rng = np.random.default_rng(0)
    K, F, cols = 3, 12, 40
    visited = list(rng.permutation(cols)[:F])
    rows = _Rows(K + F, cols, 5, 4)
    for r in range(K + F):
        f = rng.normal(size=(1, cols)).astype(np.float32)
        if r >= K:  # target visited[r - K] only hears from features traced before it (no cycles)
            f[0, visited[r - K:]] = 0.0
        rows.add(f, rng.normal(size=(1, 5)).astype(np.float32), rng.normal(size=(1, 4)).astype(np.float32))
    probs = rng.uniform(size=K)
    direct = probs @ rows.norm[:K]
    step, total = direct.copy(), direct.copy()
    for _ in range(F + 1):  # paths through one more traced feature each round
        step = step[visited] @ rows.norm[K:]
        total += step
    assert np.abs(step).max() == 0.0
    np.testing.assert_allclose(rows.influence(probs, visited), total, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(rows.influence(probs, []), direct, rtol=1e-6)


def test_influence_on_a_hand_built_graph():
    # nodes: f0 f1 | e | emb0 emb1 | logit ; logit <- f1 (w 3) and emb1 (w 1); f1 <- f0 (1), emb0 (1); f0 <- emb0
    a = np.zeros((6, 6))
    a[5, 1], a[5, 4] = 3.0, -1.0
    a[1, 0], a[1, 3] = 1.0, 1.0
    a[0, 3] = 2.0
    w = np.zeros(6)
    w[5] = 1.0
    inf = G._influence(G._normalize(a), w)
    np.testing.assert_allclose(inf, [0.375, 0.75, 0.0, 0.75, 0.25, 0.0])


def _scores_by_inverse(a, w, s):
    """The two scores from the total influence ``w (I - A)^-1 - w`` of the row-normalised |adjacency|."""
    a = np.abs(a)
    sums = a.sum(1, keepdims=True)
    a = np.divide(a, sums, out=np.zeros_like(a), where=sums > 0)
    inf = w @ np.linalg.inv(np.eye(len(w)) - a) - w
    tok, err = inf[s["embed"]].sum(), inf[s["error"]].sum()
    out, fed = inf + w, a.sum(1) > 0
    return tok / (tok + err), ((1 - a[:, s["error"]].sum(1)) * out * fed).sum() / (out * fed).sum()


def test_scores_can_leave_out_the_error_nodes_at_skipped_positions(traced, tmp_path):
    """``skipped_errors=False``: the error nodes at the positions the transcoders skip (the whole MLP output there)
    are taken out of the graph before scoring, as circuit-tracer zeroes their error vectors."""
    g = traced
    skip = g.info["skip_positions"]
    assert skip == 1
    s = g.slices()
    left_out = [s["error"].start + layer * g.n_pos + t for layer in range(g.n_layers) for t in range(skip)]
    assert g.influence()[left_out].sum() > 1e-4  # they carry influence, so leaving them out changes the scores
    a = g.adjacency.copy()
    a[:, left_out] = 0.0
    want = _scores_by_inverse(a, g.logit_weights(), s)
    got = g.scores(pruned=False, skipped_errors=False)
    np.testing.assert_allclose([got["replacement"], got["completeness"]], want, rtol=1e-6)
    full = g.scores(pruned=False)
    np.testing.assert_allclose([full["replacement"], full["completeness"]],
                               _scores_by_inverse(g.adjacency, g.logit_weights(), s), rtol=1e-6)
    assert got["replacement"] > full["replacement"] and got["completeness"] > full["completeness"]
    # the count travels with the saved graph; a graph without it is refused with the fix
    back = G.Graph.load(g.save(tmp_path / "g.json"))
    assert back.scores(pruned=False, skipped_errors=False) == pytest.approx(got)
    back.info.pop("skip_positions")
    with pytest.raises(ValueError, match=r"does not record .* set graph.info\['skip_positions'\]"):
        back.scores(skipped_errors=False)
    back.info["skip_positions"] = 0  # nothing skipped: nothing left out
    assert back.scores(pruned=False, skipped_errors=False) == pytest.approx(full)


def test_prune_scores_supernodes_and_files(tiny3, tc, traced, tmp_path):
    g = traced
    full = g.scores(pruned=False)
    assert 0.0 < full["replacement"] < 1.0 and 0.0 < full["completeness"] < 1.0
    p = G.prune(g, node_threshold=0.5, edge_threshold=0.9)
    s = p.slices()
    assert p.node_mask[s["embed"]].all() and p.node_mask[s["logit"]].all()
    assert 0 < p.node_mask[s["feature"]].sum() < g.n_features
    kept_inf = g.influence()[p.node_mask & (np.arange(g.n_nodes) < s["feature"].stop)]
    dropped_inf = g.influence()[~p.node_mask & (np.arange(g.n_nodes) < s["feature"].stop)]
    assert kept_inf.min() >= dropped_inf.max() - 1e-9
    groups = G.auto_supernodes(p, tc.dictionaries, threshold=0.3)
    for members in groups.values():
        assert len(members) >= 2 and all(p.kind(m) == "feature" and p.node_mask[m] for m in members)
    feats = [i for i in p.kept() if p.kind(i) == "feature"][:2]
    p.group("mine", feats)
    assert p.supernodes["mine"] == feats and all(feats[0] not in v for k, v in p.supernodes.items() if k != "mine")
    with pytest.raises(ValueError, match="not features"):
        p.group("bad", [s["logit"].start])
    path = p.save(tmp_path / "g.json")
    back = G.Graph.load(path)
    np.testing.assert_array_equal(back.adjacency, p.adjacency)
    np.testing.assert_array_equal(back.node_mask, p.node_mask)
    np.testing.assert_array_equal(back.edge_mask, p.edge_mask)
    assert back.supernodes == p.supernodes and back.str_tokens == p.str_tokens
    assert back.scores() == pytest.approx(p.scores())
    import json

    d = json.loads(path.read_text())
    assert {"nodes", "links", "metadata"} <= set(d) and d["links"]
    assert {"node_id", "layer", "ctx_idx", "feature_type", "influence"} <= set(d["nodes"][0])
    with pytest.raises(ValueError, match="no interp graph"):
        (tmp_path / "x.json").write_text('{"nodes": []}')
        G.Graph.load(tmp_path / "x.json")


def test_transcoder_set_roundtrip_and_checks(tiny3, tc, tmp_path):
    tc.save(tmp_path / "tcs")
    back = G.Transcoders.load(tmp_path / "tcs")
    for a, b in zip(tc.dictionaries, back.dictionaries):
        np.testing.assert_array_equal(a.W_enc, b.W_enc)
    with pytest.raises(ValueError, match="expected"):
        G.Transcoders(tuple(reversed(tc.dictionaries)))
    with pytest.raises(ValueError, match="one per layer"):
        G.trace(tiny3, G.Transcoders(tc.dictionaries[:2]), [1, 2, 3])


def test_signed_effect_on_a_hand_built_graph():
    # nodes: f0 f1 | err | emb | logit, one layer and one position
    a = np.zeros((5, 5), np.float32)
    a[4, 1], a[4, 3] = 3.0, -1.0
    a[1, 0], a[1, 3] = 2.0, 1.0
    a[0, 3] = 2.0
    g = G.Graph(np.array([7]), ["x"], np.array([0, 0]), np.array([0, 0]), np.array([5, 6]), np.array([2.0, 4.0]), 1,
                np.array([9]), np.array([1.0]), ["y"], a)
    np.testing.assert_allclose(g.signed_effect(0), [1.5, 3.0, 0.0, 1.25, 0.0])
