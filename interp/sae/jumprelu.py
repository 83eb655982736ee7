"""JumpReLU SAE (Rajamanoharan et al. 2024): ``z = pre · H(pre − θ)`` with a learned threshold per latent and
an L0 penalty, both trained through straight-through estimators with a rectangle kernel of width ε."""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

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
class JumpReLUConfig(DictConfig):
    """Config of a JumpReLU SAE: ``l0_coeff`` weights the L0 penalty, ``bandwidth`` is the width of the
    straight-through kernel, ``init_threshold`` the initial threshold."""

    l0_coeff: float = 1.0
    bandwidth: float = 0.001
    init_threshold: float = 0.001
    arch: ClassVar[str] = "jumprelu"

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

    log_threshold: Float[Array, M]

    @classmethod
    def init(cls, cfg, key, dtype=jnp.float32):
        return cls(**init_affine(cfg, key, dtype), cfg=cfg,
                   log_threshold=jnp.full((cfg.width,), math.log(cfg.init_threshold), dtype))

    @property
    def threshold(self):
        return jnp.exp(self.log_threshold)

    def activate(self, pre, *, training=False):
        return pre * (pre > self.threshold).astype(pre.dtype)

    def loss(self, x, y, ctx: LossContext):
        pre = self.pre_acts(x)
        eps = jnp.asarray(self.cfg.bandwidth, pre.dtype)
        z = jumprelu(pre, self.threshold, eps)
        y_hat = self.decode(z) + self.skip_term(x)
        recon = mse(y_hat, y)
        l0 = jnp.mean(jnp.sum(step(pre, self.threshold, eps), axis=-1))
        loss = recon + ctx.sparsity_scale * self.cfg.l0_coeff * l0
        return loss, {"mse": recon, "fvu": recon / total_variance(y), "l0": l0, "fired": jnp.any(z > 0, axis=0)}
