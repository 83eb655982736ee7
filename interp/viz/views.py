"""The computations behind each view, shared by the notebook widgets (:mod:`interp.widgets`) and the static
report (:mod:`interp.report`). Each ``*_view`` function returns a list of report parts: plotly figures (or their
plain data, :class:`interp.viz.figures.FigureSpec`), :class:`HTML` fragments and :class:`Linked` figures (a figure
whose clicked markers reveal a panel)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from interp.viz.figures import (
    FigureSpec,
    attention_figure,
    decomposition_figure,
    dla_figure,
    edge_circuit_figure,
    escape,
    feature_card_html,
    graph_figure,
    head_scores_figure,
    histogram_figure,
    intervention_figure,
    lens_cells,
    lens_figure,
    monitor_figure,
    monitor_html,
    patching_figure,
    probe_sweep_figure,
    token_strings,
    training_figure,
)

if TYPE_CHECKING:
    from interp.features import FeatureCard


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

    _, strs, p, labels = lens_cells(logit_lens(model, tokens, scale=scale), 0, model)
    return strs, p, labels


def _tokens(model, prompt):
    tokens, _, _ = model.check_inputs(prompt, None, None)
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
    from interp.circuits.lens import logit_lens

    tokens, _ = _tokens(model, prompt)
    lens = logit_lens(model, tokens, scale=scale)
    if answer is None:
        answer = int(np.asarray(model(tokens)[0, -1]).argmax())
    elif isinstance(answer, str):
        answer = model.to_single_token(answer)
    dla = direct_logit_attribution(model, tokens, np.array([answer]), per=per)
    name = token_strings(model, [answer])[0]
    return [lens_figure(lens, tokenizer=model),
            dla_figure(dla, title=f"Direct logit attribution of {name!r} at the last position", top=top)]


def patching_view(result, *, normalized: bool = True) -> list:
    """A patching or attribution sweep: its figure."""
    return [patching_figure(result, normalized=normalized)]


def feature_view(card) -> list:
    """A feature card: its HTML (contexts, statistics) and figures (histogram, logit effects)."""
    return [HTML(feature_card_html(card)), *card.figure_specs()]


def training_view(history) -> list:
    """Training curves of a ``TrainResult`` or of its ``history`` rows (x axis: tokens when recorded)."""
    history = list(getattr(history, "history", history))
    return [training_figure(history, x="tokens" if history and "tokens" in history[0] else "step",
                            title="Dictionary training")]


def graph_view(graph, cards: dict[int, FeatureCard] | None = None, *, pruned: bool = True) -> list:
    """The attribution graph; clicking a feature node shows its card (``cards`` maps node index to card)."""
    scores = graph.scores(pruned=pruned and graph.node_mask is not None)
    fig = graph_figure(graph, pruned=pruned, title=f"Attribution graph: replacement {scores['replacement']:.2f}, "
                                                   f"completeness {scores['completeness']:.2f}")
    panels = {int(i): feature_card_html(c) for i, c in (cards or {}).items()}
    return [Linked(fig, panels, hint="Click a feature node to show its top-activating contexts.")]


def monitor_view(generation, rows: Sequence[int] | None = None, *, figure: bool = True) -> list:
    """A generation with monitors (``model.generate(..., monitors=[...])``): for each row (default: all, at most
    eight), its tokens shaded by each monitor's score, flagged tokens outlined, and a figure of the scores by
    position."""
    g = generation
    if not g.monitor_scores:
        return [HTML("".join(f"<p>{escape(t)}</p>" for t in g.texts or []))]
    rows = range(min(len(g.tokens), 8)) if rows is None else rows
    parts: list = []
    for b in rows:
        strs = g.str_tokens[b] if g.str_tokens else token_strings(None, g.tokens[b])
        scores = {name: s[b] for name, s in g.monitor_scores.items()}
        mask = g.attention_mask[b]
        title = f"row {b}" + (f": stopped by {g.stopped_by[b]}" if g.stopped_by and g.stopped_by[b] else "")
        parts.append(HTML(monitor_html(strs, scores, g.monitor_thresholds, prompt_length=g.prompt_length, mask=mask,
                                       title=title)))
        if figure:
            parts.append(monitor_figure(strs, scores, g.monitor_thresholds, prompt_length=g.prompt_length,
                                        title=f"Monitor scores, row {b}"))
    return parts


def graph_explorer_view(model, transcoders, graph, tokens=None, explanations=None, indices=None) -> list:
    """The static form of the graph explorer: the graph, with each kept feature's dashboard on click
    (``explanations``: layer -> that transcoder's explanations, shown on the cards; ``indices``: layer -> a
    FeatureIndex already built over ``tokens``, reused instead of another model pass)."""
    from interp.features import graph_cards

    cards = (graph_cards(model, transcoders, graph, tokens, indices=indices, explanations=explanations)
             if tokens is not None else None)
    return graph_view(graph, cards)


# ---------------------------------------------------------------------------------------------- any result
def summary_html(result) -> HTML:
    """A result's summary table (its ``_repr_html_``), as a report part."""
    return HTML(result._repr_html_())


def _dla_parts(r) -> list:
    parts = [dla_figure(r)]
    if r.values.shape[2] >= 2:
        parts.append(dla_figure(r, foil=1))
    return parts


