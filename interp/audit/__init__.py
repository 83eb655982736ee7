"""Automated audits of fine-tuned models: given a model and its base (and at most a one-line description of the
behaviour, never the trigger), gather evidence that something was planted and rank hypotheses about it.

    >>> from interp import audit
    >>> res = audit.audit(organism, base, budget="small")
    >>> res.trigger_candidates[0]["text"], res.flagged, res.probe_auroc
    >>> res.save_json("audit.json"); res.report("audit.html")

Evidence: behavioural diffing (next-token KL on probing prompts and a corpus; the reply the organism raises), trigger
reconstruction with input search on the contrast ``log p_org - log p_base`` (verified by greedy decoding on held-out
prompts), a condition search with situation sentences for a behaviour that depends on the prompt's situation, a
defection probe from generic contrast pairs used as a monitor, model diffing (a dictionary trained on
the base, a crosscoder trained on both) with explained latents, and activation patching of the behaviour.
"""

from interp.audit.result import AuditResult
from interp.audit.run import BUDGETS, audit, check_pair

__all__ = ["BUDGETS", "AuditResult", "audit", "check_pair"]
