"""A linear probe on one hook point: ``score(x) = ((x - mean) / scale) @ weight + bias``, a pure function of an
activation array ``[..., D]`` (usable under ``jit``, inside generation), saved as safetensors + JSON.

Axis letters: D features of the hook point (d_model, or dictionary latents M for ``...sae.hook_latents``).
"""

from __future__ import annotations

import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from interp._io import atomic_dir
from interp.results import Result, Summary

__all__ = ["Probe"]

_FORMAT = 1
_TENSORS = "probe.safetensors"
_META = "probe.json"


class Probe(Result, eqx.Module):
    """A linear probe: ``logits = ((acts - mean) / scale) @ weight + bias``; class 1 where the logit is positive.

    ``hook``: the hook point it reads; ``kind``: how it was fitted (``"logistic"``, ``"diffmeans"``, ``"lda"``,
    ``"ccs"``); ``model_hash``: the weights hash of the model its activations came from (None if unknown).
    ``mean``/``scale`` standardise the input (zeros and ones for probes fitted in raw space). Pass the probe as an
    argument of a jitted function: its arrays are leaves, its names static.
    """

    weight: Float[Array, " D"]
    bias: Float[Array, ""]
    mean: Float[Array, " D"]
    scale: Float[Array, " D"]
    hook: str = eqx.field(static=True)
    kind: str = eqx.field(static=True)
    model_hash: str | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        shapes = {k: tuple(getattr(self, k).shape) for k in ("weight", "mean", "scale")}
        if len(set(shapes.values())) != 1 or len(shapes["weight"]) != 1 or tuple(self.bias.shape) != ():
            raise ValueError(f"a probe needs weight, mean and scale of one shape [D] and a scalar bias; got {shapes} "
                             f"and bias {tuple(self.bias.shape)}")

    @property
    def d(self) -> int:
        return int(self.weight.shape[0])

    def score(self, acts: Float[Array, "*B D"]) -> Float[Array, "*B"]:
        """Logits (log-odds of class 1) for activations ``[..., D]``; pure jnp, fine under ``jit``/``vmap``."""
        acts = jnp.asarray(acts).astype(self.weight.dtype)  # bfloat16 activations are scored in the probe's float32
        return ((acts - self.mean) / self.scale) @ self.weight + self.bias

    def predict(self, acts: Float[Array, "*B D"]) -> Bool[Array, "*B"]:
        """Class 1 where the logit is positive."""
        return self.score(acts) > 0

    def proba(self, acts: Float[Array, "*B D"]) -> Float[Array, "*B"]:
        """Probability of class 1 (the sigmoid of the logit)."""
        return jax.nn.sigmoid(self.score(acts))

    @property
    def direction(self) -> Float[Array, " D"]:
        """The unit vector in raw activation space along which the logit grows (towards class 1): add
        ``alpha * probe.direction`` at ``probe.hook`` with ``interp.edits.add`` to steer."""
        w = self.weight / self.scale
        return w / jnp.maximum(jnp.linalg.norm(w), 1e-30)

    def _summary(self) -> Summary:
        w = np.asarray(self.weight / self.scale, np.float64)
        top = [(f"feature {i}", float(w[i])) for i in np.argsort(-np.abs(w))[:5]]
        facts = {"hook": self.hook, "model hash": (self.model_hash or "unknown")[:12]}
        return Summary(f"{self.kind} probe", {"features": self.d}, facts, top, "largest raw-space weights")

    # ------------------------------------------------------------------------------------------ files
    def save(self, path) -> Path:
        """Write ``path/probe.safetensors`` (weight, bias, mean, scale) and ``path/probe.json`` (hook, kind,
        model hash) in one step: the folder appears complete or not at all."""
        import safetensors.numpy

        path = Path(path)
        arrays = {k: np.asarray(getattr(self, k), np.float32) for k in ("weight", "bias", "mean", "scale")}
        meta = {"format": _FORMAT, "hook": self.hook, "kind": self.kind, "model_hash": self.model_hash, "d": self.d}
        with atomic_dir(path) as tmp:
            safetensors.numpy.save_file(arrays, str(tmp / _TENSORS))
            (tmp / _META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path, model=None) -> Probe:
        """A probe saved by :meth:`save`. With ``model``, a probe trained on another model's activations (another
        weights hash) is refused, and so is a hook point the model lacks."""
        import safetensors.numpy

        path = Path(path)
        if not (path / _META).is_file() or not (path / _TENSORS).is_file():
            raise FileNotFoundError(f"{path} is not a saved probe (it needs {_META} and {_TENSORS}); "
                                    "write one with probe.save(path)")
        meta = json.loads((path / _META).read_text(encoding="utf-8"))
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path / _META} has format {meta.get('format')!r}; this version reads format {_FORMAT}")
        arrays = safetensors.numpy.load_file(str(path / _TENSORS))
        missing = {"weight", "bias", "mean", "scale"} - set(arrays)
        if missing:
            raise ValueError(f"{path / _TENSORS} lacks the tensors {sorted(missing)}; the file is damaged")
        if arrays["weight"].shape != (meta.get("d"),):
            raise ValueError(f"{path / _TENSORS} holds a weight of shape {arrays['weight'].shape} but {_META} says "
                             f"d={meta.get('d')}; the files do not belong together")
        probe = cls(*(jnp.asarray(arrays[k]) for k in ("weight", "bias", "mean", "scale")), hook=meta["hook"],
                    kind=meta["kind"], model_hash=meta.get("model_hash"))
        if model is not None:
            from interp.probes._hash import check_model

            check_model(probe, model, str(path))
        return probe
