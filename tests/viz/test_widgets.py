"""Widget logic without a browser: each control change (or a click message shaped as the front end sends it)
runs the right computation in the kernel, checked against the library computed directly."""

from __future__ import annotations

import html

import numpy as np
import pytest

pytest.importorskip("ipywidgets")

from interp import sae
from interp import widgets as W
from interp.circuits import direct_logit_attribution, patch
from interp.circuits.graph import feature_changes, intervene, prune, trace
from interp.viz import views
from tests.conftest import random_tokens, random_transcoders


def click(figure, trace_index: int, point_index) -> None:
    """Deliver a plotly_click message to a FigureWidget, as its front end does."""
    figure._handler_js2py_pointsCallback({"new": {
        "event_type": "plotly_click",
        "points": {"xs": [0], "ys": [0], "point_indexes": [point_index], "trace_indexes": [trace_index]}}})


@pytest.fixture(scope="module")
def prompt(tiny3):
    return random_tokens(tiny3.d_vocab, (1, 9), seed=5)


def test_attention_view_follows_layer_and_head(tiny3, prompt):
    view = W.AttentionView(tiny3, prompt)
    _, cache = tiny3.run_with_cache(prompt, ["blocks.2.attn.hook_pattern"])
    view.layer.value = 2
    view.head.value = 3
    np.testing.assert_allclose(np.asarray(view.figure.data[0].z), np.asarray(cache["blocks.2.attn.hook_pattern"][0, 3]),
                               rtol=1e-6)
    assert "L2H3" in view.figure.layout.title.text
    (fig,) = view.static()
    assert len(fig.data) == tiny3.blocks[2].attn.n_heads  # every head, switched by the figure's own menu


def test_lens_view_recomputes_dla_for_a_typed_answer(tiny3, prompt):
    view = W.LensView(tiny3, prompt)
    view.answer.value = "#17"
    ref = direct_logit_attribution(tiny3, prompt, np.array([17]))
    np.testing.assert_allclose(view.dla.values, ref.values, rtol=1e-6)
    bars = view.dla_figure.data[0]
    np.testing.assert_allclose(sorted(np.asarray(bars.x)), sorted(ref.values[:, 0, 0]), rtol=1e-6)
    view.scale.value = "final"
    _, p, _ = views.lens_table(tiny3, prompt, "final")
    np.testing.assert_allclose(np.asarray(view.lens_figure.data[0].z), p, rtol=1e-6)
    view.answer.value = "not a token"  # no tokenizer: a readable message, no exception
    assert "tokenizer" in view.message.value


def test_first_figures_are_in_the_widget_state(tiny3, prompt):
    """A view's first figures travel in its widgets' synced state, not only in an update message: a front end that
    draws the view after that message went by (a slow browser) still shows them."""
    view = W.AttentionView(tiny3, prompt, layer=1, head=2)
    assert "L1H2" in view.figure._widget_layout["title"]["text"] and len(view.figure._widget_data) == 1
    lens = W.LensView(tiny3, prompt, answer="#17")
    assert lens.lens_figure._widget_data and lens.dla_figure._widget_data


def test_patching_view_click_reads_the_cell(tiny3):
    clean = random_tokens(tiny3.d_vocab, (2, 6), seed=11)
    corrupted = clean.copy()
    corrupted[:, 1] = (clean[:, 1] + 7) % tiny3.d_vocab

    def metric(logits):
        return (logits[:, -1, 3] - logits[:, -1, 4]).mean()

    res = {"z": patch(tiny3, clean, corrupted, metric, "z", per="head"),
           "resid": patch(tiny3, clean, corrupted, metric, "resid_pre")}
    view = W.PatchingView(res)
    click(view.figure, 0, [1, 2])  # heatmap points arrive as [row, column]
    norm = res["z"].normalized()
    assert f"{norm[1, 2]:.4f}" in view.selected.value and "head" in view.selected.value
    view.normalized.value = False
    click(view.figure, 0, [2, 0])
    assert f"{res['z'].effect[2, 0]:.4f}" in view.selected.value
    view.which.value = "resid"
    assert np.asarray(view.figure.data[0].z).shape == res["resid"].values.shape
    assert len(view.static()) == 2


