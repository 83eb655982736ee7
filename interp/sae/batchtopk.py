"""BatchTopK SAE (Bussmann et al. 2024): keep the ``k × N`` largest activations over the whole batch.

Sparsity is k per activation on average, so activations that need more latents can use them. At inference
a single threshold, a running average of the smallest kept activation during training, replaces the batch
selection. Candidates are each row's top ``candidate_factor × k`` activations, so a row can use at most that
many latents per batch (exact unless a row would need more).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from interp.checks import check_range
from interp.kernels import sparse_decode, top_k
from interp.sae._base import (
    AuxLoss,
    Dictionary,
    LossContext,
    SAELensLayout,
    init_affine,
    nonnegative,
    register,
    total_variance,
)
from interp.sae.topk import TopKConfig, auxk_loss, fired_from_sparse


@dataclasses.dataclass(frozen=True)
class BatchTopKConfig(TopKConfig):
    """Config of a BatchTopK SAE: ``k`` active latents per activation on average over a batch;
    ``candidate_factor`` bounds a row's latents per batch, ``threshold_decay`` the running inference threshold."""

    candidate_factor: int = 4
    threshold_decay: float = 0.99

    def __post_init__(self):
        super().__post_init__()
        check_range("candidate_factor", self.candidate_factor, 1, integer=True)
        check_range("threshold_decay", self.threshold_decay, 0, 1)


def batch_select(pre: Float[Array, "N M"], k: int,
                 factor: int) -> tuple[Float[Array, "N c"], Int[Array, "N c"], Float[Array, ""]]:
    """Sparse ``(values, indices) [N c]`` keeping the batch's top ``k × N`` values, and the batch threshold."""
    N, M = pre.shape
    c = min(factor * k, M)
    vals, idx = top_k(jax.nn.relu(pre), c)
    flat = vals.reshape(-1)
    kth = top_k(flat, k * N)[0][-1]
    keep = (vals >= kth) & (vals > 0)
    return jnp.where(keep, vals, 0.0), idx, kth


@register("batchtopk", BatchTopKConfig)
class BatchTopKSAE(Dictionary):
    """Keeps the ``k * N`` largest pre-activations over a batch of ``N`` activations; at inference one
    learned threshold decides (Bussmann et al. 2024). SAELens computes the same function as a JumpReLU SAE with
    the threshold repeated per latent, so its files say so."""

    threshold: Float[Array, ""]
    saelens = SAELensLayout("jumprelu", tensors=("threshold",))
    step_values = ("batch_threshold",)
    aux = AuxLoss("auxk", "aux_coeff")

    @classmethod
    def init(cls, cfg, key, dtype=jnp.float32):
        return cls(**init_affine(cfg, key, dtype), threshold=jnp.zeros((), dtype), cfg=cfg)

    def activate(self, pre: Float[Array, "N M"], *, training: bool = False) -> Float[Array, "N M"]:
        return jnp.where(pre > self.threshold, jax.nn.relu(pre), 0.0)

    def loss(self, x: Float[Array, "N D"], y: Float[Array, "N O"], ctx: LossContext) -> tuple[Float[Array, ""], dict]:
        pre = self.pre_acts(x)
        vals, idx, kth = batch_select(pre, self.cfg.k, self.cfg.candidate_factor)
        y_hat = sparse_decode(vals, idx, self.W_dec) + self.b_dec + self.skip_term(x)
        error = y - y_hat
        tv = total_variance(y)
        mse = jnp.mean(jnp.sum(jnp.square(error), axis=-1))
        return mse / tv, {
            "mse": mse, "fvu": mse / tv, "l0": jnp.mean(jnp.sum(vals > 0, axis=-1)),
            "fired": fired_from_sparse(vals, idx, pre.shape[-1]), "batch_threshold": kth, "error": error,
        }

    def aux_loss(self, x: Float[Array, "N D"], y: Float[Array, "N O"], error: Float[Array, "N O"],
                 dead: Bool[Array, " M"]) -> Float[Array, ""]:
        return auxk_loss(self, x, y, error, dead, self.cfg.k_aux, self.cfg.aux_rows(x.shape[0]))

    def after_step(self, metrics: dict[str, Array]) -> BatchTopKSAE:
        d = self.cfg.threshold_decay
        new = jnp.where(self.threshold == 0, metrics["batch_threshold"],
                        d * self.threshold + (1 - d) * metrics["batch_threshold"])
        return dataclasses.replace(self, threshold=new.astype(self.threshold.dtype))

    def to_saelens(self) -> dict[str, Float[Array, " M"]]:
        return {"threshold": jnp.full((self.cfg.width,), self.threshold)}

    @classmethod
    def from_saelens(cls, cfg, tensors, dtype):
        t = tensors["threshold"]
        if np.ptp(t) != 0:
            raise ValueError(f"threshold must be one value repeated (a {cfg.arch} dictionary has a single "
                             "threshold), but its values differ; load it as a JumpReLU dictionary instead")
        return {"threshold": jnp.asarray(nonnegative("threshold", t)[0], dtype)}
