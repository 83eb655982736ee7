"""Induction heads forming (Olsson et al. 2022, "In-context learning and induction heads"): a two-layer
attention-only transformer trained on text shows a phase change: within a short window of training the loss on
the repeated half of random token sequences falls sharply, a layer-1 head starts attending to the token after the
current token's earlier occurrence (an induction head) and a layer-0 head to the previous token, and the model's
in-context learning score (loss late in the context minus loss early in it) drops.

Text is split into lower-cased words and punctuation marks (:func:`tokenize`): a vocabulary of the commonest
words of the training text, an unknown-word token and a beginning-of-sequence token, so nothing has to be trained
or downloaded. To reach the transition within minutes on a CPU rather than days, every training window repeats one
passage of itself at a random later offset (:func:`text_batches` with ``repeat=1.0``), as quoted and repeated
passages do in real documents; the repeat's offset varies, so only a content-based mechanism (previous-token head
then induction head) can use it, and the detectors measure that mechanism on random token sequences the model has
never seen.

Axes: B batch, T positions.
"""

from __future__ import annotations

import collections
import dataclasses
import re

import jax.numpy as jnp
import numpy as np

from interp.circuits.heads import head_scores, per_token_loss
from interp.circuits.prompts import induction as _induction_rows
from interp.models import Model
from interp.results import Result, Summary

_WORD = re.compile(r"\w+|[^\w\s]")


@dataclasses.dataclass(frozen=True)
class Words:
    """A word-level tokenization of a text: ``tokens`` (int32), ``vocab`` (the words of ids 0 .. V-3, commonest
    first), ``unk`` (id V-2, every other word) and ``bos`` (id V-1)."""

    tokens: np.ndarray
    vocab: tuple[str, ...]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) + 2

    @property
    def unk(self) -> int:
        return len(self.vocab)

    @property
    def bos(self) -> int:
        return len(self.vocab) + 1

    def decode(self, ids) -> str:
        names = self.vocab + ("<unk>", "<bos>")
        return " ".join(names[int(i)] for i in np.asarray(ids).ravel())


