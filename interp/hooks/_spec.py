"""Capture specs and interventions, and the runner the forward pass calls at every hook point.

An *edit* is a pure function ``fn(activation, hook_name, *params) -> activation``. The function and the
hook name are static (part of the compiled program); ``params`` are traced, so running the same edit
with new values reuses the compiled function. Capture is a static set of names.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from interp.hooks._names import act_name, layer_of, suggest

NameSpec = str | tuple | Callable[[str], bool]


def any_length(fn: Callable) -> Callable:
    """Mark an edit function as safe to run on a prompt padded to its length bucket, and return it.

    By default a run whose edits include a function of yours runs at the prompt's exact length (so
    ``x[:, -1]`` means the last token), compiling once per length. A function marked ``any_length`` promises
    that it acts position by position (or on positions it is given) and does not care what follows the
    prompt: it then sees the activation padded at the end to the bucket length, and its array parameters are
    broadcast from the right as NumPy does, those with the prompt's length along the activation's position
    axis padded with zeros to match. The edits in :mod:`interp.hooks.edits` that meet this are marked.
    """
    fn.__interp_any_length__ = True
    return fn


class _Same:
    """Compares by identity: a key part for objects whose equality is not a safe test of sameness (arrays)."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __eq__(self, other):
        return isinstance(other, _Same) and other.obj is self.obj

    def __hash__(self):
        return id(self.obj)


_PLAIN = (bool, int, float, complex, str, bytes, type(None))


def _value_key(v, depth: int):
    if type(v) in _PLAIN:
        return (type(v), v)
    if type(v) in (tuple, frozenset) and depth < 4:
        return (type(v), tuple(_value_key(x, depth + 1) for x in v))
    if callable(v) and depth < 4:
        return _function_key(v, depth + 1)
    return _Same(v)


def _function_key(fn, depth: int = 0):
    """What decides what ``fn`` computes when traced: its code, defaults, closure values and globals.

    Two functions with equal keys trace to the same program, so the compiled one is reused: a lambda or
    closure created anew on every call (same source, same captured values) does not recompile. Captured
    numbers and strings compare by value; anything else captured (arrays, modules, objects) compares by
    identity, because its value is baked into the program. Globals are read at trace time, exactly as with
    ``jax.jit``: rebinding a global a function reads does not recompile it.
    """
    if isinstance(fn, functools.partial):
        return ("partial", _function_key(fn.func, depth + 1), _value_key(fn.args, depth),
                tuple(sorted((k, _value_key(v, depth)) for k, v in fn.keywords.items())))
    if isinstance(fn, types.MethodType):
        return ("method", _function_key(fn.__func__, depth + 1), _Same(fn.__self__))
    if not isinstance(fn, types.FunctionType):
        return _Same(fn)
    closure = tuple(_value_key(c.cell_contents, depth) if _cell_full(c) else None for c in fn.__closure__ or ())
    kw = tuple(sorted((k, _value_key(v, depth)) for k, v in (fn.__kwdefaults__ or {}).items()))
    return ("function", fn.__code__, _Same(fn.__globals__), _value_key(fn.__defaults__ or (), depth), kw, closure,
            getattr(fn, "__interp_any_length__", False))


def _cell_full(cell) -> bool:
    try:
        _ = cell.cell_contents
    except ValueError:  # a cell not yet bound
        return False
    return True


