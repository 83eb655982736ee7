"""Input search: find input tokens that drive an objective (GCG, Zou et al. 2023).

    >>> from interp import search
    >>> obj = search.objective("logprob", model, " London")
    >>> res = search.gcg(model, obj, "The capital of France is", span="suffix:10", steps=200)
    >>> res.text, res.success, res.loss

Objectives: raise the log-probability of a continuation (``logprob``), a dictionary latent at a position
(``latent``), any score of a hook's activation (``score``, e.g. a probe); ``negate`` (or ``"not-NAME"``) lowers one;
``contrast(obj, base)`` scores it on the model minus on a baseline model with the same vocabulary.
"""

from interp.search.gcg import Layout, SearchResult, allowed_tokens, gcg, layout, losses, token_gradient
from interp.search.objectives import (
    REGISTRY,
    Contrast,
    LatentObjective,
    LogProbObjective,
    Negated,
    Objective,
    ScoreObjective,
    contrast,
    latent,
    logprob,
    negate,
    score,
)
from interp.search.objectives import make as objective

__all__ = [
    "REGISTRY", "Contrast", "LatentObjective", "Layout", "LogProbObjective", "Negated", "Objective", "ScoreObjective",
    "SearchResult", "allowed_tokens", "contrast", "gcg", "latent", "layout", "logprob", "losses", "negate", "objective",
    "score", "token_gradient",
]
