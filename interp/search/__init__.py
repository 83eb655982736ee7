"""Input search: find input tokens that drive an objective (GCG, Zou et al. 2023).

    >>> from interp import search
    >>> obj = search.objective("logprob", model, " London")
    >>> res = search.gcg(model, obj, "The capital of France is", span="suffix:10", steps=200)
    >>> res.text, res.success, res.loss

Objectives: raise the log-probability of a continuation (``logprob``), a dictionary latent at a position
(``latent``), any score of a hook's activation (``score``, e.g. a probe); ``negate`` (or ``"not-NAME"``) lowers one.
"""

from interp.search.gcg import Layout, SearchResult, allowed_tokens, gcg, layout, losses, token_gradient
from interp.search.objectives import (
    REGISTRY,
    LatentObjective,
    LogProbObjective,
    Negated,
    Objective,
    ScoreObjective,
    latent,
    logprob,
    negate,
    score,
)
from interp.search.objectives import make as objective

__all__ = [
    "REGISTRY", "LatentObjective", "Layout", "LogProbObjective", "Negated", "Objective", "ScoreObjective",
    "SearchResult", "allowed_tokens", "gcg", "latent", "layout", "logprob", "losses", "negate", "objective", "score",
    "token_gradient",
]
