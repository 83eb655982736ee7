"""Shared transformer blocks. They know nothing of particular checkpoints; family files map weights onto them.

Axis letters (used in einsums and shape docs):
  B batch, T query position, S key position, D model, H query heads, K key/value heads,
  G query heads per kv head (H = K*G), E head dim, F mlp hidden, V vocabulary.

Every block takes ``hk`` (a hook runner: ``hk(name, x) -> x``) and the name prefix of its hook points.

Precision. A model loaded in bfloat16 or float16 (``interp.load(..., dtype=jnp.bfloat16)``) keeps its weights and
every hooked activation in that dtype, and computes in float32 where the reference implementation
(``transformers``) does:

- norm statistics (mean, variance, the ``hook_scale`` divisors, which stay float32);
- a LayerNorm's affine step (``w * x + b``, rounded once, as torch's LayerNorm kernel does);
- an RMSNorm whose weight is stored in float32 multiplies in float32 and rounds once: Gemma keeps its ``1 + w``
  weights in float32 (a few vectors) because the reference adds 1 and multiplies in float32; Llama-layout
  norms multiply in the activation dtype, as their reference does;
- rotary angles and their cos/sin (cast to the activation dtype to rotate, as the reference does);
- the attention softmax (its scores and soft-capping run in the activation dtype, as the reference's do);
- every matrix product accumulates in float32 and rounds once (:func:`interp.kernels.matmul`), and the MLP's
  activation function runs in float32 and rounds once, as the reference's kernels do;
- the logits (:meth:`interp.models.Model.unembed_logits`): the unembedding accumulates in float32 and the logits
  come out float32, soft-capped in float32. The reference returns logits rounded to the activation dtype and
  upcasts them itself before every use (loss, sampling); ours are that value before its final roundings, which
  is where they differ from the reference's (about half an ulp of the low dtype at the logits' magnitude).

In float32 every one of these is a no-op, so float32 runs do not depend on this. float16 keeps three more bits than
bfloat16 but only values up to 65504: trained Gemma checkpoints exceed that in the residual stream (loading Gemma in
float16 warns); SmolLM2-135M runs in it. A cached activation holding inf shows where a checkpoint leaves the range.
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from interp.hooks import derived
from interp.kernels import matmul

_ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


def activation(name: str):
    """The activation function called ``name`` (``"relu"``, ``"gelu"``, ``"silu"``, ...); an unknown name raises
    ``ValueError`` listing the known ones."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unsupported activation '{name}'; supported: {sorted(_ACTIVATIONS)}") from None


def _activate(name: str, x: Array) -> Array:
    """The activation computed in at least float32 and rounded once, as the reference's kernels do in bfloat16 and
    float16 (rounding after each of its steps, as plain low-precision ops would, is both further from the reference
    and slower: SmolLM2's SiLU took 1.75 ms per layer at 8 x 128 tokens in bfloat16 that way)."""
    return activation(name)(x.astype(_at_least_f32(x.dtype))).astype(x.dtype)


def _at_least_f32(dtype):
    return dtype if jnp.finfo(dtype).bits >= 32 else jnp.dtype(jnp.float32)


def _pattern(scores: Array) -> Array:
    """The attention pattern from the (masked) scores: the softmax over keys in at least float32, rounded once to
    the scores' dtype."""
    return jax.nn.softmax(scores.astype(_at_least_f32(scores.dtype)), axis=-1).astype(scores.dtype)


# The same steps compiled alone, for cache entries computed when read (``interp.hooks.derived``; how exact they
# are is said in ``interp.hooks.HookRunner``, and tests/hooks/test_derived.py checks it).
_PATTERN = jax.jit(_pattern)
_ADD = jax.jit(jnp.add)


def _barrier(x):
    """Materialize ``x`` the same way whether or not a hook captures it (keeps logits bit-identical)."""
    return jax.lax.optimization_barrier(x)


