"""Explainers: a short description of what makes a latent fire, written from its examples.

Every explainer follows :class:`Explainer`: ``explain(examples) -> list[Explanation]`` for a batch of
:class:`~interp.explain.examples.LatentExamples`. :class:`Baseline` needs no language model: it finds the tokens,
token pairs and preceding tokens that best separate the activating positions from the silent ones and writes them
as a token pattern (``the token " Paris"; the token "ville" after " Belle"; any token after " of"``), which
:func:`parse_pattern` reads back, so the rule scorer can check it. :class:`LLMExplainer` asks a chat model
(any :class:`~interp.explain.backends.Backend`) with the activating tokens marked ``<<like this>>``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from interp.explain.examples import LatentExamples


@dataclasses.dataclass
class Explanation:
    """One latent's explanation: its ``text`` (None when the explainer failed, with ``error`` saying why), and what
    produced it: the ``explainer``'s name, the ``prompt`` sent (a conversation, for language-model explainers) and
    the raw ``response``."""

    latent: int
    text: str | None
    explainer: str
    prompt: list[dict] | None = None
    response: str | None = None
    error: str | None = None


@runtime_checkable
class Explainer(Protocol):
    """Writes explanations for a batch of latents' examples; ``name`` is recorded with every explanation."""

    name: str

    def explain(self, examples: Sequence[LatentExamples]) -> list[Explanation]:
        """One :class:`Explanation` per item of ``examples`` (in order); a failure is recorded in it, not raised."""
        ...


# ---------------------------------------------------------------------------------------------- token patterns
_STR = r'"(?:[^"\\]|\\.)*"'
_PART = re.compile(rf"(the token|any token after) ({_STR})(?: after ({_STR}))?")


@dataclasses.dataclass(frozen=True)
class Rule:
    """One alternative of a token pattern: ``token`` (None: any) preceded by ``after`` (None: anything)."""

    token: str | None
    after: str | None = None

    def text(self) -> str:
        """The rule as pattern text."""
        q = lambda s: json.dumps(s, ensure_ascii=False)
        if self.token is None:
            return f"any token after {q(self.after)}"
        return f"the token {q(self.token)}" + (f" after {q(self.after)}" if self.after is not None else "")

    def matches(self, tokens: Sequence[str]) -> np.ndarray:
        """Where in ``tokens`` (strings) the rule holds."""
        cur = np.array([self.token is None or t == self.token for t in tokens], bool)
        if self.after is None:
            return cur
        prev = np.array([False] + [t == self.after for t in tokens[:-1]], bool)
        return cur & prev


def parse_pattern(text: str | None) -> list[Rule]:
    """The rules written in a token-pattern explanation (empty when ``text`` holds none, e.g. a free-text one)."""
    rules = []
    for m in _PART.finditer(text or ""):
        kind, a, b = m.group(1), json.loads(m.group(2)), m.group(3)
        if kind == "any token after":
            rules.append(Rule(None, a))
        else:
            rules.append(Rule(a, json.loads(b) if b else None))
    return rules


def pattern_text(rules: Sequence[Rule]) -> str:
    """Token-pattern text for ``rules`` (read back by :func:`parse_pattern`)."""
    return "; ".join(r.text() for r in rules)


def pattern_matches(rules: Sequence[Rule], tokens: Sequence[str]) -> np.ndarray:
    """Where in ``tokens`` any of ``rules`` holds."""
    out = np.zeros(len(tokens), bool)
    for r in rules:
        out |= r.matches(tokens)
    return out


# ---------------------------------------------------------------------------------------------- baseline
class Baseline:
    """The explainer that needs no language model (the offline default): candidate rules are the tokens at the
    activating positions, the tokens before them, and the pairs; up to ``max_rules`` are chosen greedily to maximise
    the F-score of predicting where the latent fires, over every position of the explainer's examples (recall
    weighted by activation, precision counted by positions). Deterministic."""

    name = "baseline"

    def __init__(self, max_rules: int = 3, min_gain: float = 0.01):
        self.max_rules, self.min_gain = max_rules, min_gain

    def explain(self, examples: Sequence[LatentExamples]) -> list[Explanation]:
        """See the class docstring."""
        return [self._one(ex) for ex in examples]

    def _one(self, ex: LatentExamples) -> Explanation:
        if ex.dead or not ex.train:
            return Explanation(ex.latent, None, self.name, error="no activating examples")
        toks, acts = [], []
        for c in ex.train + ex.train_neg:
            toks.append(c.tokens)
            acts.append(np.asarray(c.acts, np.float64))
        peak = max(ex.max_act, 1e-12)
        weights = np.concatenate([a / peak for a in acts])
        fires = weights > 0
        # candidate rules from the activating positions, with their position masks
        cands: dict[Rule, None] = {}
        for tk, a in zip(toks, acts):
            for i in np.flatnonzero(a > 0):
                cands[Rule(tk[i])] = None
                if i > 0:
                    cands[Rule(tk[i], tk[i - 1])] = None
                    cands[Rule(None, tk[i - 1])] = None
        masks = {r: np.concatenate([r.matches(tk) for tk in toks]) for r in cands}
        total = weights.sum()

        def fscore(m):
            hit = m.sum()
            if not hit:
                return 0.0
            p = (m & fires).sum() / hit
            rec = weights[m].sum() / total
            return 0.0 if p + rec == 0 else 2 * p * rec / (p + rec)

        chosen: list[Rule] = []
        cur = np.zeros_like(fires)
        best = 0.0
        simplicity = lambda r: (r.token is None) + (r.after is not None)  # prefer plain tokens on ties
        while len(chosen) < self.max_rules:
            scored = [(fscore(cur | m), -simplicity(r), r) for r, m in masks.items() if r not in chosen]
            if not scored:
                break
            f, _, r = max(scored, key=lambda x: (x[0], x[1]))
            if f - best < self.min_gain:
                break
            chosen.append(r)
            cur |= masks[r]
            best = f
        if not chosen:
            return Explanation(ex.latent, None, self.name, error="no token pattern separates the examples")
        return Explanation(ex.latent, pattern_text(chosen), self.name, response=json.dumps({"f_score": best}))


