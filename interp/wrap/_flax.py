"""Flax backends: NNX modules through hooked subclasses of their submodules' classes, Linen modules through
``flax.linen.intercept_methods``. Neither edits the user's code or mutates the user's module.

NNX's own ``nnx.capture(..., method_outputs=...)`` records outputs but cannot edit them, and it patches the user's
classes for the duration of the call. Python looks ``__call__`` up on the class, so instead the wrapped copy's
submodules get a class of their own: a subclass of their class, made once per (class, path), whose ``__call__``
calls the original through :func:`interp.wrap._core.call_point`. The copy is split (``nnx.split``) into a graph
definition, which records those classes, and its state; every run merges them again (``nnx.merge``) inside the
traced function, so the hooked classes come back with the arrays and the user's module is never touched.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

from interp.wrap._core import call_point, check_names

_HOOKED: dict[tuple, type] = {}  # (class, name, path) -> hooked subclass: equal graph definitions share programs


def _defines_call(cls: type) -> bool:
    return any("__call__" in vars(c) for c in cls.__mro__ if c is not object)


def _hooked_call(self, *args, **kwargs):
    cls = type(self)
    name, path = cls.__interp_hook__
    return call_point(name, path, super(cls, self).__call__, args, kwargs)


def _hooked_class(cls: type, name: str, path: tuple) -> type:
    key = (cls, name, path)
    if key not in _HOOKED:
        body = {"__call__": _hooked_call, "__interp_hook__": (name, path), "__module__": cls.__module__,
                "__qualname__": cls.__qualname__}
        # a subclass keeps its parent's pytree mode only when told (NNX's default may differ from the parent's)
        pytree = getattr(cls, "_pytree__is_pytree", None)
        kwds = {} if pytree is None else {"pytree": pytree}
        _HOOKED[key] = types.new_class(cls.__name__, (cls,), kwds, lambda ns: ns.update(body))
    return _HOOKED[key]


@dataclasses.dataclass(frozen=True)
class NNXBackend:
    graphdef: Any
    type_name: str
    library: str = "Flax NNX"

    def apply(self, state, args, kwargs):
        from flax import nnx

        return nnx.merge(self.graphdef, state)(*args, **kwargs)


def wrap_nnx(module) -> tuple[NNXBackend, Any]:
    """The backend and state of a hooked copy of NNX ``module`` (the module itself is left as it is)."""
    from flax import nnx

    copy = nnx.clone(module)
    found = [(p, m) for p, m in nnx.iter_modules(copy) if p and _defines_call(type(m))]
    check_names([p for p, _ in found], "Flax NNX", module)
    for path, m in found:
        # the copy is ours: swapping its class leaves the user's objects and classes untouched
        object.__setattr__(m, "__class__", _hooked_class(type(m), ".".join(map(str, path)), tuple(path)))
    graphdef, state = nnx.split(copy)
    return NNXBackend(graphdef, type(module).__name__), state


@dataclasses.dataclass(frozen=True)
class LinenBackend:
    module: Any
    type_name: str
    library: str = "Flax Linen"

    def apply(self, variables, args, kwargs):
        import flax.linen as nn

        def interceptor(next_fun, args, kwargs, context):
            path = tuple(context.module.path)
            if context.method_name != "__call__" or not path:
                return next_fun(*args, **kwargs)
            return call_point(".".join(path), path, next_fun, args, kwargs)

        with nn.intercept_methods(interceptor):
            return self.module.apply(variables, *args, **kwargs)


def wrap_linen(module, variables) -> tuple[LinenBackend, Any]:
    if variables is None:
        raise TypeError(
            f"a Flax Linen module holds no parameters; pass its variables too: interp.wrap(module, variables) with "
            f"variables = module.init(key, x) (got {type(module).__name__} alone)"
        )
    if module.scope is not None:
        raise TypeError(f"pass the unbound Linen module ({type(module).__name__}) and its variables, not a module "
                        "bound with .bind(); module.unbind() returns both")
    return LinenBackend(module, type(module).__name__), variables
