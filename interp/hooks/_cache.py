"""The activation cache returned by ``run_with_cache``, with TransformerLens's ``ActivationCache`` methods.

The methods that need the model (its layer count, ``W_O``, ``W_U``, final norm) use the model the cache is bound
to: ``run_with_cache`` binds it, ``Cache.with_model`` binds any other cache. The model is used only through
TransformerLens's attribute names (``n_layers``, ``cfg``, ``W_O``, ``W_U``, ``ln_final``, ``to_single_token``,
``tokens_to_residual_directions``), so this module knows nothing of model families.

Stacks are ``[component, *batch_and_pos, D]``; ``pos_slice``/``batch_slice`` take TransformerLens's forms: None
(everything), an int (that position, the axis removed), a tuple ``(start, stop[, step])``, a ``slice``, or a list or
array of indices.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from interp.hooks._names import act_name, layer_of, suggest


def _f32(x: Array) -> Array:
    x = jnp.asarray(x)
    return x if jnp.finfo(x.dtype).bits >= 32 else x.astype(jnp.float32)


def _sliced(x: Array, s, axis: int) -> Array:
    """``x`` with TransformerLens-style slice ``s`` applied along ``axis``."""
    if s is None:
        return x
    if isinstance(s, tuple):
        s = slice(*s)
    elif isinstance(s, (list, np.ndarray, jax.Array)):
        s = np.asarray(s)
    elif not isinstance(s, (int, np.integer, slice)) or isinstance(s, bool):
        raise TypeError(f"a position/batch slice is None, an int, a (start, stop[, step]) tuple, a slice or a list "
                        f"of indices; got {s!r}")
    index = [slice(None)] * x.ndim
    index[axis] = s
    return x[tuple(index)]


def _is_layer(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


class Pending:
    """An activation that a :class:`Cache` holds in a form still to be finished (e.g. padded, to be cut to the
    prompt's length): its ``shape``/``dtype``/``ndim`` are known without the work, and :meth:`resolve` does it. A cache
    resolves an entry the first time it is read and keeps the result, so capturing hundreds of hook points costs
    only the entries that are looked at; :func:`resolve_all` finishes many at once."""

    __slots__ = ("shape", "dtype", "_value")

    def __init__(self, shape: tuple[int, ...], dtype):
        self.shape, self.dtype = tuple(shape), dtype
        self._value = None

    def value(self) -> Array:
        """The resolved value, worked out once: an entry that several names share is finished once for all."""
        if self._value is None:
            self._value = self.resolve()
            self._release()
        return self._value

    def _release(self) -> None:
        """Drop what the resolved value no longer needs (a subclass's inputs)."""

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def resolve(self) -> Array:
        raise NotImplementedError

    @staticmethod
    def resolve_all(pending: list[Pending]) -> list[Array]:
        """The resolved values of ``pending``, all of one kind (subclasses batch the work)."""
        return [p.value() for p in pending]

    @staticmethod
    def resolve_many(entries) -> None:
        """Resolve every unresolved :class:`Pending` among ``entries``, one batch per kind (:meth:`resolve_all`)."""
        kinds: dict[type, dict[int, Pending]] = {}
        for v in entries:
            if isinstance(v, Pending) and v._value is None:
                kinds.setdefault(type(v), {})[id(v)] = v  # a value that several names share is resolved once
        for kind, todo in kinds.items():
            for p, v in zip(todo.values(), kind.resolve_all(list(todo.values()))):
                if p._value is None:
                    p._value = v
                    p._release()


class Computed(Pending):
    """An entry computed from other entries when first read: ``fn(*inputs)``, each input an array or a
    :class:`Pending` (resolved first). ``fn`` is jitted, so a kind of entry compiles once per shape."""

    __slots__ = ("fn", "inputs")

    def __init__(self, fn, inputs, shape, dtype):
        super().__init__(shape, dtype)
        self.fn, self.inputs = fn, tuple(inputs)

    def _release(self) -> None:
        self.inputs = ()

    def resolve(self) -> Array:
        return self.fn(*(i.value() if isinstance(i, Pending) else i for i in self.inputs))

    @staticmethod
    def resolve_all(pending: list[Pending]) -> list[Array]:
        """Every entry of ``pending``, and the unresolved entries they are computed from, in one compiled program
        (one per wiring and shapes): a cache read whole computes its attention patterns and residual sums together
        instead of in one call each. Each entry's result is rounded to its dtype before another reads it, so the
        values are those :meth:`resolve` gives one by one."""
        nodes: dict[int, Computed] = {}  # id -> node, in an order where inputs come first
        leaves: dict[int, int] = {}  # id(array or finished Pending) -> argument slot
        args: list = []

        def visit(p: Computed) -> None:
            if id(p) in nodes:
                return
            for i in p.inputs:
                if isinstance(i, Computed) and i._value is None:
                    visit(i)
                elif id(i) not in leaves:
                    leaves[id(i)] = len(args)
                    args.append(i)
            nodes[id(p)] = p

        for p in pending:
            if p._value is None:
                visit(p)
        order = list(nodes.values())
        if order:
            position = {id(p): j for j, p in enumerate(order)}
            wiring = tuple((p.fn, tuple(("node", position[id(i)]) if id(i) in position else ("arg", leaves[id(i)])
                                        for i in p.inputs)) for p in order)
            values = [a.value() if isinstance(a, Pending) else a for a in args]
            for p, v in zip(order, _program(wiring)(values)):
                p._value = v
                p._release()
        return [p.value() for p in pending]


_PROGRAMS: dict = {}


def _program(wiring: tuple):
    """The compiled program that evaluates ``wiring`` (``(fn, refs)`` per node, a ref naming an argument or an earlier
    node) on a list of arguments. Each node's value passes an optimization barrier before any other node reads it,
    so that no rounding to its dtype is fused away."""
    if wiring not in _PROGRAMS:
        if len(_PROGRAMS) >= 64:
            _PROGRAMS.pop(next(iter(_PROGRAMS)))

        def run(args):
            out: list = []
            for fn, refs in wiring:
                out.append(jax.lax.optimization_barrier(fn(*(out[j] if kind == "node" else args[j]
                                                            for kind, j in refs))))
            return out

        _PROGRAMS[wiring] = jax.jit(run)
    return _PROGRAMS[wiring]


def _resolve_all(data: dict) -> None:
    """Resolve every :class:`Pending` value of ``data`` in place, one batch per kind."""
    Pending.resolve_many(data.values())
    for k, v in data.items():
        if isinstance(v, Pending):
            data[k] = v._value


@jax.tree_util.register_pytree_node_class
class Cache(Mapping):
    """Captured activations by full hook name, in the order the forward pass produced them.

    Look-ups accept full names (``cache["blocks.5.hook_resid_post"]``) and TransformerLens-style short
    keys (``cache["resid_post", 5]``, ``cache["pattern", 3]``, ``cache["scale", 2, "ln1"]``); a negative layer
    counts from the end (``cache["resid_post", -1]``), which needs the bound model. A Cache is a pytree, so it can
    be returned from ``jax.jit``/``jax.grad`` and mapped with ``jax.tree.map`` (the result is not bound to a model:
    bind it again with :meth:`with_model`).
    """

    def __init__(self, data: Mapping[str, Array], *, model=None, has_batch_dim: bool = True):
        self._data = dict(data)
        self.model = model
        self.has_batch_dim = has_batch_dim

    def with_model(self, model) -> Cache:
        """This cache bound to ``model`` (the activations are shared, not copied)."""
        return Cache(self._data, model=model, has_batch_dim=self.has_batch_dim)

    def _need_model(self, what: str):
        if self.model is None:
            raise ValueError(
                f"{what} needs the model (its layer count and weights), and this cache is not bound to one: caches "
                "from model.run_with_cache are; bind any other (from Model.run, jax.tree.map, ...) with "
                "cache = cache.with_model(model)"
            )
        return self.model

    # ----------------------------------------------------------------- mapping
    def _key(self, key) -> str:
        if isinstance(key, tuple):
            if len(key) >= 2 and _is_layer(key[1]) and key[1] < 0:
                n = self._need_model(f"the negative layer in cache[{key!r}]").n_layers
                if key[1] + n < 0:
                    raise KeyError(f"layer {key[1]} is out of range for a {n}-layer model")
                key = (key[0], int(key[1]) + n, *key[2:])
            return act_name(*key)
        try:
            return act_name(key)
        except KeyError:
            try:
                act_name(key, 0)
            except KeyError:
                raise KeyError(f"unknown hook name {key!r}{suggest(key, self._data)}") from None
            raise KeyError(f"cache[{key!r}] needs a layer: cache[{key!r}, 0] (cache[{key!r}, -1] for the last layer), "
                           f"or cache.stack({key!r}) for every cached layer") from None

    def __getitem__(self, key) -> Array:
        try:
            name = self._key(key)
        except KeyError as e:
            raise KeyError(e.args[0]) from None
        if name not in self._data:
            raise KeyError(f"'{name}' is not in this cache{suggest(name, self._data)}")
        value = self._data[name]
        if isinstance(value, Pending):
            value = self._data[name] = value.value()
        return value

    def entries(self) -> dict[str, Array | Pending]:
        """The stored entries by name, a :class:`Pending` one left as it is (``items()`` resolves each)."""
        return dict(self._data)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key) -> bool:
        try:
            return self._key(key) in self._data
        except (KeyError, ValueError):
            return False

    def __repr__(self) -> str:
        lines = [f"  {k}: {tuple(v.shape)} {v.dtype}" for k, v in self._data.items()]
        return "Cache(\n" + "\n".join(lines) + "\n)" if lines else "Cache()"

    def _need(self, key, what: str) -> Array:
        """``self[key]``, or an error naming the method and how to capture what it needs."""
        if key in self:
            return self[key]
        name = self._key(key)
        raise KeyError(f"{what} needs '{name}' in the cache; capture it: model.run_with_cache(tokens) captures every "
                       "hook point, or add it to names=")

    # ----------------------------------------------------------------- stacking
    def stack(self, name: str, layers=None, layer_type: str | None = None) -> Array:
        """Stack a per-layer activation: ``cache.stack("resid_post")`` -> ``[L, ...]`` over the cached layers
        (``layer_type`` "ln1"/"ln2" for norm hooks)."""
        if layers is None:
            present = sorted({l for k in self._data if (l := layer_of(k)) is not None})
            layers = [l for l in present if act_name(name, l, layer_type) in self._data]
        if not layers:
            raise KeyError(f"no layers of '{name}' in this cache")
        return jnp.stack([self[name, l, layer_type] if layer_type else self[name, l] for l in layers])

    def stack_activation(self, activation_name: str, layer: int | None = -1,
                         sublayer_type: str | None = None) -> Array:
        """``[layer, ...]``: the activation at every layer below ``layer`` (-1 or None: all), as TransformerLens."""
        n = self._need_model("stack_activation").n_layers
        layer = n if layer is None or layer == -1 else layer
        key = (lambda l: (activation_name, l, sublayer_type)) if sublayer_type else (lambda l: (activation_name, l))
        return jnp.stack([self._need(key(l), "stack_activation") for l in range(layer)])

    def remove_batch_dim(self) -> Cache:
        """Drop the batch axis of a one-sequence cache, in place (as TransformerLens), and return the cache."""
        if not self.has_batch_dim:
            warnings.warn("remove_batch_dim: this cache has no batch axis already; nothing changed", stacklevel=2)
            return self
        _resolve_all(self._data)
        sizes = Counter(v.shape[0] for v in self._data.values() if v.ndim)
        batch = sizes.most_common(1)[0][0] if sizes else 1
        if batch != 1:
            raise ValueError(f"cannot remove the batch axis of a cache of {batch} sequences; run one sequence, or "
                             "index the activations yourself")
        self._data = {k: (v[0] if v.ndim and v.shape[0] == 1 else v) for k, v in self._data.items()}
        self.has_batch_dim = False
        return self

    # ----------------------------------------------------------------- residual stream decompositions
    def accumulated_resid(self, layer: int | None = None, incl_mid: bool = False, apply_ln: bool = False,
                          pos_slice=None, mlp_input: bool = False, return_labels: bool = False):
        """The residual stream entering each layer up to ``layer``: ``[component, *batch_and_pos, D]``.

        ``layer`` None, -1 or ``n_layers``: every ``resid_pre`` plus the final ``resid_post`` (label
        "final_post"); else ``resid_pre`` of layers ``0..layer``. ``incl_mid``: also ``resid_mid`` of the layers
        before ``layer``; ``mlp_input``: also ``resid_mid`` of ``layer`` itself. ``apply_ln``: for the final layer
        the final norm is applied to each component with its own statistics (weight and bias included: the logit
        lens is ``stack @ model.W_U``); for an earlier layer it is scaled by that layer's cached norm scale
        (centred first for LayerNorm), see :meth:`apply_ln_to_stack`. Labels like ``"3_pre"``, ``"3_mid"``.
        """
        n = self._need_model("accumulated_resid").n_layers
        layer = n if layer is None or layer == -1 else layer
        parts, labels = [], []
        for l in range(layer + 1):
            if l == n:
                parts.append(self._need(("resid_post", n - 1), "accumulated_resid"))
                labels.append("final_post")
                continue
            parts.append(self._need(("resid_pre", l), "accumulated_resid"))
            labels.append(f"{l}_pre")
            if (incl_mid and l < layer) or (mlp_input and l == layer):
                parts.append(self._need(("resid_mid", l), "accumulated_resid"))
                labels.append(f"{l}_mid")
        stack = jnp.stack([_sliced(p, pos_slice, -2) for p in parts])
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice,
                                           has_batch_dim=self.has_batch_dim, recompute_ln=layer == n)
        return (stack, labels) if return_labels else stack

    def decompose_resid(self, layer: int | None = None, mlp_input: bool = False, mode: str = "all",
                        apply_ln: bool = False, pos_slice=None, incl_embeds: bool = True, return_labels: bool = False):
        """The residual stream entering ``layer`` split into what wrote it: ``embed``, ``pos_embed`` (learned
        positions), then ``{l}_attn_out`` and ``{l}_mlp_out`` of each layer before ``layer`` (None/-1: all layers),
        plus ``{layer}_attn_out`` with ``mlp_input``. ``mode`` "attn" or "mlp" keeps only those outputs. The
        components sum to ``resid_pre`` of ``layer`` (the final ``resid_post`` for ``n_layers``). ``apply_ln``
        scales them by the cached norm scale of that input (:meth:`apply_ln_to_stack`)."""
        model = self._need_model("decompose_resid")
        n = model.n_layers
        layer = n if layer is None or layer == -1 else layer
        if mode not in ("all", "attn", "mlp"):
            raise ValueError(f"mode must be 'all', 'attn' or 'mlp', got {mode!r}")
        parts, labels = [], []
        if incl_embeds:
            parts.append(self._need("hook_embed", "decompose_resid"))
            labels.append("embed")
            if model.cfg.positional_embedding_type == "standard":
                parts.append(self._need("hook_pos_embed", "decompose_resid"))
                labels.append("pos_embed")
        for l in range(layer):
            if mode != "mlp":
                parts.append(self._need(("attn_out", l), "decompose_resid"))
                labels.append(f"{l}_attn_out")
            if mode != "attn":
                parts.append(self._need(("mlp_out", l), "decompose_resid"))
                labels.append(f"{l}_mlp_out")
        if mlp_input and mode != "mlp":
            parts.append(self._need(("attn_out", layer), "decompose_resid"))
            labels.append(f"{layer}_attn_out")
        if not parts:
            raise ValueError("decompose_resid has no components to stack here (layer 0 without embeddings)")
        stack = jnp.stack([_sliced(p, pos_slice, -2) for p in parts])
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def stack_head_results(self, layer: int | None = -1, return_labels: bool = False, incl_remainder: bool = False,
                           pos_slice=None, apply_ln: bool = False):
        """Every head's output into the residual stream for the layers below ``layer`` (-1/None: all):
        ``[layer * head, *batch_and_pos, D]`` (layer-major, labels ``"L{l}H{h}"``), each ``z[..., h, :] @ W_O[l, h]``
        (without ``b_O``). Needs ``hook_z`` of those layers. ``incl_remainder`` appends ``resid_post`` of
        ``layer - 1`` minus their sum (label "remainder"). ``apply_ln`` as in :meth:`apply_ln_to_stack`."""
        model = self._need_model("stack_head_results")
        n = model.n_layers
        layer = n if layer is None or layer == -1 else layer
        W_O = model.W_O if layer else None  # [L H E D]
        parts, labels = [], []
        for l in range(layer):
            z = _sliced(self._need(("z", l), "stack_head_results"), pos_slice, -3)
            parts.append(jnp.einsum("...he,hed->...hd", z, W_O[l]))
            labels.extend(f"L{l}H{h}" for h in range(z.shape[-2]))
        if parts:
            stack = jnp.moveaxis(jnp.concatenate(parts, axis=-2), -2, 0)
            if incl_remainder:
                resid = _sliced(self._need(("resid_post", layer - 1), "stack_head_results"), pos_slice, -2)
                stack = jnp.concatenate([stack, (resid - stack.sum(0))[None]])
                labels.append("remainder")
        elif incl_remainder:
            stack = _sliced(self._need(("resid_post", layer - 1), "stack_head_results"), pos_slice, -2)[None]
            labels.append("remainder")
        else:
            like = _sliced(self._need("hook_embed", "stack_head_results"), pos_slice, -2)
            stack = jnp.zeros((0, *like.shape), like.dtype)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def apply_ln_to_stack(self, residual_stack: Float[Array, "component ... D"], layer: int | None = None,
                          mlp_input: bool = False, pos_slice=None, batch_slice=None, has_batch_dim: bool = True,
                          recompute_ln: bool = False) -> Float[Array, "component ... D"]:
        """Each component of a residual stack as the norm at the input of ``layer`` sees it: centred (LayerNorm
        only) and divided by that norm's cached scale for the same sequence and position (``ln1``, or ``ln2`` with
        ``mlp_input``; the final norm for ``layer`` None, -1 or ``n_layers``). The norm's weight and bias are not
        applied, as in TransformerLens. With ``recompute_ln`` and the final layer the final norm itself is applied
        to each component, with its own statistics, weight and bias.

        ``pos_slice`` is the slice already applied to the stack's positions (applied here to the cached scale);
        ``batch_slice`` is applied to the stack's batch axis (axis 1) and the scale. Result in at least float32.
        """
        model = self._need_model("apply_ln_to_stack")
        n = model.n_layers
        layer = n if layer is None or layer == -1 else layer
        stack = jnp.asarray(residual_stack)
        if has_batch_dim:
            stack = _sliced(stack, batch_slice, 1)
        if recompute_ln and layer == n:
            return _f32(model.ln_final(stack, lambda name, x: x, "ln_final"))
        stack = _f32(stack)
        if model.cfg.normalization_type in ("LN", "LNPre"):
            stack = stack - stack.mean(axis=-1, keepdims=True)
        key = "ln_final.hook_scale" if layer == n else f"blocks.{layer}.ln{2 if mlp_input else 1}.hook_scale"
        scale = _sliced(self._need(key, "apply_ln_to_stack"), pos_slice, -2)
        if batch_slice is not None and self.has_batch_dim:
            scale = _sliced(scale, batch_slice, 0)
        if tuple(stack.shape[1:-1]) != tuple(scale.shape[:-1]):
            raise ValueError(
                f"the stack's batch and position axes {tuple(stack.shape[1:-1])} do not match the cached scale's "
                f"{tuple(scale.shape[:-1])} ({key}); pass the pos_slice (and batch_slice) the stack was made with, "
                "e.g. logit_attrs(stack, token, pos_slice=-1) for a stack from accumulated_resid(pos_slice=-1)")
        return stack / _f32(scale)

    def logit_attrs(self, residual_stack: Float[Array, "component ... D"], tokens,
                    incorrect_tokens=None, pos_slice=None, batch_slice=None,
                    has_batch_dim: bool = True) -> Float[Array, "component ..."]:
        """How much each component of a residual stack adds to the logit of ``tokens`` (minus that of
        ``incorrect_tokens`` when given): the component scaled by the final norm's cached scale
        (:meth:`apply_ln_to_stack`), dotted with the token's unembedding direction times the final norm's weight.

        The norm's weight is part of the direction, so attributions are exact whether or not the norm weights were
        folded (TransformerLens gives these numbers on a model loaded with ``fold_ln``); the final norm's bias and
        ``b_U`` are not components of any stack, and a logit soft-cap is not applied. ``tokens``: a string (one
        token), an id, or ids ``[batch]`` / ``[batch, pos]`` matching the stack's batch (and position) axes.
        """
        model = self._need_model("logit_attrs")

        def direction(t):
            if isinstance(t, str):
                t = model.to_single_token(t)
            t = jnp.asarray(t)
            t = t.reshape(()) if t.size == 1 else t
            return t, _f32(model.tokens_to_residual_directions(t)) * _f32(model.ln_final.weight)

        tokens, directions = direction(tokens)
        if incorrect_tokens is not None:
            incorrect_tokens, wrong = direction(incorrect_tokens)
            if tokens.shape != incorrect_tokens.shape:
                raise ValueError(f"tokens and incorrect_tokens must have the same shape, got {tokens.shape} and "
                                 f"{incorrect_tokens.shape}")
            directions = directions - wrong
        scaled = self.apply_ln_to_stack(residual_stack, -1, pos_slice=pos_slice, batch_slice=batch_slice,
                                        has_batch_dim=has_batch_dim)
        return (scaled * directions).sum(-1)

    # ----------------------------------------------------------------- pytree
    def tree_flatten(self):
        _resolve_all(self._data)
        return tuple(self._data.values()), (tuple(self._data.keys()), self.has_batch_dim)

    @classmethod
    def tree_unflatten(cls, aux, values):
        keys, has_batch_dim = aux
        return cls(dict(zip(keys, values)), has_batch_dim=has_batch_dim)
