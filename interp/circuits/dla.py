"""The residual stream as a sum of components, and direct logit attribution.

The final residual stream is ``hook_embed + sum_l (attn_out_l + mlp_out_l)``; each ``attn_out_l`` splits
further into one term per head (``z_h @ W_O[h]``) plus the output bias. With the final norm's scale frozen
at its value in the run (``ln_final.hook_scale``), the norm and the unembedding are linear, so each
component maps to its own logits and the components' logits sum to the model's logits (those before the soft
cap, on a model that soft-caps its logits: the cap is not linear).

Where a block normalises its attention output again before it joins the stream (a post-attention norm), the
per-head terms go through that norm with its scale frozen at its value in the run (``ln1_post.hook_scale``), the
same way the final norm is treated: the terms then still sum to the attention output exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from interp.hooks import NOOP, act_name
from interp.results import Result, Summary, token_texts, top_entries


@dataclasses.dataclass(frozen=True)
class Decomposition(Result):
    """``components [C B T D]`` whose sum over C is the final residual stream; ``labels`` names them;
    ``final_scale [B T 1]`` is the final norm's scale in the run (``ln_final.hook_scale``)."""

    components: Float[Array, "C B T D"]
    labels: tuple[str, ...]
    final_scale: Float[Array, "B T 1"]

    def norms(self, batch: int = 0, pos: int = -1) -> np.ndarray:
        """``[C]``: the L2 norm of each component at one prompt and position."""
        return np.linalg.norm(np.asarray(self.components[:, batch, pos], np.float64), axis=-1)

    def _summary(self) -> Summary:
        C, B, T, D = self.components.shape
        return Summary("residual stream decomposition", {"component": C, "batch": B, "pos": T, "d_model": D},
                       top=top_entries(self.norms(), [self.labels], k=8),
                       top_title="largest components (norm at the last position of prompt 0)")


@dataclasses.dataclass(frozen=True)
class DLAResult(Result):
    """Direct logit attribution: ``values [C B K]`` is component C's contribution to the logit of token
    ``tokens[b, k]`` at ``pos[b]``; ``values.sum(0)`` equals those logits (the ``constant`` row holds what
    no component writes, e.g. a LayerNorm bias; zero for RMSNorm). On a model that soft-caps its logits,
    ``logits`` and the contributions are those before the cap (the model outputs ``c * tanh(logits / c)``).
    ``tokenizer`` (optional) names the tokens in figures and the summary."""

    values: np.ndarray
    labels: tuple[str, ...]
    tokens: np.ndarray
    pos: np.ndarray
    logits: np.ndarray
    tokenizer: Any = dataclasses.field(default=None, repr=False, compare=False)

    def logit_diff(self) -> np.ndarray:
        """``[C B]``: contributions to ``logit[tokens[:, 0]] - logit[tokens[:, 1]]``."""
        return self.values[..., 0] - self.values[..., 1]

    def contributions(self, batch: int = 0, answer: int = 0, foil: int | None = None) -> np.ndarray:
        """``[C]``: each component's contribution to the logit of ``tokens[batch, answer]``, or with ``foil`` to
        the logit difference ``tokens[batch, answer]`` minus ``tokens[batch, foil]``."""
        K = self.values.shape[2]
        for name, k in (("answer", answer), ("foil", foil)):
            if k is not None and not -K <= k < K:
                raise IndexError(f"{name}={k} is out of range: this result holds {K} target token(s) per prompt")
        v = self.values[:, batch, answer]
        return v if foil is None else v - self.values[:, batch, foil]

    def token_texts(self, batch: int = 0) -> list[str]:
        """The target tokens of prompt ``batch`` as quoted text (``#id`` without a tokenizer)."""
        return token_texts(self.tokenizer, self.tokens[batch])

    def _summary(self) -> Summary:
        C, B, K = self.values.shape
        names = self.token_texts(0)
        facts = {"position": int(self.pos[0])}
        facts.update({f"logit {n}": float(self.logits[0, k]) for k, n in enumerate(names[:4])})
        if K >= 2:
            facts[f"logit diff {names[0]} - {names[1]}"] = float(self.logits[0, 0] - self.logits[0, 1])
            vals, what = self.contributions(0, 0, 1), f"the logit difference {names[0]} - {names[1]}"
        else:
            vals, what = self.contributions(0, 0), f"the logit of {names[0]}"
        return Summary("direct logit attribution", {"component": C, "batch": B, "answer": K}, facts,
                       top_entries(vals, [self.labels], k=8), f"largest contributions to {what} (prompt 0)")


def _post_norm(block):
    """The norm ``block`` applies to its attention output before it joins the stream, or None."""
    return getattr(block, "ln1_post", None)


def _frozen(norm, x, scale):
    """``norm`` with its scale frozen to ``scale``, applied to each leading slice of ``x [... B T D]``."""

    def one(c):
        def hk(name, a):
            return scale.astype(a.dtype) if name.endswith("hook_scale") else a
        return norm(c, hk, "norm")

    lead = x.shape[:-3]
    flat = x.reshape((-1,) + x.shape[-3:])
    return jax.vmap(one)(flat).reshape(lead + x.shape[-3:])


def _head_terms(block, z, scale):
    """``[H B T D]`` per-head terms and the bias term ``[B T D]`` (None when there is none) of ``block``'s
    attention output; through its post-attention norm with the run's ``scale`` when it has one."""
    attn, post = block.attn, _post_norm(block)
    heads = jnp.einsum("BTHE,HED->HBTD", z, attn.W_O)
    bias = None if attn.b_O is None else jnp.broadcast_to(attn.b_O, z.shape[:2] + attn.b_O.shape)
    if post is None:
        return heads, bias
    zero = _frozen(post, jnp.zeros_like(heads[:1]), scale)
    if bias is not None or getattr(post, "bias", None) is not None:  # what the norm gives the zero input goes here
        bias = _frozen(post, (jnp.zeros_like(heads[0]) if bias is None else bias)[None], scale)[0]
    return _frozen(post, heads, scale) - zero, bias


