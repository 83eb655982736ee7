"""The hooked decoder-only transformer every family builds: a pytree of arrays plus static config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from interp.hooks import NOOP, Cache, Computed, Derived, HookRunner, Hooks, Resolved, ShapeRecorder
from interp.models import _shapes_cache
from interp.models._blocks import Embed, LayerNorm, NoNorm, RMSNorm, _at_least_f32
from interp.models._buckets import (
    bucket_length,
    cut_positions,
    length_buckets,
    pad_positions,
    slice_positions,
)
from interp.models._tl_compat import check_hook_leaks
from interp.models._user_api import UserAPI

_VOCABULARY: dict[Any, dict[str, tuple]] = {}


class KVCache(eqx.Module):
    """Keys and values of every layer for generation, in fixed-size slots: ``keys[l] [B K E S]``,
    ``values[l] [B S K E]``; ``valid [B S]`` marks slots holding a real token, ``positions [B S]`` their rotary
    positions, and ``index`` is the next slot to write."""

    keys: tuple
    values: tuple
    valid: Bool[Array, "B S"]
    positions: Int[Array, "B S"]
    index: Int[Array, ""]

    @property
    def size(self) -> int:
        return self.valid.shape[1]


class Model(UserAPI, eqx.Module):
    """A hooked language model: ``model(tokens)`` -> logits ``[batch, pos, vocab]``.

    ``run_with_cache`` captures named activations, ``run_with_hooks`` edits them with pure functions;
    both run one compiled function per (shapes, capture names, edit functions), reused for new values.
    """

    embed: Embed
    blocks: tuple
    ln_final: RMSNorm | LayerNorm | NoNorm
    unembed: Float[Array, "D V"] | None  # None when tied to the embedding
    config: Any = eqx.field(static=True)
    tokenizer: Any = eqx.field(static=True, default=None)
    logit_softcap: float | None = eqx.field(static=True, default=None)  # logits -> tanh(l / c) * c (Gemma 2)
    b_U: Float[Array, " V"] | None = None  # unembedding bias (set by folding a LayerNorm bias into it)

    def __repr__(self) -> str:
        """A short summary: family, sizes, context, dtype and parameter count (not every array)."""
        a = self.blocks[0].attn if self.blocks else None
        heads = f", {a.n_heads} heads ({a.n_kv_heads} kv) of {a.W_Q.shape[2]}" if a is not None else ""
        n = sum(x.size for x in jax.tree.leaves(eqx.filter(self, eqx.is_array)))
        name = getattr(self.config, "name", None) or type(self.config).__name__.removesuffix("Config")
        return (f"Model({name}: {self.n_layers} layers, d_model {self.d_model}{heads}, vocab {self.d_vocab}, "
                f"context {self.n_ctx}, {self.W_E.dtype}, {n / 1e6:.1f}M parameters)")

    # ----------------------------------------------------------------- sizes and weights
    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        return self.embed.W_E.shape[1]

    @property
    def d_vocab(self) -> int:
        return self.embed.W_E.shape[0]

    @property
    def n_ctx(self) -> int | None:
        """The longest sequence the checkpoint was trained for (None if its config does not say).

        Learned positions (GPT-2): the rows of ``W_pos`` (``config.n_ctx``); no position past them exists.
        Rotary families (Llama, Qwen, Mistral, GPT-NeoX, Gemma): ``config.max_position``, the checkpoint's
        ``max_position_embeddings`` (already the extended context when its rope scaling extends it). Rotary
        positions can be computed past it, so passing ``positions`` explicitly runs there deliberately.
        """
        if self.embed.W_pos is not None:
            return self.embed.W_pos.shape[0]
        return getattr(self.config, "max_position", None)

    @property
    def W_E(self) -> Float[Array, "V D"]:
        return self.embed.W_E

    @property
    def W_U(self) -> Float[Array, "D V"]:
        return self.embed.W_E.T if self.unembed is None else self.unembed

    # ----------------------------------------------------------------- pure forward
    def forward(
        self,
        tokens: Int[Array, "B T"],
        hk: Callable = NOOP,
        *,
        attention_mask: Int[Array, "B T"] | None = None,
        positions: Int[Array, "B T"] | None = None,
        stop_at_layer: int | None = None,
        kv: KVCache | None = None,
    ):
        """Pure forward pass (no jit, no checks): compose it under your own ``jit``/``vmap``/``grad``.

        Nothing is checked here: an out-of-range token id reads NaN from the embedding, and positions past
        :attr:`n_ctx` run unchecked. Wrap the tokens in :func:`interp.check_tokens` to get an error instead.

        ``hk(name, x) -> x`` is called at every hook point. With ``stop_at_layer=k`` the blocks from k on
        are skipped and the residual stream entering block k (``[B T D]``) is returned instead of logits.
        ``attention_mask`` (1 = real token, 0 = padding) hides padded keys; positions then count real
        tokens only, so a left-padded sequence sees the same positions as the unpadded one.

        With ``kv`` (a :class:`KVCache`, see :meth:`init_cache`) the tokens are the next ones after those in the
        cache: they attend to the cached keys and values as well as to each other, and the result is
        ``(logits, new_cache)``. ``positions`` are then required (the rotary positions of the new tokens).
        """
        if kv is not None:
            return self._forward_cached(tokens, hk, attention_mask, positions, kv)
        positions, mask = attention_inputs(tokens.shape, attention_mask, positions)
        x = self.embed(tokens, hk, positions)
        n = self.n_layers if stop_at_layer is None else stop_at_layer
        for layer, block in enumerate(self.blocks[:n]):
            x = block(x, hk, f"blocks.{layer}", positions, mask)
        if stop_at_layer is not None:
            return x
        x = self.ln_final(x, hk, "ln_final")
        return self.unembed_logits(x)

    def unembed_logits(self, x: Float[Array, "... D"]) -> Float[Array, "... V"]:
        """Logits from the normalised final residual stream (soft-capped when the model does so), in float32 also
        for a bfloat16 or float16 model: the product accumulates in float32 and is not rounded back (see
        :mod:`interp.models._blocks`, "Precision")."""
        f32 = _at_least_f32(x.dtype)
        if f32 == x.dtype:
            logits = x @ self.W_U
        else:
            logits = jnp.matmul(x, self.W_U, preferred_element_type=f32)
        if self.b_U is not None:
            logits = logits + self.b_U.astype(f32)
        if self.logit_softcap is not None:
            logits = jnp.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits

    def init_cache(self, batch: int, size: int, dtype=None) -> KVCache:
        """An empty :class:`KVCache` of ``size`` slots for ``batch`` sequences."""
        dtype = dtype or self.W_E.dtype
        keys, values = [], []
        for block in self.blocks:
            a = block.attn
            E = a.W_Q.shape[2]
            keys.append(jnp.zeros((batch, a.n_kv_heads, E, size), dtype))
            values.append(jnp.zeros((batch, size, a.n_kv_heads, E), dtype))
        return KVCache(tuple(keys), tuple(values), jnp.zeros((batch, size), bool), jnp.zeros((batch, size), jnp.int32),
                       jnp.zeros((), jnp.int32))

    def _forward_cached(self, tokens, hk, attention_mask, positions, kv: KVCache):
        B, T = tokens.shape
        if positions is None:
            raise ValueError("a cached forward needs the positions of the new tokens")
        new_valid = jnp.ones((B, T), bool) if attention_mask is None else attention_mask.astype(bool)
        valid = jax.lax.dynamic_update_slice(kv.valid, new_valid, (0, kv.index))
        key_positions = jax.lax.dynamic_update_slice(kv.positions, positions.astype(jnp.int32), (0, kv.index))
        slots = jnp.arange(kv.size)
        causal = slots[None, :] <= (kv.index + jnp.arange(T))[:, None]  # [T S]
        mask = valid[:, None, :] & causal[None]
        x = self.embed(tokens, hk, positions)
        keys, values = [], []
        for layer, block in enumerate(self.blocks):
            layer_cache = (kv.keys[layer], kv.values[layer], kv.index)
            x, (k, v, _) = block(x, hk, f"blocks.{layer}", positions, mask, layer_cache, key_positions)
            keys.append(k)
            values.append(v)
        x = self.ln_final(x, hk, "ln_final")
        return self.unembed_logits(x), KVCache(tuple(keys), tuple(values), valid, key_positions, kv.index + T)

    # ----------------------------------------------------------------- hook vocabulary
    def hook_shapes(self, batch: int = 1, pos: int = 4) -> dict[str, tuple[int, ...]]:
        """Every hook point of this model, in execution order, with its shape for ``[batch, pos]`` input."""
        key = (self.config, self.n_layers, batch, pos)
        if key not in _VOCABULARY:
            disk_key = (repr(self.config), self.n_layers, batch, pos)
            shapes = _shapes_cache.load(disk_key)
            if shapes is None:
                rec = ShapeRecorder()
                jax.eval_shape(lambda m, t: m.forward(t, rec), self, jax.ShapeDtypeStruct((batch, pos), jnp.int32))
                shapes = dict(rec.shapes)
                _shapes_cache.store(disk_key, shapes)
            _VOCABULARY[key] = shapes
        return dict(_VOCABULARY[key])

    @property
    def hook_names(self) -> list[str]:
        """All hook point names in execution order."""
        return list(self.hook_shapes())

    # ----------------------------------------------------------------- compiled entry points
    def run(
        self,
        tokens,
        hooks: Hooks | None = None,
        *,
        attention_mask=None,
        positions=None,
        stop_at_layer: int | None = None,
        return_output: bool = True,
        keep_padding: bool = False,
    ) -> tuple[Array | None, Cache]:
        """Compiled forward with ``hooks``: returns ``(logits or residual, Cache)``.

        With ``return_output=False`` and no ``stop_at_layer``, blocks after the deepest captured or edited
        hook are skipped and the output is None.

        The prompt runs padded at its end to its length bucket (see :mod:`interp.models._buckets`;
        ``interp.set_length_buckets``), so a prompt of a new length usually reuses a compiled program; outputs
        and captured activations are cut back to the prompt's length (``keep_padding=True`` leaves them at the
        bucket length: positions past the prompt are padding). A captured activation is cut when it is first read
        from the cache, so capturing every hook point and reading a few costs only the few. Likewise an attention
        pattern captured with its scores, and a residual stream captured with the terms it sums, are computed from
        them when read rather than written out (:class:`interp.hooks.HookRunner`). Runs whose edits
        include a function not marked :func:`interp.hooks.any_length`, and runs on traced tokens, run at the exact
        length.
        """
        hooks = self._with_context_edits(hooks)  # the edits of an active `with model.hooks(...)` block, once
        tokens, attention_mask, positions = self.check_inputs(tokens, attention_mask, positions)
        resolved = (hooks or Hooks()).resolve(self.hook_names)
        stop = self._check_stop(stop_at_layer, resolved)
        if not return_output and stop is None:
            deepest = resolved.deepest_layer()
            if deepest is not None:
                stop = deepest + 1
        T = padded = tokens.shape[1]
        if self._can_bucket(resolved, tokens, attention_mask, positions):
            # always with a mask, so a prompt that fills its bucket exactly shares the padded prompts' program
            padded = bucket_length(T, self.n_ctx)
            tokens, attention_mask, positions, resolved = self._pad_inputs(padded, tokens, attention_mask, positions,
                                                                           resolved)
        tokens, attention_mask, positions = _place_batch(self, tokens, attention_mask, positions)
        out, cache = _run(self, tokens, attention_mask, positions, resolved, stop, return_output)
        check_hook_leaks()  # a TransformerLens-style hook that kept a traced activation is refused
        if padded > T and not keep_padding:
            axes = self.position_axes()
            if out is not None:
                out = slice_positions(out, (1,), T)
            cut: dict[tuple[int, tuple[int, ...]], object] = {}  # names that share one array share its cut
            entries = {}
            for name, a in cache.entries().items():
                ax = tuple(axes.get(name, (1,)))
                key = (id(a), ax)
                if key not in cut:
                    cut[key] = cut_positions(a, ax, T)
                entries[name] = cut[key]
            cache = Cache(entries)
        return out, cache

    # ----------------------------------------------------------------- length buckets
    def bucket_length(self, T: int, hooks: Hooks | None = None) -> int:
        """The length a run of ``T`` positions with ``hooks`` executes at: its bucket, or ``T`` itself when the
        run cannot be padded safely (an edit function not marked :func:`interp.hooks.any_length`)."""
        resolved = (hooks or Hooks()).resolve(self.hook_names)
        return bucket_length(T, self.n_ctx) if self._can_bucket(resolved) else T

    def _can_bucket(self, resolved: Resolved, *inputs) -> bool:
        if length_buckets() is None or any(isinstance(a, jax.core.Tracer) for a in inputs):
            return False
        return all(fn.any_length for _, fn in resolved.edits)

    def position_axes(self) -> dict[str, tuple[int, ...]]:
        """For every hook point, the axes of its activation that run along positions (queries or keys),
        found by comparing the hook shapes at two lengths."""
        key = ("position_axes", self.config, self.n_layers)
        if key not in _VOCABULARY:
            a, b = self.hook_shapes(1, 4), self.hook_shapes(1, 5)
            _VOCABULARY[key] = {n: tuple(i for i, (x, y) in enumerate(zip(a[n], b[n])) if x != y) for n in a}
        return _VOCABULARY[key]

    def _pad_inputs(self, padded: int, tokens, attention_mask, positions, resolved: Resolved):
        T = tokens.shape[1]
        if attention_mask is None:  # built on the host: an eager jnp.ones would compile for every new shape
            attention_mask = to_device(np.ones(tokens.shape, np.int32))
        if padded == T:
            return tokens, attention_mask, positions, resolved
        tokens = pad_positions(tokens, (1,), padded)
        attention_mask = pad_positions(attention_mask, (1,), padded)
        if positions is not None:  # the padding repeats the last position (hidden by the mask in any case)
            positions = to_device(np.pad(np.asarray(positions), [(0, 0), (0, padded - T)], mode="edge"), np.int32)
        axes, shapes = self.position_axes(), self.hook_shapes()
        params = []
        for (name, _), p in zip(resolved.edits, resolved.params):
            ndim, pos = len(shapes.get(name, (0, 0, 0))), axes.get(name, (1,))
            params.append(jax.tree.map(lambda a, ndim=ndim, pos=pos: _pad_param(a, ndim, pos, T, padded), p))
        resolved = Resolved(resolved.capture, resolved.edits, tuple(params), resolved.splices)
        return tokens, attention_mask, positions, resolved

    # ----------------------------------------------------------------- quick looks
    def top_next(self, prompt, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most likely next tokens after ``prompt`` with their probabilities."""
        logits = np.asarray(self(prompt))[0, -1].astype(np.float64)  # host-side: a new length compiles nothing here
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        top = np.argsort(-probs)[:k]
        return [(self.to_string([int(i)]) if self.tokenizer else str(int(i)), float(probs[i])) for i in top]

    def generate(self, prompts, max_new_tokens: int = 32, **kwargs):
        """Continue ``prompts`` with a key/value cache under jit (greedy or sampled; edits apply at every step).
        See :func:`interp.models.generate.generate` for the options; returns a ``Generation``."""
        from interp.models.generate import generate

        return generate(self, prompts, max_new_tokens, **kwargs)

    def next_token(self, tokens) -> Array:
        """Greedy next token id for each sequence in the batch (``[batch]``)."""
        return to_device(np.argmax(np.asarray(self(tokens))[:, -1], axis=-1), np.int32)

    # ----------------------------------------------------------------- input checks (host side)
    def check_inputs(self, tokens, attention_mask=None, positions=None):
        """``(tokens [B, T] int32 on device, attention_mask, positions)`` from what a user passes: a string, a
        list of strings (padded, with their mask), or ids ``[T]``/``[B, T]``; ids out of the vocabulary, empty
        prompts and malformed masks are refused with the reason. Tracers pass through unchecked."""
        if isinstance(tokens, str) or (isinstance(tokens, (list, tuple)) and tokens and isinstance(tokens[0], str)):
            if attention_mask is None and not isinstance(tokens, str) and len(tokens) > 1:
                tokens, attention_mask = self.to_tokens(tokens, return_mask=True)
            else:
                tokens = self.to_tokens(tokens)
        if not isinstance(tokens, jax.core.Tracer):
            tokens = np.asarray(tokens)
            if tokens.ndim == 1:
                tokens = tokens[None]
            if tokens.ndim != 2:
                raise ValueError(
                    f"tokens must have shape [batch, pos] (or [pos]); got shape {tokens.shape}"
                )
            if not np.issubdtype(tokens.dtype, np.integer):
                raise ValueError(f"tokens must be integer ids; got dtype {tokens.dtype}")
            if tokens.size and (tokens.min() < 0 or tokens.max() >= self.d_vocab):
                bad = int(tokens.max()) if tokens.max() >= self.d_vocab else int(tokens.min())
                raise ValueError(
                    f"token id {bad} is out of range for this model's vocabulary of {self.d_vocab} "
                    f"(valid ids are 0..{self.d_vocab - 1}); were the ids made by another tokenizer?"
                )
            if tokens.shape[1] == 0:
                raise ValueError("tokens are empty: need at least one position")
            tokens = to_device(tokens, np.int32)
        elif tokens.ndim != 2:
            raise ValueError(f"tokens must have shape [batch, pos]; got shape {tokens.shape}")
        if attention_mask is not None:
            if not isinstance(attention_mask, jax.core.Tracer):
                attention_mask = np.asarray(attention_mask)
                if attention_mask.ndim == 1:
                    attention_mask = attention_mask[None]
            if tuple(attention_mask.shape) != tuple(tokens.shape):
                raise ValueError(
                    f"attention_mask shape {tuple(attention_mask.shape)} must equal tokens shape {tuple(tokens.shape)}"
                )
            attention_mask = to_device(attention_mask, np.int32)
        if positions is not None:
            if isinstance(positions, jax.core.Tracer):
                positions = jnp.broadcast_to(positions.astype(jnp.int32), tokens.shape)
            else:
                positions = to_device(np.broadcast_to(np.asarray(positions), tokens.shape), np.int32)
        self._check_context(tokens.shape[1], attention_mask, positions)
        return tokens, attention_mask, positions

    def _check_context(self, T: int, attention_mask, positions) -> None:
        """Refuse positions at or past :attr:`n_ctx` (see there for what each family supports)."""
        n, learned = self.n_ctx, self.embed.W_pos is not None
        if n is None:
            return
        if positions is not None:  # explicit: a rotary model extrapolates on purpose; a learned table cannot
            if not learned or isinstance(positions, jax.core.Tracer):
                return
            p = np.asarray(positions)
            if 0 <= p.min() and p.max() < n:
                return
            bad = int(p.min() if p.min() < 0 else p.max())
            raise ValueError(f"position {bad} is outside this model's {n} learned positions (0..{n - 1}); "
                             "learned positions have no row past the table, pass positions inside it")
        if attention_mask is None:
            length = T
        elif not isinstance(attention_mask, jax.core.Tracer):
            length = int(np.asarray(attention_mask).sum(axis=1).max())  # positions count real tokens only
        else:
            return
        if length <= n:
            return
        if learned:
            raise ValueError(f"{length} tokens exceed this model's {n} learned positions; pass a shorter sequence")
        raise ValueError(
            f"{length} tokens exceed this model's context of {n} positions (config.max_position: what the "
            "checkpoint was trained for); pass a shorter sequence, or pass positions= explicitly to run past the "
            "context on purpose (rotary positions extend, but the model never saw them)"
        )

    def _check_stop(self, stop_at_layer, resolved: Resolved) -> int | None:
        if stop_at_layer is None:
            return None
        stop = stop_at_layer + self.n_layers if stop_at_layer < 0 else stop_at_layer
        if not 0 <= stop <= self.n_layers:
            raise ValueError(f"stop_at_layer={stop_at_layer} is outside 0..{self.n_layers} for a "
                             f"{self.n_layers}-layer model")
        deepest = resolved.deepest_layer()
        if deepest is None or deepest >= stop:
            raise ValueError(
                f"a captured or edited hook lies at or past stop_at_layer={stop_at_layer} and would never run; "
                "raise stop_at_layer or drop those names"
            )
        return stop


