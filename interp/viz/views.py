"""The computations behind each view, shared by the notebook widgets (:mod:`interp.widgets`) and the static
report (:mod:`interp.report`). Each ``*_view`` function returns a list of report parts: plotly figures,
:class:`HTML` fragments and :class:`Linked` figures (a figure whose clicked markers reveal a panel)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from interp.viz._figures import (
    attention_figure,
    dla_figure,
    graph_figure,
    lens_figure,
    patching_figure,
    token_strings,
    training_figure,
)
from interp.viz.features import FeatureCard, feature_card_html


@dataclasses.dataclass
class HTML:
    """A trusted HTML fragment (build it with :func:`interp.viz.escape` around any text from outside)."""

    html: str


@dataclasses.dataclass
class Linked:
    """A figure whose markers carry keys in ``customdata``; clicking one shows ``panels[key]`` beneath it."""

    figure: object
    panels: dict
    hint: str = "Click a node to show its details."


# ---------------------------------------------------------------------------------------------- computations
def attention_patterns(model, tokens, layer: int) -> np.ndarray:
    """``[H, T, T]`` attention pattern of one layer for one prompt."""
    name = f"blocks.{layer}.attn.hook_pattern"
    _, cache = model.run_with_cache(tokens, [name], return_logits=False)
    return np.asarray(cache[name][0], np.float32)


def lens_table(model, tokens, scale: str = "own") -> tuple[list[list[str]], np.ndarray, tuple[str, ...]]:
    """Top token (as text) and its probability at every lens row and position of one prompt."""
    from interp.circuits.lens import logit_lens

    lens = logit_lens(model, tokens, scale=scale)
    probs = np.asarray(lens.probs()[:, 0], np.float32)  # [L+1 T V]
    top = probs.argmax(-1)
    strs = [token_strings(model, row) for row in top]
    return strs, np.take_along_axis(probs, top[..., None], -1)[..., 0], lens.labels


def _tokens(model, prompt):
    tokens, _, _ = model._check_inputs(prompt, None, None)
    if tokens.shape[0] != 1:
        raise ValueError(f"a view shows one prompt; got a batch of {tokens.shape[0]}")
    return tokens, token_strings(model, tokens[0])


# ---------------------------------------------------------------------------------------------- views
def attention_view(model, prompt, layer: int, heads: Sequence[int] | None = None) -> list:
    tokens, strs = _tokens(model, prompt)
    pattern = attention_patterns(model, tokens, layer)
    heads = list(range(pattern.shape[0])) if heads is None else list(heads)
    return [attention_figure(strs, pattern[heads], head_labels=[f"L{layer}H{h}" for h in heads],
                             title=f"Attention patterns, layer {layer}")]


def lens_view(model, prompt, *, answer: str | int | None = None, scale: str = "own", per: str = "layer",
              top: int = 30) -> list:
    """Logit lens over every layer and position, and the direct logit attribution of ``answer`` (default: the
    model's top prediction) at the last position."""
    from interp.circuits.dla import direct_logit_attribution

    tokens, strs = _tokens(model, prompt)
    top_strs, top_p, labels = lens_table(model, tokens, scale)
    if answer is None:
        answer = int(np.asarray(model(tokens)[0, -1]).argmax())
    elif isinstance(answer, str):
        answer = model.to_single_token(answer)
    dla = direct_logit_attribution(model, tokens, np.array([answer]), per=per)
    name = token_strings(model, [answer])[0]
    return [lens_figure(strs, top_strs, top_p, labels, title=f"Logit lens ({scale} scale)"),
            dla_figure(dla, title=f"Direct logit attribution of {name!r} at the last position", top=top)]


def patching_view(result, *, normalized: bool = True) -> list:
    return [patching_figure(result, normalized=normalized)]


def feature_view(card: FeatureCard) -> list:
    return [HTML(feature_card_html(card)), *card.figures()]


def training_view(history: Sequence[dict]) -> list:
    return [training_figure(history, x="tokens" if history and "tokens" in history[0] else "step",
                            title="Dictionary training")]


def graph_view(graph, cards: dict[int, FeatureCard] | None = None, *, pruned: bool = True) -> list:
    """The attribution graph; clicking a feature node shows its card (``cards`` maps node index to card)."""
    scores = graph.scores(pruned=pruned and graph.node_mask is not None)
    fig = graph_figure(graph, pruned=pruned, title=f"Attribution graph: replacement {scores['replacement']:.2f}, "
                                                   f"completeness {scores['completeness']:.2f}")
    panels = {int(i): feature_card_html(c) for i, c in (cards or {}).items()}
    return [Linked(fig, panels, hint="Click a feature node to show its top-activating contexts.")]


def graph_cards(model, transcoders, graph, tokens, *, indices: dict | None = None) -> dict[int, FeatureCard]:
    """Dashboards of every kept feature node of ``graph`` over ``tokens [N, T]``; the layers' indices come from
    one model pass (``indices``, layer -> FeatureIndex, is filled in and reused)."""
    from interp.viz.features import feature_card, feature_indices

    indices = {} if indices is None else indices
    s = graph.slices()["feature"]
    feats = [int(i) for i in graph.kept() if graph.kind(int(i)) == "feature"]
    missing = sorted({int(graph.feature_layer[i - s.start]) for i in feats} - set(indices))
    if missing:
        indices.update(feature_indices(
            model, {l: (transcoders.dictionaries[l], transcoders.hook_in.format(layer=l)) for l in missing}, tokens,
            skip_positions=transcoders.skip_positions))
    cards = {}
    for i in feats:
        l, f = int(graph.feature_layer[i - s.start]), int(graph.feature_id[i - s.start])
        cards[i] = feature_card(model, transcoders.dictionaries[l], indices[l], f, label=graph.label(i), n_contexts=6)
    return cards


def graph_explorer_view(model, transcoders, graph, tokens=None) -> list:
    """The static form of the graph explorer: the graph, with each kept feature's dashboard on click."""
    return graph_view(graph, graph_cards(model, transcoders, graph, tokens) if tokens is not None else None)
