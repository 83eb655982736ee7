"""Feature absorption on the first-letter task (Chanin et al. 2024, "A is for Absorption").

A linear probe reads a word's first letter off the model's activation at that word. A dictionary "has" the
feature when some latents fire on the words of a letter (found by sparse probing on the latents, Gao et al.'s and
Chanin et al.'s k-sparse probing with k grown while it helps: feature splitting). Absorption is when those latents
stay silent on a word of their letter although the model still carries the letter there (the probe reads it right)
and another latent, one that points along the probe's direction, carries it instead.

    >>> words = absorption.first_letter_words(model.tokenizer)
    >>> x = absorption.word_activations(model, hook, words)
    >>> probe = absorption.fit_letter_probe(x[train], letters[train])
    >>> result = absorption.measure(dictionary, probe, x[train], letters[train], x[test], letters[test])
    >>> result.mean_rate, result.mean_false_negative_rate

Definitions used here (stated, since papers differ in the details):

- words: vocabulary tokens that are a space and 3 or more lowercase ASCII letters (the space and the word encode
  to that one token);
- the activation of a word: at its token, after a fixed prefix of examples of the task;
- main latents of a letter: the latent whose firing best predicts the letter (F1 on the training words), then the
  next best added while the F1 of "any of them fires" rises by at least ``split_gain`` (at most ``max_split``);
- a test word of letter L counts when the probe predicts L for it; it is a **false negative** when none of L's
  main latents fires on it, and **absorbed** when it is a false negative and the active latent that adds most to
  the reconstruction's projection on the probe's direction for L has a decoder cosine with that direction of at
  least ``cos_threshold`` (Chanin et al.'s 0.025).
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from interp.results import Result, Summary

LETTERS = tuple(string.ascii_lowercase)
PREFIX = ("Each word and the letter it begins with: tartan T, mirth M, quiet Q, orange O, basket B, fields F, "
          "violet V, jungle J, young Y, kettle K, word")


def first_letter_words(tokenizer, *, min_length: int = 3) -> list[str]:
    """The words of the task, each with its leading space (e.g. ``" house"``), in vocabulary order."""
    out = []
    for i in range(tokenizer.vocab_size):
        piece = tokenizer.to_string([i])
        word = piece[1:] if piece.startswith(" ") else piece  # word-level tokenizers drop the space
        if (len(word) >= min_length and word.isascii() and word.isalpha() and word.islower()
                and tokenizer.encode(" " + word, prepend_bos=False) == [i]):
            out.append(" " + word)
    return out


def letters_of(words: Sequence[str]) -> np.ndarray:
    """Each word's first letter as an index into :data:`LETTERS`."""
    return np.array([LETTERS.index(w.strip()[0]) for w in words], np.int32)


def word_activations(model, hook_name: str, words: Sequence[str], *, prefix: str = PREFIX,
                     batch: int = 64) -> np.ndarray:
    """``[N D]`` float32: the activation at ``hook_name`` at each word's token, the word following ``prefix``. The
    prefix runs once and its keys and values serve every word (:func:`interp.models.prefix.shared_prefix_activations`),
    so a word costs one token."""
    from interp.models.prefix import shared_prefix_activations

    head = model.tokenizer.encode(prefix)
    ids = []
    for w in words:
        t = model.tokenizer.encode(w, prepend_bos=False)
        if len(t) != 1:
            raise ValueError(f"{w!r} is {len(t)} tokens; the task needs one-token words (first_letter_words)")
        ids.append(t)
    return shared_prefix_activations(model, head, ids, hook_name, batch=batch)


@dataclasses.dataclass(frozen=True)
class LetterProbe(Result):
    """A multinomial logistic-regression probe for the first letter: ``logits = x @ weight.T + bias`` over
    :data:`LETTERS`; ``accuracy`` on the rows it was fitted on."""

    weight: np.ndarray  # [26 D]
    bias: np.ndarray  # [26]
    accuracy: float

    def predict(self, x) -> np.ndarray:
        return np.argmax(np.asarray(x, np.float32) @ self.weight.T + self.bias, axis=-1)

    def directions(self) -> np.ndarray:
        """Each letter's unit direction ``[26 D]``."""
        return self.weight / np.maximum(np.linalg.norm(self.weight, axis=1, keepdims=True), 1e-12)

    def _summary(self) -> Summary:
        return Summary("first-letter probe", {"d": self.weight.shape[1]}, {"training accuracy": self.accuracy})


def fit_letter_probe(x, letters, *, l2: float = 1e-3, steps: int = 500, lr: float = 1e-2) -> LetterProbe:
    """Fit a :class:`LetterProbe` on activations ``x [N D]`` and letter indices ``letters [N]`` (full-batch Adam on
    the standardised activations, an ``l2`` penalty on the weights)."""
    x = np.asarray(x, np.float32)
    y = np.asarray(letters)
    if x.ndim != 2 or y.shape != (len(x),):
        raise ValueError(f"x must be [N, D] with one letter per row, got x {x.shape} and letters {y.shape}")
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = jnp.asarray((x - mu) / sd)
    yj = jnp.asarray(y)
    params = (jnp.zeros((len(LETTERS), x.shape[1])), jnp.zeros(len(LETTERS)))
    opt = optax.adam(lr)

    def loss(p):
        logits = z @ p[0].T + p[1]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, yj).mean()
        return ce + l2 * jnp.sum(p[0] ** 2)

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        with jax.numpy_dtype_promotion("standard"):  # optax's step count meets floats
            u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    state = opt.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    w = np.asarray(params[0]) / sd  # back to the raw activations' space
    b = np.asarray(params[1]) - w @ mu
    probe = LetterProbe(w.astype(np.float32), b.astype(np.float32), 0.0)
    return dataclasses.replace(probe, accuracy=float(np.mean(probe.predict(x) == y)))


