"""Standard SAE: ReLU latents, L1 penalty weighted by decoder row norms (Anthropic, April 2024 update)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from interp.checks import check_range
from interp.sae._base import (
    DictConfig,
    Dictionary,
    LossContext,
    init_affine,
    mse,
    register,
    total_variance,
)


@dataclasses.dataclass(frozen=True)
class StandardConfig(DictConfig):
    """Config of a standard SAE: ``l1_coeff`` weights the L1 penalty on the latents times the decoder rows' norms."""

    l1_coeff: float = 5.0
    arch: ClassVar[str] = "standard"

    def __post_init__(self):
        super().__post_init__()
        check_range("l1_coeff", self.l1_coeff, 0)


@register("standard", StandardConfig)
class StandardSAE(Dictionary):
    """A ReLU sparse autoencoder trained with an L1 penalty weighted by the decoder rows' norms."""

    @classmethod
    def init(cls, cfg, key, dtype=jnp.float32):
        return cls(**init_affine(cfg, key, dtype), cfg=cfg)

    def activate(self, pre, *, training=False):
        return jax.nn.relu(pre)

    def loss(self, x, y, ctx: LossContext):
        z = jax.nn.relu(self.pre_acts(x))
        y_hat = self.decode(z) + self.skip_term(x)
        recon = mse(y_hat, y)
        l1 = jnp.mean(jnp.sum(z * jnp.linalg.norm(self.W_dec, axis=-1), axis=-1))
        loss = recon + ctx.sparsity_scale * self.cfg.l1_coeff * l1
        return loss, {"mse": recon, "fvu": recon / total_variance(y), "l1": l1,
                      "l0": jnp.mean(jnp.sum(z > 0, axis=-1)), "fired": jnp.any(z > 0, axis=0)}