class RMSNorm(eqx.Module):
    """``x / rms(x) * w``. Hook points: ``{prefix}.hook_scale`` ``[B T 1]`` (the rms divisor) and
    ``{prefix}.hook_normalized`` ``[B T D]`` (``x / scale``, before the weight), as in TransformerLens."""

    weight: Float[Array, " D"]
    eps: float = eqx.field(static=True)

    def __call__(self, x: Float[Array, "B T D"], hk, prefix: str) -> Float[Array, "B T D"]:
        dtype = x.dtype
        # Statistics in float32 whatever the activation dtype, as the reference implementation does.
        x32 = x.astype(_at_least_f32(dtype))
        # The barrier keeps XLA from rewriting x / sqrt(v) as x * rsqrt(v) only when the scale is not
        # captured: results must not depend on what is captured.
        scale = _barrier(jnp.sqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps))
        scale = hk(f"{prefix}.hook_scale", scale)
        normalized = hk(f"{prefix}.hook_normalized", (x32 / scale).astype(dtype))
        # A weight wider than the activations (Gemma's float32 1 + w) multiplies in its own dtype: see the module doc.
        wide = self.weight.dtype if jnp.finfo(self.weight.dtype).bits > jnp.finfo(dtype).bits else dtype
        return (self.weight.astype(wide) * normalized.astype(wide)).astype(dtype)


class LayerNorm(eqx.Module):
    """``(x - mean) / sqrt(var + eps) * w + b``. Hook points as for :class:`RMSNorm`: ``{prefix}.hook_scale``
    ``[B T 1]`` (the divisor) and ``{prefix}.hook_normalized`` ``[B T D]`` (centred and scaled, before w and b)."""

    weight: Float[Array, " D"]
    bias: Float[Array, " D"] | None
    eps: float = eqx.field(static=True)

    def __call__(self, x: Float[Array, "B T D"], hk, prefix: str) -> Float[Array, "B T D"]:
        dtype = x.dtype
        x32 = x.astype(_at_least_f32(dtype))
        centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        scale = _barrier(jnp.sqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + self.eps))
        scale = hk(f"{prefix}.hook_scale", scale)
        normalized = hk(f"{prefix}.hook_normalized", (centred / scale).astype(dtype))
        f32 = x32.dtype  # the affine step in float32, rounded once (see the module doc)
        out = self.weight.astype(f32) * normalized.astype(f32)
        return (out if self.bias is None else out + self.bias.astype(f32)).astype(dtype)


class NoNorm(eqx.Module):
    """No normalisation: returns ``x`` (models trained without norms, such as Nanda et al.'s grokking
    transformer). It keeps a norm's hook points, ``hook_scale`` (ones) and ``hook_normalized`` (``x``), and reads as
    a norm of unit weight, so caches, ``apply_ln_to_stack`` and logit attribution treat it like any other."""

    size: int = eqx.field(static=True)
    eps: float = eqx.field(static=True, default=0.0)

    @property
    def weight(self) -> Float[Array, " D"]:
        return jnp.ones((self.size,), jnp.float32)

    def __call__(self, x: Float[Array, "B T D"], hk, prefix: str) -> Float[Array, "B T D"]:
        hk(f"{prefix}.hook_scale", jnp.ones(x.shape[:-1] + (1,), _at_least_f32(x.dtype)))
        return hk(f"{prefix}.hook_normalized", x)


