"""Feature indexes and cards: where a dictionary's latents fire over a token set, and what they write
(computation only; :mod:`interp.viz` and :mod:`interp.widgets` draw them)."""

from interp.features.cards import (
    FeatureCard,
    FeatureIndex,
    feature_card,
    feature_cards,
    feature_index,
    feature_indices,
    graph_cards,
    logit_effects,
)

__all__ = ["FeatureCard", "FeatureIndex", "feature_card", "feature_cards", "feature_index", "feature_indices",
           "graph_cards", "logit_effects"]