def _prompt_set_table(ps, limit: int = 50) -> HTML:
    answers = token_strings(ps.tokenizer, ps.answer[:limit])
    wrongs = token_strings(ps.tokenizer, ps.wrong[:limit])
    rows = "".join(f"<tr><td>{i}</td><td>{escape(c)}</td><td>{escape(k)}</td><td>{escape(a)}</td>"
                   f"<td>{escape(w)}</td></tr>"
                   for i, (c, k, a, w) in enumerate(zip(ps.clean_text, ps.corrupted_text, answers, wrongs)))
    more = f'<p class="note">{len(ps) - limit} more prompts not shown</p>' if len(ps) > limit else ""
    return HTML('<table class="kv"><tr><th>#</th><th>clean</th><th>corrupted</th><th>answer</th><th>wrong</th></tr>'
                f"{rows}</table>{more}")


def _metrics_table(metrics: dict) -> HTML:
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(f'{v:.6g}' if isinstance(v, float) else v)}</td></tr>"
                   for k, v in metrics.items())
    return HTML(f'<table class="kv">{rows}</table>')


def _train_parts(r) -> list:
    last = r.history[-1] if r.history else {}
    facts = {"dictionary": type(r.dictionary).__name__, "output folder": str(r.out_dir) if r.out_dir else "(none)",
             "input scale": float(r.scale), **{f"final {k}": v for k, v in last.items() if isinstance(v, (int, float))}}
    return [_metrics_table(facts), *training_view(r)]


def _views() -> list[tuple[type, object]]:
    """(result type, function -> report parts); the first type an item is an instance of decides."""
    from interp.circuits import Decomposition, DLAResult, EdgeResult, HeadScores, LensResult, PatchResult, PromptSet
    from interp.circuits.graph import Graph, Intervention
    from interp.explain import Explanations
    from interp.features import FeatureCard, FeatureIndex
    from interp.models.generate import Generation
    from interp.probes import SweepResult
    from interp.sae import CrosscoderDiff, DictionaryMetrics, TrainResult

    return [
        (PatchResult, lambda r: [summary_html(r), *patching_view(r)]),
        (LensResult, lambda r: [summary_html(r), lens_figure(r)]),
        (DLAResult, lambda r: [summary_html(r), *_dla_parts(r)]),
        (Decomposition, lambda r: [summary_html(r), decomposition_figure(r)]),
        (HeadScores, lambda r: [summary_html(r), head_scores_figure(r)]),
        (EdgeResult, lambda r: [summary_html(r), edge_circuit_figure(r)]),
        (Graph, lambda r: [summary_html(r), *graph_view(r)]),
        (Intervention, lambda r: [summary_html(r), intervention_figure(r)]),
        (PromptSet, lambda r: [summary_html(r), _prompt_set_table(r)]),
        (FeatureCard, feature_view),
        (FigureSpec, lambda r: [r]),
        (FeatureIndex, lambda r: [summary_html(r)]),
        (DictionaryMetrics, lambda r: [_metrics_table({k: v for k, v in r.as_dict().items() if v is not None})]),
        (TrainResult, _train_parts),
        (CrosscoderDiff, lambda r: [summary_html(r), crosscoder_norms_figure(r)]),
        (SweepResult, lambda r: [summary_html(r), probe_sweep_figure(r)]),
        (Explanations, lambda r: [summary_html(r), *r.figures(), explanations_table(r)]),
        (Generation, lambda r: [summary_html(r), *monitor_view(r)]),
    ]


def crosscoder_norms_figure(diff, bins: int = 20):
    """How a crosscoder's latents split between its two models: the histogram of relative decoder norms (near 0:
    the first model only, near 1: the second only, in between: shared), as Lindsey et al. (2024) plot it."""
    counts, edges = np.histogram(np.asarray(diff.relative_norm), bins=bins, range=(0.0, 1.0))
    a, b = diff.model_names
    return histogram_figure(counts, edges, title="Relative decoder norms", unit="latents",
                            xaxis=f"relative decoder norm (0: {a} only, 1: {b} only)")


def explanations_table(explanations, limit: int = 200) -> HTML:
    """Each latent's explanation with its scores and the shuffled control's, best first (at most ``limit``)."""
    names = explanations.scorer_names()
    first = names[0] if names else None

    def key(r):
        v = r.get("scores", {}).get(first, {}).get("value") if first else None
        return -v if v is not None else 1.0

    rows = []
    for r in sorted(explanations.records, key=key)[:limit]:
        cells = []
        for n in names:
            s, c = r.get("scores", {}).get(n, {}), r.get("control", {}).get(n, {})
            fmt = lambda d: "" if d.get("value") is None else f"{d['value']:.2f}"
            cells.append(f"<td>{fmt(s)}</td><td class=\"note\">{fmt(c)}</td>")
        text = r.get("explanation") or f"({r.get('status')}: {r.get('error') or ''})"
        rows.append(f"<tr><td>{r['latent']}</td><td>{escape(text)}</td>{''.join(cells)}</tr>")
    head = "".join(f"<th>{escape(n.split(':')[0])}</th><th>control</th>" for n in names)
    more = (f'<p class="note">{len(explanations.records) - limit} more latents not shown</p>'
            if len(explanations.records) > limit else "")
    return HTML(f'<table class="kv"><tr><th>latent</th><th>explanation</th>{head}</tr>{"".join(rows)}</table>{more}')


def result_view(item) -> list | None:
    """The report parts (summary table, figures) of any result the library returns, or ``None`` for an object
    that is not one. A result type not listed here but built on :class:`interp.results.Result` shows its summary
    table."""
    from interp.results import Result

    for cls, view in _views():
        if isinstance(item, cls):
            return view(item)
    if isinstance(item, Result):
        return [summary_html(item)]
    return None
