"""Figures (plotly) and HTML views of interp's results; :mod:`interp.widgets` makes them interactive
and :mod:`interp.report` collects them into one self-contained HTML file."""

from interp.viz.figures import (
    FigureSpec,
    attention_figure,
    bar_figure,
    bar_spec,
    decomposition_figure,
    dla_figure,
    edge_circuit_figure,
    escape,
    feature_card_html,
    graph_figure,
    graph_layout,
    head_scores_figure,
    heatmap_figure,
    histogram_figure,
    histogram_spec,
    intervention_figure,
    lens_cells,
    lens_figure,
    logit_effect_figure,
    logit_effect_spec,
    monitor_figure,
    monitor_html,
    patching_figure,
    probe_sweep_figure,
    score_distribution_figure,
    token_strings,
    token_ticks,
    training_figure,
)
from interp.viz.views import HTML, Linked, result_view

__all__ = [
    "FigureSpec", "HTML", "Linked", "attention_figure", "bar_figure", "bar_spec", "decomposition_figure",
    "dla_figure", "edge_circuit_figure",
    "escape", "feature_card_html", "graph_figure", "graph_layout", "head_scores_figure", "heatmap_figure",
    "histogram_figure", "histogram_spec", "logit_effect_spec",
    "score_distribution_figure",
    "intervention_figure", "lens_cells", "lens_figure", "logit_effect_figure", "monitor_figure", "monitor_html",
    "patching_figure", "probe_sweep_figure",
    "result_view", "token_strings", "token_ticks", "training_figure",
]
