"""Standard SAE: ReLU latents, L1 penalty weighted by decoder row norms (Anthropic, April 2024 update)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from interp.checks import check_range
from interp.sae._base import (
    DictConfig,
    Dictionary,
    LossContext,
    Option,
    SAELensLayout,
    mse,
    register,
    total_variance,
)


@dataclasses.dataclass(frozen=True)
class StandardConfig(DictConfig):
    """Config of a standard SAE: ``l1_coeff`` weights the L1 penalty on the latents times the decoder rows' norms."""

    l1_coeff: float = 5.0
    options: ClassVar[Mapping[str, Option]] = {"l1_coeff": Option("L1 coefficient")}

    def __post_init__(self):
        super().__post_init__()
        check_range("l1_coeff", self.l1_coeff, 0)


@register("standard", StandardConfig)
class StandardSAE(Dictionary):
    """A ReLU sparse autoencoder trained with an L1 penalty weighted by the decoder rows' norms."""

    saelens = SAELensLayout("standard")
    metrics = ("mse", "fvu", "l1", "l0")

    def activate(self, pre: Float[Array, "N M"], *, training: bool = False) -> Float[Array, "N M"]:
        return jax.nn.relu(pre)

    def loss(self, x: Float[Array, "N D"], y: Float[Array, "N O"], ctx: LossContext) -> tuple[Float[Array, ""], dict]:
        z = jax.nn.relu(self.pre_acts(x))
        y_hat = self.decode(z) + self.skip_term(x)
        recon = mse(y_hat, y)
        l1 = jnp.mean(jnp.sum(z * jnp.linalg.norm(self.W_dec, axis=-1), axis=-1))
        loss = recon + ctx.sparsity_scale * self.cfg.l1_coeff * l1
        return loss, {"mse": recon, "fvu": recon / total_variance(y), "l1": l1,
                      "l0": jnp.mean(jnp.sum(z > 0, axis=-1)), "fired": jnp.any(z > 0, axis=0)}