@dataclasses.dataclass(frozen=True)
class Rope:
    """Rotary position embedding (rotate-half layout) over the first ``dim`` features of each head.

    ``scaling``: None, ``("linear", factor)`` or
    ``("llama3", factor, low_freq_factor, high_freq_factor, original_max_position_embeddings)``.
    """

    dim: int
    theta: float
    scaling: tuple | None = None

    def __post_init__(self):
        if self.dim % 2:
            raise ValueError(f"rotary dim must be even, got {self.dim}")
        if self.scaling is not None and self.scaling[0] not in ("linear", "llama3"):
            raise ValueError(
                f"unsupported rope scaling '{self.scaling[0]}'; supported: 'linear', 'llama3' "
                "(remove rope_scaling from config.json to run without it)"
            )

    def inv_freq(self) -> np.ndarray:
        # float32 arithmetic in the reference's order, so angles match it to the last bit or two.
        exponent = np.arange(0, self.dim, 2, dtype=np.int64).astype(np.float32) / np.float32(self.dim)
        inv = (1.0 / np.power(np.float32(self.theta), exponent)).astype(np.float32)
        if self.scaling is None:
            return inv
        kind, factor, *rest = self.scaling
        if kind == "linear":
            return (inv / np.float32(factor)).astype(np.float32)
        low, high, old_len = rest
        low_wavelen = old_len / low
        high_wavelen = old_len / high
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)

    def __call__(self, x: Array, positions: Int[Array, "B T"], *, layout: str = "BHTE") -> Array:
        """Rotate ``x`` laid out as ``"BHTE"`` (queries) or ``"BHET"`` (keys, as the score product reads them)."""
        inv = jnp.asarray(self.inv_freq())
        angles = positions.astype(inv.dtype)[..., None] * inv  # [B T dim/2]
        # cos and sin of each angle, each repeated for the two halves: [B T 2*dim]. Written as a product with
        # [I I] blocks (exact at full precision: every output is one input times 1 plus zeros) so that XLA
        # materialises the table once; computed inside the rotation, its CPU backend evaluated cos and sin again for
        # every head and element.
        half = self.dim // 2
        eye, zero = np.eye(half, dtype=np.float32), np.zeros((half, half), np.float32)
        spread = jnp.asarray(np.block([[eye, eye, zero, zero], [zero, zero, eye, eye]]))
        table = jnp.matmul(jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1), spread,
                           precision=jax.lax.Precision.HIGHEST)
        cos, sin = table[..., : self.dim][:, None], table[..., self.dim :][:, None]  # [B 1 T dim]
        if layout == "BHET":
            cos, sin = cos.transpose(0, 1, 3, 2), sin.transpose(0, 1, 3, 2)
        axis = layout.index("E")
        cos, sin = cos.astype(x.dtype), sin.astype(x.dtype)
        size = x.shape[axis]
        rot = jax.lax.slice_in_dim(x, 0, self.dim, axis=axis)
        rotated = jnp.concatenate(
            [-jax.lax.slice_in_dim(rot, half, self.dim, axis=axis), jax.lax.slice_in_dim(rot, 0, half, axis=axis)],
            axis=axis,
        )
        out = rot * cos + rotated * sin
        if size == self.dim:
            return out
        return jnp.concatenate([out, jax.lax.slice_in_dim(x, self.dim, size, axis=axis)], axis=axis)


