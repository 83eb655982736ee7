"""Grokking modular addition (Power et al. 2022; Nanda et al. 2023, "Progress measures for grokking via mechanistic
interpretability"): a one-layer transformer trained on ``a + b mod p`` with weight decay memorises its training
pairs first and generalises much later; by then its embedding is sparse in the Fourier basis of ``Z_p``, and the
restricted and excluded losses show the Fourier circuit forming before the test loss falls.

Data rows are ``[a, b, =, c]`` (``=`` is token ``p``, ``c = (a + b) mod p``): the model reads the first three tokens
and is scored on predicting ``c`` at the ``=`` position.

Axis letters: N rows, P residues (p), D model, K frequencies.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from interp.models import Model


@dataclasses.dataclass(frozen=True)
class ModularData:
    """Every pair ``(a, b)`` of ``Z_p`` as rows ``[a, b, p, (a + b) mod p]`` (``all [p*p, 4]``, row ``a * p + b``),
    split at random into ``train`` and ``test`` row indices (``frac`` of the pairs to train on)."""

    p: int
    all: np.ndarray
    train: np.ndarray
    test: np.ndarray

    @property
    def train_rows(self) -> np.ndarray:
        return self.all[self.train]

    @property
    def test_rows(self) -> np.ndarray:
        return self.all[self.test]


def dataset(p: int = 113, frac: float = 0.3, *, seed: int = 0) -> ModularData:
    """All ``p * p`` pairs, a random ``frac`` of them for training (Nanda et al.: p = 113, frac = 0.3)."""
    if isinstance(p, bool) or not isinstance(p, int) or p < 3 or any(p % d == 0 for d in range(2, int(p**0.5) + 1)):
        raise ValueError(f"p must be a prime >= 3 (the Fourier analysis assumes Z_p is a field), got {p!r}")
    if not 0 < frac < 1:
        raise ValueError(f"frac must lie strictly between 0 and 1, got {frac!r}")
    a, b = np.divmod(np.arange(p * p), p)
    rows = np.stack([a, b, np.full_like(a, p), (a + b) % p], axis=1).astype(np.int32)
    order = np.random.default_rng(seed).permutation(p * p)
    cut = int(round(frac * p * p))
    return ModularData(p, rows, np.sort(order[:cut]), np.sort(order[cut:]))


def logits(model: Model, rows: Int[Array, "N 4"]) -> Float[Array, "N P"]:
    """The logits over residues at the ``=`` position (vocabulary entries past ``p`` dropped)."""
    rows = jnp.asarray(rows)
    p = model.d_vocab - 1
    return model.forward(rows[:, :3])[:, -1, :p].astype(jnp.float32)


_logits = eqx.filter_jit(logits)  # for measurements outside a training step


def _ce(lg, labels):
    lp = jax.nn.log_softmax(lg, axis=-1)
    return -jnp.mean(jnp.take_along_axis(lp, labels[:, None], axis=-1))


def loss(model: Model, rows: Int[Array, "N 4"]) -> Array:
    """Cross-entropy of predicting ``c`` at the ``=`` position; the loss :func:`interp.toys.train` takes here."""
    rows = jnp.asarray(rows)
    return _ce(logits(model, rows), rows[:, 3])


def evaluate_loss(model: Model, rows: Int[Array, "N 4"]) -> float:
    """:func:`loss` as a number, compiled once per shape (for measurements during training)."""
    return float(_loss(model, jnp.asarray(rows)))


def accuracy(model: Model, rows: Int[Array, "N 4"]) -> float:
    """The fraction of ``rows`` whose ``c`` is the top logit."""
    rows = jnp.asarray(rows)
    return float(jnp.mean(jnp.argmax(_logits(model, rows), axis=-1) == rows[:, 3]))


_loss = eqx.filter_jit(loss)


def fourier_basis(p: int) -> tuple[np.ndarray, list[str]]:
    """The orthonormal Fourier basis of functions on ``Z_p``: ``[p, p]`` rows (the constant, then ``cos``/``sin``
    of ``2 pi k x / p`` for k = 1 .. (p-1)/2) and their names."""
    x = np.arange(p)
    rows, names = [np.ones(p)], ["const"]
    for k in range(1, p // 2 + 1):
        rows += [np.cos(2 * np.pi * k * x / p), np.sin(2 * np.pi * k * x / p)]
        names += [f"cos {k}", f"sin {k}"]
    basis = np.stack(rows)
    return basis / np.linalg.norm(basis, axis=1, keepdims=True), names


def frequency_norms(model: Model) -> np.ndarray:
    """``[(p-1)/2]``: the share of the (mean-removed) embedding's squared norm that frequency k = 1 .. (p-1)/2
    carries (its cos and sin rows together); sums to 1."""
    p = model.d_vocab - 1
    basis, _ = fourier_basis(p)
    coef = basis @ np.asarray(model.W_E[:p], np.float64)  # [P D]: the embedding in the Fourier basis
    per_row = (coef**2).sum(axis=1)[1:]  # drop the constant
    per_freq = per_row[0::2] + per_row[1::2]
    return per_freq / per_freq.sum()


def key_frequencies(model: Model, n: int = 5) -> list[int]:
    """The ``n`` frequencies (1 .. (p-1)/2) carrying the most embedding norm, largest first."""
    return [int(k) + 1 for k in np.argsort(-frequency_norms(model))[:n]]


def _sum_directions(p: int, freqs) -> np.ndarray:
    """``[2 len(freqs), p*p]`` orthonormal directions ``cos``/``sin`` of ``2 pi k (a + b) / p`` over the pairs."""
    a, b = np.divmod(np.arange(p * p), p)
    dirs = []
    for k in freqs:
        dirs += [np.cos(2 * np.pi * k * (a + b) / p), np.sin(2 * np.pi * k * (a + b) / p)]
    dirs = np.stack(dirs)
    return dirs / np.linalg.norm(dirs, axis=1, keepdims=True)


def all_logits(model: Model, data: ModularData) -> np.ndarray:
    """``[p*p, p]`` logits of every pair (row ``a * p + b``): record them during training (a metric) and compute
    the restricted and excluded losses afterwards with the final model's key frequencies."""
    return np.asarray(_logits(model, data.all), np.float32)


