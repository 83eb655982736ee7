"""The weights hash of a model, computed once per model object, and the checks that use it."""

from __future__ import annotations

import weakref

from interp.hooks import suggest
from interp.weights import weights_hash

_HASHES: dict[int, tuple[object, str]] = {}


def model_hash(model) -> str:
    """sha256 over the model's arrays (``interp.weights.weights_hash``), remembered while the model lives."""
    key = id(model)
    hit = _HASHES.get(key)
    if hit is not None and hit[0]() is model:
        return hit[1]
    h = weights_hash(model)
    try:
        ref = weakref.ref(model, lambda _, key=key: _HASHES.pop(key, None))
    except TypeError:  # an object without weak references is hashed each time
        return h
    _HASHES[key] = (ref, h)
    return h


def check_model(probe, model, where: str = "this probe") -> None:
    """Refuse a probe trained on another model's activations, or on a hook point the model lacks."""
    have = model_hash(model)
    if probe.model_hash is not None and probe.model_hash != have:
        raise ValueError(f"{where} was trained on activations of a model with weights hash {probe.model_hash[:16]}..., "
                         f"but this model's hash is {have[:16]}...; its direction means nothing here. Load it with "
                         "the model it was trained on, or train a new probe on this model's activations")
    base = probe.hook.split(".sae.")[0]  # a dictionary's latents are hook points once it is spliced in
    names = model.hook_names
    if base not in names:
        raise ValueError(f"{where} reads hook '{probe.hook}', which this model lacks{suggest(base, names)}")
