"""The activation cache returned by ``run_with_cache``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import jax
import jax.numpy as jnp
from jaxtyping import Array

from interp.hooks._names import act_name, layer_of, suggest


@jax.tree_util.register_pytree_node_class
class Cache(Mapping):
    """Captured activations by full hook name, in the order the forward pass produced them.

    Look-ups accept full names (``cache["blocks.5.hook_resid_post"]``) and TransformerLens-style short
    keys (``cache["resid_post", 5]``, ``cache["pattern", 3]``, ``cache["scale", 2, "ln1"]``). A Cache is a
    pytree, so it can be returned from ``jax.jit``/``jax.grad`` and mapped with ``jax.tree.map``.
    """

    def __init__(self, data: Mapping[str, Array]):
        self._data = dict(data)

    def _key(self, key) -> str:
        if isinstance(key, tuple):
            return act_name(*key)
        return act_name(key)

    def __getitem__(self, key) -> Array:
        try:
            name = self._key(key)
        except KeyError as e:
            raise KeyError(str(e).strip("'\"")) from None
        if name not in self._data:
            raise KeyError(f"'{name}' is not in this cache{suggest(name, self._data)}")
        return self._data[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key) -> bool:
        try:
            return self._key(key) in self._data
        except KeyError:
            return False

    def __repr__(self) -> str:
        lines = [f"  {k}: {tuple(v.shape)} {v.dtype}" for k, v in self._data.items()]
        return "Cache(\n" + "\n".join(lines) + "\n)" if lines else "Cache()"

    def stack(self, name: str, layers=None, layer_type: str | None = None) -> Array:
        """Stack a per-layer activation: ``cache.stack("resid_post")`` -> ``[L, ...]`` over the cached layers
        (``layer_type`` "ln1"/"ln2" for norm hooks)."""
        if layers is None:
            present = sorted({l for k in self._data if (l := layer_of(k)) is not None})
            layers = [l for l in present if act_name(name, l, layer_type) in self._data]
        if not layers:
            raise KeyError(f"no layers of '{name}' in this cache")
        return jnp.stack([self[name, l, layer_type] if layer_type else self[name, l] for l in layers])

    def tree_flatten(self):
        return tuple(self._data.values()), tuple(self._data.keys())

    @classmethod
    def tree_unflatten(cls, keys, values):
        return cls(dict(zip(keys, values)))
