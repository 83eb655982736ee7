"""Scorers: how well an explanation predicts where a latent fires, on held-out examples the explainer never saw.

* **detection** (Paulo et al. 2024): given the explanation, does each held-out context (half activating, half not,
  the silent half partly "hard": it holds the latent's top tokens) make the latent fire?
* **fuzzing**: held-out activating contexts with their activating tokens marked, and copies with as many other
  tokens marked: are the marked tokens the ones the explanation describes?
* **simulation** (Bills et al. 2023): predict the activation (0-10) of every token; the score is the correlation
  with the true activations over all held-out tokens.

Each scorer runs with the rule checker (``backend=None``: the explanation must be a token pattern, as the baseline
explainer writes) or with a chat model. A backend that gives answer probabilities (``LocalModel``) is scored from
them, one context per prompt; a text-only backend answers a numbered batch of contexts per prompt. Detection and
fuzzing are balanced, and report balanced accuracy and (with probabilities) AUROC; ``value`` is the AUROC when
there are probabilities, else the balanced accuracy. Every score carries a bootstrap 95% interval over the items.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

from interp.explain.examples import Context, LatentExamples
from interp.explain.explainers import parse_pattern, pattern_matches

SCORERS = ("detection", "fuzzing", "simulation")


@dataclasses.dataclass
class Score:
    """One scorer's verdict on one explanation: ``value`` with its bootstrap 95% interval ``ci``, over ``n`` items;
    ``accuracy`` (balanced) and ``auroc`` where they apply; ``error`` when it could not be scored."""

    scorer: str
    value: float | None
    ci: tuple[float, float] | None = None
    n: int = 0
    accuracy: float | None = None
    auroc: float | None = None
    error: str | None = None

    def as_dict(self) -> dict:
        """A JSON-ready copy."""
        d = dataclasses.asdict(self)
        d["ci"] = list(self.ci) if self.ci else None
        return d


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean of the true-positive and true-negative rates (0.5 for a constant guess)."""
    y, pred = np.asarray(y, bool), np.asarray(pred, bool)
    rates = [float((pred[y == c] == c).mean()) for c in (True, False) if (y == c).any()]
    return float(np.mean(rates)) if rates else float("nan")


def auroc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); NaN with one class only."""
    y, p = np.asarray(y, bool), np.asarray(p, np.float64)
    pos, neg = p[y], p[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


def bootstrap_ci(stat, n: int, *, resamples: int = 200, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of ``stat(indices)`` over ``resamples`` resamplings of ``n`` items (``stat`` takes
    one index vector)."""
    rng = np.random.default_rng(seed)
    return _interval(np.array([stat(rng.integers(0, n, n)) for _ in range(resamples)]))


def _interval(vals: np.ndarray) -> tuple[float, float]:
    vals = vals[np.isfinite(vals)]
    if not len(vals):
        return (float("nan"), float("nan"))
    return (float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5)))


def _resamples(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, (resamples, n))


