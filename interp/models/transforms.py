"""Opt-in weight transforms that make weights easier to read without changing what the model computes.

In the spirit of TransformerLens's analysis mode; every transform is a pure function ``Model -> Model`` (the
model passed in is never modified) and nothing here runs unless called:

* :func:`fold_norm_weights` folds each pre-norm's weight (and LayerNorm bias) into the weights that read its
  output, leaving norms with unit weight and zero bias. Exact for every model.
* :func:`center_writing_weights` removes the mean over ``d_model`` from everything that writes to the residual
  stream. Exact only when every reader of the stream is a LayerNorm (which removes the mean itself).
* :func:`center_unembed` removes the mean over the vocabulary from the unembedding: logits move by a constant per
  position, so probabilities are unchanged. Exact only without a logit soft-cap.
* :func:`fold_value_biases` moves the value biases through ``W_O`` into the output bias. Exact for every model.
* :func:`analysis_mode` applies those that are exact for the given model, in the order above.

Arithmetic is done in at least float32 and each result is cast back to the dtype of the weight it replaces.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from interp.models._blocks import LayerNorm, RMSNorm, _at_least_f32
from interp.models._model import Model

__all__ = [
    "analysis_mode", "center_unembed", "center_writing_weights", "centering_is_exact", "fold_norm_weights",
    "fold_value_biases",
]


# ----------------------------------------------------------------- helpers
def _set(module, **values):
    """``module`` with the named fields replaced (fields may be None before or after)."""
    names = tuple(values)
    return eqx.tree_at(lambda m: tuple(getattr(m, n) for n in names), module, tuple(values.values()),
                       is_leaf=lambda x: x is None)


def _f32(x):
    return x.astype(_at_least_f32(x.dtype))


def _check_block(block, layer: int):
    for part in ("ln1", "attn", "ln2", "mlp"):
        if not hasattr(block, part):
            raise TypeError(f"blocks.{layer} ({type(block).__name__}) has no '{part}'; the weight transforms know "
                            "pre-norm and parallel blocks (ln1, attn, ln2, mlp)")


def _check_norm(norm, name: str):
    if not isinstance(norm, (RMSNorm, LayerNorm)):
        raise TypeError(f"{name} is a {type(norm).__name__}; the weight transforms know RMSNorm and LayerNorm")


def _fold_reader(norm, weight, bias):
    """Fold ``norm``'s weight and bias into a linear reader ``y @ weight + bias`` (``weight [D ...]``)."""
    w32 = _f32(weight)
    scale = _f32(norm.weight).reshape(norm.weight.shape + (1,) * (weight.ndim - 1))
    new_weight = (scale * w32).astype(weight.dtype)
    norm_bias = getattr(norm, "bias", None)
    if norm_bias is None:
        return new_weight, bias
    shift = jnp.tensordot(_f32(norm_bias), w32, axes=1)
    new_bias = shift if bias is None else _f32(bias) + shift
    return new_weight, new_bias.astype(weight.dtype if bias is None else bias.dtype)


def _unit_norm(norm):
    """``norm`` with weight one and (if it has one) bias zero."""
    values = {"weight": jnp.ones_like(norm.weight)}
    if getattr(norm, "bias", None) is not None:
        values["bias"] = jnp.zeros_like(norm.bias)
    return _set(norm, **values)


def _center(x, axis: int = -1):
    """``x`` minus its mean over ``axis`` (None stays None)."""
    if x is None:
        return None
    x32 = _f32(x)
    return (x32 - jnp.mean(x32, axis=axis, keepdims=True)).astype(x.dtype)


def _mlp_readers(mlp) -> tuple[tuple[str, str], ...]:
    """The (weight, bias) field pairs of ``mlp`` that read its input."""
    return (("W_gate", "b_gate"), ("W_in", "b_in")) if hasattr(mlp, "W_gate") else (("W_in", "b_in"),)


def _readers(model: Model) -> list[tuple[str, object]]:
    """Every norm that reads the residual stream, with its hook prefix."""
    out = []
    for layer, block in enumerate(model.blocks):
        _check_block(block, layer)
        out += [(f"blocks.{layer}.ln1", block.ln1), (f"blocks.{layer}.ln2", block.ln2)]
    return out + [("ln_final", model.ln_final)]


