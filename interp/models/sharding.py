"""A model's weights over a ``jax.sharding.Mesh``: tensor parallel over a ``model`` axis, batch over ``data``.

    >>> mesh = jax.make_mesh((2, 4), ("data", "model"))
    >>> model = interp.load("smollm2-135m", mesh=mesh)      # or interp.shard(model, mesh)

Each weight is placed with a ``NamedSharding`` and XLA's partitioner (GSPMD) inserts the collectives, so the
forward pass, ``run_with_cache``, edits, gradients, patching sweeps and ``generate`` run unchanged, and a model
larger than one device's memory runs on several. What is split over ``model`` (when its size divides the axis;
otherwise that weight is replicated):

=================================  ======================  =====================================================
weights                            split axis              why
=================================  ======================  =====================================================
``attn.W_Q`` [D H E], ``b_Q``      query heads ``H``       each device computes whole heads
``attn.W_K``, ``W_V``, ``b_K/V``   key/value heads ``K``   (GQA models with fewer kv heads than devices replicate)
``attn.W_O`` [H E D]               heads ``H``             partial sums of heads, reduced across ``model``
``mlp.W_in``, ``W_gate`` [D F]     hidden ``F``            column parallel
``mlp.W_out`` [F D]                hidden ``F``            row parallel, reduced across ``model``
``embed.W_E`` [V D], ``unembed``   vocabulary ``V``        the largest matrices of a small model
norms, biases of ``D``, positions  replicated              small
=================================  ======================  =====================================================

A prompt batch whose size the ``data`` axis divides is split over it (``Model.run`` places it); other batches run
replicated. Results equal the single-device run up to float summation order.
"""

from __future__ import annotations

import equinox as eqx
import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MODEL, DATA = "model", "data"
# (parent module, field) -> the axis of that weight split over `model`
_SPLIT = {
    ("attn", "W_Q"): 1, ("attn", "W_K"): 1, ("attn", "W_V"): 1, ("attn", "W_O"): 0,
    ("attn", "b_Q"): 0, ("attn", "b_K"): 0, ("attn", "b_V"): 0,
    ("mlp", "W_in"): 1, ("mlp", "W_gate"): 1, ("mlp", "W_out"): 0, ("mlp", "b_in"): 0, ("mlp", "b_gate"): 0,
    ("embed", "W_E"): 0, (None, "unembed"): 1, (None, "b_U"): 0,
}


def spec_for(path, leaf, n_model: int) -> P:
    """The ``PartitionSpec`` of one weight (``path`` as ``jax.tree_util`` gives it), given the ``model`` axis size."""
    names = [getattr(k, "name", None) for k in path]
    field = names[-1] if names else None
    parent = names[-2] if len(names) >= 2 else None
    axis = _SPLIT.get((parent, field))
    if axis is None or leaf.ndim <= axis or leaf.shape[axis] % n_model:
        return P()
    return P(*([None] * axis), MODEL)


def shard(model, mesh: Mesh):
    """``model`` with its weights placed over ``mesh`` (see the module docstring); ``mesh`` needs a ``"model"``
    axis and may have a ``"data"`` axis (others are left replicated)."""
    check_mesh(mesh)
    mesh = auto(mesh)
    n = mesh.shape[MODEL]

    def place(path, leaf):
        if not eqx.is_array(leaf):
            return leaf
        return jax.device_put(leaf, NamedSharding(mesh, spec_for(path, leaf, n)))

    return jax.tree_util.tree_map_with_path(place, model)


def auto(mesh: Mesh) -> Mesh:
    """The same devices and axis names with every axis in ``Auto`` mode: XLA's partitioner propagates the weights'
    placement through the forward pass (``jax.make_mesh`` makes ``Explicit`` axes, under which every gather and
    contraction over a split axis would need its output placement spelled out)."""
    from jax.sharding import AxisType

    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def check_mesh(mesh) -> None:
    """Refuse what is not a ``Mesh`` with a ``"model"`` axis, saying how to make one."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, e.g. jax.make_mesh((2, 4), ('data', 'model')); got "
                        f"{type(mesh).__name__}")
    if MODEL not in mesh.axis_names:
        raise ValueError(f"the mesh's axes are {mesh.axis_names}; name the axis that splits heads and MLP columns "
                         f"'{MODEL}' (and the batch's '{DATA}'), e.g. jax.make_mesh((2, 4), ('data', 'model'))")


def batch_sharding(model, batch: int) -> NamedSharding | None:
    """Where a batch of ``batch`` prompts goes on a sharded model: split over the mesh's ``data`` axis when that
    divides it; None (the default placement) for a model on one device or a batch the axis does not divide."""
    s = getattr(model.embed.W_E, "sharding", None)
    if not isinstance(s, NamedSharding) or DATA not in s.mesh.axis_names:
        return None
    n = s.mesh.shape[DATA]
    return NamedSharding(s.mesh, P(DATA)) if n > 1 and batch % n == 0 else None


def describe(model) -> dict[str, str]:
    """``{weight path: its PartitionSpec}`` of a model's arrays (for checking a placement)."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(model):
        if eqx.is_array(leaf):
            s = getattr(leaf, "sharding", None)
            out[jax.tree_util.keystr(path)] = str(s.spec) if isinstance(s, NamedSharding) else "single device"
    return out
