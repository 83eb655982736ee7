"""Circuit analysis on any hooked model: activation and attribution patching, edge attribution and path
patching, logit lens and direct logit attribution, attention-head detectors, prompt sets, and attribution graphs
over transcoders (:mod:`interp.circuits.graph`).

Results are plain frozen objects (arrays plus axis labels) with a short ``repr`` and an HTML table for notebooks
(:class:`interp.results.Result`); :mod:`interp.viz` draws them and :class:`interp.report.Report` takes any of them.
"""

from interp.circuits import graph, metrics, prompts
from interp.circuits.dla import Decomposition, DLAResult, decompose_resid, direct_logit_attribution
from interp.circuits.edges import EdgeResult, edge_attribution, path_patch, receivers, senders
from interp.circuits.heads import HeadScores, ablate_heads, head_scores, per_token_loss
from interp.circuits.lens import LensResult, logit_lens, top_tokens
from interp.circuits.patching import PatchResult, attribute, patch
from interp.circuits.prompts import PromptSet

__all__ = [
    "DLAResult", "Decomposition", "EdgeResult", "HeadScores", "LensResult", "PatchResult", "PromptSet",
    "ablate_heads", "attribute", "decompose_resid", "direct_logit_attribution", "edge_attribution", "graph",
    "head_scores", "logit_lens", "metrics", "patch", "path_patch", "per_token_loss", "prompts", "receivers",
    "senders", "top_tokens",
]
