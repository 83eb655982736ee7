"""Attention-head detectors (previous-token, duplicate-token, induction) and head ablation.

The detectors read attention patterns on sequences made of a random block repeated once
(``interp.circuits.prompts.induction``): in the second copy, a duplicate-token head attends to the earlier
occurrence of the current token, an induction head to the token right after it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

from interp.hooks import act_name, edits
from interp.results import Result, Summary

KINDS = ("previous_token", "duplicate_token", "induction")


@dataclasses.dataclass(frozen=True)
class HeadScores(Result):
    """``values [kind, layer, head]``: mean attention weight on each kind's target position; ``kinds`` names the
    detectors (``previous_token``, ``duplicate_token``, ``induction``)."""

    values: np.ndarray
    kinds: tuple[str, ...]

    def __getitem__(self, kind: str) -> np.ndarray:
        if kind not in self.kinds:
            raise KeyError(f"unknown detector '{kind}'; available: {self.kinds}")
        return self.values[self.kinds.index(kind)]

    def top(self, kind: str, k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` highest-scoring heads as (layer, head, score)."""
        v = self[kind]
        order = np.argsort(-v, axis=None)[:k]
        return [(int(l), int(h), float(v[l, h])) for l, h in zip(*np.unravel_index(order, v.shape))]

    def _summary(self) -> Summary:
        _, L, H = self.values.shape
        top = [(f"{kind}: L{l}H{h}", s) for kind in self.kinds for l, h, s in self.top(kind, 2)]
        return Summary("attention head scores", {"kind": len(self.kinds), "layer": L, "head": H}, top=top,
                       top_title="best heads of each kind (mean attention on the target)")


def _targets(T: int, half: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Query positions (second copy) and key positions for each detector; ``offset`` = positions before the
    first copy (1 with a BOS token)."""
    q = np.arange(offset + half, T)
    return q, q - half


def head_scores(model, tokens: Int[Array, "B T"], *, half: int | None = None, offset: int = 0) -> HeadScores:
    """Detector scores for every head on ``tokens [B T]``: ``offset`` positions (e.g. BOS) then a random block
    of ``half`` tokens repeated once (``half`` defaults to ``(T - offset) // 2``)."""
    toks, _, _ = model.check_inputs(tokens, None, None)
    B, T = toks.shape
    half = (T - offset) // 2 if half is None else half
    if half < 2 or offset + 2 * half != T:
        raise ValueError(f"tokens of length {T} do not hold {offset} leading positions and a block repeated "
                         f"once (half={half}); build them with interp.circuits.prompts.induction")
    a = np.asarray(toks)
    if not np.array_equal(a[:, offset:offset + half], a[:, offset + half:]):
        raise ValueError("the second half of the tokens does not repeat the first; head_scores needs repeated "
                         "sequences")
    _, cache = model.run_with_cache(toks, lambda n: n.endswith("attn.hook_pattern"))
    pats = jnp.stack([cache[act_name("pattern", l)] for l in range(model.n_layers)])  # [L B H T S]
    q, dup = _targets(T, half, offset)
    prev_q = np.arange(max(offset, 1), T)
    prev = pats[:, :, :, prev_q, prev_q - 1].mean(axis=(1, 3))
    duplicate = pats[:, :, :, q, dup].mean(axis=(1, 3))
    induction = pats[:, :, :, q, dup + 1].mean(axis=(1, 3))
    return HeadScores(np.asarray(jnp.stack([prev, duplicate, induction]), np.float64), KINDS)


def per_token_loss(model, tokens: Int[Array, "B T"] | str, *, edits_=(),
                   attention_mask: Int[Array, "B T"] | None = None) -> np.ndarray:
    """Next-token cross-entropy ``[B T-1]`` of ``tokens`` (with optional edits applied)."""
    toks, mask, _ = model.check_inputs(tokens, attention_mask, None)
    logits = model.run_with_hooks(toks, edits_, attention_mask=mask)
    lp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return -np.asarray(jnp.take_along_axis(lp, toks[:, 1:, None], axis=-1)[..., 0])


def ablate_heads(model, heads, *, how: str = "zero", means=None) -> list:
    """Edits that ablate ``heads`` (``(layer, head)`` pairs, or ``HeadScores.top`` triples) at ``attn.hook_z``,
    for ``run_with_hooks``.

    ``how="zero"`` zeroes the heads' outputs; ``"mean"`` replaces them by ``means[layer] [H E]`` (e.g. the
    mean of ``hook_z`` over a reference batch and its positions).
    """
    by_layer: dict[int, list[int]] = {}
    for l, h, *_ in heads:
        if not (0 <= l < model.n_layers and 0 <= h < model.blocks[l].attn.n_heads):
            raise ValueError(f"head ({l}, {h}) does not exist in this {model.n_layers}-layer model")
        by_layer.setdefault(int(l), []).append(int(h))
    out = []
    for l, hs in sorted(by_layer.items()):
        keep = np.ones(model.blocks[l].attn.n_heads, np.float32)
        keep[hs] = 0.0
        name = act_name("z", l)
        if how == "zero":
            out.append((name, edits.head_mask, jnp.asarray(keep)))
        elif how == "mean":
            if means is None:
                raise ValueError("how='mean' needs means: {layer: [H, E] mean of attn.hook_z}")
            out.append((name, _mean_heads, jnp.asarray(keep), jnp.asarray(means[l])))
        else:
            raise ValueError(f"how must be 'zero' or 'mean', got {how!r}")
    return out


def _mean_heads(x, name, keep, mean):
    k = keep[:, None].astype(x.dtype)
    return x * k + mean.astype(x.dtype) * (1 - k)
