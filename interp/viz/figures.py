"""Plain plotly figures for the results of ``interp`` (no widgets, no kernel): they render in a notebook, in a
widget (wrapped by :mod:`interp.widgets`) and in a self-contained report (:mod:`interp.report`).

Every token string goes through :func:`escape` before plotly sees it: plotly reads a few HTML tags in text, so
a token such as ``<b>`` or ``<script>`` would otherwise be interpreted instead of shown.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np

from interp.results import token_strings

DIVERGING = "RdBu"  # red for negative, blue for positive; centred at zero with zmid=0


def escape(s: str) -> str:
    """A token or label as display text: HTML-escaped, with newlines and tabs made visible."""
    return html.escape(str(s).replace("\n", "\\n").replace("\t", "\\t"), quote=True)


def _go():
    try:
        import plotly.graph_objects as go
    except ImportError as e:  # plotly is a dependency; this only fires in a broken environment
        raise ImportError("interp's figures need plotly: pip install plotly") from e
    return go


def token_ticks(str_tokens: Sequence[str]) -> tuple[list[int], list[str]]:
    """Tick positions and texts ``"i:token"`` for a token axis. A numeric axis is used because plotly would
    merge repeated tokens on a categorical one."""
    return list(range(len(str_tokens))), [f"{i}:{escape(t)}" for i, t in enumerate(str_tokens)]


# The parts of plotly's "plotly_white" template that 2-D bar, heatmap and scatter charts read. plotly copies a
# figure's template into it, and this cut is a third of the full template's size, so a figure builds about twice as
# fast and a report of many figures is smaller; the charts look the same.
_TEMPLATE_LAYOUT = ("annotationdefaults", "autotypenumbers", "coloraxis", "colorscale", "colorway", "font",
                    "hoverlabel", "hovermode", "paper_bgcolor", "plot_bgcolor", "shapedefaults", "title", "xaxis",
                    "yaxis")
_TEMPLATE_TRACES = ("bar", "heatmap", "scatter")
_TEMPLATE: list = []


def _template():
    if not _TEMPLATE:
        import plotly.io as pio

        full = pio.templates["plotly_white"].to_plotly_json()
        template = _go().layout.Template(
            layout={k: v for k, v in full["layout"].items() if k in _TEMPLATE_LAYOUT},
            data={k: v for k, v in full["data"].items() if k in _TEMPLATE_TRACES})
        _TEMPLATE.extend([template, template.to_plotly_json()])
    return _TEMPLATE[0]


def _layout_dict(title: str | None, height: int | None = None) -> dict:
    return {"title": {"text": escape(title)} if title else None, "margin": {"l": 60, "r": 20, "t": 50 if title else 20,
            "b": 40}, "height": height}


def _layout(fig, title: str | None, height: int | None = None, **kw):
    fig.update_layout(template=_template(), **_layout_dict(title, height), **kw)
    return fig


class FigureSpec(dict):
    """A plotly figure as plain data (``{"data": [traces], "layout": {...}}``), built without plotly's property
    validation, which costs ~10 ms a figure: what a report of hundreds of feature cards draws.
    :meth:`figure` gives the validated ``plotly.graph_objects.Figure``. Every spec holds the same template dict:
    set ``layout["template"]`` to a new one rather than editing it."""

    def __init__(self, data: list[dict], layout: dict):
        _template()
        super().__init__(data=data, layout={"template": _TEMPLATE[1], **{k: v for k, v in layout.items()
                                                                          if v is not None}})

    def figure(self, figure=None):
        """The validated figure; with ``figure`` (a ``Figure`` or ``FigureWidget``), that one updated in place."""
        if figure is None:
            return _go().Figure(dict(self))
        figure.data = []
        figure.add_traces(self["data"])
        figure.layout = self["layout"]
        return figure


# ---------------------------------------------------------------------------------------------- attention
def attention_figure(str_tokens: Sequence[str], pattern: np.ndarray, *, head_labels: Sequence[str] | None = None,
                     title: str | None = None, figure=None):
    """Attention patterns ``[H, T_query, T_key]`` (or one head ``[T_q, T_k]``) as heatmaps, one per head, with a
    menu to switch heads. Hover shows the query and key tokens and the weight."""
    go = _go()
    pattern = np.asarray(pattern, np.float32)
    if pattern.ndim == 2:
        pattern = pattern[None]
    H, Tq, Tk = pattern.shape
    head_labels = list(head_labels or [f"head {h}" for h in range(H)])
    ticks, text = token_ticks(str_tokens)
    tok = [escape(t) for t in str_tokens]
    qk = np.array([[[tok[q], tok[k]] for k in range(Tk)] for q in range(Tq)], dtype=object)
    fig = figure if figure is not None else go.Figure()
    fig.data = []
    for h in range(H):
        fig.add_trace(go.Heatmap(
            z=pattern[h], x=list(range(Tk)), y=list(range(Tq)), customdata=qk, zmin=0.0, zmax=1.0,
            colorscale="Blues", visible=h == 0, name=escape(head_labels[h]),
            hovertemplate="query %{y} %{customdata[0]}<br>key %{x} %{customdata[1]}<br>weight %{z:.3f}<extra>"
                          + escape(head_labels[h]) + "</extra>"))
    buttons = [{"label": escape(head_labels[h]), "method": "update",
                    "args": [{"visible": [i == h for i in range(H)]}]} for h in range(H)]
    menu = {"buttons": buttons, "x": 1.0, "xanchor": "right", "y": 1.15, "yanchor": "top"}
    fig.update_layout(updatemenus=[menu] if H > 1 else [])
    fig.update_xaxes(tickvals=ticks[:Tk], ticktext=text[:Tk], title="key", tickangle=-60, side="bottom")
    fig.update_yaxes(tickvals=ticks[:Tq], ticktext=text[:Tq], title="query", autorange="reversed")
    return _layout(fig, title, height=max(320, 22 * Tq + 140))


# ---------------------------------------------------------------------------------------------- lens and DLA
def lens_cells(lens, batch: int = 0, tokenizer=None) -> tuple[list[str], list[list[str]], np.ndarray, tuple]:
    """What :func:`lens_figure` draws for prompt ``batch`` of a :class:`interp.circuits.LensResult`: the prompt's
    token strings, the top token's text at every readout row and position, its probability ``[L+1, T]``, and the
    row labels. Text comes from ``tokenizer`` (a ``Tokenizer`` or a model), else the result's own."""
    import jax

    tokenizer = tokenizer if tokenizer is not None else lens.tokenizer
    probs = np.asarray(jax.nn.softmax(np.asarray(lens.logits[:, batch], np.float32), axis=-1))  # [L+1 T V]
    top = probs.argmax(-1)
    T = probs.shape[1]
    prompt = lens.tokens[batch] if lens.tokens is not None else None
    str_tokens = token_strings(tokenizer, prompt) if prompt is not None else [f"pos {t}" for t in range(T)]
    cells = [token_strings(tokenizer, row) for row in top]
    return str_tokens, cells, np.take_along_axis(probs, top[..., None], -1)[..., 0], tuple(lens.labels)


