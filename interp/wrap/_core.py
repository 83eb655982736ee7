"""The hooked model every wrapped module becomes, and the hook point its submodules call.

A *backend* (one per library: ``_flax.py``, ``_equinox.py``) knows how to run the user's module from its
parameters (``apply(params, args, kwargs)``) such that every submodule's ``__call__`` goes through
:func:`call_point`. Outside a run of a :class:`WrappedModel` no tracker is active and :func:`call_point` only calls
the submodule, so the hooked copy computes exactly what the user's module computes.

Hook points are named by module path (``layers.0.mlp``); a module called more than once per forward pass gets
``name@1``, ``name@2``, ... for its later calls. With ``inputs=True`` each submodule's first positional argument
is a hook point too, ``{path}.input``. Outputs (and inputs) that are not a single array are not hook points.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from interp.hooks import Cache, Edit, HookRunner, Hooks, ShapeRecorder, suggest
from interp.hooks.edits import replace
from interp.results import Result, Summary, top_entries

# attributes of interp.Model that tools built for transformer language models read (tokens, blocks, heads,
# the unembedding); a wrapped module has none of them, and reading one explains why instead of a bare AttributeError
_TRANSFORMER_ONLY = frozenset({
    "blocks", "n_layers", "n_heads", "d_model", "d_vocab", "d_mlp", "n_ctx", "cfg", "config", "tokenizer", "embed",
    "unembed", "ln_final", "W_E", "W_U", "W_Q", "W_K", "W_V", "W_O", "b_U", "unembed_logits", "check_inputs",
    "to_tokens", "to_string", "to_single_token", "tokens_to_residual_directions", "forward", "position_axes",
    "generate", "init_cache", "bucket_length", "top_next", "next_token",
})


class _Tracker:
    """Names the hook points of one traced forward pass and hands arrays to the runner."""

    def __init__(self, runner: Callable, inputs: bool):
        self.runner = runner
        self.inputs = inputs
        self.owner: dict[str, tuple] = {}
        self.calls: Counter = Counter()

    def point(self, name: str, key: tuple, x):
        if not isinstance(x, jax.Array):
            return x
        owner = self.owner.setdefault(name, key)
        if owner != key:
            raise ValueError(
                f"two submodules have the hook name '{name}' (paths {owner} and {key}); rename one of them so that "
                "their paths differ when joined with '.'"
            )
        n = self.calls[name]
        self.calls[name] += 1
        return self.runner(name if n == 0 else f"{name}@{n}", x)


_ACTIVE: contextvars.ContextVar[_Tracker | None] = contextvars.ContextVar("interp_wrap_tracker", default=None)


def call_point(name: str, key: tuple, fn: Callable, args: tuple, kwargs: dict):
    """Call a submodule (``fn(*args, **kwargs)``) as hook point ``name``: edits apply to its output (and, with
    ``inputs=True``, to its first positional argument) and captures record them; outside a run, just call it."""
    tracker = _ACTIVE.get()
    if tracker is None:
        return fn(*args, **kwargs)
    if tracker.inputs and args:
        args = (tracker.point(f"{name}.input", key + ("input",), args[0]), *args[1:])
    return tracker.point(name, key, fn(*args, **kwargs))


def check_names(paths: Sequence[tuple], library: str, module) -> None:
    """Refuse a module without submodules, or whose submodule paths collide once joined with '.'."""
    if not paths:
        raise ValueError(
            f"the {library} module {type(module).__name__} has no submodules, so it has no hook points (a hook point "
            "is a submodule's output); wrap a module built from submodules, or the module that contains this one"
        )
    seen: dict[str, tuple] = {}
    for p in paths:
        name = ".".join(map(str, p))
        if name in seen:
            raise ValueError(
                f"the submodules at {seen[name]} and {p} would both be hook point '{name}'; rename one so that "
                "their paths differ when joined with '.'"
            )
        seen[name] = p


@jax.tree_util.register_pytree_node_class
class WrappedCache(Cache):
    """Captured activations of a wrapped module by hook name (module path), in execution order."""

    def _key(self, key) -> str:
        if isinstance(key, str):
            return key
        raise KeyError(
            f"a wrapped module's activations are looked up by module path such as 'layers.0.mlp', not {key!r} "
            "(TransformerLens short keys name transformer hook points)"
        )


def _signature(tree) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    sig = []
    for leaf in leaves:
        if isinstance(leaf, (jax.Array, np.ndarray, jax.ShapeDtypeStruct)):
            sig.append((tuple(leaf.shape), str(leaf.dtype)))
        else:
            try:
                hash(leaf)
                sig.append(leaf)
            except TypeError:
                sig.append(id(leaf))
    return treedef, tuple(sig)


_VOCABULARY: dict[tuple, dict[str, tuple[int, ...]]] = {}


class WrappedModel(eqx.Module):
    """A Flax NNX, Flax Linen or equinox module with a hook point at every submodule (see :func:`interp.wrap`).

    ``params``: the module's arrays (NNX state, Linen variables, or the equinox module with its submodules wrapped);
    the model is a pytree, so ``jax.grad`` / ``jax.jit`` of a function of it work as for :class:`interp.Model`.
    Positional and keyword arguments of the methods below are the module's own inputs.
    """

    params: Any
    backend: Any = eqx.field(static=True)
    inputs: bool = eqx.field(static=True)
    example: Any = eqx.field(static=True)

    def __repr__(self) -> str:
        return (f"WrappedModel({self.backend.library} {self.backend.type_name}"
                f"{', inputs hooked' if self.inputs else ''})")

    def __getattr__(self, attr: str):
        if attr in _TRANSFORMER_ONLY:
            raise AttributeError(
                f"'{attr}': this is a wrapped {self.backend.library} module ({self.backend.type_name}), not a "
                "transformer language model, so tools that read tokens, blocks, heads or the unembedding (logit "
                "lens, direct logit attribution, attribution graphs, head scores, interp.circuits patching sweeps) "
                "do not apply to it. On a wrapped module use run_with_cache, run_with_hooks, patch, activations "
                "(for interp.sae.train with an ArrayActivationStore) and interp.probes.fit"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {attr!r}")

    # ----------------------------------------------------------------- forward passes
    def __call__(self, *args, **kwargs):
        """The module's output, computed as the module computes it (no hooks)."""
        return self.backend.apply(self.params, args, kwargs)

    def _call(self, runner: Callable, args: tuple, kwargs: dict):
        token = _ACTIVE.set(_Tracker(runner, self.inputs))
        try:
            return self.backend.apply(self.params, args, kwargs)
        finally:
            _ACTIVE.reset(token)

    def hook_shapes(self, *args, **kwargs) -> dict[str, tuple[int, ...]]:
        """Every hook point with its shape for these inputs (default: the ``example`` given to ``wrap``), in the
        order the forward pass reaches them. Found by tracing shapes only (``jax.eval_shape``), cached."""
        if not args and not kwargs:
            if self.example is None:
                raise ValueError("the hook points depend on the input: pass one, wrapped.hook_shapes(x), or give "
                                 "interp.wrap(module, example=x)")
            args = self.example
        key = (self.backend, self.inputs, _signature(self.params), _signature((args, kwargs)))
        if key not in _VOCABULARY:
            rec = ShapeRecorder()
            eqx.filter_eval_shape(lambda m, a, k: m._call(rec, a, k), self, args, kwargs)
            if not rec.shapes:
                raise ValueError(
                    f"the {self.backend.library} module {self.backend.type_name} called no submodule that returns an "
                    "array, so it has no hook points (a hook point is a submodule's output); wrap a module built "
                    "from submodules"
                )
            _VOCABULARY[key] = dict(rec.shapes)
        return dict(_VOCABULARY[key])

    @property
    def hook_names(self) -> list[str]:
        """All hook point names for the ``example`` input given to ``wrap``, in execution order."""
        return list(self.hook_shapes())

    def run(self, *args, hooks: Hooks | None = None, **kwargs) -> tuple[Any, WrappedCache]:
        """Compiled forward with ``hooks`` (a :class:`interp.Hooks` whose names are hook names or predicates):
        ``(output, cache)``. New edit values reuse the compiled program."""
        hooks = hooks or Hooks()
        vocabulary = list(self.hook_shapes(*args, **kwargs))
        capture = frozenset(_select(hooks.capture, vocabulary))
        edits = []
        for e in hooks.edits:
            e = _as_edit(e)
            chosen = frozenset(_select(e.name, vocabulary))
            if not chosen:
                raise ValueError(f"the predicate of edit {getattr(e.fn, '__name__', e.fn)!r} matches none of the "
                                 f"{len(vocabulary)} hook points; test it against wrapped.hook_names")
            edits.append(Edit(functools.partial(_member, chosen), e.fn, tuple(e.params)))
        resolved = Hooks(capture=functools.partial(_member, capture), edits=edits).resolve(vocabulary)
        out, cache = _run(self, args, kwargs, resolved)
        return out, WrappedCache(dict(zip(resolved.capture, cache)), model=self)

    def run_with_cache(self, *args, names=None, edits: Sequence = (), **kwargs) -> tuple[Any, WrappedCache]:
        """``(output, cache)``: ``names`` are hook names, a predicate ``name -> bool`` or None (every hook point);
        ``edits`` ``(name, fn, *params)`` apply before capture."""
        return self.run(*args, hooks=Hooks(capture=(lambda n: True) if names is None else names, edits=edits),
                        **kwargs)

    def run_with_hooks(self, *args, edits: Sequence = (), **kwargs):
        """The output with ``edits``: a sequence of ``(name, fn, *params)`` where ``fn(activation, name, *params)``
        is pure and ``params`` are traced (new values reuse the compiled program; gradients flow through them)."""
        out, _ = self.run(*args, hooks=Hooks(capture=None, edits=edits), **kwargs)
        return out

    # ----------------------------------------------------------------- tools on top
    def activations(self, name: str, *args, **kwargs) -> jax.Array:
        """The activation at hook ``name`` for these inputs as rows ``[N, d]`` (every axis but the last flattened):
        what :class:`interp.sae.ArrayActivationStore` and :func:`interp.probes.fit` take."""
        _, cache = self.run_with_cache(*args, names=[name], **kwargs)
        a = cache[name]
        return a.reshape(-1, a.shape[-1])

    def patch(self, base, source, metric: Callable[[Any], jax.Array], names=None, *, axis: int | None = None,
              **kwargs) -> PatchSweep:
        """Activation patching: run ``base`` with one hook point's activation taken from the run on ``source`` and
        record ``metric(output)``, for each hook point in ``names`` (default: all). With ``axis``, patch one index
        along that axis of the activation at a time (e.g. ``axis=1`` for positions of a ``[B T D]`` activation).

        ``base``/``source``: the module's input (a tuple for several positional inputs). Each hook point compiles
        once; its indices and values reuse that program.
        """
        base, source = (a if isinstance(a, tuple) else (a,) for a in (base, source))
        vocabulary = list(self.hook_shapes(*base, **kwargs))
        chosen = _select(vocabulary if names is None else names, vocabulary)
        source_out, cache = self.run_with_cache(*source, names=chosen, **kwargs)
        base_value = float(metric(self.run_with_hooks(*base, **kwargs)))
        rows = []
        for name in chosen:
            value = cache[name]
            if axis is None:
                rows.append([float(metric(self.run_with_hooks(*base, edits=[(name, replace, value)], **kwargs)))])
                continue
            if not -value.ndim <= axis < value.ndim:
                raise ValueError(f"axis {axis} is out of range for '{name}' of shape {tuple(value.shape)}")
            fn = functools.partial(_replace_at, axis=axis % value.ndim)
            rows.append([float(metric(self.run_with_hooks(*base, edits=[(name, fn, value, np.int32(i))], **kwargs)))
                         for i in range(value.shape[axis])])
        width = max(len(r) for r in rows)
        values = np.full((len(rows), width), np.nan)
        for i, r in enumerate(rows):
            values[i, : len(r)] = r
        if axis is None:
            values = values[:, 0]
        return PatchSweep(values, tuple(chosen), axis, base_value, float(metric(source_out)))


