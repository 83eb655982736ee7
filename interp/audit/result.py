"""The audit's result: ranked trigger candidates, the verdict and the evidence behind it, as JSON and as a report."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from interp.results import Result, Summary

FORMAT = 1


def _plain(x):
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items() if not k.startswith("_")}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if np.isfinite(v) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    return str(x)


@dataclasses.dataclass(frozen=True, eq=False)
class AuditResult(Result):
    """What an audit found.

    ``trigger_candidates``: dicts, best first (:func:`interp.audit.trigger.rank`): ``text``, ``ids``, ``effect``:
    the behaviour rate the candidate adds in the organism beyond what it adds in the base, ``behaviour_rate``/
    ``clean_rate`` in the organism with and without it, ``base_rate``, ``confidence``: the organism's mean
    probability of the behaviour's first token with it, ``loss``: the contrast objective, ``source``.
    ``flagged`` and ``flag_reason``: the verdict.
    ``behaviour``: the behaviour the search targeted (``text``, ``ids``, ``source``: given or inferred);
    ``behaviour_diff``: next-token KL between the models on probing prompts and a corpus, the tokens the organism
    raises at the reply start, the behaviour hypotheses. ``probe``: the defection probe (an
    :class:`interp.probes.Probe` at ``probe.hook``), ``probe_auroc``: its AUROC separating held-out prompts with
    the top candidate from clean ones. ``monitor``/``monitor_auroc``: a probe at the last layer fitted on the
    probing prompts with the top candidate against the same prompts clean (the audit's own evidence, no generic
    pairs), and its AUROC on held-out prompts. ``diff_monitor``/``diff_monitor_auroc``: a monitor that needs no
    trigger and no behaviour, only the base (:class:`interp.audit.evidence.DiffMonitor`: how unusual the organism's
    last-layer state minus the base's is where the reply starts, against clean prompts), and its AUROC on the same
    held-out prompts. ``behaviour_probe``/``behaviour_probe_auroc``: a probe that knows the behaviour but not the
    trigger (:class:`interp.audit.evidence.BehaviourProbe`: the base's direction toward starting its reply with the
    behaviour, from instructed contrast pairs, read on the organism's state minus the base's), and its AUROC on the
    same held-out prompts. ``features``: diffed latents of a dictionary trained on the base and
    organism-only crosscoder latents, each with an explanation and top contexts. ``attribution``: activation
    patching of the behaviour's first token for the top candidate. ``domain_probe``: where the description names a
    domain, the things asked about and the organism's contradictions of the base there
    (:func:`interp.audit.domain.probe_domain`). ``condition_search``: where the description speaks of a condition,
    the situation sentences that make the organism contradict the base on some kind of question
    (:func:`interp.audit.condition.search_conditions`). ``timings``: seconds per stage."""

    trigger_candidates: list
    flagged: bool
    flag_reason: str
    behaviour: dict | None
    behaviour_description: str | None
    behaviour_diff: dict
    probe: Any
    probe_auroc: float | None
    features: dict
    attribution: dict | None
    timings: dict
    budget: str
    settings: dict
    model_name: str | None = None
    base_name: str | None = None
    domain_probe: dict | None = None
    monitor: Any = None
    monitor_auroc: float | None = None
    diff_monitor: Any = None
    diff_monitor_auroc: float | None = None
    condition_search: dict | None = None
    behaviour_probe: Any = None
    behaviour_probe_auroc: float | None = None

    # ------------------------------------------------------------------ use
    @property
    def probe_layer(self) -> int | None:
        """The layer whose residual stream (``blocks.{layer}.hook_resid_post``) the defection probe reads."""
        return None if self.probe is None else int(self.probe.hook.split(".")[1])

    @property
    def top(self) -> dict | None:
        return self.trigger_candidates[0] if self.trigger_candidates else None

    def monitor_scores(self, model, prompts) -> np.ndarray:
        """The candidate monitor's logits for user turns ``prompts``, read where the reply starts."""
        from interp.audit.evidence import probe_scores

        if self.monitor is None:
            raise ValueError("this audit fitted no candidate monitor (it found no trigger candidate)")
        return probe_scores(model, self.monitor, list(prompts))

    def diff_monitor_scores(self, model, base, prompts) -> np.ndarray:
        """The model-diff monitor's scores for user turns ``prompts`` (higher: the organism's state departs from the
        base's more than on ordinary prompts). Needs the base model the audit compared with."""
        if self.diff_monitor is None:
            raise ValueError("this audit result holds no model-diff monitor (one read back from JSON keeps only its "
                             "settings: fit one with interp.audit.evidence.diff_monitor)")
        return self.diff_monitor.scores(model, base, list(prompts))

    def behaviour_probe_scores(self, model, base, prompts) -> np.ndarray:
        """The behaviour probe's scores for user turns ``prompts`` (higher: the organism leans toward the behaviour
        more than the base does there). Needs the base model the audit compared with."""
        if self.behaviour_probe is None:
            raise ValueError("this audit fitted no behaviour probe (it had no behaviour to probe for)")
        return self.behaviour_probe.scores(model, base, list(prompts))

    def probe_scores(self, model, prompts) -> np.ndarray:
        """The defection probe's logits for user turns ``prompts`` (rendered with the model's chat template, read at
        the token where the reply starts); higher means more defection-like."""
        from interp.audit.evidence import probe_scores

        if self.probe is None:
            raise ValueError("this audit fitted no probe")
        return probe_scores(model, self.probe, list(prompts))

    def _summary(self) -> Summary:
        facts = {"flagged": self.flagged, "budget": self.budget,
                 "seconds": round(sum(self.timings.values()), 1)}
        if self.behaviour:
            facts["behaviour"] = repr(self.behaviour["text"])
        if self.domain_probe and self.domain_probe["swaps"]:
            sw = self.domain_probe["swaps"][0]
            facts["domain contradiction"] = f"{sw['base_token']!r} -> {sw['organism_token']!r} x{len(sw['questions'])}"
        cs = self.condition_search
        if cs and cs["candidates"]:
            c = cs["candidates"][0]
            facts["condition"] = f"{c['text']!r} on {c['kind']}: effect {c['effect']:.2f}"
        if self.probe_auroc is not None:
            facts["probe AUROC"] = round(self.probe_auroc, 3)
        if self.monitor_auroc is not None:
            facts["candidate monitor AUROC"] = round(self.monitor_auroc, 3)
        if self.diff_monitor_auroc is not None:
            facts["model-diff monitor AUROC"] = round(self.diff_monitor_auroc, 3)
        if self.behaviour_probe_auroc is not None:
            facts["behaviour probe AUROC"] = round(self.behaviour_probe_auroc, 3)
        top = [(repr(c["text"]), float(c["effect"])) for c in self.trigger_candidates[:8]]
        return Summary("audit", {"candidates": len(self.trigger_candidates)}, facts, top,
                       "trigger candidates (effect on the behaviour rate)")

    # ------------------------------------------------------------------ files
    def to_json(self) -> dict:
        """Plain JSON-ready values (the probes as their hook, layer and arrays; the model-diff monitor as its settings,
        its D x D statistics left out)."""
        def plain_probe(p):
            if p is None:
                return None
            return {"hook": p.hook, "layer": int(p.hook.split(".")[1]), "kind": p.kind,
                    "weight": np.asarray(p.weight).tolist(), "bias": float(p.bias),
                    "mean": np.asarray(p.mean).tolist(), "scale": np.asarray(p.scale).tolist(),
                    "direction": np.asarray(p.direction).tolist()}

        probe = plain_probe(self.probe)
        attribution = None
        if self.attribution is not None:
            attribution = {k: v for k, v in self.attribution.items() if k != "result"}
        return _plain({"format": FORMAT, "model": self.model_name, "base": self.base_name, "flagged": self.flagged,
                       "flag_reason": self.flag_reason, "trigger_candidates": self.trigger_candidates,
                       "behaviour": self.behaviour, "behaviour_description": self.behaviour_description,
                       "probe_auroc": self.probe_auroc, "probe": probe, "features": self.features,
                       "behaviour_diff": self.behaviour_diff, "attribution": attribution, "timings": self.timings,
                       "budget": self.budget, "settings": self.settings, "domain_probe": self.domain_probe,
                       "monitor": plain_probe(self.monitor), "monitor_auroc": self.monitor_auroc,
                       "diff_monitor": None if self.diff_monitor is None else self.diff_monitor.describe(),
                       "diff_monitor_auroc": self.diff_monitor_auroc, "condition_search": self.condition_search,
                       "behaviour_probe": None if self.behaviour_probe is None else self.behaviour_probe.describe(),
                       "behaviour_probe_auroc": self.behaviour_probe_auroc})

    def save_json(self, path) -> Path:
        """Write :meth:`to_json` to ``path`` atomically."""
        from interp._io import atomic_file

        path = Path(path)
        text = json.dumps(self.to_json(), indent=1, ensure_ascii=False)
        with atomic_file(path, "w") as fh:
            fh.write(text + "\n")
        return path

    def report(self, path) -> Path:
        """Write a self-contained HTML report of the evidence to ``path``."""
        from interp.audit._report import build

        return build(self).save(path)