def lens_figure(lens, *tables, batch: int = 0, tokenizer=None, title: str | None = None, figure=None):
    """Logit lens (:class:`interp.circuits.LensResult`) of prompt ``batch``: rows are readouts (embedding, then
    each block), columns positions; the cell colour is the probability of that row's top token, written in the
    cell. Token text comes from the result's tokenizer, or ``tokenizer`` (a ``Tokenizer`` or a model).

    Precomputed tables still work: ``lens_figure(str_tokens, top_strs, top_probs, row_labels)``."""
    go = _go()
    if hasattr(lens, "logits") and hasattr(lens, "labels"):
        if tables:
            raise TypeError("lens_figure takes a LensResult alone, or four tables (str_tokens, top_strs, top_probs, "
                            "row_labels)")
        str_tokens, top_strs, top_probs, row_labels = lens_cells(lens, batch, tokenizer)
        title = title if title is not None else f"Logit lens ({lens.scale} scale)"
    elif len(tables) == 3:
        str_tokens, (top_strs, top_probs, row_labels) = lens, tables
    else:
        raise TypeError(f"lens_figure takes a LensResult, or str_tokens, top_strs, top_probs and row_labels; got "
                        f"{type(lens).__name__} and {len(tables)} more argument(s)")
    top_probs = np.asarray(top_probs, np.float32)
    ticks, text = token_ticks(str_tokens)
    cells = [[escape(s) for s in row] for row in top_strs]
    fig = figure if figure is not None else go.Figure()
    fig.data = []
    fig.add_trace(go.Heatmap(
        z=top_probs, x=ticks, y=list(range(len(row_labels))), text=cells, texttemplate="%{text}",
        textfont={"size": 9}, customdata=np.array([[lab] * len(ticks) for lab in row_labels], dtype=object),
        colorscale="Blues", zmin=0.0, zmax=1.0, colorbar={"title": "p(top)"},
        hovertemplate="%{customdata}, position %{x}<br>top token %{text}<br>p = %{z:.3f}<extra></extra>"))
    fig.update_xaxes(tickvals=ticks, ticktext=text, tickangle=-60, title="position")
    fig.update_yaxes(tickvals=list(range(len(row_labels))), ticktext=[escape(r) for r in row_labels],
                     autorange="reversed", title="readout")
    return _layout(fig, title, height=max(360, 16 * len(row_labels) + 160))


def bar_spec(labels: Sequence[str], values: np.ndarray, *, title: str | None = None, xaxis: str = "",
             yaxis: str = "", horizontal: bool = False, top: int | None = None) -> FigureSpec:
    """:func:`bar_figure` as a :class:`FigureSpec`."""
    values = np.asarray(values, np.float64)
    labels = [escape(s) for s in labels]
    if top is not None and len(values) > top:
        keep = np.sort(np.argsort(-np.abs(values))[:top])
        labels, values = [labels[i] for i in keep], values[keep]
    colors = ["#2166ac" if v >= 0 else "#b2182b" for v in values]
    if horizontal:
        trace = {"type": "bar", "y": labels, "x": values, "orientation": "h", "marker": {"color": colors},
                 "hovertemplate": "%{y}: %{x:.4g}<extra></extra>"}
        axes = {"yaxis": {"autorange": "reversed", "title": {"text": yaxis}, "type": "category"},
                "xaxis": {"title": {"text": xaxis}}}
    else:
        trace = {"type": "bar", "x": labels, "y": values, "marker": {"color": colors},
                 "hovertemplate": "%{x}: %{y:.4g}<extra></extra>"}
        axes = {"xaxis": {"title": {"text": xaxis}, "type": "category"}, "yaxis": {"title": {"text": yaxis}}}
    height = max(300, 18 * len(labels) + 120) if horizontal else 360
    return FigureSpec([trace], {**_layout_dict(title, height), **axes})