def _post_norm_blocks(model: Model) -> list[int]:
    return [layer for layer, block in enumerate(model.blocks)
            if getattr(block, "ln1_post", None) is not None or getattr(block, "ln2_post", None) is not None]


# ----------------------------------------------------------------- transforms
def fold_norm_weights(model: Model) -> Model:
    """Fold every pre-norm's weight (and LayerNorm bias) into the weights that read the normalised stream.

    ``ln1`` goes into ``W_Q``/``W_K``/``W_V`` (its bias into ``b_Q``/``b_K``/``b_V``), ``ln2`` into the MLP's
    input weights ``W_gate``/``W_in`` (bias into ``b_gate``/``b_in``), ``ln_final`` into the unembedding (bias
    into the unembedding bias ``b_U``); biases absent before are created where a norm bias needs them. The norms
    are left with weight one and bias zero, so they only normalise. A tied unembedding becomes an untied copy
    (the embedding itself is unchanged).

    Not folded, because what reads their output is not linear in it: post-norms (``ln1_post``/``ln2_post``,
    whose output is added to the residual stream) and the per-head query/key norms (``q_norm``/``k_norm``).

    Exact: every hook point keeps its value (up to float rounding), only the weights change.
    """
    blocks = []
    for layer, block in enumerate(model.blocks):
        _check_block(block, layer)
        _check_norm(block.ln1, f"blocks.{layer}.ln1")
        _check_norm(block.ln2, f"blocks.{layer}.ln2")
        attn, mlp = block.attn, block.mlp
        attn_values = {}
        for w_name, b_name in (("W_Q", "b_Q"), ("W_K", "b_K"), ("W_V", "b_V")):
            attn_values[w_name], attn_values[b_name] = _fold_reader(block.ln1, getattr(attn, w_name),
                                                                    getattr(attn, b_name))
        mlp_values = {}
        for w_name, b_name in _mlp_readers(mlp):
            mlp_values[w_name], mlp_values[b_name] = _fold_reader(block.ln2, getattr(mlp, w_name),
                                                                  getattr(mlp, b_name))
        blocks.append(_set(block, attn=_set(attn, **attn_values), mlp=_set(mlp, **mlp_values),
                           ln1=_unit_norm(block.ln1), ln2=_unit_norm(block.ln2)))
    _check_norm(model.ln_final, "ln_final")
    W_U, b_U = _fold_reader(model.ln_final, model.W_U, model.b_U)
    return _set(model, blocks=tuple(blocks), ln_final=_unit_norm(model.ln_final), unembed=W_U, b_U=b_U)


def centering_is_exact(model: Model) -> bool:
    """Whether :func:`center_writing_weights` leaves the output unchanged: every reader of the residual stream is
    a LayerNorm and no block normalises its outputs before they join the stream."""
    return all(isinstance(norm, LayerNorm) for _, norm in _readers(model)) and not _post_norm_blocks(model)


