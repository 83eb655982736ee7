"""The equinox backend: a copy of the module with every submodule replaced (``eqx.tree_at``) by a thin module that
calls it as a hook point. The user's module is a pytree and is not changed; the copy is what the wrapper runs."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax

from interp.wrap._core import call_point, check_names


class HookedSubmodule(eqx.Module):
    """A submodule as a hook point: calling it calls ``inner`` through the hook; other attributes and methods are
    ``inner``'s (a parent that reads a submodule's weights, as tied embeddings do, still finds them)."""

    inner: eqx.Module
    name: str = eqx.field(static=True)
    path: tuple = eqx.field(static=True)

    def __call__(self, *args, **kwargs):
        return call_point(self.name, self.path, self.inner, args, kwargs)

    def __getattr__(self, attr: str):
        if attr in ("inner", "name", "path") or attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self.inner, attr)


def _key_name(k) -> str | int:
    if isinstance(k, jax.tree_util.GetAttrKey):
        return k.name
    if isinstance(k, jax.tree_util.SequenceKey):
        return k.idx
    if isinstance(k, jax.tree_util.DictKey):
        return k.key
    raise TypeError(f"unexpected pytree key {k!r}")


def _child(node, k):
    if isinstance(k, jax.tree_util.GetAttrKey):
        return getattr(node, k.name)
    if isinstance(k, jax.tree_util.SequenceKey):
        return node[k.idx]
    return node[k.key]


def _submodules(node, keys: tuple, out: list) -> None:
    """Append ``(key path, submodule)`` for every module strictly below ``node``, parents before children."""
    is_submodule = lambda c: c is not node and isinstance(c, eqx.Module)
    leaves, _ = jax.tree_util.tree_flatten_with_path(node, is_leaf=is_submodule)
    for path, leaf in leaves:
        if isinstance(leaf, eqx.Module):
            out.append((keys + tuple(path), leaf))
            _submodules(leaf, keys + tuple(path), out)


@dataclasses.dataclass(frozen=True)
class EquinoxBackend:
    type_name: str
    library: str = "equinox"

    def apply(self, module, args, kwargs):
        return module(*args, **kwargs)


def wrap_equinox(module: eqx.Module) -> tuple[EquinoxBackend, eqx.Module]:
    found: list = []
    _submodules(module, (), found)
    found = [(keys, m) for keys, m in found if callable(m)]
    paths = [tuple(_key_name(k) for k in keys) for keys, _ in found]
    check_names(paths, "equinox", module)
    hooked = module
    # deepest first: a parent is wrapped after its children, so it wraps the already-hooked children
    for (keys, _), path in sorted(zip(found, paths), key=lambda f: -len(f[1])):

        def where(m, keys=keys):
            for k in keys:
                m = _child(m, k)
            return m

        hooked = eqx.tree_at(where, hooked, HookedSubmodule(where(hooked), ".".join(map(str, path)), path))
    return EquinoxBackend(type(module).__name__), hooked
