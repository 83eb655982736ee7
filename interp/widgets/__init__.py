"""Interactive views for JupyterLab (ipywidgets + plotly ``FigureWidget``). Each control calls back into the
kernel, which recomputes with the model and updates the figures in place:

- :class:`AttentionView`: attention patterns per layer and head, token labels, hover values;
- :class:`LensView`: logit lens over layers and positions, and direct logit attribution of a chosen answer;
- :class:`PatchingView`: patching / attribution sweeps (layer x position, layer x head, ...) with hover;
- :class:`FeatureDashboard`: a dictionary latent's top contexts, histogram, density and logit effects;
- :class:`GraphExplorer`: an attribution graph by layer and position; click a node for its dashboard, ablate or
  steer a node or supernode and see the next-token logits change (through :func:`interp.circuits.graph.intervene`);
- :class:`TrainingMonitor`: live loss / FVU / L0 / dead-latent curves, as the ``callback`` of ``sae.train``;
- :class:`MonitorView`: text streamed as it is generated, each token shaded by each monitor's score.

Every widget has ``static()``, the list of plain figures and HTML that :class:`interp.report.Report` embeds.
Needs the ``notebook`` extra: ``pip install 'interp[notebook]'``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import numpy as np

try:
    import ipywidgets as W
    import plotly.graph_objects as go
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("interp.widgets needs ipywidgets and plotly: pip install 'interp[notebook]'") from e

from interp.features import FeatureCard, FeatureIndex, feature_card, feature_index, graph_cards
from interp.viz import figures as F
from interp.viz import views
from interp.viz.figures import feature_card_html

__all__ = ["AttentionView", "FeatureDashboard", "GraphExplorer", "LensView", "MonitorView", "PatchingView",
           "TrainingMonitor"]


def _figure_widget(fig=None) -> go.FigureWidget:
    return go.FigureWidget(fig) if fig is not None else go.FigureWidget()


def _replace(widget: go.FigureWidget, fig) -> None:
    """Show ``fig`` in ``widget`` (traces and layout), in one message to the front end."""
    with widget.batch_update():
        widget.data = []
        widget.layout = fig.layout
        for trace in fig.data:
            widget.add_trace(trace)


# ---------------------------------------------------------------------------------------------- attention
class AttentionView(W.VBox):
    """Attention patterns of one prompt. The layer slider and head menu recompute in the kernel; patterns of a
    layer are cached once computed."""

    def __init__(self, model, prompt, *, layer: int = 0, head: int = 0):
        self.model = model
        self.tokens, self.str_tokens = views._tokens(model, prompt)
        self._patterns: dict[int, np.ndarray] = {}
        n_heads = model.blocks[0].attn.n_heads
        self.layer = W.IntSlider(value=layer, min=0, max=model.n_layers - 1, description="layer",
                                 continuous_update=False)
        self.head = W.Dropdown(options=[(f"head {h}", h) for h in range(n_heads)], value=head, description="head")
        self.figure = _figure_widget(self._figure())  # drawn from the widget's state, however late the view comes
        self.layer.observe(lambda _: self.update(), "value")
        self.head.observe(lambda _: self.update(), "value")
        super().__init__([W.HBox([self.layer, self.head]), self.figure])

    def pattern(self, layer: int) -> np.ndarray:
        """``[H, T, T]`` pattern of ``layer`` (computed in the kernel on first use)."""
        if layer not in self._patterns:
            self._patterns[layer] = views.attention_patterns(self.model, self.tokens, layer)
        return self._patterns[layer]

    def _figure(self):
        l, h = self.layer.value, self.head.value
        return F.attention_figure(self.str_tokens, self.pattern(l)[h], head_labels=[f"L{l}H{h}"],
                                  title=f"Attention pattern L{l}H{h}")

    def update(self) -> None:
        _replace(self.figure, self._figure())

    def static(self) -> list:
        l = self.layer.value
        return [F.attention_figure(self.str_tokens, self.pattern(l), head_labels=[f"L{l}H{h}" for h in range(
            self.pattern(l).shape[0])], title=f"Attention patterns, layer {l}")]


# ---------------------------------------------------------------------------------------------- lens and DLA
class LensView(W.VBox):
    """Logit lens of one prompt (``own`` or ``final`` scale) and the direct logit attribution of an answer token
    at the last position; typing another answer recomputes the attribution."""

    def __init__(self, model, prompt, *, answer: str | None = None, per: str = "layer"):
        self.model = model
        self.tokens, self.str_tokens = views._tokens(model, prompt)
        self.per = per
        self.scale = W.ToggleButtons(options=["own", "final"], value="own", description="lens scale")
        top = int(np.asarray(model(self.tokens)[0, -1]).argmax())
        self.answer = W.Text(value=answer if answer is not None else F.token_strings(model, [top])[0],
                             description="answer", continuous_update=False)
        self.message = W.HTML()
        # the first figures go into the widgets' state, so a view drawn later still shows them
        self.lens_figure = _figure_widget(self._lens_figure())
        self.dla_figure = _figure_widget(self._dla_figure())
        self.scale.observe(lambda _: self.update_lens(), "value")
        self.answer.observe(lambda _: self.update_dla(), "value")
        super().__init__([W.HBox([self.scale, self.answer]), self.message, self.lens_figure, self.dla_figure])

    def answer_id(self) -> int:
        text = self.answer.value
        if text.startswith("#") and text[1:].isdigit():
            return int(text[1:])
        return self.model.to_single_token(text)

    def _lens_figure(self):
        from interp.circuits.lens import logit_lens

        self.lens = logit_lens(self.model, self.tokens, scale=self.scale.value)
        return F.lens_figure(self.lens, tokenizer=self.model)

    def _dla_figure(self):
        """The attribution of the typed answer, or None (and the reason in ``self.message``) when it is not a token."""
        from interp.circuits.dla import direct_logit_attribution

        try:
            tok = self.answer_id()
        except (ValueError, KeyError) as e:
            self.message.value = f'<span style="color:#b2182b">{F.escape(str(e))}</span>'
            return None
        self.message.value = ""
        self.dla = direct_logit_attribution(self.model, self.tokens, np.array([tok]), per=self.per)
        name = F.token_strings(self.model, [tok])[0]
        return F.dla_figure(self.dla, title=f"Direct logit attribution of {name!r}", top=30)

    def update_lens(self) -> None:
        """Recompute the logit lens at the chosen scale (kept as ``self.lens``) and redraw it."""
        _replace(self.lens_figure, self._lens_figure())

    def update_dla(self) -> None:
        """Recompute the direct logit attribution of the typed answer (kept as ``self.dla``) and redraw it."""
        fig = self._dla_figure()
        if fig is not None:
            _replace(self.dla_figure, fig)

    def static(self) -> list:
        return [go.Figure(self.lens_figure.to_plotly_json()), go.Figure(self.dla_figure.to_plotly_json())]


# ---------------------------------------------------------------------------------------------- patching
class PatchingView(W.VBox):
    """One or several patching results (a ``PatchResult`` or a dict name -> result). Controls choose the result,
    normalized or raw values, and the slice of a third axis; clicking a cell shows its value below."""

    def __init__(self, results, *, normalized: bool = True):
        from interp.circuits.patching import PatchResult

        self.results = {"result": results} if isinstance(results, PatchResult) else dict(results)
        if not self.results:
            raise ValueError("PatchingView needs at least one PatchResult")
        self.which = W.Dropdown(options=list(self.results), description="result")
        self.normalized = W.Checkbox(value=normalized, description="normalized")
        self.index = W.Dropdown(options=[("all", None)], description="slice")
        self.selected = W.HTML("Click a cell to read its value.")
        self.figure = _figure_widget()
        self.which.observe(lambda _: self._result_changed(), "value")
        self.normalized.observe(lambda _: self.update(), "value")
        self.index.observe(lambda _: self.update(), "value")
        super().__init__([W.HBox([self.which, self.normalized, self.index]), self.figure, self.selected])
        self._result_changed()

    @property
    def result(self):
        return self.results[self.which.value]

    def _result_changed(self) -> None:
        r = self.result
        opts = [("all", None)] + ([(lab, i) for i, lab in enumerate(r.labels[2])] if r.values.ndim == 3 else [])
        self.index.options = opts
        self.index.value = None
        self.update()

    def update(self) -> None:
        fig = F.patching_figure(self.result, normalized=self.normalized.value, index=self.index.value)
        _replace(self.figure, fig)
        for trace in self.figure.data:
            trace.on_click(self._clicked)

    def _clicked(self, trace, points, _state=None) -> None:
        if not points.point_inds:
            return
        idx = points.point_inds[0]
        self.select(*(idx if isinstance(idx, (list, tuple)) else (idx,)))

    def select(self, *idx: int) -> str:
        """Describe the entry at ``idx`` (row, column) of the shown figure; what a click does."""
        r = self.result
        vals = r.normalized() if self.normalized.value and np.isfinite(r.source) and r.source != r.base else r.effect
        if vals.ndim == 3:
            vals = vals[..., self.index.value] if self.index.value is not None else vals[..., 0]
        if vals.ndim == 1:
            idx = idx[-1:]
        labels = [F.escape(f"{r.axes[a]} {r.labels[a][i]}") for a, i in enumerate(idx)]
        self.selected.value = f"{', '.join(labels)}: <b>{float(vals[tuple(idx)]):.4f}</b>"
        return self.selected.value

    def static(self) -> list:
        return [F.patching_figure(r, normalized=self.normalized.value, title=f"{name}: {r.method} of {r.hook}")
                for name, r in self.results.items()]


# ---------------------------------------------------------------------------------------------- features
class FeatureDashboard(W.VBox):
    """Dashboards of a dictionary's latents over an indexed token set (:func:`interp.features.feature_index`, built
    here from ``tokens`` when no ``index`` is given). Type a latent, or step to the next one that fires."""

    def __init__(self, model, dictionary, *, index: FeatureIndex | None = None, tokens=None, latent: int | None = None,
                 explanations: Mapping[int, str] | None = None, hook: str | None = None):
        if index is None:
            if tokens is None:
                raise ValueError("FeatureDashboard needs an index (interp.features.feature_index) or tokens [N, T] "
                                 "to index")
            index = feature_index(model, dictionary, tokens, hook=hook)
        self.model, self.dictionary, self.index = model, dictionary, index
        # latent -> text, or an interp.explain.Explanations (its labels, with scores)
        self.explanations = explanations.labels() if hasattr(explanations, "labels") else dict(explanations or {})
        density = index.density()
        first = int(np.argmax(density)) if latent is None else latent
        self.latent = W.BoundedIntText(value=first, min=0, max=index.width - 1, description="latent")
        self.next = W.Button(description="next firing latent")
        self.card_html = W.HTML()
        self.hist = _figure_widget()
        self.logits = _figure_widget()
        self.latent.observe(lambda _: self.update(), "value")
        self.next.on_click(lambda _: self.step())
        super().__init__([W.HBox([self.latent, self.next]), self.card_html, W.HBox([self.hist, self.logits])])
        self.update()

    def card(self, latent: int | None = None) -> FeatureCard:
        latent = self.latent.value if latent is None else latent
        return feature_card(self.model, self.dictionary, self.index, latent, explanations=self.explanations)

    def step(self) -> int:
        """Move to the next latent (cyclically) that fires on the indexed tokens."""
        alive = np.flatnonzero(np.diff(self.index.starts) > 0)
        if alive.size:
            later = alive[alive > self.latent.value]
            self.latent.value = int(later[0] if later.size else alive[0])
        return self.latent.value

    def update(self) -> None:
        self.current = self.card()
        self.card_html.value = feature_card_html(self.current)
        figs = self.current.figures()
        _replace(self.hist, figs[0] if self.current.n_active else go.Figure())
        _replace(self.logits, figs[-1])

    def static(self, latents: Sequence[int] | None = None) -> list:
        latents = [self.latent.value] if latents is None else latents
        return [p for f in latents for p in views.feature_view(self.card(f))]


# ---------------------------------------------------------------------------------------------- graphs
class GraphExplorer(W.VBox):
    """A pruned attribution graph laid out by layer and position. Clicking a feature node shows its dashboard
    (over ``tokens``, indexed per layer on first use); *apply* ablates or scales the selected node or supernode
    in the kernel (:func:`interp.circuits.graph.intervene`) and shows the next-token logits before and after."""

    def __init__(self, model, transcoders, graph, *, tokens=None, explanations: Mapping | None = None,
                 max_edges: int = 300, k: int = 8):
        self.model, self.tc, self.graph = model, transcoders, graph
        self.tokens, self.k, self.max_edges = tokens, k, max_edges
        self.explanations = explanations or {}
        self._indices: dict[int, FeatureIndex] = {}
        self.selected: int | None = None
        self.figure = _figure_widget()
        self.info = W.HTML("Click a node.")
        self.target = W.Dropdown(description="target", options=self._target_options())
        self.scale = W.FloatSlider(value=0.0, min=-2.0, max=4.0, step=0.25, description="scale",
                                   tooltip="0 ablates; 2 doubles the activation")
        self.mode = W.Dropdown(options=["real", "frozen"], value="real", description="mode")
        self.apply = W.Button(description="apply", button_style="primary")
        self.apply.on_click(lambda _: self.intervene())
        self.result = W.HTML()
        self.logits = _figure_widget()
        self.intervention = None
        self.draw()
        super().__init__([self.figure, W.HBox([self.target, self.scale, self.mode, self.apply]), self.result,
                          self.logits, self.info])

    # nodes
    def _target_options(self):
        opts = [("selected node", None)]
        opts += [(f"supernode {name} ({len(m)})", name) for name, m in self.graph.supernodes.items()]
        return opts

    def draw(self) -> None:
        sel = [] if self.selected is None else [self.selected]
        fig = F.graph_figure(self.graph, selected=sel, max_edges=self.max_edges,
                             title="Attribution graph (click a node)")
        _replace(self.figure, fig)
        for trace in self.figure.data:
            if trace.mode == "markers":
                trace.on_click(self._clicked)

    def _clicked(self, trace, points, _state=None) -> None:
        if points.point_inds:
            self.select(int(trace.customdata[points.point_inds[0]]))

    def feature_index(self, layer: int) -> FeatureIndex:
        if layer not in self._indices:
            self._indices[layer] = feature_index(self.model, self.tc.dictionaries[layer], self.tokens,
                                                 hook=self.tc.hook_in.format(layer=layer),
                                                 skip_positions=self.tc.skip_positions)
        return self._indices[layer]

    def card(self, node: int) -> FeatureCard | None:
        g = self.graph
        if g.kind(node) != "feature" or self.tokens is None:
            return None
        j = node - g.slices()["feature"].start
        layer, feat = int(g.feature_layer[j]), int(g.feature_id[j])
        return feature_card(self.model, self.tc.dictionaries[layer], self.feature_index(layer), feat,
                            label=g.label(node), explanations=self.explanations.get(layer))

    def select(self, node: int) -> None:
        """Select a node (what a click does): highlight it and show what is known about it."""
        self.selected = int(node)
        g = self.graph
        influence = g.influence(pruned=g.node_mask is not None)
        parts = [f"<b>{F.escape(g.label(node))}</b> ({g.kind(node)}), influence {influence[node]:.3f}"]
        card = self.card(node)
        if card is not None:
            parts.append(feature_card_html(card))
        elif g.kind(node) == "feature":
            parts.append("<i>pass tokens=... to GraphExplorer to see this feature's top-activating contexts</i>")
        self.info.value = "".join(parts)
        self.target.value = None
        self.draw()

    # interventions
    def changes(self) -> list:
        from interp.circuits.graph import feature_changes

        target = self.target.value
        if target is None:
            if self.selected is None:
                raise ValueError("select a feature node first (click it), or choose a supernode")
            target = [self.selected]
        return feature_changes(self.graph, target, scale=self.scale.value)

    def intervene(self):
        """Run the chosen intervention in the kernel and show its effect on the next-token logits."""
        from interp.circuits.graph import intervene

        try:
            changes = self.changes()
        except ValueError as e:
            self.result.value = f'<span style="color:#b2182b">{F.escape(str(e))}</span>'
            return None
        self.intervention = intervene(self.model, self.tc, np.asarray(self.graph.tokens)[None], changes,
                                      mode=self.mode.value)
        iv = self.intervention
        shown = list(dict.fromkeys([*map(int, self.graph.logit_tokens),
                                    *map(int, np.argsort(-iv.after)[: self.k])]))[: 2 * self.k]
        names = F.token_strings(self.model, shown)
        fig = F.intervention_figure(iv, shown, tokenizer=self.model, title=f"Next-token logits, {len(changes)} "
                                    f"feature(s) scaled by {self.scale.value:g} ({self.mode.value})")
        _replace(self.logits, fig)
        rows = "".join(f"<tr><td>{F.escape(n)}</td><td>{iv.change(t):+.3f}</td>"
                       f"<td>{iv.logprob_change(t):+.3f}</td></tr>" for n, t in zip(names, shown))
        self.result.value = ('<table class="kv"><tr><th>token</th><th>logit change</th><th>log-prob change</th></tr>'
                             f"{rows}</table>")
        return iv

    def static(self) -> list:
        cards = graph_cards(self.model, self.tc, self.graph, self.tokens, indices=self._indices) \
            if self.tokens is not None else None
        parts = views.graph_view(self.graph, cards)
        if self.intervention is not None:
            parts.append(go.Figure(self.logits.to_plotly_json()))
        return parts


# ---------------------------------------------------------------------------------------------- training
class TrainingMonitor(W.VBox):
    """Live training curves: pass it as ``callback`` to :func:`interp.sae.train` (it is called after every step
    and redraws every ``every`` steps with the mean of the steps since the last redraw)."""

    def __init__(self, *, every: int = 10, metrics: Sequence[str] = F.TRAINING_METRICS):
        self.every = max(int(every), 1)
        self.metrics = tuple(metrics)
        self.history: list[dict] = []
        self._acc: dict[str, list] = {}
        self.status = W.HTML("waiting for the first step")
        self.figure = _figure_widget(F.training_figure([{m: None for m in self.metrics}], metrics=self.metrics,
                                                       title="Dictionary training"))
        super().__init__([self.status, self.figure])

    def __call__(self, step: int, metrics: Mapping, dictionary=None) -> None:
        for k, v in metrics.items():
            if np.ndim(v) == 0:
                self._acc.setdefault(k, []).append(float(v))
        if step % self.every == 0:
            self.flush(step)

    def flush(self, step: int | None = None) -> None:
        if not self._acc:
            return
        step = step if step is not None else (self.history[-1]["step"] + 1 if self.history else 1)
        self.history.append({"step": step, **{k: float(np.mean(v)) for k, v in self._acc.items()}})
        self._acc = {}
        with self.figure.batch_update():
            for trace, m in zip(self.figure.data, self.metrics):
                trace.x = [r["step"] for r in self.history]
                trace.y = [r.get(m) for r in self.history]
        last = self.history[-1]
        self.status.value = f"step {step}: " + ", ".join(
            f"{m} {last[m]:.4g}" for m in self.metrics if m in last)

    def static(self) -> list:
        return views.training_view(self.history)


# ---------------------------------------------------------------------------------------------- monitors
class MonitorView(W.VBox):
    """One prompt's continuation streamed into the notebook, each token shaded by each monitor's score (tokens
    over a threshold outlined). It generates ``chunk`` tokens at a time (``model.generate(..., monitors=...)``,
    the scores computed inside each compiled generation) and redraws between chunks; with ``background=True``
    (default) it runs in a thread, so the cell returns and the view fills in as tokens arrive. ``join()`` waits
    for the end; ``generation`` is the latest result. Other keywords go to ``model.generate`` (a sampling
    ``seed`` advances by one per chunk)."""

    def __init__(self, model, prompt, monitors, max_new_tokens: int = 64, *, chunk: int = 8, background: bool = True,
                 **generate_kwargs):
        from interp.checks import check_range

        check_range("max_new_tokens", max_new_tokens, 1, integer=True)
        check_range("chunk", chunk, 1, integer=True)
        self.model, self.monitors = model, list(monitors)
        if not self.monitors:
            raise ValueError("MonitorView needs at least one monitor (interp.probes.Monitor)")
        self.tokens, _ = views._tokens(model, prompt)
        self.max_new_tokens, self.chunk, self.kwargs = int(max_new_tokens), int(chunk), generate_kwargs
        self.generation = None
        self.error: Exception | None = None
        self.status = W.HTML("generating...")
        self.text = W.HTML()
        super().__init__([self.status, self.text])
        self.thread: threading.Thread | None = None
        if background:
            self.thread = threading.Thread(target=self.run, daemon=True)
            self.thread.start()
        else:
            self.run()

    def run(self):
        """Generate chunk by chunk to ``max_new_tokens`` (or until the row stops), redrawing after each chunk;
        returns the last ``Generation``, whose scores cover the prompt and every new token."""
        ids = np.asarray(self.tokens)
        n_prompt, done, k = ids.shape[1], 0, 0
        seed = int(self.kwargs.pop("seed", 0))
        try:
            while done < self.max_new_tokens:
                step = min(self.chunk, self.max_new_tokens - done)
                g = self.model.generate(ids, step, monitors=self.monitors, seed=seed + k, **self.kwargs)
                self.generation, k = g, k + 1
                ids = g.tokens[:, g.attention_mask[0].astype(bool)]
                done = ids.shape[1] - n_prompt
                self.draw(final=False)
                if g.lengths[0] < step:  # a stop token or a stopping monitor ended the row
                    break
        except Exception as e:  # noqa: BLE001 - shown in the view (a background thread has no cell to raise in)
            self.error = e
            self.status.value = f'<span style="color:#b2182b">{F.escape(f"{type(e).__name__}: {e}")}</span>'
            if self.thread is None:
                raise
            return None
        self.draw(final=True)
        return self.generation

    def draw(self, final: bool = True) -> None:
        """Show the latest generation's tokens shaded by every monitor's score."""
        g = self.generation
        if g is None:
            return
        P = self.tokens.shape[1]
        new = g.tokens.shape[1] - P
        stopped = f"; stopped by {g.stopped_by[0]}" if g.stopped_by and g.stopped_by[0] else ""
        self.status.value = F.escape(f"{'done' if final else 'generating'}: {new} new tokens{stopped}")
        scores = {name: s[0] for name, s in g.monitor_scores.items()}
        self.text.value = F.monitor_html(g.str_tokens[0], scores, g.monitor_thresholds, prompt_length=P,
                                         mask=g.attention_mask[0])

    def join(self, timeout: float | None = None):
        """Wait for a background generation to finish; returns the last ``Generation``."""
        if self.thread is not None:
            self.thread.join(timeout)
        return self.generation

    def static(self) -> list:
        self.join()
        return views.monitor_view(self.generation, [0]) if self.generation is not None else [views.HTML("")]