def tokenize(text: str, vocab_size: int = 512) -> Words:
    """Split ``text`` into lower-cased words and punctuation marks; the ``vocab_size - 2`` commonest become ids,
    the rest the unknown-word id."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 4:
        raise ValueError(f"vocab_size must be an int >= 4, got {vocab_size!r}")
    words = _WORD.findall(text.lower())
    if len(words) < 2:
        raise ValueError(f"the text holds {len(words)} words; pass the training corpus")
    vocab = tuple(w for w, _ in collections.Counter(words).most_common(vocab_size - 2))
    ids = {w: i for i, w in enumerate(vocab)}
    return Words(np.array([ids.get(w, len(vocab)) for w in words], np.int32), vocab)


def text_batches(words: Words, *, batch: int, length: int, repeat: float = 1.0, seed: int = 0):
    """``step -> [batch, length]``: BOS then a random window of the text; with probability ``repeat`` a window also
    repeats one passage of itself (8 to ``(length - 1) // 2`` tokens) at a random later offset. Each batch comes from
    a generator seeded by ``(seed, step)``, so a run is reproducible."""
    tokens = words.tokens
    n = length - 1
    if n < 17:
        raise ValueError(f"length must be at least 18 (a repeated passage of 8 tokens fits twice), got {length}")
    if tokens.size < n:
        raise ValueError(f"the text holds {tokens.size} tokens, fewer than one window of {n}")
    if not 0 <= repeat <= 1:
        raise ValueError(f"repeat must be a probability in [0, 1], got {repeat!r}")

    def at(step: int) -> np.ndarray:
        rng = np.random.default_rng((seed, step))
        starts = rng.integers(0, tokens.size - n + 1, batch)
        win = np.stack([tokens[s:s + n] for s in starts])
        for r in np.nonzero(rng.random(batch) < repeat)[0]:
            span = int(rng.integers(8, n // 2 + 1))
            i = int(rng.integers(0, n - 2 * span + 1))
            j = int(rng.integers(i + span, n - span + 1))
            win[r, j:j + span] = win[r, i:i + span]
        return np.concatenate([np.full((batch, 1), words.bos, np.int32), win], axis=1)

    return at


def repeated_sequences(words: Words, *, n: int = 32, half: int = 31, alphabet: int = 300,
                       seed: int = 0) -> np.ndarray:
    """``[n, 1 + 2 * half]``: BOS, then ``half`` distinct tokens drawn at random from the ``alphabet`` commonest
    words, repeated once. The sequences are meaningless, so only copying from context predicts the second copy."""
    alphabet = min(alphabet, len(words.vocab))
    rows = _induction_rows(alphabet, n, half, seed=seed)
    return np.concatenate([np.full((n, 1), words.bos), rows], axis=1).astype(np.int32)


def repeated_loss(model: Model, rows, *, edits_=()) -> float:
    """Mean loss on the second copy of :func:`repeated_sequences` rows, from its second token on (the first
    cannot be inferred); an induction mechanism drives it towards zero. ``edits_``: hook edits to run with (e.g.
    :func:`interp.circuits.heads.ablate_heads`)."""
    half = (rows.shape[1] - 1) // 2
    return float(per_token_loss(model, jnp.asarray(rows), edits_=edits_)[:, half + 1:].mean())


def icl_score(model: Model, rows, *, early: tuple[int, int] = (8, 16), late: tuple[int, int] | None = None) -> float:
    """In-context learning score: the mean loss at the ``late`` positions minus that at the ``early`` ones
    (Olsson et al. use the 500th and 50th tokens; ``late`` defaults to the last eighth of the context). Negative:
    the model predicts better with more context."""
    losses = per_token_loss(model, jnp.asarray(rows))
    T = losses.shape[1]
    late = (T - T // 8, T) if late is None else late
    return float(losses[:, late[0]:late[1]].mean() - losses[:, early[0]:early[1]].mean())


def head_score_table(model: Model, rows) -> np.ndarray:
    """``[kind, layer, head]`` detector scores (previous-token, duplicate-token, induction) on the repeated rows."""
    return head_scores(model, jnp.asarray(rows), offset=1).values


@dataclasses.dataclass(frozen=True)
class PhaseChange(Result):
    """When a training curve makes its main move: it leaves its extreme (``before``, the plateau's peak for a
    falling curve, its trough for a rising one) for its final level (``after``); ``start`` and ``end`` are the steps
    at which it has made 10% and 90% of that move, and ``width`` is ``end - start`` as a fraction of the run."""

    start: int
    end: int
    before: float
    after: float
    width: float

    @property
    def middle(self) -> float:
        return (self.start + self.end) / 2

    def overlaps(self, other: PhaseChange) -> bool:
        """Whether the two windows share a step."""
        return self.start <= other.end and other.start <= self.end

    def _summary(self) -> Summary:
        return Summary("phase change", facts={"steps": f"{self.start}-{self.end}", "from": self.before,
                                              "to": self.after, "width (fraction of run)": self.width})


def phase_change(steps, values) -> PhaseChange:
    """The window in which ``values`` (a curve measured at ``steps``) makes its main move: from its highest value to
    its last when the curve ends below where it began, from its lowest otherwise (an early rise of the loss on
    random sequences, as the model learns the text's statistics, is not the transition)."""
    steps, values = np.asarray(steps), np.asarray(values, np.float64)
    if steps.ndim != 1 or steps.shape != values.shape or len(steps) < 3:
        raise ValueError(f"need at least 3 measurements of one curve; got steps {steps.shape}, values {values.shape}")
    falling = values[-1] < values[0]
    i0 = int(np.argmax(values) if falling else np.argmin(values))
    before, after = values[i0], values[-1]
    if before == after:
        raise ValueError("the curve does not move from its extreme to its end; no transition to time")
    frac = (values[i0:] - before) / (after - before)
    start = int(steps[i0 + int(np.argmax(frac >= 0.1))])
    end = int(steps[i0 + int(np.argmax(frac >= 0.9))])
    return PhaseChange(start, end, float(before), float(after), (end - start) / float(steps[-1] - steps[0]))
