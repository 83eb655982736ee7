"""Matryoshka BatchTopK SAE (Bussmann et al. 2025; Nabeshima 2024): nested prefixes of the dictionary must
each reconstruct the input on their own, so early latents learn general features and later ones refine."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jaxtyping import Array, Float

from interp.checks import check_range
from interp.sae._base import LossContext, register, total_variance
from interp.sae.batchtopk import BatchTopKConfig, BatchTopKSAE, batch_select
from interp.sae.topk import fired_from_sparse, scatter_dense


@dataclasses.dataclass(frozen=True)
class MatryoshkaConfig(BatchTopKConfig):
    """Config of a Matryoshka BatchTopK SAE: ``prefixes`` are the nested dictionary sizes, ascending to
    ``width`` (default width/8, /4, /2, width)."""

    prefixes: tuple[int, ...] = ()  # ascending prefix sizes ending at width; default width/8, /4, /2, 1

    def __post_init__(self):
        super().__post_init__()
        for i, size in enumerate(self.prefixes):
            check_range(f"prefixes[{i}]", size, 1, integer=True)
        p = self.prefix_sizes
        if list(p) != sorted(set(p)) or p[-1] != self.width or p[0] <= 0:
            raise ValueError(f"prefixes must be strictly ascending positive sizes ending at width={self.width}, "
                             f"got {p}")

    @property
    def prefix_sizes(self) -> tuple[int, ...]:
        if self.prefixes:
            return tuple(self.prefixes)
        return tuple(sorted({max(self.width // 8, 1), max(self.width // 4, 1), max(self.width // 2, 1), self.width}))


@register("matryoshka", MatryoshkaConfig)
class MatryoshkaSAE(BatchTopKSAE):
    """A BatchTopK SAE whose nested prefixes must each reconstruct the input on their own."""

    metrics = ("mse", "fvu", "fvu_prefix0", "l0")  # fvu_prefix0: the smallest prefix's FVU

    def loss(self, x: Float[Array, "N D"], y: Float[Array, "N O"], ctx: LossContext) -> tuple[Float[Array, ""], dict]:
        pre = self.pre_acts(x)
        vals, idx, kth = batch_select(pre, self.cfg.k, self.cfg.candidate_factor)
        z = scatter_dense(vals, idx, pre.shape[-1])
        tv = total_variance(y)
        partial = self.b_dec + self.skip_term(x)
        start, fvus = 0, []
        for end in self.cfg.prefix_sizes:
            partial = partial + z[:, start:end] @ self.W_dec[start:end]
            fvus.append(jnp.mean(jnp.sum(jnp.square(y - partial), axis=-1)) / tv)
            start = end
        fvu = fvus[-1]
        return jnp.mean(jnp.stack(fvus)), {
            "mse": fvu * tv, "fvu": fvu, "fvu_prefix0": fvus[0],
            "l0": jnp.mean(jnp.sum(vals > 0, axis=-1)), "fired": fired_from_sparse(vals, idx, pre.shape[-1]),
            "batch_threshold": kth, "error": y - partial,
        }