def bar_figure(labels: Sequence[str], values: np.ndarray, *, title: str | None = None, xaxis: str = "",
               yaxis: str = "", horizontal: bool = False, figure=None, top: int | None = None):
    """Signed bars (blue positive, red negative). ``top`` keeps the entries with the largest magnitude."""
    return bar_spec(labels, values, title=title, xaxis=xaxis, yaxis=yaxis, horizontal=horizontal,
                    top=top).figure(figure)


def dla_figure(result, *, batch: int = 0, answer: int = 0, foil: int | None = None, title: str | None = None,
               top: int | None = 40, figure=None):
    """Direct logit attribution (:class:`interp.circuits.DLAResult`) of one prompt: each component's
    contribution to the logit of target ``answer`` (an index into the result's targets), or with ``foil`` to the
    logit difference ``answer`` minus ``foil`` (``foil=1`` draws ``result.logit_diff()``). ``top`` keeps the
    components with the largest magnitude."""
    vals = result.contributions(batch, answer, foil)
    names = token_strings(getattr(result, "tokenizer", None), np.asarray(result.tokens)[batch])
    what = f"{names[answer]!r}" if foil is None else f"{names[answer]!r} − {names[foil]!r}"
    if title is None:
        title = f"Direct logit attribution of {what} (prompt {batch}, position {int(result.pos[batch])})"
    xaxis = "contribution to the logit" if foil is None else "contribution to the logit difference"
    return bar_figure(result.labels, vals, title=title, xaxis=xaxis, horizontal=True, top=top, figure=figure)


def decomposition_figure(decomposition, *, batch: int = 0, pos: int = -1, title: str | None = None,
                         top: int | None = 40, figure=None):
    """The norm of each residual-stream component (:class:`interp.circuits.Decomposition`) at one prompt and
    position."""
    T = decomposition.components.shape[2]
    title = title if title is not None else f"Residual stream components (prompt {batch}, position {pos % T})"
    fig = bar_figure(decomposition.labels, decomposition.norms(batch, pos), title=title, xaxis="norm",
                     horizontal=True, top=top, figure=figure)
    return fig


def head_scores_figure(scores, *, kind: str | None = None, title: str | None = None, figure=None):
    """Head detector scores (:class:`interp.circuits.HeadScores`) as layer x head heatmaps, one per detector
    kind with a menu to switch (or only ``kind``)."""
    go = _go()
    kinds = list(scores.kinds) if kind is None else [kind]
    fig = figure if figure is not None else go.Figure()
    fig.data = []
    _, L, H = np.asarray(scores.values).shape
    for i, k in enumerate(kinds):
        fig.add_trace(go.Heatmap(
            z=np.asarray(scores[k], np.float64), x=list(range(H)), y=list(range(L)), zmin=0.0, zmax=1.0,
            colorscale="Blues", visible=i == 0, name=escape(k), colorbar={"title": "score"},
            hovertemplate="L%{y}H%{x}: %{z:.3f}<extra>" + escape(k) + "</extra>"))
    if len(kinds) > 1:
        fig.update_layout(updatemenus=[{
            "buttons": [{"label": escape(k), "method": "update",
                         "args": [{"visible": [j == i for j in range(len(kinds))]}]}
                        for i, k in enumerate(kinds)], "x": 1.0, "xanchor": "right", "y": 1.15, "yanchor": "top"}])
    fig.update_xaxes(tickvals=list(range(H)), ticktext=[f"H{h}" for h in range(H)], title="head")
    fig.update_yaxes(tickvals=list(range(L)), ticktext=[f"L{l}" for l in range(L)], title="layer",
                     autorange="reversed")
    return _layout(fig, title if title is not None else "Attention head scores" + (f": {kind}" if kind else ""),
                   height=max(340, 16 * L + 160))


