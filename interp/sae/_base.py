"""Sparse dictionaries (SAEs and transcoders): the shared module, configs, and the architecture registry.

Axis letters: N activations (flattened batch × positions), D input dim, O output dim (= D for an SAE),
M dictionary latents, k active latents per activation.

A dictionary reads activations ``x [N D]`` at ``hook_name`` and reconstructs ``y [N O]``: the same
activations for an SAE, or those at ``hook_name_out`` for a transcoder (optionally with a linear skip
connection ``x W_skip``). Every architecture shares the affine maps; they differ in the activation
function between them and in the training loss.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from interp.checks import check_range

REGISTRY: dict[str, tuple[type, type]] = {}


def register(name: str, config_cls: type):
    """Class decorator: make an architecture available by ``name`` with its config class."""

    def deco(cls):
        if name in REGISTRY:
            raise ValueError(f"architecture '{name}' is registered twice")
        REGISTRY[name] = (config_cls, cls)
        cls.arch = name
        return cls

    return deco


def architecture(name: str) -> tuple[type, type]:
    """``(config class, dictionary class)`` registered under ``name``; an unknown name fails, listing the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown dictionary architecture '{name}'; known: {', '.join(sorted(REGISTRY))}") from None


@dataclasses.dataclass(frozen=True)
class DictConfig:
    """What every dictionary needs. Subclasses add the fields of their architecture."""

    d_in: int
    width: int
    hook_name: str = ""
    hook_name_out: str | None = None  # set for a transcoder
    d_out: int | None = None  # defaults to d_in
    skip: bool = False  # transcoders: add a linear skip connection x W_skip
    apply_b_dec_to_input: bool = True  # SAEs subtract b_dec before encoding (ignored for transcoders)
    normalize_decoder: bool = False  # keep decoder rows at unit norm during training
    arch: ClassVar[str] = ""

    def __post_init__(self):
        check_range("d_in", self.d_in, 1, integer=True)
        check_range("width", self.width, 1, integer=True)
        if self.d_out is not None:
            check_range("d_out", self.d_out, 1, integer=True)
        if self.skip and not self.is_transcoder:
            raise ValueError("skip=True needs a transcoder: set hook_name_out to the hook it reconstructs")

    @property
    def is_transcoder(self) -> bool:
        return self.hook_name_out is not None and self.hook_name_out != self.hook_name

    @property
    def out_dim(self) -> int:
        return self.d_out or self.d_in

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["arch"] = self.arch
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DictConfig:
        d = dict(d)
        arch = d.pop("arch", None) or cls.arch
        config_cls, _ = architecture(arch)
        names = {f.name for f in dataclasses.fields(config_cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown {arch} config fields: {sorted(unknown)}")
        return config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class Dictionary(eqx.Module):
    """Abstract sparse dictionary: ``encode``, ``decode``, ``__call__`` on arrays of shape ``[..., d_in]``."""

    W_enc: Float[Array, "D M"]
    b_enc: Float[Array, M]
    W_dec: Float[Array, "M O"]
    b_dec: Float[Array, O]
    W_skip: Float[Array, "D O"] | None
    cfg: Any = eqx.field(static=True)
    arch: ClassVar[str] = ""

    # --------------------------------------------------------------- shared maps
    def pre_acts(self, x: Float[Array, "... D"]) -> Float[Array, "... M"]:
        if self.cfg.apply_b_dec_to_input and not self.cfg.is_transcoder:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    @abc.abstractmethod
    def activate(self, pre: Float[Array, "N M"], *, training: bool = False) -> Float[Array, "N M"]:
        """Latents from pre-activations (dense ``[N M]`` with zeros where inactive)."""

    def encode(self, x: Float[Array, "... D"]) -> Float[Array, "... M"]:
        lead = x.shape[:-1]
        z = self.activate(self.pre_acts(x.reshape(-1, x.shape[-1])), training=False)
        return z.reshape(*lead, -1)

    def decode(self, z: Float[Array, "... M"]) -> Float[Array, "... O"]:
        return z @ self.W_dec + self.b_dec

    def skip_term(self, x):
        return 0.0 if self.W_skip is None else x @ self.W_skip

    def __call__(self, x: Float[Array, "... D"]) -> Float[Array, "... O"]:
        return self.decode(self.encode(x)) + self.skip_term(x)

    # --------------------------------------------------------------- training
    def after_step(self, metrics: dict) -> Dictionary:
        """Non-gradient state updates after an optimizer step (e.g. a running threshold)."""
        return self

    @abc.abstractmethod
    def loss(self, x: Float[Array, "N D"], y: Float[Array, "N O"], ctx: LossContext) -> tuple[Array, dict]:
        """Scalar training loss and metrics: scalars, ``fired`` (bool ``[M]``: latents active in the batch) and,
        for architectures with an auxiliary loss, ``error`` (``y - y_hat``, ``[N O]``)."""

    def aux_loss(self, x: Float[Array, "N D"], y: Float[Array, "N O"], error: Float[Array, "N O"],
                 dead: Array) -> Array | None:
        """Auxiliary loss for dead latents, weighted by ``cfg.aux_coeff`` (None: the architecture has none).

        The trainer differentiates it separately, inside a ``lax.cond`` that skips it while no latent is dead:
        differentiating through a ``cond`` would keep ``[N M]`` residuals for the branch not taken."""
        return None


@dataclasses.dataclass(frozen=True)
class LossContext:
    """Per-step inputs a loss may use: which latents are dead, a warm-up factor for sparsity terms."""

    dead: Array  # bool [M]
    sparsity_scale: Array  # scalar in [0, 1]


def init_affine(cfg: DictConfig, key: PRNGKeyArray, dtype=jnp.float32) -> dict:
    """Unit-norm random decoder rows and the encoder tied to their transpose (Gao et al. 2024), zero biases."""
    k_dec, k_skip = jax.random.split(key)
    W_dec = jax.random.normal(k_dec, (cfg.width, cfg.out_dim), dtype)
    W_dec = W_dec / jnp.linalg.norm(W_dec, axis=-1, keepdims=True)
    if cfg.is_transcoder and cfg.d_in != cfg.out_dim:
        W_enc = jax.random.normal(jax.random.fold_in(k_dec, 1), (cfg.d_in, cfg.width), dtype) / jnp.sqrt(cfg.d_in)
    else:
        W_enc = W_dec.T
    return dict(
        W_enc=W_enc,
        b_enc=jnp.zeros((cfg.width,), dtype),
        W_dec=W_dec,
        b_dec=jnp.zeros((cfg.out_dim,), dtype),
        W_skip=jnp.zeros((cfg.d_in, cfg.out_dim), dtype) if cfg.skip else None,
    )


def create(cfg: DictConfig, key: PRNGKeyArray, dtype=jnp.float32) -> Dictionary:
    """A freshly initialised dictionary of ``cfg``'s architecture."""
    _, cls = architecture(cfg.arch)
    return cls.init(cfg, key, dtype)


def mse(y_hat, y):
    """Squared error summed over features, averaged over activations."""
    return jnp.mean(jnp.sum(jnp.square(y_hat - y), axis=-1))


def total_variance(y):
    return jnp.mean(jnp.sum(jnp.square(y - jnp.mean(y, axis=0)), axis=-1))