def _balanced_accuracy_rows(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Balanced accuracy of each row of ``y``, ``pred`` ([R, n] booleans); NaN for a row with one class."""
    npos, nneg = y.sum(1), (~y).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = 0.5 * ((pred & y).sum(1) / npos + (~pred & ~y).sum(1) / nneg)
    return np.where((npos > 0) & (nneg > 0), out, np.nan)


def _auroc_rows(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """AUROC of each row (Mann-Whitney with ties counted half); NaN for a row with one class."""
    from scipy.stats import rankdata

    ranks = rankdata(p, axis=1)
    npos, nneg = y.sum(1), (~y).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = ((ranks * y).sum(1) - npos * (npos + 1) / 2) / (npos * nneg)
    return np.where((npos > 0) & (nneg > 0), out, np.nan)


def classify_score(name: str, y: np.ndarray, p: np.ndarray, probabilistic: bool, seed: int = 0,
                   resamples: int = 200) -> Score:
    """A detection/fuzzing :class:`Score` from labels ``y`` and predictions ``p`` (probabilities, or 0/1); the
    interval comes from ``resamples`` bootstrap resamplings, computed together."""
    y = np.asarray(y, bool)
    p = np.asarray(p, np.float64)
    acc = balanced_accuracy(y, p > 0.5)
    roc = auroc(y, p) if probabilistic else None
    idx = _resamples(len(y), resamples, seed)
    boot = _auroc_rows(y[idx], p[idx]) if probabilistic else _balanced_accuracy_rows(y[idx], p[idx] > 0.5)
    return Score(name, roc if probabilistic else acc, _interval(boot), len(y), acc, roc)


def simulation_score(contexts: Sequence[Context], predicted: Sequence[np.ndarray], seed: int = 0,
                     resamples: int = 200) -> Score:
    """Correlation of predicted and true activations over every token of ``contexts`` (bootstrap over contexts,
    from per-context sums)."""
    true = [np.asarray(c.acts, np.float64) for c in contexts]
    pred = [np.asarray(p, np.float64) for p in predicted]
    # per context: count, sum x, sum y, sum xx, sum yy, sum xy
    sums = np.array([[len(t), t.sum(), q.sum(), t @ t, q @ q, t @ q] for t, q in zip(true, pred)])

    def corr(tot):  # tot [..., 6]
        n, sx, sy, sxx, syy, sxy = np.moveaxis(tot, -1, 0)
        vx, vy = sxx - sx * sx / n, syy - sy * sy / n
        with np.errstate(invalid="ignore", divide="ignore"):
            r = (sxy - sx * sy / n) / np.sqrt(vx * vy)
        return np.where((vx > 1e-12 * np.maximum(sxx, 1)) & (vy > 1e-12 * np.maximum(syy, 1)), r, 0.0)

    value = float(corr(sums.sum(0)))
    boot = corr(sums[_resamples(len(true), resamples, seed)].sum(1))
    return Score("simulation", value, _interval(boot), len(true))


# ---------------------------------------------------------------------------------------------- items
def detection_items(ex: LatentExamples) -> tuple[list[Context], np.ndarray]:
    """Held-out contexts and their labels (1: the latent fires in it)."""
    ctx = ex.test_pos + ex.test_neg
    return ctx, np.array([1] * len(ex.test_pos) + [0] * len(ex.test_neg), bool)


def fuzzing_items(ex: LatentExamples, seed: int = 0) -> tuple[list[tuple[Context, list[int]]], np.ndarray]:
    """Held-out activating contexts with their activating tokens marked (label 1), and each again with as many
    silent tokens marked instead (label 0)."""
    rng = np.random.default_rng([seed, ex.latent, 7])
    items, labels = [], []
    for c in ex.test_pos:
        a = np.asarray(c.acts)
        on = [int(i) for i in np.flatnonzero(a > 0)]
        off = np.flatnonzero(a <= 0)
        if not on or len(off) < len(on):
            continue
        items.append((c, on))
        labels.append(1)
        items.append((c, sorted(int(i) for i in rng.choice(off, len(on), replace=False))))
        labels.append(0)
    return items, np.array(labels, bool)


# ---------------------------------------------------------------------------------------------- prompts
DETECTION_SYSTEM = (
    "You check explanations of a neuron in a language model. Given the explanation, decide whether the neuron "
    "fires anywhere in a text, that is, whether the text contains what the explanation describes.")
FUZZING_SYSTEM = (
    "You check explanations of a neuron in a language model. In each text some tokens are marked <<like this>>. "
    "Decide whether the marked tokens are the ones the explanation describes.")
SIMULATION_SYSTEM = (
    "You predict the activations of a neuron in a language model from an explanation of what it responds to. For "
    "each token give an integer from 0 (no activation) to 10 (the strongest), one line per token: the token, a "
    "tab, the number. Most tokens are 0.")


def _batch_user(explanation: str, texts: Sequence[str], question: str) -> str:
    body = "\n".join(f"Text {i}: {t}" for i, t in enumerate(texts, 1))
    return (f"Explanation: {explanation}\n\n{body}\n\n{question} Reply with a list of {len(texts)} numbers, 1 for "
            "yes and 0 for no, in order, such as [1, 0, 1], and nothing else.")


def _parse_list(text: str, n: int) -> list[int] | None:
    m = re.search(r"\[([^\]]*)\]", text)
    vals = re.findall(r"\d+", m.group(1) if m else text)
    if len(vals) != n or any(v not in ("0", "1") for v in vals):
        return None
    return [int(v) for v in vals]


def _parse_simulation(text: str, n: int) -> np.ndarray | None:
    vals = []
    for line in text.strip().splitlines():
        m = re.search(r"(\d+)\s*$", line.strip())
        if m:
            vals.append(min(int(m.group(1)), 10))
    return np.array(vals[:n], np.float64) if len(vals) >= n else None


# ---------------------------------------------------------------------------------------------- scorer
class Scorer:
    """Scores explanations at one ``task`` ("detection", "fuzzing" or "simulation"). ``backend=None`` is the rule
    checker for token-pattern explanations; else a chat backend answers (``batch_size`` contexts per prompt for a
    text-only backend). ``seed`` fixes the fuzzing marks, the order of contexts in a prompt and the intervals."""

    def __init__(self, task: str, backend=None, *, batch_size: int = 8, seed: int = 0):
        if task not in SCORERS:
            raise ValueError(f"unknown scorer {task!r}; scorers: {', '.join(SCORERS)}")
        self.task, self.backend, self.batch_size, self.seed = task, backend, batch_size, seed
        self.probabilistic = backend is not None and hasattr(backend, "choice_probs")
        self.name = task if backend is None else f"{task}:{backend.name}"

    @property
    def checker(self) -> str:
        """"rule" for the rule checker, else the backend's name."""
        return "rule" if self.backend is None else self.backend.name

    def score(self, items: Sequence[tuple[LatentExamples, str | None]]) -> list[Score]:
        """One :class:`Score` per ``(examples, explanation)`` pair, in order."""
        out = []
        for ex, text in items:
            if text is None:
                out.append(Score(self.task, None, error="no explanation"))
            elif not ex.test_pos or not ex.test_neg:
                out.append(Score(self.task, None, error="too few held-out examples"))
            elif self.backend is None:
                out.append(self._rule(ex, text))
            else:
                out.append(self._llm(ex, text))
        return out

    # -------------------------------------------------------------- rule checker
    def _rule(self, ex: LatentExamples, text: str) -> Score:
        rules = parse_pattern(text)
        if self.task == "detection":
            ctx, y = detection_items(ex)
            pred = np.array([pattern_matches(rules, c.tokens).any() for c in ctx], float)
            return classify_score(self.task, y, pred, False, self.seed)
        if self.task == "fuzzing":
            items, y = fuzzing_items(ex, self.seed)
            if not items:
                return Score(self.task, None, error="no held-out context has silent tokens to mark")
            pred = np.array([pattern_matches(rules, c.tokens)[marks].all() for c, marks in items], float)
            return classify_score(self.task, y, pred, False, self.seed)
        ctx, _ = detection_items(ex)
        return simulation_score(ctx, [10.0 * pattern_matches(rules, c.tokens) for c in ctx], self.seed)

    # -------------------------------------------------------------- chat model
    def _llm(self, ex: LatentExamples, text: str) -> Score:
        if self.task == "simulation":
            return self._simulate(ex, text)
        if self.task == "detection":
            ctx, y = detection_items(ex)
            texts = ["".join(c.tokens) for c in ctx]
            question = "Does the neuron fire on this text?"
        else:
            items, y = fuzzing_items(ex, self.seed)
            if not items:
                return Score(self.task, None, error="no held-out context has silent tokens to mark")
            texts = [c.marked(marks=marks) for c, marks in items]
            question = "Are the marked tokens the ones the explanation describes?"
        system = DETECTION_SYSTEM if self.task == "detection" else FUZZING_SYSTEM
        if self.probabilistic:
            convs = [[{"role": "system", "content": system},
                      {"role": "user", "content": f"Explanation: {text}\n\nText: {t}\n\n{question} Answer Yes or No."}]
                     for t in texts]
            probs = self.backend.choice_probs(convs, ["Yes", "No"])
            bad = [i for i, p in enumerate(probs) if p is None]
            if bad:
                return Score(self.task, None, error=f"the backend gave no answer for {len(bad)} of {len(texts)}")
            return classify_score(self.task, y, np.array([p[0] for p in probs]), True, self.seed)
        rng = np.random.default_rng([self.seed, ex.latent, 11])
        order = rng.permutation(len(texts))
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        convs = [[{"role": "system", "content": system},
                  {"role": "user", "content": _batch_user(text, [texts[i] for i in b], question)}] for b in batches]
        replies = self.backend.chat(convs, max_tokens=16 + 4 * self.batch_size)
        pred = np.zeros(len(texts))
        for b, r in zip(batches, replies):
            if r.text is None:
                return Score(self.task, None, error=f"backend: {r.error}")
            vals = _parse_list(r.text, len(b))
            if vals is None:
                return Score(self.task, None, error=f"the reply is not a list of {len(b)} 0/1 answers: {r.text[:80]!r}")
            pred[b] = vals
        return classify_score(self.task, y, pred, False, self.seed)

    def _simulate(self, ex: LatentExamples, text: str) -> Score:
        ctx, _ = detection_items(ex)
        if hasattr(self.backend, "expected_numbers"):
            preds = self.backend.expected_numbers(
                [[{"role": "system", "content": SIMULATION_SYSTEM},
                  {"role": "user", "content": f"Explanation: {text}\n\nTokens:\n" + "\n".join(c.tokens)}]
                 for c in ctx], [c.tokens for c in ctx])
        else:
            convs = [[{"role": "system", "content": SIMULATION_SYSTEM},
                      {"role": "user", "content": f"Explanation: {text}\n\nTokens:\n" + "\n".join(c.tokens)}]
                     for c in ctx]
            replies = self.backend.chat(convs, max_tokens=8 * max(len(c.tokens) for c in ctx) + 16)
            preds = []
            for c, r in zip(ctx, replies):
                p = _parse_simulation(r.text, len(c.tokens)) if r.text is not None else None
                if p is None:
                    why = r.error if r.text is None else f"the reply does not give {len(c.tokens)} numbers"
                    return Score(self.task, None, error=f"backend: {why}")
                preds.append(p)
        if any(p is None for p in preds):
            return Score(self.task, None, error="the backend gave no prediction for some contexts")
        return simulation_score(ctx, preds, self.seed)