def heatmap_figure(z: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], *, title: str | None = None,
                   zlabel: str = "value", diverging: bool = True, figure=None):
    """A labelled heatmap (rows top to bottom); diverging colours centred at zero, or sequential ones."""
    go = _go()
    z = np.asarray(z, np.float64)
    rows, cols = [escape(r) for r in row_labels], [escape(c) for c in col_labels]
    m = float(np.nanmax(np.abs(z))) if z.size else 1.0
    fig = figure if figure is not None else go.Figure()
    fig.data = []
    fig.add_trace(go.Heatmap(
        z=z, x=list(range(len(cols))), y=list(range(len(rows))), colorscale=DIVERGING if diverging else "Blues",
        zmid=0.0 if diverging else None, zmin=-m if diverging else None, zmax=m if diverging else None,
        customdata=np.array([[[r, c] for c in cols] for r in rows], dtype=object), colorbar={"title": escape(zlabel)},
        hovertemplate="%{customdata[0]} %{customdata[1]}<br>" + escape(zlabel) + " %{z:.4f}<extra></extra>"))
    fig.update_xaxes(tickvals=list(range(len(cols))), ticktext=cols, tickangle=-60 if len(cols) > 12 else 0)
    fig.update_yaxes(tickvals=list(range(len(rows))), ticktext=rows, autorange="reversed")
    return _layout(fig, title, height=max(340, 16 * len(rows) + 160))


# ---------------------------------------------------------------------------------------------- patching
def patching_figure(result, *, normalized: bool = True, title: str | None = None, index: int | None = None,
                    figure=None):
    """A patching or attribution sweep (:class:`interp.circuits.PatchResult`). One axis: bars; two: a heatmap
    (layer rows); three: heatmaps of the first two axes with a menu over the third (or ``index`` fixes it)."""
    go = _go()
    src_ok = np.isfinite(result.source) and result.source != result.base
    vals = result.normalized() if (normalized and src_ok) else result.effect
    what = "normalized effect" if (normalized and src_ok) else "change of the metric"
    title = title or f"{result.method}: {result.hook} ({what})"
    axes, labels = result.axes, result.labels
    if vals.ndim == 1:
        return bar_figure(labels[0], vals, title=title, xaxis=axes[0], yaxis=what, figure=figure)
    fig = figure if figure is not None else go.Figure()
    fig.data = []
    if vals.ndim == 2:
        slices, names = [vals], [None]
    elif vals.ndim == 3:
        if index is not None:
            slices, names = [vals[..., index]], [labels[2][index]]
        else:
            slices, names = [vals[..., i] for i in range(vals.shape[2])], list(labels[2])
    else:
        raise ValueError(f"patching_figure draws 1 to 3 axes; this result has {vals.ndim}: {axes}")
    m = float(np.nanmax(np.abs(vals))) or 1.0
    ylab, xlab = [escape(s) for s in labels[0]], [escape(s) for s in labels[1]]
    for i, z in enumerate(slices):
        fig.add_trace(go.Heatmap(
            z=z, x=list(range(len(xlab))), y=list(range(len(ylab))), zmid=0.0, zmin=-m, zmax=m, colorscale=DIVERGING,
            visible=i == 0,
            customdata=np.array([[[ylab[r], xlab[c]] for c in range(len(xlab))] for r in range(len(ylab))],
                                dtype=object),
            hovertemplate=f"{axes[0]} %{{customdata[0]}}<br>{axes[1]} %{{customdata[1]}}<br>{what} %{{z:.4f}}<extra>"
                          + (escape(names[i]) if names[i] is not None else "") + "</extra>",
            colorbar={"title": what.split()[0]}))
    if len(slices) > 1:
        fig.update_layout(updatemenus=[{
            "buttons": [{"label": escape(n), "method": "update",
                         "args": [{"visible": [j == i for j in range(len(slices))]}]}
                     for i, n in enumerate(names)], "x": 1.0, "xanchor": "right", "y": 1.15, "yanchor": "top"}])
    fig.update_xaxes(tickvals=list(range(len(xlab))), ticktext=xlab, title=axes[1],
                     tickangle=-60 if len(xlab) > 8 else 0)
    fig.update_yaxes(tickvals=list(range(len(ylab))), ticktext=ylab, title=axes[0], autorange="reversed")
    return _layout(fig, title, height=max(340, 16 * len(ylab) + 160))


# ---------------------------------------------------------------------------------------------- features
def histogram_spec(counts: np.ndarray, edges: np.ndarray, *, title: str | None = None, xaxis: str = "activation",
                   unit: str = "tokens") -> FigureSpec:
    """:func:`histogram_figure` as a :class:`FigureSpec`."""
    edges = np.asarray(edges)
    trace = {"type": "bar", "x": (edges[:-1] + edges[1:]) / 2, "y": np.asarray(counts), "width": np.diff(edges),
             "marker": {"color": "#4393c3"}, "hovertemplate": f"%{{x:.3g}}: %{{y}} {unit}<extra></extra>"}
    return FigureSpec([trace], {**_layout_dict(title, 260), "xaxis": {"title": {"text": xaxis}},
                                "yaxis": {"title": {"text": unit}}})


def histogram_figure(counts: np.ndarray, edges: np.ndarray, *, title: str | None = None, xaxis: str = "activation",
                     unit: str = "tokens", figure=None):
    """A histogram from ``counts [n]`` and bin ``edges [n + 1]`` (as ``numpy.histogram`` returns them) of ``unit``
    (what is counted)."""
    return histogram_spec(counts, edges, title=title, xaxis=xaxis, unit=unit).figure(figure)