def _member(names: frozenset, name: str) -> bool:
    return name in names


def _replace_at(x, name, value, index, *, axis: int):
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    where = (jnp.arange(x.shape[axis]) == index).reshape(shape)
    return jnp.where(where, value, x)


def _as_edit(e) -> Edit:
    if isinstance(e, Edit):
        return e
    if isinstance(e, tuple) and len(e) >= 2 and callable(e[1]):
        return Edit(e[0], e[1], tuple(e[2:]))
    raise TypeError(f"an edit must be (name, fn, *params) or interp.hooks.Edit(name, fn, params), got {e!r}")


def _select(spec, vocabulary: list[str]) -> list[str]:
    if spec is None:
        return []
    if isinstance(spec, str) or callable(spec):
        spec = [spec]
    out = []
    for item in spec:
        if callable(item):
            out.extend(n for n in vocabulary if item(n))
        elif isinstance(item, str):
            if item not in vocabulary:
                raise ValueError(f"unknown hook '{item}'{suggest(item, vocabulary)} (wrapped.hook_names lists all "
                                 f"{len(vocabulary)} hook points)")
            out.append(item)
        else:
            raise TypeError(f"a wrapped module's hook points are named by module path such as {vocabulary[0]!r}; "
                            f"got {item!r}")
    return out


