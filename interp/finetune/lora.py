"""Low-rank adapters (LoRA, Hu et al. 2021) on a model's matrices, applied with ``eqx.tree_at``.

Each targeted matrix ``W0`` of every block gets ``A [in r]`` and ``B [r out]``; the model computes with
``W0 + (alpha / r) * (A @ B)`` reshaped to ``W0``'s shape. ``B`` starts at zero, so a fresh adapter leaves the model
unchanged. ``in`` is the size of the axes the matrix reads (``D`` for ``W_Q [D H E]``, ``H*E`` for ``W_O [H E D]``)
and ``out`` the rest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp

TARGETS = ("W_Q", "W_K", "W_V", "W_O", "W_gate", "W_in", "W_out")
# the module of a block each matrix lives in, and how many of its leading axes it reads
_WHERE = {"W_Q": ("attn", 1), "W_K": ("attn", 1), "W_V": ("attn", 1), "W_O": ("attn", 2),
          "W_gate": ("mlp", 1), "W_in": ("mlp", 1), "W_out": ("mlp", 1)}


def check_targets(targets: str | Sequence[str]) -> tuple[str, ...]:
    """``targets`` (one name or several, each in :data:`TARGETS`) as a tuple; none, or an unknown name, is refused."""
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    unknown = [t for t in targets if t not in _WHERE]
    if unknown or not targets:
        raise ValueError(f"unknown LoRA target(s) {unknown or '(none given)'}; choose among {', '.join(TARGETS)}")
    return targets


class LoRA(eqx.Module):
    """Adapters for ``sites`` (``(layer, name)`` pairs, e.g. ``(0, "W_Q")``): ``A[i] [in r]``, ``B[i] [r out]``,
    scaled by ``alpha / rank``."""

    A: tuple
    B: tuple
    sites: tuple = eqx.field(static=True)
    alpha: float = eqx.field(static=True)

    @property
    def rank(self) -> int:
        return self.A[0].shape[1]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def __repr__(self) -> str:
        n = sum(a.size + b.size for a, b in zip(self.A, self.B))
        names = sorted({name for _, name in self.sites}, key=TARGETS.index)
        return (f"LoRA(rank {self.rank}, alpha {self.alpha}, {len(self.sites)} matrices ({', '.join(names)}), "
                f"{n} params)")


def _leaf(model, layer: int, name: str):
    module, _ = _WHERE[name]
    return getattr(getattr(model.blocks[layer], module), name)


def _sizes(w, name: str) -> tuple[int, int]:
    k = _WHERE[name][1]
    return math.prod(w.shape[:k]), math.prod(w.shape[k:])


def lora(model, rank: int, targets: Sequence[str] = TARGETS, alpha: float = 16.0, key=None) -> LoRA:
    """Fresh adapters of ``rank`` on the ``targets`` matrices of every block: ``A ~ N(0, 1/in)``, ``B = 0``, in
    float32 whatever the model's dtype (the update is cast to each matrix's dtype when merged). Matrices a block
    lacks (``W_gate`` of GPT-2's plain MLP) are skipped, so the default targets fit every family; ``sites`` lists
    what was adapted. Targets none of which the model has are refused."""
    targets = check_targets(targets)
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"lora_rank must be a positive integer (or None for full fine-tuning), got {rank!r}")

    def has(layer, name):
        return getattr(getattr(model.blocks[layer], _WHERE[name][0]), name, None) is not None

    sites = tuple((layer, name) for layer in range(model.n_layers) for name in targets if has(layer, name))
    if not sites:
        present = [t for t in TARGETS if any(has(layer, t) for layer in range(model.n_layers))]
        raise ValueError(f"this model's blocks have none of {', '.join(targets)}; its matrices are "
                         f"{', '.join(present)}")
    key = jax.random.key(0) if key is None else key
    A, B = [], []
    for (layer, name), k in zip(sites, jax.random.split(key, len(sites))):
        w = _leaf(model, layer, name)
        n_in, n_out = _sizes(w, name)
        if rank > min(n_in, n_out):
            raise ValueError(f"lora_rank={rank} exceeds blocks.{layer}.{name}'s smaller side ({n_in} x {n_out}): the "
                             f"update would no longer be low-rank; use lora_rank <= {min(n_in, n_out)}, or "
                             "lora_rank=None to train the full matrices")
        A.append(jax.random.normal(k, (n_in, rank), jnp.float32) / math.sqrt(n_in))
        B.append(jnp.zeros((rank, n_out), jnp.float32))
    return LoRA(tuple(A), tuple(B), sites, float(alpha))


def merge(model, adapters: LoRA):
    """``model`` with every adapted matrix replaced by ``W0 + (alpha / r) * A @ B``: an ordinary model (same
    structure as the base), which is what a run computes with and what is saved. Differentiable in ``adapters``."""
    new = []
    for (layer, name), a, b in zip(adapters.sites, adapters.A, adapters.B):
        w = _leaf(model, layer, name)
        delta = (a @ b).reshape(w.shape) * jnp.asarray(adapters.scale, a.dtype)
        new.append(w + delta.astype(w.dtype))
    return eqx.tree_at(lambda m: [_leaf(m, layer, name) for layer, name in adapters.sites], model, new)


def delta(model, adapters: LoRA, layer: int, name: str):
    """The update ``(alpha / r) * A @ B`` of one adapted matrix, in its shape."""
    i = adapters.sites.index((layer, name))
    w = _leaf(model, layer, name)
    return ((adapters.A[i] @ adapters.B[i]) * jnp.asarray(adapters.scale, adapters.A[i].dtype)).reshape(w.shape)
