"""Explanations on attribution graphs: each kept feature node is described by its latent's explanation, and
supernodes are named after what their members share."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping


def _texts(explanations) -> dict[int, str]:
    if explanations is None:
        return {}
    if hasattr(explanations, "labels"):
        return explanations.labels(scores=False)
    return {int(k): v for k, v in explanations.items() if v}


def label_graph(graph, explanations: Mapping, *, name_supernodes: bool = True, width: int = 48) -> dict[int, str]:
    """Describe ``graph``'s feature nodes with ``explanations`` (layer -> that layer's transcoder explanations: an
    :class:`~interp.explain.Explanations` or latent -> text). The descriptions are stored in
    ``graph.info["explanations"]`` (node -> text; saved with the graph, shown on hover) and returned. With
    ``name_supernodes``, each supernode is renamed after its members' most common explanation (ties: the member
    with the largest activation), cut to ``width`` characters, keeping its layer range and size: ``"the token
    \\" Paris\\" (L3-5, 4)"``. Supernodes with no explained member keep their names."""
    by_layer = {int(l): _texts(e) for l, e in explanations.items()}
    s = graph.slices()["feature"]
    notes: dict[int, str] = {}
    for i in range(s.start, s.stop):
        j = i - s.start
        text = by_layer.get(int(graph.feature_layer[j]), {}).get(int(graph.feature_id[j]))
        if text:
            notes[i] = text
    graph.info["explanations"] = {str(i): t for i, t in notes.items()}
    if name_supernodes and graph.supernodes:
        renamed = {}
        for name, members in graph.supernodes.items():
            texts = [notes[m] for m in members if m in notes]
            if not texts:
                new = name
            else:
                counts = Counter(texts)
                best = max(counts.values())
                tied = {t for t, c in counts.items() if c == best}
                top = max((m for m in members if notes.get(m) in tied),
                          key=lambda m: graph.feature_act[m - s.start])
                text = notes[top]
                text = text if len(text) <= width else text[: width - 1] + "…"
                layers = sorted({int(graph.feature_layer[m - s.start]) for m in members})
                span = f"L{layers[0]}" if layers[0] == layers[-1] else f"L{layers[0]}-{layers[-1]}"
                new = f"{text} ({span}, {len(members)})"
            while new in renamed:
                new += "'"
            renamed[new] = members
        graph.supernodes = renamed
    return notes