class Attention(eqx.Module):
    """Causal multi-head attention with grouped key/value heads (MHA: K=H, GQA: 1<K<H, MQA: K=1).

    Hook points (``{prefix}.``): ``hook_q [B T H E]``, ``hook_k``/``hook_v [B S K E]`` (before rotary),
    ``hook_rot_q``/``hook_rot_k`` (after rotary), ``hook_attn_scores [B H T S]`` (scaled, soft-capped when
    ``softcap`` is set, masked entries set to the dtype's minimum), ``hook_pattern [B H T S]``,
    ``hook_z [B T H E]`` (per-head outputs before W_O); with QK-norm also ``q_norm.*`` and ``k_norm.*``.

    ``kv``: a key/value cache ``(keys [B K E S], values [B S K E], index)`` for generation: this call's keys
    and values are written at ``index`` and the queries attend over the whole cache (``mask`` is then
    ``[B T S]`` over cache slots and ``key_positions [B S]`` gives the slots' positions); the call returns
    ``(out, new_kv)``.
    """

    W_Q: Float[Array, "D H E"]
    W_K: Float[Array, "D K E"]
    W_V: Float[Array, "D K E"]
    W_O: Float[Array, "H E D"]
    b_Q: Float[Array, "H E"] | None
    b_K: Float[Array, "K E"] | None
    b_V: Float[Array, "K E"] | None
    b_O: Float[Array, " D"] | None
    rope: Rope | None = eqx.field(static=True)
    sliding_window: int | None = eqx.field(static=True)
    q_norm: RMSNorm | None = None  # per-head norm of queries and keys before rotary (Qwen3, Gemma 3)
    k_norm: RMSNorm | None = None
    scale: float | None = eqx.field(static=True, default=None)  # score scale; default head_dim ** -0.5
    softcap: float | None = eqx.field(static=True, default=None)  # scores -> tanh(scores / c) * c (Gemma 2)

    @property
    def n_heads(self) -> int:
        return self.W_Q.shape[1]

    @property
    def n_kv_heads(self) -> int:
        return self.W_K.shape[1]

    def __call__(
        self,
        x: Float[Array, "B T D"],
        hk,
        prefix: str,
        positions: Int[Array, "B T"],
        mask: Bool[Array, "B T S"],
        kv: tuple | None = None,
        key_positions: Int[Array, "B S"] | None = None,
    ):
        def proj(w, b, name):  # as one 2-D matmul (faster on XLA's CPU dot than the 3-axis einsum)
            y = matmul(x.reshape(-1, x.shape[-1]), w.reshape(w.shape[0], -1)).reshape(*x.shape[:-1], *w.shape[1:])
            return hk(f"{prefix}.{name}", y if b is None else y + b)

        q = proj(self.W_Q, self.b_Q, "hook_q")
        k = proj(self.W_K, self.b_K, "hook_k")
        v = proj(self.W_V, self.b_V, "hook_v")
        if self.q_norm is not None:
            q = self.q_norm(q, hk, f"{prefix}.q_norm")
        if self.k_norm is not None:
            k = self.k_norm(k, hk, f"{prefix}.k_norm")
        B, T, H, E = q.shape
        K = k.shape[2]
        # Rotary runs in the layouts the score product reads (queries [B H T E], keys [B K E S]) and the
        # hooks see transposed views: the product's operands are then computed the same way whether or
        # not a hook captures them, so capturing never changes the logits by even one bit.
        qh, kh = q.transpose(0, 2, 1, 3), k.transpose(0, 2, 3, 1)
        if self.rope is not None:
            qh = self.rope(qh, positions, layout="BHTE")
            qh = hk(f"{prefix}.hook_rot_q", qh.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
            kh = self.rope(kh, positions, layout="BHET")
            kh = hk(f"{prefix}.hook_rot_k", kh.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
        if kv is not None:  # write this call's keys and values into the cache, attend over all of it
            k_cache, v_cache, index = kv
            kh = jax.lax.dynamic_update_slice(k_cache, kh.astype(k_cache.dtype), (0, 0, 0, index))
            v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, index, 0, 0))
            kv = (kh, v, index)
        # The two products run as plain batched matmuls over (batch x kv head), with a kv head's query heads
        # stacked as rows: XLA's CPU dot is much faster on that layout than on the 5-axis einsum.
        S = kh.shape[-1]
        scale = E**-0.5 if self.scale is None else self.scale
        scores = matmul(qh.reshape(B * K, H // K * T, E), kh.reshape(B * K, E, S)).reshape(B, H, T, S) * scale
        if self.softcap is not None:
            scores = jnp.tanh(scores / self.softcap) * self.softcap
        if self.sliding_window is not None:
            t = positions[:, :, None]
            s = (positions if key_positions is None else key_positions)[:, None, :]
            mask = mask & (t - s < self.sliding_window)
        scores = jnp.where(mask[:, None], scores, jnp.finfo(scores.dtype).min)
        scores = hk(f"{prefix}.hook_attn_scores", scores)
        pattern = derived(hk, f"{prefix}.hook_pattern", _pattern(scores), _PATTERN, scores)
        vh = v.transpose(0, 2, 1, 3).reshape(B * K, S, E)
        z = matmul(pattern.reshape(B * K, H // K * T, S), vh).reshape(B, H, T, E).transpose(0, 2, 1, 3)
        z = hk(f"{prefix}.hook_z", z)
        out = matmul(z.reshape(B * T, H * E), self.W_O.reshape(H * E, -1)).reshape(B, T, -1)
        out = out if self.b_O is None else out + self.b_O
        return out if kv is None else (out, kv)


class GatedMLP(eqx.Module):
    """``W_out (act(x W_gate) * (x W_in))`` (SwiGLU / GeGLU).

    Hook points: ``hook_pre [B T F]`` (gate pre-activation), ``hook_pre_linear [B T F]`` (linear branch),
    ``hook_post [B T F]`` (the product fed to W_out).
    """

    W_gate: Float[Array, "D F"]
    W_in: Float[Array, "D F"]
    W_out: Float[Array, "F D"]
    b_gate: Float[Array, " F"] | None
    b_in: Float[Array, " F"] | None
    b_out: Float[Array, " D"] | None
    act: str = eqx.field(static=True)

    def __call__(self, x: Float[Array, "B T D"], hk, prefix: str) -> Float[Array, "B T D"]:
        def lin(w, b):
            y = matmul(x, w)
            return y if b is None else y + b

        pre = hk(f"{prefix}.hook_pre", lin(self.W_gate, self.b_gate))
        pre_linear = hk(f"{prefix}.hook_pre_linear", lin(self.W_in, self.b_in))
        post = hk(f"{prefix}.hook_post", _activate(self.act, pre) * pre_linear)
        out = matmul(post, self.W_out)
        return out if self.b_out is None else out + self.b_out


class MLP(eqx.Module):
    """``W_out act(x W_in + b_in) + b_out`` (GPT-2, GPT-NeoX). Hook points: ``hook_pre [B T F]``,
    ``hook_post [B T F]``."""

    W_in: Float[Array, "D F"]
    W_out: Float[Array, "F D"]
    b_in: Float[Array, " F"] | None
    b_out: Float[Array, " D"] | None
    act: str = eqx.field(static=True)

    def __call__(self, x: Float[Array, "B T D"], hk, prefix: str) -> Float[Array, "B T D"]:
        pre = matmul(x, self.W_in)
        pre = hk(f"{prefix}.hook_pre", pre if self.b_in is None else pre + self.b_in)
        post = hk(f"{prefix}.hook_post", _activate(self.act, pre))
        out = matmul(post, self.W_out)
        return out if self.b_out is None else out + self.b_out


def _attend(attn, x, hk, prefix, positions, mask, kv, key_positions):
    if kv is None:
        return attn(x, hk, prefix, positions, mask), None
    return attn(x, hk, prefix, positions, mask, kv, key_positions)


class PreNormBlock(eqx.Module):
    """``x + attn(ln1(x))`` then ``+ mlp(ln2(.))``. Hook points ``hook_resid_pre``, ``hook_attn_out``,
    ``hook_resid_mid``, ``hook_mlp_out``, ``hook_resid_post`` (all ``[B T D]``) plus those of its parts.

    With ``ln1_post`` / ``ln2_post`` (Gemma 2 and 3) the attention and MLP outputs are normalised again before
    they join the residual stream; ``hook_attn_out`` / ``hook_mlp_out`` are what joins it.
    With ``kv`` (see :class:`Attention`) the call returns ``(resid, new_kv)``.
    """

    ln1: RMSNorm | LayerNorm | NoNorm
    attn: Attention
    ln2: RMSNorm | LayerNorm | NoNorm
    mlp: GatedMLP | MLP
    ln1_post: RMSNorm | None = None
    ln2_post: RMSNorm | None = None

    def __call__(self, resid, hk, prefix: str, positions, mask, kv=None, key_positions=None):
        resid = hk(f"{prefix}.hook_resid_pre", resid)
        attn_out, kv_out = _attend(self.attn, self.ln1(resid, hk, f"{prefix}.ln1"), hk, f"{prefix}.attn", positions,
                                   mask, kv, key_positions)
        if self.ln1_post is not None:
            attn_out = self.ln1_post(attn_out, hk, f"{prefix}.ln1_post")
        attn_out = hk(f"{prefix}.hook_attn_out", attn_out)
        # After a post-norm the sum is left to the runner as any hook point: XLA may contract the norm's weight
        # multiply into the add, which the add redone on the stored output would not reproduce bit for bit.
        resid = (hk(f"{prefix}.hook_resid_mid", resid + attn_out) if self.ln1_post is not None else
                 derived(hk, f"{prefix}.hook_resid_mid", resid + attn_out, _ADD, resid, attn_out))
        mlp_out = self.mlp(self.ln2(resid, hk, f"{prefix}.ln2"), hk, f"{prefix}.mlp")
        if self.ln2_post is not None:
            mlp_out = self.ln2_post(mlp_out, hk, f"{prefix}.ln2_post")
        mlp_out = hk(f"{prefix}.hook_mlp_out", mlp_out)
        out = (hk(f"{prefix}.hook_resid_post", resid + mlp_out) if self.ln2_post is not None else
               derived(hk, f"{prefix}.hook_resid_post", resid + mlp_out, _ADD, resid, mlp_out))
        return out if kv is None else (out, kv_out)


class AttnOnlyBlock(eqx.Module):
    """``x + attn(ln1(x))``: a block with no MLP (the attention-only toy models of circuit studies). Hook points
    ``hook_resid_pre``, ``hook_attn_out``, ``hook_resid_post``."""

    ln1: RMSNorm | LayerNorm | NoNorm
    attn: Attention

    def __call__(self, resid, hk, prefix: str, positions, mask, kv=None, key_positions=None):
        resid = hk(f"{prefix}.hook_resid_pre", resid)
        attn_out, kv_out = _attend(self.attn, self.ln1(resid, hk, f"{prefix}.ln1"), hk, f"{prefix}.attn", positions,
                                   mask, kv, key_positions)
        attn_out = hk(f"{prefix}.hook_attn_out", attn_out)
        out = hk(f"{prefix}.hook_resid_post", resid + attn_out)
        return out if kv is None else (out, kv_out)


class ParallelBlock(eqx.Module):
    """``x + attn(ln1(x)) + mlp(ln2(x))``: attention and MLP read the same residual stream (GPT-NeoX / Pythia,
    GPT-J). Hook points ``hook_resid_pre``, ``hook_attn_out``, ``hook_mlp_out``, ``hook_resid_post`` (no
    ``hook_resid_mid``: there is no stream between the two)."""

    ln1: RMSNorm | LayerNorm | NoNorm
    attn: Attention
    ln2: RMSNorm | LayerNorm | NoNorm
    mlp: GatedMLP | MLP

    def __call__(self, resid, hk, prefix: str, positions, mask, kv=None, key_positions=None):
        resid = hk(f"{prefix}.hook_resid_pre", resid)
        attn_out, kv_out = _attend(self.attn, self.ln1(resid, hk, f"{prefix}.ln1"), hk, f"{prefix}.attn", positions,
                                   mask, kv, key_positions)
        attn_out = hk(f"{prefix}.hook_attn_out", attn_out)
        mlp_out = hk(f"{prefix}.hook_mlp_out", self.mlp(self.ln2(resid, hk, f"{prefix}.ln2"), hk, f"{prefix}.mlp"))
        out = hk(f"{prefix}.hook_resid_post", resid + attn_out + mlp_out)
        return out if kv is None else (out, kv_out)


class Embed(eqx.Module):
    """Token embedding (times ``scale`` when set: Gemma multiplies by sqrt(d_model) in the activation dtype).
    Hook point ``hook_embed [B T D]``; with learned positions (``W_pos``, GPT-2) also ``hook_pos_embed``, and the
    residual stream starts as their sum."""

    W_E: Float[Array, "V D"]
    W_pos: Float[Array, "P D"] | None = None
    scale: float | None = eqx.field(static=True, default=None)

    def __call__(self, tokens: Int[Array, "B T"], hk,
                 positions: Int[Array, "B T"] | None = None) -> Float[Array, "B T D"]:
        x = jnp.take(self.W_E, tokens, axis=0)
        if self.scale is not None:
            x = x * jnp.asarray(self.scale, x.dtype)
        x = hk("hook_embed", x)
        if self.W_pos is None:
            return x
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        return x + hk("hook_pos_embed", jnp.take(self.W_pos, positions, axis=0))
