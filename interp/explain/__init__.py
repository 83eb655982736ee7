"""Automated interpretability: explain what each latent of a dictionary responds to, and score the explanations.

Examples come from a feature index (:class:`ExampleSampler`): top-activating contexts and contexts across
activation quantiles for the explainer, and held-out activating, random and "hard" silent contexts for the
scorers. Explainers (:class:`Explainer`): :class:`Baseline` (token patterns, no language model) and
:class:`LLMExplainer` over any chat :class:`Backend` (:class:`OpenAICompatible` servers, :class:`LocalModel` for
an instruct model ``interp`` loads). Scorers (:class:`Scorer`): detection, fuzzing and simulation, by the rule
checker or a chat model, each against a shuffled control. :func:`explain_latents` runs it all into a resumable
JSONL file, read back as :class:`Explanations` for feature cards, dashboards, graph labels and reports.
"""

from interp.explain.backends import Backend, OpenAICompatible, Reply
from interp.explain.cache import ResponseCache, default_cache
from interp.explain.examples import Context, ExampleSampler, LatentExamples
from interp.explain.explainers import (
    Baseline,
    Explainer,
    Explanation,
    LLMExplainer,
    Rule,
    explain_prompt,
    parse_pattern,
    pattern_text,
)
from interp.explain.graphs import label_graph
from interp.explain.local import LocalModel
from interp.explain.planted import planted_detectors, separable_groups
from interp.explain.run import Explanations, explain_latents
from interp.explain.scorers import SCORERS, Score, Scorer, auroc, balanced_accuracy
from interp.explain.spec import EXPLAINER_SPECS, backend_from_spec, explainer_from_spec, parse_explainer

__all__ = [
    "EXPLAINER_SPECS", "SCORERS", "Backend", "Baseline", "Context", "ExampleSampler", "Explainer", "Explanation",
    "Explanations", "LLMExplainer", "LatentExamples", "LocalModel", "OpenAICompatible", "Reply", "ResponseCache",
    "Rule", "Score", "Scorer", "auroc", "backend_from_spec", "balanced_accuracy", "default_cache", "explain_latents",
    "explain_prompt", "explainer_from_spec", "label_graph", "parse_explainer", "parse_pattern", "pattern_text",
    "planted_detectors", "separable_groups",
]
