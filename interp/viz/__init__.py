"""Figures (plotly) and feature dashboards for interp's results; :mod:`interp.widgets` makes them interactive
and :mod:`interp.report` collects them into one self-contained HTML file."""

from interp.viz._figures import (
    attention_figure,
    bar_figure,
    dla_figure,
    edge_circuit_figure,
    escape,
    graph_figure,
    graph_layout,
    heatmap_figure,
    histogram_figure,
    lens_figure,
    logit_effect_figure,
    patching_figure,
    token_strings,
    token_ticks,
    training_figure,
)
from interp.viz.features import (
    FeatureCard,
    FeatureIndex,
    feature_card,
    feature_card_html,
    feature_index,
    feature_indices,
    logit_effects,
)

__all__ = [
    "FeatureCard", "FeatureIndex", "attention_figure", "bar_figure", "dla_figure", "edge_circuit_figure", "escape", "feature_card",
    "feature_card_html", "feature_index", "feature_indices", "graph_figure", "graph_layout", "heatmap_figure", "histogram_figure", "lens_figure",
    "logit_effect_figure", "logit_effects", "patching_figure", "token_strings", "token_ticks", "training_figure",
]