def center_writing_weights(model: Model, *, force: bool = False) -> Model:
    """Subtract the mean over ``d_model`` from every weight and bias that writes to the residual stream:
    ``W_E``, ``W_pos``, and in each block ``W_O``, ``b_O``, the MLP's ``W_out`` and ``b_out``.

    Every write to the stream then has zero mean, and so has the stream. This is exact only when every reader
    of the stream (``ln1``, ``ln2`` and ``ln_final``) is a LayerNorm, which subtracts the mean itself: the
    ``hook_normalized`` values, and everything downstream of the norms, are unchanged, while the residual-stream
    hooks (``hook_embed``, ``hook_pos_embed``, ``hook_attn_out``, ``hook_mlp_out``, ``hook_resid_*``, and the
    residual returned with ``stop_at_layer``) become their centred versions. RMSNorm does not remove the mean, so
    on a model read by an RMSNorm the output changes: that raises ``ValueError`` unless ``force=True``.

    A tied unembedding becomes an untied copy first, so the unembedding is not centred with the embedding.
    Blocks with post-norms (``ln1_post``/``ln2_post``) write through a norm, which no weight change can centre;
    they raise ``ValueError`` whatever ``force``.
    """
    post = _post_norm_blocks(model)
    if post:
        raise ValueError(f"center_writing_weights: blocks {post} normalise their outputs (ln1_post/ln2_post) before "
                         "they join the residual stream, so no weight that writes to the stream can be centred")
    not_layernorm = [name for name, norm in _readers(model) if not isinstance(norm, LayerNorm)]
    if not_layernorm and not force:
        shown = ", ".join(not_layernorm[:3]) + (", ..." if len(not_layernorm) > 3 else "")
        raise ValueError(
            f"center_writing_weights: the residual stream is read by norms that are not LayerNorm ({shown}); "
            "RMSNorm does not remove the mean, so centring the weights that write to the stream would change the "
            "model's output. Pass force=True to centre them anyway."
        )
    blocks = []
    for block in model.blocks:
        attn, mlp = block.attn, block.mlp
        attn = _set(attn, W_O=_center(attn.W_O), b_O=_center(attn.b_O))
        mlp = _set(mlp, W_out=_center(mlp.W_out), b_out=_center(mlp.b_out))
        blocks.append(_set(block, attn=attn, mlp=mlp))
    embed = _set(model.embed, W_E=_center(model.embed.W_E), W_pos=_center(model.embed.W_pos))
    return _set(model, embed=embed, blocks=tuple(blocks), unembed=model.W_U)


def center_unembed(model: Model, *, force: bool = False) -> Model:
    """Subtract the mean over the vocabulary from the unembedding ``W_U`` (and from ``b_U`` when present).

    Each position's logits move by one constant (the final stream's product with the mean unembedding
    direction), so ``log_softmax`` and the probabilities are unchanged, and every hook point keeps its value.
    A tied unembedding becomes an untied copy (the embedding is unchanged). With a logit soft-cap the constant
    passes through ``tanh`` and probabilities change: that raises ``ValueError`` unless ``force=True``.
    """
    if model.logit_softcap is not None and not force:
        raise ValueError(
            f"center_unembed: this model soft-caps its logits (tanh(l / {model.logit_softcap}) * "
            f"{model.logit_softcap}), so a per-position shift of the logits before the cap changes the "
            "probabilities. Pass force=True to centre the unembedding anyway."
        )
    return _set(model, unembed=_center(model.W_U), b_U=_center(model.b_U))


def fold_value_biases(model: Model) -> Model:
    """Fold each layer's value bias ``b_V`` through ``W_O`` into the output bias ``b_O``, leaving ``b_V`` zero.

    Every row of an attention pattern sums to one, so the bias of the values reaches each head's output
    unchanged and contributes ``b_V @ W_O`` (summed over heads; with grouped-query attention each query head
    uses its key/value head's bias). Exact: ``hook_attn_out`` and everything after it are unchanged, while
    ``hook_v`` and ``hook_z`` lose the bias.
    """
    blocks = []
    for layer, block in enumerate(model.blocks):
        _check_block(block, layer)
        attn = block.attn
        if attn.b_V is None:
            blocks.append(block)
            continue
        per_head = jnp.repeat(_f32(attn.b_V), attn.n_heads // attn.n_kv_heads, axis=0)  # [H E]
        shift = jnp.einsum("HE,HED->D", per_head, _f32(attn.W_O))
        b_O = shift.astype(attn.W_O.dtype) if attn.b_O is None else (_f32(attn.b_O) + shift).astype(attn.b_O.dtype)
        blocks.append(_set(block, attn=_set(attn, b_V=jnp.zeros_like(attn.b_V), b_O=b_O)))
    return _set(model, blocks=tuple(blocks))


def analysis_mode(model: Model) -> Model:
    """Apply the transforms that are exact for ``model``, in order: :func:`fold_norm_weights`,
    :func:`center_writing_weights` (only when :func:`centering_is_exact`), :func:`center_unembed` (only without a
    logit soft-cap) and :func:`fold_value_biases`. Probabilities are unchanged; see each transform for which hook
    points change."""
    model = fold_norm_weights(model)
    if centering_is_exact(model):
        model = center_writing_weights(model)
    if model.logit_softcap is None:
        model = center_unembed(model)
    return fold_value_biases(model)