@eqx.filter_jit
def _run(model: WrappedModel, args, kwargs, resolved):
    runner = HookRunner(resolved)
    out = model._call(runner, args, kwargs)
    return out, [runner.cache[n] for n in resolved.capture]  # a list: a dict would come back sorted by name


@dataclasses.dataclass(frozen=True)
class PatchSweep(Result):
    """An activation-patching sweep over hook points of a wrapped module: ``values[i]`` (``values[i, j]`` with
    ``axis``: index ``j`` along it) is the metric of the base run with hook ``names[i]`` patched from the source run.
    ``base``/``source`` are the metrics of the unpatched runs; ``normalized()`` maps base to 0 and source to 1."""

    values: np.ndarray
    names: tuple[str, ...]
    axis: int | None
    base: float
    source: float

    @property
    def effect(self) -> np.ndarray:
        """Change of the metric caused by each patch (``values - base``)."""
        return self.values - self.base

    def normalized(self) -> np.ndarray:
        """The values on a scale where the base run is 0 and the source run is 1."""
        return (self.values - self.base) / (self.source - self.base)

    def _summary(self) -> Summary:
        labels = [self.names] if self.axis is None else [self.names, tuple(map(str, range(self.values.shape[1])))]
        axes = ("hook",) if self.axis is None else ("hook", f"index on axis {self.axis}")
        return Summary("activation patching of a wrapped module", dict(zip(axes, self.values.shape)),
                       {"base": self.base, "source": self.source},
                       top_entries(self.effect, labels, axes, k=10), "largest effects (patched - base)")