def check_tokens(model: Model, tokens: Int[Array, "*B T"]) -> Int[Array, "*B T"]:
    """``tokens`` unchanged, or an error if an id lies outside ``0..model.d_vocab - 1`` -- also under ``jax.jit``,
    where ``model(tokens)`` cannot look at the values and an out-of-range id silently gives NaN logits::

        @jax.jit
        def logits(model, tokens):
            return model.forward(interp.check_tokens(model, tokens))
    """
    tokens = jnp.asarray(tokens)
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be integer ids; got dtype {tokens.dtype}")
    V = model.d_vocab
    return eqx.error_if(tokens, (tokens < 0) | (tokens >= V),
                        f"a token id is out of range for this model's vocabulary of {V} (valid ids are 0..{V - 1}); "
                        "were the ids made by another tokenizer?")


def to_device(a, dtype=None):
    """A host array (or a concrete device array) on the default device, converted on the host.

    ``jnp.asarray`` of a NumPy array compiles a small program for every new shape; ``jax.device_put`` of a
    NumPy array compiles nothing, so inputs of a new length cost no compilation. Traced values pass through."""
    if isinstance(a, jax.core.Tracer):
        return a if dtype is None else a.astype(dtype)
    return jax.device_put(np.asarray(a, dtype))



def _place_batch(model, *arrays):
    """The batch split over the ``data`` axis of a sharded model's mesh (:mod:`interp.models.sharding`) when that
    axis divides it; unchanged otherwise (one device, traced values, no mesh)."""
    from interp.models.sharding import batch_sharding

    tokens = arrays[0]
    if isinstance(tokens, jax.core.Tracer) or (where := batch_sharding(model, tokens.shape[0])) is None:
        return arrays
    return tuple(None if a is None or isinstance(a, jax.core.Tracer) else jax.device_put(a, where) for a in arrays)