def score_distribution_figure(scores: dict, *, title: str | None = None, bins: int = 20):
    """For each scorer, histograms of the explanations' scores and of the shuffled control's: ``scores`` maps a
    scorer's name to ``(values, control_values)``. One panel per scorer."""
    go = _go()
    from plotly.subplots import make_subplots

    names = list(scores)
    fig = make_subplots(rows=1, cols=max(len(names), 1), subplot_titles=[n.split(":")[0] for n in names])
    lo = min([0.0] + [float(np.min(v)) for pair in scores.values() for v in pair if len(v)])
    edges = np.linspace(lo, 1.0, bins + 1)
    for k, name in enumerate(names, 1):
        for vals, label, colour in ((scores[name][0], "explanation", "#2166ac"),
                                    (scores[name][1], "shuffled control", "#b2182b")):
            counts, _ = np.histogram(np.asarray(vals, float), bins=edges)
            fig.add_trace(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=np.diff(edges), name=label,
                                 marker_color=colour, opacity=0.6, legendgroup=label, showlegend=k == 1,
                                 hovertemplate=f"{label}: %{{x:.2f}}: %{{y}} latents<extra></extra>"), row=1, col=k)
        fig.update_xaxes(title="score", row=1, col=k)
    fig.update_layout(barmode="overlay")
    fig.update_yaxes(title="latents", row=1, col=1)
    return _layout(fig, title, height=300)


def logit_effect_spec(promoted: Sequence[tuple[str, float]], suppressed: Sequence[tuple[str, float]], *,
                      title: str | None = None) -> FigureSpec:
    """:func:`logit_effect_figure` as a :class:`FigureSpec`."""
    labels = [t for t, _ in suppressed][::-1] + [t for t, _ in promoted][::-1]
    vals = np.array([v for _, v in suppressed][::-1] + [v for _, v in promoted][::-1])
    spec = bar_spec(labels, vals, title=title, xaxis="direct logit effect", horizontal=True)
    spec["layout"]["yaxis"]["autorange"] = True
    return spec


def logit_effect_figure(promoted: Sequence[tuple[str, float]], suppressed: Sequence[tuple[str, float]], *,
                        title: str | None = None, figure=None):
    """Tokens a feature's decoder direction promotes and suppresses through the unembedding."""
    return logit_effect_spec(promoted, suppressed, title=title).figure(figure)


# ---------------------------------------------------------------------------------------------- training
TRAINING_METRICS = ("loss", "fvu", "l0", "dead_fraction")


def training_figure(history, *, metrics: Sequence[str] = TRAINING_METRICS, x: str = "step",
                    title: str | None = None, figure=None):
    """Training curves (one panel per metric) of a ``TrainResult`` (:func:`interp.sae.train`) or a list of rows
    such as its ``history``."""
    go = _go()
    from plotly.subplots import make_subplots

    history = list(getattr(history, "history", history))
    metrics = [m for m in metrics if any(m in row for row in history)] or list(metrics)
    if figure is None:
        figure = go.Figure(make_subplots(rows=1, cols=len(metrics), subplot_titles=[escape(m) for m in metrics]))
    figure.data = []
    xs = [row.get(x, i + 1) for i, row in enumerate(history)]
    for j, m in enumerate(metrics):
        figure.add_trace(go.Scatter(x=xs, y=[row.get(m) for row in history], mode="lines", name=escape(m),
                                    showlegend=False, hovertemplate=f"{x} %{{x}}<br>{m} %{{y:.4g}}<extra></extra>"),
                         row=1, col=j + 1)
    return _layout(figure, title, height=280)


# ---------------------------------------------------------------------------------------------- graphs
_KIND_STYLE = {"embed": ("#636363", "square"), "feature": ("#4393c3", "circle"), "error": ("#bdbdbd", "diamond"),
               "logit": ("#d6604d", "star")}


def graph_layout(graph, nodes: Sequence[int]) -> dict[int, tuple[float, float]]:
    """(x, y) of each node: x is the token position (nodes sharing a cell spread across it), y the layer
    (embeddings at -1, logits above the last layer)."""
    cells: dict[tuple[int, int], list[int]] = {}
    for i in nodes:
        cells.setdefault(graph.node_layer_pos(int(i)), []).append(int(i))
    xy = {}
    for (layer, pos), members in cells.items():
        n = len(members)
        for j, i in enumerate(members):
            off = 0.0 if n == 1 else (j / (n - 1) - 0.5) * min(0.8, 0.16 * (n - 1))
            xy[i] = (pos + off, layer)
    return xy


def _node_text(graph, i: int, influence: np.ndarray) -> str:
    kind = graph.kind(i)
    j = i - graph.slices()[kind].start
    parts = [f"<b>{escape(graph.label(i))}</b>", f"influence {influence[i]:.3f}"]
    if kind == "feature":
        parts.append(f"activation {graph.feature_act[j]:.3f}")
        note = graph.info.get("explanations", {}).get(str(i))
        if note:
            parts.append(escape(note))
        groups = [name for name, members in graph.supernodes.items() if i in members]
        if groups:
            parts.append("supernode " + ", ".join(escape(g) for g in groups))
    if kind == "logit":
        parts.append(f"p = {graph.logit_probs[j]:.3f}")
    return "<br>".join(parts)