def test_feature_dashboard_cards_match_the_dictionary(tiny3):
    tc = random_transcoders(tiny3, width=32, k=4)
    d, hook = tc.dictionaries[1], tc.hook_in.format(layer=1)
    tokens = random_tokens(tiny3.d_vocab, (6, 10), seed=2)
    dash = W.FeatureDashboard(tiny3, d, tokens=tokens, hook=hook)
    _, cache = tiny3.run_with_cache(tokens, [hook])
    z = np.asarray(d.encode(cache[hook]))  # [N T M], computed here directly
    start = dash.latent.value
    nxt = dash.step()
    alive = np.flatnonzero((z > 0).any(axis=(0, 1)))
    assert nxt == (alive[alive > start][0] if (alive > start).any() else alive[0])
    card = dash.current
    assert card.latent == nxt
    np.testing.assert_allclose(card.max_act, z[..., nxt].max(), rtol=1e-5)
    assert card.n_active == int((z[..., nxt] > 0).sum())
    top = card.contexts[0]
    assert top["acts"][top["center"]] == pytest.approx(z[top["row"], top["pos"], nxt], rel=1e-5)
    assert f'data-latent="{nxt}"' in dash.card_html.value
    assert sum(dash.hist.data[0].y) == card.n_active
    # explanations (an explain run over the dashboard's own index) show on the cards, with any scores
    from interp.explain import explain_latents

    res = explain_latents(tiny3, d, dash.index, [int(nxt)])
    with_expl = W.FeatureDashboard(tiny3, d, index=dash.index, latent=int(nxt), explanations=res)
    text = res.text(int(nxt))
    assert text and html.escape(res.labels()[int(nxt)]) in with_expl.card_html.value


def test_graph_explorer_click_and_intervention(tiny3, prompt):
    tc = random_transcoders(tiny3)
    graph = prune(trace(tiny3, tc, prompt[0], max_logits=3))
    tokens = random_tokens(tiny3.d_vocab, (6, 10), seed=3)
    ex = W.GraphExplorer(tiny3, tc, graph, tokens=tokens)
    feats = [int(i) for i in graph.kept() if graph.kind(int(i)) == "feature"]
    assert feats, "the pruned graph kept no feature"
    t = next(i for i, tr in enumerate(ex.figure.data) if tr.name == "feature")
    node = feats[0]
    click(ex.figure, t, list(ex.figure.data[t].customdata).index(node))
    assert ex.selected == node
    assert graph.label(node).replace("'", "&#x27;") in ex.info.value and "feature-card" in ex.info.value
    ex.scale.value = 0.0
    iv = ex.intervene()
    ref = intervene(tiny3, tc, prompt, feature_changes(graph, [node], 0.0))
    np.testing.assert_allclose(iv.after, ref.after, rtol=1e-5, atol=1e-5)
    shown = {tr.name: np.asarray(tr.y) for tr in ex.logits.data}
    tok = int(graph.logit_tokens[0])
    assert shown["after"][0] == pytest.approx(ref.after[tok], rel=1e-5, abs=1e-5)
    # a supernode target ablates all its members at once
    graph.group("pair", feats[:2])
    ex2 = W.GraphExplorer(tiny3, tc, graph, tokens=tokens)
    ex2.target.value = "pair"
    iv2 = ex2.intervene()
    ref2 = intervene(tiny3, tc, prompt, feature_changes(graph, feats[:2], 0.0))
    np.testing.assert_allclose(iv2.after, ref2.after, rtol=1e-5, atol=1e-5)
    # without a selection, apply explains what to do
    ex3 = W.GraphExplorer(tiny3, tc, graph)
    assert ex3.intervene() is None and "select a feature node" in ex3.result.value
    static = ex.static()
    assert set(static[0].panels) == set(feats)


def test_training_monitor_tracks_sae_training(tiny3):
    hook = "blocks.1.hook_resid_post"
    _, cache = tiny3.run_with_cache(random_tokens(tiny3.d_vocab, (16, 16), seed=4), [hook])
    x = np.asarray(cache[hook]).reshape(-1, tiny3.d_model)
    cfg = sae.TrainConfig(sae.TopKConfig(d_in=tiny3.d_model, width=32, k=4, hook_name=hook),
                          total_tokens=8 * 256, batch_size=256, eval_every=2)
    store = sae.ArrayActivationStore(x, batch_size=256)
    seen = []
    mon = W.TrainingMonitor(every=2)
    hist = sae.train(cfg, store=store, progress=False, callback=lambda s, m, d: (seen.append(m), mon(s, m, d)))
    assert len(mon.history) == 4 and [r["step"] for r in mon.history] == [2, 4, 6, 8]
    np.testing.assert_allclose(mon.history[-1]["loss"], np.mean([m["loss"] for m in seen[-2:]]), rtol=1e-6)
    loss_trace = mon.figure.data[0]
    np.testing.assert_allclose(loss_trace.y, [r["loss"] for r in mon.history])
    np.testing.assert_allclose([r["loss"] for r in hist.history], [r["loss"] for r in mon.history], rtol=1e-6)
    assert "step 8" in mon.status.value