class EditFn:
    """An edit function as the compiled program sees it: calls ``fn``; equal to another ``EditFn`` when both
    compute the same thing by the rule of :func:`_function_key`, so the compiled program is reused."""

    __slots__ = ("_key", "fn")

    def __init__(self, fn: Callable):
        self.fn = fn
        self._key = _function_key(fn)

    def __call__(self, *args):
        return self.fn(*args)

    def __eq__(self, other):
        return isinstance(other, EditFn) and other._key == self._key

    def __hash__(self):
        return hash(self._key)

    @property
    def any_length(self) -> bool:
        f = self.fn.func if isinstance(self.fn, functools.partial) else self.fn
        return bool(getattr(f, "__interp_any_length__", False))

    @property
    def __name__(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


class Edit(NamedTuple):
    """One intervention: at ``name`` (a hook name, short key or predicate) apply ``fn(x, name, *params)``."""

    name: NameSpec
    fn: Callable
    params: tuple = ()


def _as_edit(e) -> Edit:
    if isinstance(e, Edit):
        return e
    if isinstance(e, tuple) and len(e) >= 2 and callable(e[1]):
        return Edit(e[0], e[1], tuple(e[2:]))
    raise TypeError(
        f"an edit must be (name, fn, *params) or interp.hooks.Edit(name, fn, params), got {e!r}"
    )


def _to_array(p):
    """Python scalars and numpy arrays become traced arrays; weak types are made strong, so that
    ``2.0``, ``jnp.float32(2)`` and ``jnp.full(n, 0.5)`` all reuse one compiled function."""
    if isinstance(p, (np.ndarray, np.generic)):  # put on the device as is: jnp.asarray compiles for each new shape
        return jax.device_put(np.asarray(p))
    if isinstance(p, (bool, int, float, complex)):  # a strong dtype, converted on the host (no compile)
        return jax.device_put(np.asarray(p))
    if isinstance(p, jax.Array) and getattr(p, "weak_type", False):
        if isinstance(p, jax.core.Tracer):
            return jnp.asarray(p, dtype=p.dtype)
        return jax.device_put(np.asarray(p))  # made strong on the host: no per-shape conversion program
    return p


@dataclasses.dataclass(frozen=True)
class Hooks:
    """What a forward pass captures and how it edits activations.

    ``capture``: hook names, TransformerLens short keys (``("resid_post", 5)``) or predicates
    ``name -> bool``; ``None`` captures nothing. ``edits``: a sequence of ``(name, fn, *params)``.
    """

    capture: Sequence[NameSpec] | NameSpec | None = ()
    edits: Sequence[Any] = ()
    splices: Sequence[Any] = ()

    def resolve(self, vocabulary: Sequence[str]) -> Resolved:
        """Bind names to the model's hook vocabulary; fail before any compute on unknown names."""
        from interp.hooks._splice import extend_vocabulary

        vocabulary = extend_vocabulary(list(vocabulary), self.splices)
        vocab_set = set(vocabulary)
        capture = _select(self.capture, vocabulary, vocab_set)
        static, params = [], []
        for e in map(_as_edit, self.edits):
            names = _select([e.name], vocabulary, vocab_set)
            if not names:  # only a predicate can select nothing; a name that is not a hook point fails in _select
                raise ValueError(
                    f"the predicate {getattr(e.name, '__qualname__', e.name)!r} of edit "
                    f"{getattr(e.fn, '__name__', e.fn)!r} matches none of the {len(vocabulary)} hook points, so the "
                    f"edit would change nothing; test it against model.hook_names (e.g. {vocabulary[-1]!r})"
                )
            static.extend((name, EditFn(e.fn)) for name in names)
            params.extend(jax.tree.map(_to_array, tuple(e.params)) for _ in names)
        order = {n: i for i, n in enumerate(vocabulary)}
        capture = tuple(sorted(set(capture), key=order.__getitem__))
        return Resolved(capture, tuple(static), tuple(params), tuple(self.splices))


def _is_short_key(s) -> bool:
    return isinstance(s, tuple) and len(s) in (2, 3) and isinstance(s[0], str) and isinstance(s[1], int)


def _select(spec, vocabulary: Sequence[str], vocab_set: set[str]) -> list[str]:
    if spec is None:
        return []
    if isinstance(spec, str) or callable(spec) or _is_short_key(spec):
        spec = [spec]
    out: list[str] = []
    for item in spec:
        if callable(item):
            out.extend(n for n in vocabulary if item(n))
            continue
        try:
            name = act_name(*item) if isinstance(item, tuple) else act_name(item)
        except KeyError as e:
            raise ValueError(e.args[0]) from None
        if name not in vocab_set:
            raise ValueError(
                f"unknown hook '{name}'{suggest(name, vocabulary)} "
                f"(model.hook_names lists all {len(vocabulary)} hook points)"
            )
        out.append(name)
    return out


@jax.tree_util.register_pytree_node_class
class Resolved:
    """Hooks bound to concrete names: static part (names, functions) + traced parameters."""

    def __init__(self, capture: tuple[str, ...], edits: tuple[tuple[str, Callable], ...], params: tuple,
                 splices: tuple = ()):
        self.capture = capture
        self.edits = edits
        self.params = params
        self.splices = splices

    def tree_flatten(self):
        return (self.params, self.splices), (self.capture, self.edits)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(aux[0], aux[1], children[0], children[1])

    def deepest_layer(self) -> int | None:
        """Highest block index any captured or edited name touches; None if a name lies past the blocks."""
        deepest = -1
        spliced = [s.hook_out for s in self.splices]
        for name in list(self.capture) + [n for n, _ in self.edits] + spliced:
            layer = layer_of(name)
            if layer is None and not name.startswith("hook_"):
                return None  # e.g. ln_final: needs every block
            deepest = max(deepest, -1 if layer is None else layer)
        return deepest


def _mixed():
    """A dictionary in float32 spliced into a bfloat16 model reads the stream and writes back through JAX's standard
    promotion (exact upcasts inside the matrix products), also when the user asked for strict promotion."""
    return jax.numpy_dtype_promotion("standard")


def _join_heads(x, d):
    """A per-head activation ``[B T H E]`` (``attn.hook_z``) as ``[B T H*E]`` for a dictionary that reads the heads
    joined (its ``d_in`` is ``H*E``), as attention SAEs are trained; anything else as it is."""
    d_in = getattr(getattr(d, "cfg", None), "d_in", None)
    if x.ndim == 4 and d_in == x.shape[-2] * x.shape[-1] and d_in != x.shape[-1]:
        return x.reshape(*x.shape[:-2], d_in)
    return x


class Derived:
    """A captured activation the program does not write out: it equals ``fn(*inputs)``, each input a captured
    activation or another ``Derived``, and a cache computes it when the entry is first read. ``fn`` is the function
    the forward pass used, compiled alone (see :class:`HookRunner` for how exact that is)."""

    __slots__ = ("fn", "inputs", "shape", "dtype")

    def __init__(self, fn: Callable, inputs: tuple, like):
        self.fn, self.inputs = fn, tuple(inputs)
        self.shape, self.dtype = tuple(like.shape), like.dtype


def derived(hk, name: str, x, fn: Callable, *inputs):
    """``hk(name, x)`` at a hook point whose activation ``x`` is ``fn(*inputs)`` (``fn`` jitted, as the forward
    computed ``x``). A runner that can keep such entries unwritten (:class:`HookRunner` with ``derive=True``) records
    how to compute it instead of storing ``x``; any other runner is simply called."""
    derive = getattr(hk, "derive", None)
    return hk(name, x) if derive is None else derive(name, x, fn, inputs)


class HookRunner:
    """Called by the forward pass at every hook point: applies edits, then records captures.

    With ``derive=True`` (the compiled runs of :meth:`interp.models.Model.run`), an activation the forward computes
    from other captured activations by an elementwise step (the attention pattern from its scores, a residual
    stream as the sum of the one before it and a block's output) is not written out when it has no edit or
    splice, and its inputs were not returned by an edit: its cache entry is a :class:`Derived`, computed from the
    captured inputs when read. Capturing every hook point then writes fewer bytes. The residual sums read are bit
    for bit the forward's. The pattern is the softmax of the stored scores: in bfloat16 bit for bit the forward's;
    in float32 XLA may recompute the scores inside the forward's fused softmax with other rounding, so a few
    entries can differ from the forward's in the last place (tests allow 4 units)."""

    def __init__(self, resolved: Resolved | None = None, derive: bool = False):
        self._derive = derive
        self._held: dict[int, Any] = {}  # id of a captured value -> its cache entry (the value, or a Derived)
        self._alive: list = []
        self._edited: set[int] = set()  # ids of values an edit returned
        self.capture = frozenset(resolved.capture) if resolved else frozenset()
        self.edits: dict[str, list] = {}
        if resolved:
            for (name, fn), params in zip(resolved.edits, resolved.params):
                self.edits.setdefault(name, []).append((fn, params))
        self.cache: dict[str, Any] = {}
        self.splice_in: dict[str, list] = {}
        self.splice_out: dict[str, list] = {}
        for s in (resolved.splices if resolved else ()):
            self.splice_in.setdefault(s.hook_in, []).append(s)
            self.splice_out.setdefault(s.hook_out, []).append(s)
        self._latents: dict[int, tuple] = {}
        self._groups: dict[str, dict[int, tuple]] = {}  # group -> member layer -> (clean, edited) latents

    def __call__(self, name: str, x):
        x = self._edit_and_capture(name, x)
        for s in self.splice_in.get(name, ()):
            d = s.dictionary
            x_in = _join_heads(x, d)
            with _mixed():
                clean = d.encode(x_in)
            self._latents[id(s)] = (clean, self(f"{s.hook_in}.sae.hook_latents", clean), x_in)
            if s.group is not None:
                self._groups.setdefault(s.group, {})[d.layer] = self._latents[id(s)][:2]
        for s in self.splice_out.get(name, ()):
            clean, z, x_in = self._latents.pop(id(s))
            d = s.dictionary
            if s.group is not None:
                members = self._groups[s.group]
                decode = d.decode_group
                z, clean = ({l: m[i] for l, m in members.items()} for i in (1, 0))
            else:
                decode = d.decode
            with _mixed():
                skip = d.skip_term(x_in) if hasattr(d, "skip_term") else 0.0
                out = (decode(z) + skip).astype(x.dtype).reshape(x.shape)
                out_clean = (decode(clean) + skip).astype(x.dtype).reshape(x.shape) if s.error_term else None
            recons = self(f"{s.hook_out}.sae.hook_recons", out)
            if s.error_term:
                error = self(f"{s.hook_out}.sae.hook_error", x - out_clean)
                new = recons + error
            else:
                new = recons
            if s.skip_positions:
                new = new.at[:, : s.skip_positions].set(x[:, : s.skip_positions])
            x = new
        return x

    def _edit_and_capture(self, name: str, x):
        for fn, params in self.edits.get(name, ()):
            y = fn(x, name, *params)
            if getattr(y, "shape", None) != x.shape:
                raise ValueError(
                    f"edit {getattr(fn, '__name__', fn)!r} at '{name}' returned shape "
                    f"{getattr(y, 'shape', type(y))}, expected {x.shape}; an edit must keep the activation's shape"
                )
            x = y.astype(x.dtype)
        if name in self.edits and self._derive:
            self._edited.add(id(x))
            self._alive.append(x)
        if name in self.capture:
            self.cache[name] = self._held.setdefault(id(x), x)
        return x

    def derive(self, name: str, x, fn: Callable, inputs: tuple):
        """As ``self(name, x)``, recording ``x = fn(*inputs)`` (a :class:`Derived`) instead of ``x`` itself when this
        runner derives, ``name`` is captured with no edit or splice, and every input is itself captured and was not
        returned by an edit."""
        if (not self._derive or name not in self.capture or name in self.edits or name in self.splice_in
                or name in self.splice_out or not all(id(i) in self._held for i in inputs)
                or any(id(i) in self._edited for i in inputs)):
            # an edited input stays written out with its result: XLA may fuse the edit's arithmetic into the step
            # that follows it (a multiply-add contracted), so the step redone on the stored input could differ
            return self(name, x)
        self.cache[name] = self._held[id(x)] = Derived(fn, tuple(self._held[id(i)] for i in inputs), x)
        self._alive.append(x)  # its id stays its own while this runner can meet it again
        return x


class ShapeRecorder:
    """A runner that records every hook point's name and shape (used with ``jax.eval_shape``)."""

    def __init__(self):
        self.shapes: dict[str, tuple[int, ...]] = {}

    def __call__(self, name: str, x):
        self.shapes[name] = tuple(x.shape)
        return x


NOOP = HookRunner()  # runs the blocks with no hooks (a block called on its own, outside a model run)