def graph_figure(graph, *, pruned: bool = True, max_edges: int = 400, selected: Sequence[int] = (),
                 title: str | None = None, figure=None):
    """An attribution graph (:class:`interp.circuits.graph.Graph`) laid out by layer and position. Node size
    follows influence on the logits; edge colour the sign (blue excitatory, red inhibitory), edge width its
    magnitude; only the ``max_edges`` strongest edges are drawn. Each marker's ``customdata`` is its node
    index, which click handlers use."""
    go = _go()
    nodes = [int(i) for i in (graph.kept() if pruned else np.arange(graph.n_nodes))]
    influence = graph.influence(pruned=pruned)
    xy = graph_layout(graph, nodes)
    fig = figure if figure is not None else go.Figure()
    fig.data = []
    edges = [e for e in graph.edges(pruned) if e[0] in xy and e[1] in xy and e[2] != 0]
    edges.sort(key=lambda e: -abs(e[2]))
    edges = edges[:max_edges]
    wmax = max((abs(w) for *_, w in edges), default=1.0)
    for sign, color in ((1, "rgba(33,102,172,{a})"), (-1, "rgba(178,24,43,{a})")):
        for lo, hi, width in ((0.0, 0.1, 0.6), (0.1, 0.4, 1.6), (0.4, 1.01, 3.2)):  # three widths, one trace each
            xs, ys = [], []
            for s, t, w in edges:
                if np.sign(w) == sign and lo <= abs(w) / wmax < hi:
                    xs += [xy[s][0], xy[t][0], None]
                    ys += [xy[s][1], xy[t][1], None]
            if xs:
                fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                         line={"width": width, "color": color.format(a=0.25 + 0.5 * hi)}))
    sel = {int(s) for s in selected}
    for kind, (color, symbol) in _KIND_STYLE.items():
        members = [i for i in nodes if graph.kind(i) == kind]
        if not members:
            continue
        size = [8 + 22 * float(np.sqrt(max(influence[i], 0.0) / max(influence[nodes].max(), 1e-12)))
                if kind in ("feature", "error") else 12 for i in members]
        fig.add_trace(go.Scatter(
            x=[xy[i][0] for i in members], y=[xy[i][1] for i in members], mode="markers", name=kind,
            customdata=members, text=[_node_text(graph, i, influence) for i in members],
            hovertemplate="%{text}<extra></extra>",
            marker={"color": color, "symbol": symbol, "size": size,
                        "line": {"width": [3 if i in sel else 0.5 for i in members],
                                  "color": ["#000000" if i in sel else "#ffffff" for i in members]}}))
    ticks, text = token_ticks(graph.str_tokens)
    fig.update_xaxes(tickvals=ticks, ticktext=text, tickangle=-60, title="position", zeroline=False)
    fig.update_yaxes(tickvals=[-1] + list(range(graph.n_layers)) + [graph.n_layers],
                     ticktext=["emb"] + [f"L{l}" for l in range(graph.n_layers)] + ["logits"], zeroline=False,
                     title="layer")
    fig.update_layout(clickmode="event", legend={"orientation": "h", "y": -0.25})
    return _layout(fig, title, height=max(420, 18 * graph.n_layers + 200))


def _component_xy(label: str, n_layers: int, n_heads: int) -> tuple[float, float, str]:
    """Where an edge-attribution component sits: heads at (head, layer), MLPs right of the heads, the embedding
    below and the logits above. q/k/v receivers sit on their head (their kind is returned separately)."""
    if label == "embed":
        return (n_heads / 2, -1.0, "")
    if label == "logits":
        return (n_heads / 2, float(n_layers), "")
    if label.startswith("MLP"):
        return (n_heads + 0.5, float(label[3:]), "")
    head, _, part = label.partition(".")
    layer, h = head[1:].split("H")
    return (float(h), float(layer), part)


def _edge_grid(result) -> tuple[int, int]:
    """(layers, heads) of the model an edge result came from, read off its sender labels."""
    heads = [s[1:].split("H") for s in result.senders if s.startswith("L")]
    mlps = [int(s[3:]) for s in result.senders if s.startswith("MLP")]
    n_layers = max([int(l) for l, _ in heads] + mlps, default=-1) + 1
    return n_layers, max((int(h) for _, h in heads), default=-1) + 1


