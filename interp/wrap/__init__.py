"""Hook your own model: a Flax NNX, Flax Linen or equinox module becomes a model with a hook point at every
submodule, so capture, edits, gradients through hooks, activation patching, dictionary training and probes work on it.

    >>> wrapped = interp.wrap(model, example=x)          # NNX or equinox; Linen: interp.wrap(module, variables)
    >>> wrapped.hook_names                               # ['embed', 'blocks.0.attn', 'blocks.0.mlp', ...]
    >>> out, cache = wrapped.run_with_cache(x, names=["blocks.0.mlp"])
    >>> out = wrapped.run_with_hooks(x, edits=[("blocks.0.mlp", interp.edits.scale, 0.5)])
    >>> acts = wrapped.activations("blocks.1.mlp", x)    # [N, D] for interp.sae / interp.probes

Hook points are named by module path (``layers.0.mlp``, ``encoder.block_1.attn``; Linen's own names such as
``Dense_0``), hold the submodule's output, and with ``inputs=True`` also its first positional argument
(``{path}.input``). Each library is hooked through its own means and the user's module is never changed: Linen
through ``flax.linen.intercept_methods``; NNX through subclasses of the submodules' classes on a copy
(``nnx.clone`` / ``nnx.split`` / ``nnx.merge``); equinox through ``eqx.tree_at`` on a copy. Flax is needed only
for Flax modules (``pip install interp[flax]``).

Tools built for transformer language models (logit lens, direct logit attribution, attribution graphs, head
scores, the sweeps of :mod:`interp.circuits.patching`) read tokens, blocks and the unembedding, which a wrapped
module does not have; they stop with an error that says so. :meth:`WrappedModel.patch` patches any hook point.
"""

from __future__ import annotations

import sys

from interp.wrap._core import PatchSweep, WrappedCache, WrappedModel

__all__ = ["PatchSweep", "WrappedCache", "WrappedModel", "wrap"]


def _is_flax(module, kind: str) -> bool:
    if "flax" not in sys.modules:  # a module of flax's exists only once flax was imported
        return False
    if kind == "nnx":
        from flax import nnx

        return isinstance(module, nnx.Module)
    import flax.linen as nn

    return isinstance(module, nn.Module)


def wrap(module, variables=None, *, inputs: bool = False, example=None) -> WrappedModel:
    """A :class:`WrappedModel` of ``module`` with a hook point at the output of every submodule.

    ``module``: a ``flax.nnx.Module``, a ``flax.linen.Module`` (then ``variables``, as ``module.init`` returns
    them, are required), or an ``equinox.Module``. ``inputs``: also hook each submodule's first positional
    argument as ``{path}.input``. ``example``: an input (a tuple for several positional inputs) that
    ``hook_names`` lists the hook points for; it is checked at once (a module that calls no submodule fails here).
    The wrapped model runs the module as a pure function of its parameters: NNX state updates (batch statistics,
    RNG counters) and Linen mutable collections are not kept.
    """
    import equinox as eqx

    if _is_flax(module, "nnx"):
        from interp.wrap._flax import wrap_nnx

        backend, params = wrap_nnx(module)
    elif _is_flax(module, "linen"):
        from interp.wrap._flax import wrap_linen

        backend, params = wrap_linen(module, variables)
    elif isinstance(module, eqx.Module):
        from interp.wrap._equinox import wrap_equinox

        backend, params = wrap_equinox(module)
    else:
        raise TypeError(f"interp.wrap takes a flax.nnx.Module, a flax.linen.Module with its variables or an "
                        f"equinox.Module; got {type(module).__name__}")
    if variables is not None and not _is_flax(module, "linen"):
        raise TypeError(f"variables are for Flax Linen modules only; a {backend.library} module holds its own")
    if example is not None and not isinstance(example, tuple):
        example = (example,)
    if example is not None:
        import jax

        example = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) if hasattr(a, "shape") else a for a in example)
    wrapped = WrappedModel(params, backend, inputs, example)
    if example is not None:
        wrapped.hook_shapes()
    return wrapped
