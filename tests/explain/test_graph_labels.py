"""Explanations on attribution graphs: feature nodes are described on hover and supernodes named after their
members' explanations (a tiny model with random transcoders)."""

from __future__ import annotations

from interp.circuits.graph import auto_supernodes, trace
from interp.explain import label_graph
from interp.features import graph_cards
from interp.viz.figures import graph_figure
from tests.conftest import random_tokens, random_transcoders


def test_graph_nodes_and_supernodes_take_explanations(tiny3):
    tc = random_transcoders(tiny3)
    prompt = random_tokens(tiny3.d_vocab, (1, 7), seed=4)
    graph = trace(tiny3, tc, prompt[0], max_logits=3)
    groups = auto_supernodes(graph, tc.dictionaries, threshold=0.0)
    assert groups
    s = graph.slices()["feature"]
    feats = list(range(s.start, s.stop))
    layers = {int(graph.feature_layer[i - s.start]) for i in feats}
    # every latent of a layer explained, except latent 0
    expl = {l: {f: f"feature {f} of layer {l}" for f in range(1, 24)} for l in layers}
    notes = label_graph(graph, expl)
    for i in feats:
        l, f = int(graph.feature_layer[i - s.start]), int(graph.feature_id[i - s.start])
        assert notes.get(i) == (f"feature {f} of layer {l}" if f else None)
    # supernodes keep their members; the names come from a member's explanation, layer span and size
    assert sorted(map(sorted, graph.supernodes.values())) == sorted(map(sorted, groups.values()))
    for name, members in graph.supernodes.items():
        explained = [notes[m] for m in members if m in notes]
        if explained:
            assert name.split(" (")[0] in explained and name.endswith(f", {len(members)})")
    # hover text shows the explanation
    fig = graph_figure(graph, pruned=False)
    texts = [t for tr in fig.data for t in (tr.text or []) if isinstance(t, str)]
    assert any(notes[i] in t for t in texts for i in list(notes)[:1])
    # dashboards of graph features carry their layer's explanations
    cards = graph_cards(tiny3, tc, graph, random_tokens(tiny3.d_vocab, (6, 10), seed=6), explanations=expl)
    for i, card in cards.items():
        assert card.explanation == notes.get(i)