def edge_circuit_figure(result, n_layers: int | None = None, n_heads: int | None = None, *, top: int = 40,
                        title: str | None = None, figure=None):
    """The ``top`` edges of an edge attribution (:class:`interp.circuits.EdgeResult`) by magnitude, drawn between
    components laid out by layer (heads by index, MLPs to the right); blue edges move the metric towards the
    source run, red ones away. The layer and head counts are read off the result's labels unless given."""
    go = _go()
    grid = _edge_grid(result)
    n_layers = grid[0] if n_layers is None else n_layers
    n_heads = grid[1] if n_heads is None else n_heads
    s = np.nan_to_num(np.asarray(result.scores), nan=0.0)
    order = np.argsort(-np.abs(s), axis=None)[:top]
    us, vs = np.unravel_index(order, s.shape)
    fig = figure if figure is not None else go.Figure()
    fig.data = []
    smax = float(np.abs(s[us, vs]).max()) if len(order) else 1.0
    nodes: dict[str, tuple[float, float]] = {}
    for u, v in zip(us, vs):
        su, rv = result.senders[u], result.receivers[v]
        x0, y0, _ = _component_xy(su, n_layers, n_heads)
        x1, y1, part = _component_xy(rv, n_layers, n_heads)
        nodes[su] = (x0, y0)
        nodes[rv.split(".")[0]] = (x1, y1)
        w = float(s[u, v])
        fig.add_trace(go.Scatter(
            x=[x0, x1], y=[y0, y1], mode="lines", showlegend=False,
            line={"width": 0.8 + 5 * abs(w) / smax, "color": "#2166ac" if w > 0 else "#b2182b",
                  "dash": {"k": "dot", "v": "dash"}.get(part, "solid")},
            opacity=0.35 + 0.6 * abs(w) / smax, hoverinfo="text",
            text=f"{escape(su)} → {escape(rv)}: {w:+.4f}"))
    names = list(nodes)
    fig.add_trace(go.Scatter(x=[nodes[n][0] for n in names], y=[nodes[n][1] for n in names], mode="markers+text",
                             text=[escape(n) for n in names], textposition="top center", showlegend=False,
                             marker={"size": 10, "color": "#f4a582", "line": {"width": 1, "color": "#555"}},
                             hovertemplate="%{text}<extra></extra>"))
    fig.update_xaxes(tickvals=list(range(n_heads)) + [n_heads + 0.5],
                     ticktext=[f"H{h}" for h in range(n_heads)] + ["MLP"], zeroline=False)
    fig.update_yaxes(tickvals=[-1, *range(n_layers), n_layers],
                     ticktext=["embed"] + [f"L{l}" for l in range(n_layers)] + ["logits"], zeroline=False)
    return _layout(fig, title or f"Top {top} edges ({result.method}); dotted: into keys, dashed: into values",
                   height=max(420, 18 * n_layers + 200))


def intervention_figure(intervention, tokens: Sequence[int] | None = None, *, k: int = 8, tokenizer=None,
                        title: str | None = None, figure=None):
    """Next-token logits before and after an intervention (:class:`interp.circuits.graph.Intervention`), as
    paired bars over ``tokens`` (default: the ``k`` tokens whose logit changed most). Token text comes from
    ``tokenizer`` (a ``Tokenizer`` or a model), else ``#id``."""
    go = _go()
    before, after = np.asarray(intervention.before), np.asarray(intervention.after)
    if tokens is None:
        tokens = np.argsort(-np.abs(after - before), kind="stable")[:k]
    tokens = [int(t) for t in tokens]
    names = [escape(n) for n in token_strings(tokenizer, tokens)]
    fig = figure if figure is not None else go.Figure()
    fig.data = []
    fig.add_trace(go.Bar(name="before", x=names, y=before[tokens], customdata=tokens,
                         hovertemplate="%{x}: %{y:.4g}<extra>before</extra>"))
    fig.add_trace(go.Bar(name="after", x=names, y=after[tokens], customdata=tokens,
                         hovertemplate="%{x}: %{y:.4g}<extra>after</extra>"))
    fig.update_xaxes(type="category", title="next token")
    fig.update_yaxes(title="logit")
    return _layout(fig, title if title is not None else "Next-token logits before and after the intervention",
                   height=360)


def _highlight(tokens: Sequence[str], acts: Sequence[float], center: int, scale: float) -> str:
    spans = []
    for i, (tok, a) in enumerate(zip(tokens, acts)):
        alpha = 0.0 if scale <= 0 else min(max(a / scale, 0.0), 1.0)
        style = f"background: rgba(255,140,0,{alpha:.2f});"
        if i == center:
            style += " outline: 1px solid #333;"
        spans.append(f'<span class="tok" style="{style}" title="{a:.3f}">{escape(tok)}</span>')
    return "".join(spans)


def feature_card_html(card) -> str:
    """A card's header, statistics and highlighted contexts as an HTML fragment; every token is escaped."""
    rows = []
    for c in card.contexts:
        rows.append(f'<div class="ctx"><span class="ctx-val">{c["value"]:.2f}</span> '
                    f'{_highlight(c["tokens"], c["acts"], c["center"], card.max_act)}</div>')
    promoted = ", ".join(f"{escape(t)} ({v:+.2f})" for t, v in card.promoted)
    suppressed = ", ".join(f"{escape(t)} ({v:+.2f})" for t, v in card.suppressed)
    expl = f'<p class="explanation">{escape(card.explanation)}</p>' if card.explanation else ""
    return (f'<div class="feature-card" data-latent="{card.latent}">'
            f"<h4>{escape(card.label)}</h4>{expl}"
            f'<p class="stats">density {card.density:.4%} ({card.n_active} tokens), '
            f'max activation {card.max_act:.3f}</p>'
            f'<p class="logits"><b>promotes</b> {promoted}<br><b>suppresses</b> {suppressed}</p>'
            + ("".join(rows) if rows else '<p class="dead">never fires on these tokens</p>')
            + "</div>")