# ---------------------------------------------------------------------------------------------- language model
EXPLAIN_SYSTEM = (
    "You are studying a neuron of a language model. You see short texts; the tokens on which the neuron fires are "
    "marked <<like this>>, and after each text its strongest tokens with their activations (0 to 10). Find what "
    "the marked tokens have in common, the token itself and its context. Reply with one short phrase only, such "
    "as: the word \"city\" after a place name; closing parentheses in code; verbs in the past tense."
)


def _scale(acts: Sequence[float], peak: float) -> list[int]:
    return [int(round(10 * a / peak)) if peak > 0 else 0 for a in acts]


def explain_prompt(ex: LatentExamples, *, max_examples: int = 12) -> list[dict]:
    """The conversation :class:`LLMExplainer` sends for ``ex``: the explainer's examples, strongest first, with the
    activating tokens marked and listed."""
    parts = []
    for n, c in enumerate(sorted(ex.train, key=lambda c: -c.max_act)[:max_examples], 1):
        s = _scale(c.acts, ex.max_act)
        strongest = sorted((i for i in range(len(c.acts)) if s[i] > 0), key=lambda i: -c.acts[i])[:4]
        listed = ", ".join(f"{c.tokens[i]!r} ({s[i]})" for i in strongest)
        parts.append(f"Text {n}: {c.marked()}\nActivations: {listed}")
    user = "\n\n".join(parts) + "\n\nWhat does the neuron respond to? One short phrase."
    return [{"role": "system", "content": EXPLAIN_SYSTEM}, {"role": "user", "content": user}]


def clean_explanation(text: str) -> str | None:
    """The explanation in a model's reply: its first non-empty line without a leading label, list bullet or
    surrounding quotes, at most 200 characters; a preamble line ending in ":" gives way to the lines after it.
    None when nothing is left."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for k, line in enumerate(lines):
        line = re.sub(r"^\s*(explanation|answer|the neuron (responds to|fires on))\s*[:\-]\s*", "", line,
                      flags=re.I).strip()
        line = re.sub(r"^([-*\u2022]|\d+[.)])\s+", "", line).strip()
        if len(line) >= 2 and line[0] == line[-1] == '"' and line.count('"') == 2:  # a quoted reply, not a pattern
            line = line[1:-1].strip()
        if line.endswith(":") and k + 1 < len(lines):  # a preamble ("... the following phrases:"), then the answer
            rest = clean_explanation("\n".join(lines[k + 1:]))
            if rest:
                return rest
        if line:
            return line[:200]
    return None


class LLMExplainer:
    """Explains with a chat model: ``backend`` is any :class:`~interp.explain.backends.Backend` (an
    ``OpenAICompatible`` server or a ``LocalModel``). The prompt and raw reply are kept in each explanation."""

    def __init__(self, backend, *, max_examples: int = 12, max_tokens: int = 48):
        self.backend, self.max_examples, self.max_tokens = backend, max_examples, max_tokens
        self.name = f"llm:{backend.name}"

    def explain(self, examples: Sequence[LatentExamples]) -> list[Explanation]:
        """See the class docstring."""
        live = [ex for ex in examples if not ex.dead and ex.train]
        prompts = [explain_prompt(ex, max_examples=self.max_examples) for ex in live]
        replies = iter(self.backend.chat(prompts, max_tokens=self.max_tokens) if prompts else [])
        out, by_latent = [], defaultdict(list)
        for ex, p in zip(live, prompts):
            by_latent[ex.latent].append((p, next(replies)))
        for ex in examples:
            if ex.dead or not ex.train:
                out.append(Explanation(ex.latent, None, self.name, error="no activating examples"))
                continue
            p, r = by_latent[ex.latent].pop(0)
            if r.text is None:
                out.append(Explanation(ex.latent, None, self.name, p, None, error=f"backend: {r.error}"))
                continue
            text = clean_explanation(r.text)
            out.append(Explanation(ex.latent, text, self.name, p, r.text,
                                   error=None if text else "the reply held no explanation"))
        return out