def _components(model, cache, per: str):
    L = model.n_layers
    comps, labels = [cache["hook_embed"]], ["embed"]
    if "hook_pos_embed" in cache:  # learned positions (GPT-2)
        comps.append(cache["hook_pos_embed"])
        labels.append("pos_embed")
    for l in range(L):
        if per == "head":
            blk = model.blocks[l]
            scale = cache[f"blocks.{l}.ln1_post.hook_scale"] if _post_norm(blk) is not None else None
            heads, bias = _head_terms(blk, cache[act_name("z", l)], scale)
            comps += list(heads)
            labels += [f"L{l}H{h}" for h in range(blk.attn.n_heads)]
            if bias is not None:
                comps.append(bias)
                labels.append(f"L{l} attn bias")
        else:
            comps.append(cache[act_name("attn_out", l)])
            labels.append(f"attn {l}")
        comps.append(cache[act_name("mlp_out", l)])
        labels.append(f"mlp {l}")
    return jnp.stack(comps), tuple(labels)


def _names(model, per: str) -> list[str]:
    names = ["hook_embed", "ln_final.hook_scale"]
    if model.embed.W_pos is not None:
        names.append("hook_pos_embed")
    for l in range(model.n_layers):
        names += [act_name("z" if per == "head" else "attn_out", l), act_name("mlp_out", l)]
        if per == "head" and _post_norm(model.blocks[l]) is not None:
            names.append(f"blocks.{l}.ln1_post.hook_scale")
    return names


def decompose_resid(model, tokens: Int[Array, "B T"], *, per: str = "layer",
                    attention_mask: Int[Array, "B T"] | None = None) -> Decomposition:
    """Split the final residual stream of ``tokens`` into embedding, attention (``per="layer"``: one term per
    layer; ``"head"``: one per head plus the output bias, through any post-attention norm with its scale frozen
    at the run's) and MLP components."""
    if per not in ("layer", "head"):
        raise ValueError(f"per must be 'layer' or 'head', got {per!r}")
    _, cache = model.run_with_cache(tokens, _names(model, per), attention_mask=attention_mask)
    comps, labels = _components(model, cache, per)
    return Decomposition(comps, labels, cache["ln_final.hook_scale"])


def apply_final_norm(model, x: Float[Array, "... B T D"], scale: Float[Array, "B T 1"]) -> Array:
    """The final norm with its scale frozen to ``scale``, applied to each leading slice of ``x`` (linear in
    ``x`` for RMSNorm; a LayerNorm adds its bias, which ``normalize_stack`` separates out)."""

    return _frozen(model.ln_final, x, scale)


@eqx.filter_jit
def _dla(model, comps, scale, pos, targets):
    B = comps.shape[1]
    rows = jnp.arange(B)
    picked = comps[:, rows, pos][:, :, None]  # [C B 1 D]
    s = scale[rows, pos][:, None]  # [B 1 1]
    normed = apply_final_norm(model, picked, s)[:, :, 0]  # [C B D]
    constant = apply_final_norm(model, jnp.zeros_like(picked[:1]), s)[:, :, 0]  # [1 B D]
    normed = jnp.concatenate([normed - constant, constant])
    W = model.W_U[:, targets]  # [D B K]
    values = jnp.einsum("CBD,DBK->CBK", normed.astype(jnp.float32), W.astype(jnp.float32))
    if model.b_U is not None:  # an unembedding bias (e.g. a folded LayerNorm bias) is part of the constant
        values = values.at[-1].add(model.b_U[targets].astype(jnp.float32))
    return values


@eqx.filter_jit
def _uncapped_logits(model, resid):
    logits = model.ln_final(resid, NOOP, "ln_final") @ model.W_U
    return logits if model.b_U is None else logits + model.b_U


def direct_logit_attribution(
    model, tokens: Int[Array, "B T"] | str, targets: Int[Array, "B K"] | Int[Array, " B"], *, pos=-1,
    per: str = "layer", attention_mask: Int[Array, "B T"] | None = None,
) -> DLAResult:
    """Each component's direct contribution to the logits of ``targets`` (``[B]`` or ``[B K]`` token ids)
    at position ``pos`` (an int or ``[B]``), through the final norm with the run's own scale."""
    toks, mask, _ = model.check_inputs(tokens, attention_mask, None)
    B, T = toks.shape
    targets = np.asarray(targets)
    if targets.ndim == 1:
        targets = targets[:, None]
    if targets.shape[0] != B or not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"targets must be integer token ids of shape [{B}] or [{B}, K]; got {targets.shape}")
    pos = np.broadcast_to(np.asarray(pos), (B,)) % T
    dec = decompose_resid(model, toks, per=per, attention_mask=mask)
    values = _dla(model, dec.components, dec.final_scale, jnp.asarray(pos, jnp.int32), jnp.asarray(targets, jnp.int32))
    if getattr(model, "logit_softcap", None) is None:
        logits = np.asarray(model(toks, attention_mask=mask))[np.arange(B), pos]
    else:  # the components sum to the logits before the cap
        last = act_name("resid_post", model.n_layers - 1)
        _, cache = model.run_with_cache(toks, [last], attention_mask=mask)
        logits = np.asarray(_uncapped_logits(model, cache[last]))[np.arange(B), pos]
    return DLAResult(np.asarray(values, np.float64), dec.labels + ("constant",), targets, pos,
                     np.take_along_axis(logits, targets, axis=1), getattr(model, "tokenizer", None))
