"""Metrics of a forward pass, as functions of the logits, for patching and attribution.

A metric is any function ``logits [B T V] -> scalar``. The ones here are equinox modules that read one
position per sequence: their token ids and positions are arrays, so a compiled sweep reuses its program for
new answers, and the sweeps unembed only the positions they read (``read`` takes ``[B V]`` logits).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int


def _ids(x, name: str) -> Array:
    a = np.asarray(x)
    if a.ndim == 0:
        a = a[None]
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be integer token ids of shape [batch]; got {a.dtype} with shape {a.shape}")
    return jnp.asarray(a, jnp.int32)


def _positions(pos, batch: int) -> Array:
    p = np.asarray(pos)
    if p.ndim == 0:
        p = np.full((batch,), int(p))
    if p.shape != (batch,) or not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"pos must be an int or integer positions of shape [{batch}]; got shape {p.shape}")
    return jnp.asarray(p, jnp.int32)


class PositionMetric(eqx.Module):
    """A metric that reads the logits at one position per sequence (``pos [B]``; negative counts from the end)."""

    pos: Int[Array, " B"]

    def read(self, logits: Float[Array, "B V"]) -> Array:
        raise NotImplementedError

    def gather(self, x: Float[Array, "B T ..."]) -> Float[Array, "B ..."]:
        """The rows of ``x`` at this metric's positions."""
        T = x.shape[1]
        return x[jnp.arange(x.shape[0]), self.pos % T]

    def __call__(self, logits: Float[Array, "B T V"]) -> Array:
        return self.read(self.gather(logits))


class LogitDiff(PositionMetric):
    """Mean over the batch of ``logit[answer] - logit[wrong]``."""

    answer: Int[Array, " B"]
    wrong: Int[Array, " B"]

    def read(self, logits):
        logits = logits.astype(jnp.float32)
        rows = jnp.arange(logits.shape[0])
        return jnp.mean(logits[rows, self.answer] - logits[rows, self.wrong])


class LogitOf(PositionMetric):
    """Mean logit of ``answer``."""

    answer: Int[Array, " B"]

    def read(self, logits):
        return jnp.mean(logits.astype(jnp.float32)[jnp.arange(logits.shape[0]), self.answer])


class Prob(PositionMetric):
    """Mean probability of ``answer``."""

    answer: Int[Array, " B"]

    def read(self, logits):
        p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        return jnp.mean(p[jnp.arange(p.shape[0]), self.answer])


class LogProb(PositionMetric):
    """Mean log-probability of ``answer``."""

    answer: Int[Array, " B"]

    def read(self, logits):
        lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        return jnp.mean(lp[jnp.arange(lp.shape[0]), self.answer])


class KL(PositionMetric):
    """Mean ``KL(reference || current)`` of the next-token distributions (0 when they agree)."""

    ref_logprobs: Float[Array, "B V"]

    def read(self, logits):
        lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        return jnp.mean(jnp.sum(jnp.exp(self.ref_logprobs) * (self.ref_logprobs - lp), axis=-1))


def logit_diff(answer, wrong, pos=-1) -> LogitDiff:
    """``logit[answer] - logit[wrong]`` at ``pos`` (default: the last position), averaged over the batch."""
    answer, wrong = _ids(answer, "answer"), _ids(wrong, "wrong")
    if answer.shape != wrong.shape:
        raise ValueError(f"answer {answer.shape} and wrong {wrong.shape} must have the same shape [batch]")
    return LogitDiff(_positions(pos, answer.shape[0]), answer, wrong)


def logit_of(answer, pos=-1) -> LogitOf:
    """``logit[answer]`` at ``pos`` (default: the last position), averaged over the batch."""
    answer = _ids(answer, "answer")
    return LogitOf(_positions(pos, answer.shape[0]), answer)


def prob(answer, pos=-1) -> Prob:
    """``softmax(logits)[answer]`` at ``pos`` (default: the last position), averaged over the batch."""
    answer = _ids(answer, "answer")
    return Prob(_positions(pos, answer.shape[0]), answer)


def log_prob(answer, pos=-1) -> LogProb:
    """``log_softmax(logits)[answer]`` at ``pos`` (default: the last position), averaged over the batch."""
    answer = _ids(answer, "answer")
    return LogProb(_positions(pos, answer.shape[0]), answer)


def kl_to(reference_logits: Float[Array, "B T V"], pos=-1) -> KL:
    """KL divergence from the next-token distribution of ``reference_logits`` (e.g. the clean run's)."""
    ref = jnp.asarray(reference_logits)
    if ref.ndim != 3:
        raise ValueError(f"reference_logits must be [batch, pos, vocab]; got shape {ref.shape}")
    p = _positions(pos, ref.shape[0])
    rows = ref[jnp.arange(ref.shape[0]), p % ref.shape[1]]
    return KL(p, jax.nn.log_softmax(rows.astype(jnp.float32), axis=-1))


def last_positions(attention_mask) -> np.ndarray:
    """Index of each sequence's last real token for a right-padded batch (``attention_mask [B T]``);
    left-padded batches end at -1."""
    m = np.asarray(attention_mask)
    return (m.shape[1] - 1 - np.argmax(m[:, ::-1], axis=1)).astype(np.int32)