def _split(lg, data: ModularData, freqs):
    """Logits over every pair ``[p*p, P]`` split into their part along the key-frequency directions of ``a + b``
    (plus each output's mean over the pairs) and the rest."""
    lg = np.asarray(lg, np.float64)
    if lg.shape != (data.p * data.p, data.p):
        raise ValueError(f"expected the logits of every pair [{data.p * data.p}, {data.p}] (all_logits), "
                         f"got {lg.shape}")
    U = _sum_directions(data.p, freqs)
    mean = lg.mean(axis=0, keepdims=True)
    key = U.T @ (U @ (lg - mean))
    return mean + key, lg - key


def restricted_loss(logits_all, data: ModularData, freqs) -> float:
    """Loss on the test pairs when the logits (``all_logits``) keep only their components along ``cos``/``sin``
    of ``2 pi k (a + b) / p`` for ``k`` in ``freqs`` (and each output's mean over the pairs): how well the key
    frequencies alone already generalise, whatever else the model still holds."""
    kept, _ = _split(logits_all, data, freqs)
    return float(_ce(jnp.asarray(kept[data.test], jnp.float32), jnp.asarray(data.all[data.test, 3])))


def excluded_loss(logits_all, data: ModularData, freqs) -> float:
    """Loss on the training pairs when those key-frequency components are removed from the logits: it rises as
    the model comes to rely on them rather than on memorised pairs."""
    _, rest = _split(logits_all, data, freqs)
    return float(_ce(jnp.asarray(rest[data.train], jnp.float32), jnp.asarray(data.all[data.train, 3])))
