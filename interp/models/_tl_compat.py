"""Pieces behind the TransformerLens habits of :class:`interp.models.Model` (see ``_user_api.py``): ``model.cfg``,
hook functions with TransformerLens's ``fn(activation, hook)`` signature, the ``with model.hooks(...)`` context,
the check that catches a hook storing a traced activation, the next-token loss and ``test_prompt``."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import gc
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from interp.hooks import Edit, act_name, layer_of
from interp.models._blocks import GatedMLP, LayerNorm, NoNorm, ParallelBlock

# ----------------------------------------------------------------- model.cfg

_ACT_NAMES = {"gelu_tanh": "gelu_new", "gelu": "gelu", "silu": "silu", "relu": "relu"}  # ours -> TransformerLens's


@dataclasses.dataclass(frozen=True)
class ModelCfg:
    """``model.cfg``: TransformerLens's config field names, read off the model's weights; any other attribute is
    looked up on ``model.config`` (the family's own config, e.g. ``LlamaConfig``).

    ``n_key_value_heads`` is None for multi-head attention (as in TransformerLens); ``n_ctx`` is None when the
    checkpoint does not say; ``normalization_type`` is "LN", "RMS", or None for a model without norms (folded
    norms keep their unit weights, so never "LNPre"/"RMSPre")."""

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int | None  # None in an attention-only model
    d_vocab: int
    d_vocab_out: int
    n_ctx: int | None
    n_key_value_heads: int | None
    act_fn: str | None
    normalization_type: str | None
    eps: float
    positional_embedding_type: str
    rotary_dim: int | None
    rotary_base: float | None
    gated_mlp: bool
    parallel_attn_mlp: bool
    attn_only: bool
    dtype: Any
    default_prepend_bos: bool
    config: Any = dataclasses.field(repr=False)

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "config":
            raise AttributeError(name)
        config = object.__getattribute__(self, "config")
        try:
            return getattr(config, name)
        except AttributeError:
            fields = ", ".join(f.name for f in dataclasses.fields(self))
            raise AttributeError(
                f"model.cfg has no field {name!r}: it is neither one of TransformerLens's fields here ({fields}) "
                f"nor a field of model.config ({type(config).__name__})"
            ) from None


def _norm_type(norm) -> str | None:
    return "LN" if isinstance(norm, LayerNorm) else None if isinstance(norm, NoNorm) else "RMS"


def model_cfg(model) -> ModelCfg:
    block = model.blocks[0]
    attn, rope = block.attn, block.attn.rope
    H, K = attn.W_Q.shape[1], attn.W_K.shape[1]
    mlp = getattr(block, "mlp", None)  # None in an attention-only model
    tok = model.tokenizer
    return ModelCfg(
        n_layers=model.n_layers, d_model=model.d_model, n_heads=H, d_head=attn.W_Q.shape[2],
        d_mlp=None if mlp is None else mlp.W_out.shape[0], d_vocab=model.d_vocab, d_vocab_out=model.W_U.shape[1],
        n_ctx=model.n_ctx, n_key_value_heads=None if K == H else K,
        act_fn=None if mlp is None else _ACT_NAMES.get(mlp.act, mlp.act),
        normalization_type=_norm_type(model.ln_final), eps=model.ln_final.eps,
        positional_embedding_type="standard" if model.embed.W_pos is not None else "rotary",
        rotary_dim=None if rope is None else rope.dim, rotary_base=None if rope is None else rope.theta,
        gated_mlp=isinstance(mlp, GatedMLP), parallel_attn_mlp=isinstance(block, ParallelBlock),
        attn_only=mlp is None, dtype=model.W_E.dtype, default_prepend_bos=bool(tok is not None and tok.add_bos),
        config=model.config,
    )


# ----------------------------------------------------------------- names

def _is_short_key(s) -> bool:
    return (isinstance(s, tuple) and len(s) in (2, 3) and isinstance(s[0], str)
            and isinstance(s[1], (int, np.integer)) and not isinstance(s[1], bool))


def _per_layer_short_name(s) -> bool:
    """A bare short name that exists at every layer ("pattern", "resid_post"), not one that resolves alone."""
    if not isinstance(s, str) or "." in s or s.startswith("hook_"):
        return False
    try:
        act_name(s)
        return False
    except KeyError:
        pass
    try:
        act_name(s, 0)
        return True
    except KeyError:
        return False


def expand_names(spec, n_layers: int, stop_at_layer: int | None = None):
    """``spec`` (a name, short key, predicate or a sequence of them) with bare per-layer short names expanded to
    every layer (below ``stop_at_layer`` when given) and negative layers of short keys counted from the end."""
    if spec is None or callable(spec):
        return spec
    items = [spec] if isinstance(spec, str) or _is_short_key(spec) else list(spec)
    stop = n_layers if stop_at_layer is None else (stop_at_layer + n_layers if stop_at_layer < 0 else stop_at_layer)
    out = []
    for item in items:
        if _per_layer_short_name(item):
            out.extend(act_name(item, layer) for layer in range(min(stop, n_layers)))
            continue
        if _is_short_key(item) and item[1] < 0:
            item = (item[0], int(item[1]) + n_layers, *item[2:])
        out.append(item)
    return out


def expand_edits(edits: Sequence, n_layers: int) -> list:
    """Edits ``(name, fn, *params)`` with bare per-layer short names expanded to one edit per layer."""
    out = []
    for e in edits:
        if isinstance(e, tuple) and len(e) >= 2:
            name, rest = (e.name, (e.fn, e.params)) if isinstance(e, Edit) else (e[0], (e[1], tuple(e[2:])))
            names = expand_names(name, n_layers)
            if isinstance(names, list) and (len(names) != 1 or names[0] is not name):
                out.extend(Edit(n, *rest) for n in names)
                continue
        out.append(e)
    return out


# ----------------------------------------------------------------- TransformerLens-style hook functions

@dataclasses.dataclass(frozen=True)
class HookPoint:
    """What a TransformerLens-style hook function receives as ``hook``: ``hook.name`` is the full hook name."""

    name: str

    def layer(self) -> int:
        """The block index of this hook point (an error for hook points outside the blocks)."""
        layer = layer_of(self.name)
        if layer is None:
            raise ValueError(f"hook point {self.name!r} is not inside a block")
        return layer


# (trace, hook function name, hook name) for every TransformerLens-style hook traced since the last check
_TRACED: list[tuple[weakref.ref, str, str]] = []


def tl_edit_fn(fn: Callable) -> Callable:
    """An edit function ``(x, name) -> x`` calling TransformerLens-style ``fn(activation, hook)``; a hook that
    returns None leaves the activation as it is. A closure, so that two wrappers of equal functions are equal
    edit functions and share a compiled program."""

    def tl_hook(x, name):
        trace = getattr(x, "_trace", None)
        if trace is not None:
            with contextlib.suppress(TypeError):
                _TRACED.append((weakref.ref(trace), getattr(fn, "__name__", repr(fn)), name))
        y = fn(x, HookPoint(name))
        return x if y is None else y

    tl_hook.__name__ = getattr(fn, "__name__", "tl_hook")
    return tl_hook


def tl_edits(fwd_hooks: Sequence, n_layers: int) -> list[Edit]:
    """TransformerLens's ``fwd_hooks=[(name or predicate, fn), ...]`` as edits."""
    out = []
    for h in fwd_hooks:
        if not (isinstance(h, (tuple, list)) and len(h) == 2 and callable(h[1])):
            raise TypeError(f"a forward hook must be (name, fn) with fn(activation, hook) -> activation or None, "
                            f"got {h!r}")
        out.extend(expand_edits([Edit(h[0], tl_edit_fn(h[1]))], n_layers))
    return out


def check_hook_leaks() -> None:
    """Raise if a TransformerLens-style hook traced since the last check kept a traced value alive (stored the
    activation, or something computed from it, in a list, dict or attribute outside the forward pass)."""
    if not _TRACED:
        return
    traced = list(_TRACED)
    _TRACED.clear()
    if all(ref() is None for ref, _, _ in traced):
        return
    gc.collect()  # traces sit in reference cycles: only those still reachable after a collection have leaked
    leaked = sorted({(fn, name) for ref, fn, name in traced if ref() is not None})
    if leaked:
        where = ", ".join(f"{fn!r} at {name!r}" for fn, name in leaked[:3]) + (" ..." if len(leaked) > 3 else "")
        raise RuntimeError(
            f"a hook kept an activation after the forward pass ({where}), e.g. store.append(act) or "
            "store[hook.name] = act: the forward pass is compiled, so a hook runs once while it is traced and sees "
            "placeholders (tracers), not numbers, and does not run again when the compiled program is reused. "
            "To capture activations ask for them instead: logits, cache = model.run_with_cache(tokens, "
            "names=[hook names]) (edits and fwd_hooks given to it, or active in a `with model.hooks(...)` block, "
            "apply before capture) and read cache[name]; hooks should only return the new activation"
        )


# ----------------------------------------------------------------- with model.hooks(...)

_ACTIVE: contextvars.ContextVar[tuple] = contextvars.ContextVar("interp_active_hooks", default=())


def context_edits(model) -> tuple:
    """The edits of every ``with model.hooks(...)`` block active for this very model object, outermost first."""
    return tuple(e for m, edits in _ACTIVE.get() for e in edits if m is model)


@contextlib.contextmanager
def hooks_context(model, edits: tuple):
    token = _ACTIVE.set(_ACTIVE.get() + ((model, tuple(edits)),))
    try:
        yield model
    finally:
        _ACTIVE.reset(token)
    check_hook_leaks()


# ----------------------------------------------------------------- loss

@functools.partial(jax.jit, static_argnames="per_token")
def next_token_loss(logits: Float[Array, "B T V"], tokens: Int[Array, "B T"], attention_mask=None, *,
                    per_token: bool = False):
    """Cross-entropy of predicting each next token, in float32: ``[B T-1]`` per token, else the mean over
    predicted tokens. With ``attention_mask`` a prediction counts only when it and its target are real tokens
    (masked ones are 0 per token), as TransformerLens's ``lm_cross_entropy_loss``."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, tokens[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0]
    if attention_mask is None:
        keep = jnp.ones(picked.shape, bool)
    else:
        real = attention_mask.astype(bool)
        keep = real[:, :-1] & real[:, 1:]
    loss = jnp.where(keep, -picked, jnp.float32(0))
    return loss if per_token else loss.sum() / keep.sum().astype(jnp.float32)


# ----------------------------------------------------------------- test_prompt

@dataclasses.dataclass(frozen=True)
class PromptTest:
    """What :meth:`Model.test_prompt` printed, as values.

    ``ranks[i]``: for each answer position ``i`` (one position when several answers are compared), a list of
    ``(answer token, rank)`` per answer (rank 0 = the model's top token). ``logits[i]``, ``probs[i]``: the answer
    tokens' logits and probabilities there. ``top[i]``: the ``top_k`` tokens for the first answer as
    ``(token, logit, prob)``. ``text``: the printed report.
    """

    prompt_tokens: list[str]
    answer_tokens: list[list[str]]
    ranks: list[list[tuple[str, int]]]
    logits: list[list[float]]
    probs: list[list[float]]
    top: list[list[tuple[str, float, float]]]
    text: str = dataclasses.field(repr=False)

    def __str__(self) -> str:
        return self.text


def prompt_test(model, prompt: str, answer, *, prepend_space_to_answer: bool = True, print_details: bool = True,
                prepend_bos: bool | None = None, top_k: int = 10) -> PromptTest:
    answers = [answer] if isinstance(answer, str) else list(answer)
    if not answers:
        raise ValueError("test_prompt needs at least one answer")
    several = len(answers) > 1
    if prepend_space_to_answer:
        answers = [a if a.startswith(" ") else " " + a for a in answers]
    tok = model._tok()
    prompt_ids = tok.encode(prompt, prepend_bos=prepend_bos)
    answer_ids = [tok.encode(a, prepend_bos=False) for a in answers]
    if any(not ids for ids in answer_ids):
        raise ValueError(f"an answer encodes to no tokens: {answers!r}")
    if several:  # several answers: only the next token is compared
        answer_ids = [ids[:1] for ids in answer_ids]
    tokens = np.array([prompt_ids + ids for ids in answer_ids], np.int32)
    logits = np.asarray(model(tokens), np.float32)
    logp = logits - logits.max(-1, keepdims=True)
    probs = np.exp(logp) / np.exp(logp).sum(-1, keepdims=True)
    prompt_str = tok.to_str_tokens(prompt, prepend_bos=prepend_bos)
    answer_str = [tok.to_str_tokens(ids) for ids in answer_ids]
    lines = [f"Tokenized prompt: {prompt_str}"]
    lines.append(f"Tokenized answers: {answer_str}" if several else f"Tokenized answer: {answer_str[0]}")
    P = len(prompt_ids)
    ranks, ans_logits, ans_probs, tops = [], [], [], []
    for i in range(len(answer_ids[0])):
        at = P + i - 1  # the logits that predict answer token i
        row_ranks, row_logits, row_probs = [], [], []
        for a, ids in enumerate(answer_ids):
            order = np.argsort(-probs[a, at], kind="stable")
            rank = int(np.nonzero(order == ids[i])[0][0])
            row_ranks.append((answer_str[a][i], rank))
            row_logits.append(float(logits[a, at, ids[i]]))
            row_probs.append(float(probs[a, at, ids[i]]))
        order = np.argsort(-probs[0, at], kind="stable")[:top_k]
        top = [(tok.to_string([int(t)]), float(logits[0, at, t]), float(probs[0, at, t])) for t in order]
        ranks.append(row_ranks)
        ans_logits.append(row_logits)
        ans_probs.append(row_probs)
        tops.append(top)
        if print_details:
            lines.append(f"Performance on answer token{'s' if several else ''}:")
            lines += [f"Rank: {r: <8} Logit: {lg:5.2f} Prob: {p:6.2%} Token: |{s}|"
                      for (s, r), lg, p in zip(row_ranks, row_logits, row_probs)]
            lines += [f"Top {k}th token. Logit: {lg:5.2f} Prob: {p:6.2%} Token: |{s}|"
                      for k, (s, lg, p) in enumerate(top)]
    summary = ranks if several else [r[0] for r in ranks]
    lines = lines if print_details else []
    lines.append(f"Ranks of the answer tokens: {summary}")
    text = "\n".join(lines)
    print(text)
    return PromptTest(prompt_str, answer_str, ranks, ans_logits, ans_probs, tops, text)