# ---------------------------------------------------------------------------------------------- probes
def probe_sweep_figure(result, *, title: str | None = None, figure=None):
    """A probe sweep (``interp.probes.SweepResult``): held-out AUROC and accuracy by hook, with the spread over
    folds as error bars, and chance (0.5) as a dotted line."""
    go = _go()
    labels = [escape(s) for s in result.labels]
    x = list(range(len(labels)))
    fig = figure if figure is not None else go.Figure()
    fig.data = []
    for name, mean, std in (("AUROC", result.auroc, result.auroc_std),
                            ("accuracy", result.accuracy, result.accuracy_std)):
        fig.add_trace(go.Scatter(x=x, y=np.asarray(mean, float), mode="lines+markers", name=name,
                                 error_y={"type": "data", "array": np.asarray(std, float), "visible": True},
                                 customdata=labels, hovertemplate="%{customdata}: %{y:.3f}<extra>" + name + "</extra>"))
    fig.add_hline(y=0.5, line_dash="dot", line_color="gray")
    fig.update_xaxes(tickmode="array", tickvals=x, ticktext=labels, title="hook")
    fig.update_yaxes(range=[0.0, 1.02], title=f"held-out ({result.folds}-fold CV)")
    b = result.best
    default = f"{result.kind} probe by hook: best {result.labels[b]}, AUROC {result.auroc[b]:.3f}"  # escaped by _layout
    return _layout(fig, title if title is not None else default, height=360)


# ---------------------------------------------------------------------------------------------- monitors
def _score_colour(v: float, lo: float, hi: float) -> str:
    """Background for a score: pale at ``lo``, red at ``hi``."""
    if not np.isfinite(v) or hi <= lo:
        return "transparent"
    a = float(np.clip((v - lo) / (hi - lo), 0.0, 1.0))
    return f"rgba(214,39,40,{0.08 + 0.72 * a:.2f})"


def monitor_html(str_tokens: Sequence[str], scores: dict[str, np.ndarray], thresholds: dict[str, float | None],
                 *, prompt_length: int = 0, mask: np.ndarray | None = None, title: str | None = None) -> str:
    """One row of text, once per monitor, each token's background shaded by its score (hover: the value); tokens
    over the monitor's threshold are outlined (``class="flag"``) and prompt tokens are grey. ``scores[name] [T]``
    (NaN: not scored); ``mask [T]`` hides padding. Every token and name is escaped."""
    T = len(str_tokens)
    keep = np.ones(T, bool) if mask is None else np.asarray(mask).astype(bool)
    blocks = []
    for name, s in scores.items():
        s = np.asarray(s, np.float64)
        th = thresholds.get(name)
        finite = s[keep & np.isfinite(s)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if th is not None:  # shade from well below the threshold, so that crossing it reads as red
            lo = min(lo, th - (hi - th) if hi > th else th - 1.0)
        spans = []
        for t in np.flatnonzero(keep):
            v = s[t]
            flagged = th is not None and np.isfinite(v) and v > th
            style = f"background:{_score_colour(v, lo, hi)};" + ("color:#777;" if t < prompt_length else "")
            cls = ' class="flag" ' if flagged else " "
            spans.append(f'<span{cls}style="{style}" title="{escape(f"{t}: {v:.4g}")}">{escape(str_tokens[t])}</span>')
        th_text = "no threshold" if th is None else f"threshold {th:.4g}"
        blocks.append(f'<div class="interp-monitor-row"><b>{escape(name)}</b> <small>({escape(th_text)}; outlined: '
                      f'over it; grey: prompt)</small><div style="font-family:monospace;white-space:pre-wrap;'
                      f'line-height:1.7">{"".join(spans)}</div></div>')
    head = f"<h4>{escape(title)}</h4>" if title else ""
    return ('<div class="interp-monitor"><style>.interp-monitor .flag{outline:2px solid #b2182b;}</style>'
            f'{head}{"".join(blocks)}</div>')


def monitor_figure(str_tokens: Sequence[str], scores: dict[str, np.ndarray], thresholds: dict[str, float | None],
                   *, prompt_length: int = 0, title: str | None = None, figure=None):
    """Each monitor's score by position (one line each; NaN leaves a gap), its threshold dashed, and a dotted
    line where the new tokens begin."""
    go = _go()
    fig = figure if figure is not None else go.Figure()
    fig.data = []
    ticks, text = token_ticks(str_tokens)
    tok = [escape(t) for t in str_tokens]
    for name, s in scores.items():
        fig.add_trace(go.Scatter(x=ticks, y=np.asarray(s, float), mode="lines+markers", name=escape(name),
                                 customdata=tok, hovertemplate="%{x}:%{customdata} %{y:.4g}<extra>" + escape(name)
                                 + "</extra>"))
        if thresholds.get(name) is not None:
            fig.add_hline(y=float(thresholds[name]), line_dash="dash", line_color="#b2182b", opacity=0.6)
    if 0 < prompt_length < len(str_tokens):
        fig.add_vline(x=prompt_length - 0.5, line_dash="dot", line_color="gray")
    fig.update_xaxes(tickvals=ticks, ticktext=text, tickangle=-60, title="token")
    fig.update_yaxes(title="score")
    return _layout(fig, title, height=360)