@dataclasses.dataclass(frozen=True)
class Absorption(Result):
    """Per letter (keys of :data:`LETTERS` present among the test words): ``rate`` (absorbed / counted test words),
    ``false_negative_rate`` (main latents silent / counted), ``counted`` (test words of the letter the probe reads
    right), ``main_latents`` and their training ``f1``; ``probe_accuracy`` on the test words."""

    rate: dict[str, float]
    false_negative_rate: dict[str, float]
    counted: dict[str, int]
    main_latents: dict[str, list[int]]
    f1: dict[str, float]
    probe_accuracy: float

    @property
    def mean_rate(self) -> float:
        return float(np.mean(list(self.rate.values())))

    @property
    def mean_false_negative_rate(self) -> float:
        return float(np.mean(list(self.false_negative_rate.values())))

    def _summary(self) -> Summary:
        return Summary("first-letter absorption", {"letters": len(self.rate)},
                       {"mean absorption rate": self.mean_rate,
                        "mean false-negative rate": self.mean_false_negative_rate,
                        "probe accuracy (test)": self.probe_accuracy})


@eqx.filter_jit
def _encode(dictionary, x):
    return dictionary.encode(x)


def latent_activations(dictionary, x, chunk: int = 2048) -> np.ndarray:
    """``dictionary.encode`` over ``x [N D]`` in chunks, as float32 numpy ``[N M]``."""
    x = np.asarray(x, np.float32)
    return np.concatenate([np.asarray(_encode(dictionary, jnp.asarray(x[i:i + chunk])), np.float32)
                           for i in range(0, len(x), chunk)])


def _f1(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """F1 of each column of ``pred [N M]`` (bool) against ``truth [N]`` (bool)."""
    tp = (pred & truth[:, None]).sum(0)
    fp = (pred & ~truth[:, None]).sum(0)
    fn = (~pred & truth[:, None]).sum(0)
    return 2 * tp / np.maximum(2 * tp + fp + fn, 1)


def main_latents(fires: np.ndarray, truth: np.ndarray, *, split_gain: float = 0.03,
                 max_split: int = 3) -> tuple[list[int], float]:
    """The latents that stand for a class: the best single latent by F1 of its firing (``fires [N M]`` bool against
    ``truth [N]``), then more while the F1 of "any of them fires" rises by ``split_gain`` or more."""
    f1 = _f1(fires, truth)
    chosen = [int(np.argmax(f1))]
    best = float(f1[chosen[0]])
    while len(chosen) < max_split:
        union = fires[:, chosen].any(1)
        gain = _f1(fires | union[:, None], truth)
        gain[chosen] = -1
        j = int(np.argmax(gain))
        if gain[j] < best + split_gain:
            break
        chosen.append(j)
        best = float(gain[j])
    return chosen, best


def measure(dictionary, probe: LetterProbe, x_train, letters_train, x_test, letters_test, *,
            cos_threshold: float = 0.025, split_gain: float = 0.03, max_split: int = 3,
            min_words: int = 10) -> Absorption:
    """First-letter absorption of ``dictionary`` (see the module docstring): main latents chosen on the training
    words, rates measured on the test words. Letters with fewer than ``min_words`` test words the probe reads
    right are left out."""
    y_tr, y_te = np.asarray(letters_train), np.asarray(letters_test)
    fires_tr = latent_activations(dictionary, x_train) > 0
    z_te = latent_activations(dictionary, x_test)
    dirs = probe.directions()  # [26 D]
    dec = np.asarray(dictionary.W_dec, np.float32)  # [M D]
    dec_unit = dec / np.maximum(np.linalg.norm(dec, axis=1, keepdims=True), 1e-12)
    cos = dec_unit @ dirs.T  # [M 26]
    along = dec @ dirs.T  # [M 26]: a unit of each latent's decoder along each probe direction
    pred = probe.predict(x_test)
    rate, fnr, counted, mains, f1s = {}, {}, {}, {}, {}
    for c, letter in enumerate(LETTERS):
        if not (y_tr == c).any():
            continue
        ok = np.flatnonzero((y_te == c) & (pred == c))
        if len(ok) < min_words:
            continue
        main, f1 = main_latents(fires_tr, y_tr == c, split_gain=split_gain, max_split=max_split)
        z = z_te[ok]
        silent = ~(z[:, main] > 0).any(1)
        contrib = z * along[:, c][None, :]  # [n M]
        contrib[:, main] = -np.inf
        top = np.argmax(contrib, axis=1)
        top_contrib = contrib[np.arange(len(ok)), top]
        absorbed = silent & (top_contrib > 0) & (cos[top, c] >= cos_threshold)
        rate[letter], fnr[letter] = float(absorbed.mean()), float(silent.mean())
        counted[letter], mains[letter], f1s[letter] = int(len(ok)), main, f1
    if not rate:
        raise ValueError(f"no letter has {min_words} test words the probe reads right; use more words or a probe "
                         "on a layer that carries the first letter")
    return Absorption(rate, fnr, counted, mains, f1s, float(np.mean(pred == y_te)))