def _pad_param(a, ndim: int, pos_axes: tuple[int, ...], T: int, padded: int):
    """An edit parameter broadcast from the right against an activation of ``ndim`` axes: padded with zeros
    along the axes that meet the activation's position axes and have the prompt's length."""
    if not hasattr(a, "shape") or getattr(a, "ndim", 0) == 0:
        return a
    offset = ndim - a.ndim
    axes = [ax - offset for ax in pos_axes if 0 <= ax - offset < a.ndim and a.shape[ax - offset] == T]
    return pad_positions(a, axes, padded) if axes else a


def attention_inputs(
    shape: tuple[int, int], attention_mask: Int[Array, "B T"] | None = None, positions: Int[Array, "B T"] | None = None
) -> tuple[Int[Array, "B T"], Bool[Array, "B T S"]]:
    """Rotary positions and the causal (and padding) mask the blocks take, for tokens of ``shape [B, T]``."""
    B, T = shape
    if positions is None:
        if attention_mask is None:
            positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        else:
            positions = jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)
    mask = jnp.tril(jnp.ones((T, T), dtype=bool))[None]
    if attention_mask is not None:
        mask = mask & attention_mask.astype(bool)[:, None, :]
    return positions, jnp.broadcast_to(mask, (B, T, T))


def _run(model: Model, tokens, attention_mask, positions, hooks: Resolved, stop_at_layer, return_output):
    out, values, index, recipes = _run_program(model, tokens, attention_mask, positions, hooks, stop_at_layer,
                                               return_output)
    traced = any(isinstance(v, jax.core.Tracer) for v in values)
    computed: list = []  # derived entries: computed now under a trace, else when first read (shared by their names)
    for fn, refs, shape, dtype in recipes:
        args = [values[r] if isinstance(r, int) else computed[r[0]] for r in refs]
        computed.append(fn(*args) if traced else Computed(fn, args, shape, dtype))
    return out, Cache({name: values[r] if isinstance(r, int) else computed[r[0]] for name, r in index})


@eqx.filter_jit
def _run_program(model: Model, tokens, attention_mask, positions, hooks: Resolved, stop_at_layer, return_output):
    hk = HookRunner(hooks, derive=True)
    out = model.forward(tokens, hk, attention_mask=attention_mask, positions=positions, stop_at_layer=stop_at_layer)
    # A value captured under several names (a block's resid_post is the next block's resid_pre) leaves the program
    # once, and the names share it: each further output of the same value would be a copy. An entry the runner
    # derives (``interp.hooks.Derived``) leaves as a recipe over the values: ``(fn, refs, shape, dtype)``, each ref
    # an output's slot or ``(j,)`` for the j-th recipe.
    values, slot, recipes, index = [], {}, [], []

    def ref(a):
        if isinstance(a, Derived):
            if id(a) not in slot:
                refs = tuple(ref(i) for i in a.inputs)
                slot[id(a)] = (len(recipes),)
                recipes.append((a.fn, refs, a.shape, np.dtype(a.dtype)))
            return slot[id(a)]
        i = slot.setdefault(id(a), len(values))
        if i == len(values):
            values.append(a)
        return i

    for name, a in hk.cache.items():
        index.append((name, ref(a)))
    return (out if return_output else None), values, tuple(index), tuple(recipes)
