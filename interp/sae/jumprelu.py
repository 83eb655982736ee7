"""JumpReLU SAE (Rajamanoharan et al. 2024): ``z = pre · H(pre − θ)`` with a learned threshold per latent and
an L0 penalty, both trained through straight-through estimators with a rectangle kernel of width ε."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from interp.checks import check_range
from interp.sae._base import (
    DictConfig,
    Dictionary,
    LossContext,
    Option,
    SAELensLayout,
    init_affine,
    mse,
    nonnegative,
    register,
    total_variance,
)


@dataclasses.dataclass(frozen=True)
class JumpReLUConfig(DictConfig):
    """Config of a JumpReLU SAE: ``l0_coeff`` weights the L0 penalty, ``bandwidth`` is the width of the
    straight-through kernel, ``init_threshold`` the initial threshold."""

    l0_coeff: float = 1.0
    bandwidth: float = 0.001
    init_threshold: float = 0.001
    options: ClassVar[Mapping[str, Option]] = {"l0_coeff": Option("L0 coefficient")}

    def __post_init__(self):
        super().__post_init__()
        check_range("l0_coeff", self.l0_coeff, 0)
        check_range("bandwidth", self.bandwidth, 0, lo_open=True)
        check_range("init_threshold", self.init_threshold, 0, lo_open=True)


def _rect(u):
    return (jnp.abs(u) < 0.5).astype(u.dtype)


@jax.custom_vjp
def jumprelu(x, theta, eps):
    return x * (x > theta).astype(x.dtype)


def _jumprelu_fwd(x, theta, eps):
    return jumprelu(x, theta, eps), (x, theta, eps)


def _jumprelu_bwd(res, g):
    x, theta, eps = res
    dx = (x > theta).astype(x.dtype) * g
    dtheta = jnp.sum(-(theta / eps) * _rect((x - theta) / eps) * g, axis=tuple(range(x.ndim - 1)))
    return dx, dtheta, None


jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@jax.custom_vjp
def step(x, theta, eps):
    return (x > theta).astype(x.dtype)


def _step_fwd(x, theta, eps):
    return step(x, theta, eps), (x, theta, eps)


def _step_bwd(res, g):
    x, theta, eps = res
    dtheta = jnp.sum(-(1.0 / eps) * _rect((x - theta) / eps) * g, axis=tuple(range(x.ndim - 1)))
    return jnp.zeros_like(x), dtheta, None


step.defvjp(_step_fwd, _step_bwd)


@register("jumprelu", JumpReLUConfig)
class JumpReLUSAE(Dictionary):
    """``z = pre * H(pre - theta)`` with a learned threshold per latent (``log_threshold``; Rajamanoharan
    et al. 2024)."""

    log_threshold: Float[Array, " M"]
    saelens = SAELensLayout("jumprelu", tensors=("threshold",))

    @classmethod
    def init(cls, cfg, key, dtype=jnp.float32):
        return cls(**init_affine(cfg, key, dtype), cfg=cfg,
                   log_threshold=jnp.full((cfg.width,), math.log(cfg.init_threshold), dtype))

    @property
    def threshold(self) -> Float[Array, " M"]:
        return jnp.exp(self.log_threshold)

    def activate(self, pre: Float[Array, "N M"], *, training: bool = False) -> Float[Array, "N M"]:
        return pre * (pre > self.threshold).astype(pre.dtype)

    def loss(self, x: Float[Array, "N D"], y: Float[Array, "N O"], ctx: LossContext) -> tuple[Float[Array, ""], dict]:
        pre = self.pre_acts(x)
        eps = jnp.asarray(self.cfg.bandwidth, pre.dtype)
        z = jumprelu(pre, self.threshold, eps)
        y_hat = self.decode(z) + self.skip_term(x)
        recon = mse(y_hat, y)
        l0 = jnp.mean(jnp.sum(step(pre, self.threshold, eps), axis=-1))
        loss = recon + ctx.sparsity_scale * self.cfg.l0_coeff * l0
        return loss, {"mse": recon, "fvu": recon / total_variance(y), "l0": l0, "fired": jnp.any(z > 0, axis=0)}

    def to_saelens(self) -> dict[str, Float[Array, " M"]]:
        return {"threshold": self.threshold}

    @classmethod
    def from_saelens(cls, cfg, tensors, dtype):
        return {"log_threshold": jnp.log(jnp.asarray(nonnegative("threshold", tensors["threshold"]), dtype))}

    @classmethod
    def config_from_saelens(cls, tensors):
        t = tensors.get("threshold")
        if not isinstance(t, np.ndarray) or not (t > 0).any():
            return {}
        return {"init_threshold": float(t[t > 0].min())}  # the trained thresholds are loaded as weights
