"""Sparse dictionaries (SAEs and transcoders): the shared module, configs, and the architecture registry.

Axis letters: N activations (flattened batch × positions), D input dim, O output dim (= D for an SAE),
M dictionary latents, k active latents per activation.

A dictionary reads activations ``x [N D]`` at ``hook_name`` and reconstructs ``y [N O]``: the same
activations for an SAE, or those at ``hook_name_out`` for a transcoder (optionally with a linear skip
connection ``x W_skip``). Every architecture shares the affine maps; they differ in the activation
function between them and in the training loss.

An architecture is one file: a config class and a dictionary class, registered together by name. The classes
describe everything the rest of the package needs to know about them, so files, the command line and the trainer
hold no list of architectures:

- the config's ``options``: the fields ``interp train-sae`` sets (``--k``);
- the dictionary's ``saelens`` (a ``SAELensLayout``), ``to_saelens`` and ``from_saelens``: how it reads and
  writes SAELens's ``cfg.json`` + ``sae_weights.safetensors``;
- the dictionary's ``metrics``, ``step_values`` and ``aux``: what its loss reports to training histories, what
  only ``after_step`` reads, and an auxiliary loss with the config field that weights it;
- the jaxtyping annotations of its array fields: which axis of each is the latent axis M (for sharding).
"""

from __future__ import annotations

import abc
import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from interp.checks import check_range
from interp.kernels import matmul

REGISTRY: dict[str, tuple[type, type]] = {}


@dataclasses.dataclass(frozen=True)
class Option:
    """A config field that ``interp train-sae`` sets as ``--<field>`` (underscores become dashes): its help, and
    the range the command checks before any work is done (the config checks the value again)."""

    help: str
    integer: bool = False
    lo: float = 0
    lo_open: bool = False


@dataclasses.dataclass(frozen=True)
class SAELensLayout:
    """How an architecture maps onto SAELens's files (``cfg.json`` + ``sae_weights.safetensors``).

    architecture: the ``architecture`` that ``cfg.json`` names: the SAELens class that computes the same function
        at inference. A SAELens file that carries no interp config loads as the architecture registered under the
        same name, so only one that writes its own name reads SAELens's files.
    fields: integer config fields written at ``cfg.json``'s top level under their own names, and read from there.
    constants: further top-level fields, always these values.
    tensors: tensors beyond ``W_enc``, ``b_enc``, ``W_dec``, ``b_dec`` (and ``W_skip``), each ``[M]``, written by
        ``Dictionary.to_saelens`` and read by ``Dictionary.from_saelens``.
    """

    architecture: str
    fields: tuple[str, ...] = ()
    constants: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    tensors: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class AuxLoss:
    """An auxiliary loss (``Dictionary.aux_loss``) that the trainer adds to the main one, weighted by the config
    field ``coeff`` and reported in training histories as ``name``."""

    name: str
    coeff: str


def register(name: str, config_cls: type):
    """Class decorator: make an architecture available by ``name`` with its config class.

    The declarations the rest of the package reads are checked here, so a mistake in them fails at import."""

    def deco(cls):
        if name in REGISTRY:
            raise ValueError(f"architecture '{name}' is registered twice")
        if not (isinstance(config_cls, type) and issubclass(config_cls, DictConfig)):
            raise TypeError(f"architecture '{name}': the config class must subclass DictConfig, got {config_cls!r}")
        taken = {a for a, (c, _) in REGISTRY.items() if c is config_cls}
        if taken:
            raise ValueError(f"architecture '{name}': {config_cls.__name__} is already the config of {sorted(taken)}; "
                             "give each architecture a config class of its own (a subclass will do)")
        fields = {f.name for f in dataclasses.fields(config_cls)}
        layout = getattr(cls, "saelens", None)
        if not isinstance(layout, SAELensLayout):
            raise TypeError(f"architecture '{name}' declares no SAELens layout: set {cls.__name__}.saelens to a "
                            "SAELensLayout naming the SAELens architecture that computes the same function")
        named = [("options", n) for n in config_cls.options] + [("saelens.fields", n) for n in layout.fields]
        if cls.aux is not None:
            named.append(("aux.coeff", cls.aux.coeff))
        for where, field in named:
            if field not in fields:
                raise ValueError(f"architecture '{name}': {where} names '{field}', which is not a field of "
                                 f"{config_cls.__name__} (fields: {', '.join(sorted(fields))})")
        REGISTRY[name] = (config_cls, cls)
        cls.arch = config_cls.arch = name
        return cls

    return deco


def unregister(name: str) -> tuple[type, type]:
    """Remove the architecture registered under ``name`` and return its ``(config class, dictionary class)``."""
    pair = architecture(name)
    del REGISTRY[name]
    return pair


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
    arch: ClassVar[str] = ""  # set by ``register``
    options: ClassVar[Mapping[str, Option]] = {}  # fields the command line sets (``--k``)

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
    """Abstract sparse dictionary: ``encode``, ``decode``, ``__call__`` on arrays of shape ``[..., D]``.

    A subclass declares, besides its activation and loss, how it maps onto SAELens's files (``saelens``,
    ``to_saelens``, ``from_saelens``) and what its loss reports (``metrics``, ``step_values``, ``aux``)."""

    W_enc: Float[Array, "D M"]
    b_enc: Float[Array, " M"]
    W_dec: Float[Array, "M O"]
    b_dec: Float[Array, " O"]
    W_skip: Float[Array, "D O"] | None
    cfg: Any = eqx.field(static=True)
    arch: ClassVar[str] = ""  # set by ``register``
    saelens: ClassVar[SAELensLayout]
    # the scalars ``loss`` reports, kept in training histories (the trainer adds ``loss``, ``dead_fraction`` and
    # the auxiliary loss), and the values only ``after_step`` reads, which histories leave out
    metrics: ClassVar[tuple[str, ...]] = ("mse", "fvu", "l0")
    step_values: ClassVar[tuple[str, ...]] = ()
    aux: ClassVar[AuxLoss | None] = None  # set with ``aux_loss``

    @classmethod
    def init(cls, cfg: DictConfig, key: PRNGKeyArray, dtype=jnp.float32) -> Dictionary:
        """A freshly initialised dictionary (``init_affine``; subclasses add their own fields)."""
        return cls(**init_affine(cfg, key, dtype), cfg=cfg)

    # --------------------------------------------------------------- shared maps
    def pre_acts(self, x: Float[Array, "... D"]) -> Float[Array, "... M"]:
        """Pre-activations ``(x - b_dec) W_enc + b_enc`` (``x W_enc + b_enc`` for a transcoder)."""
        if self.cfg.apply_b_dec_to_input and not self.cfg.is_transcoder:
            x = x - self.b_dec
        return matmul(x, self.W_enc) + self.b_enc

    @abc.abstractmethod
    def activate(self, pre: Float[Array, "N M"], *, training: bool = False) -> Float[Array, "N M"]:
        """Latents from pre-activations (dense ``[N M]`` with zeros where inactive)."""

    def encode(self, x: Float[Array, "... D"]) -> Float[Array, "... M"]:
        """Latents of activations ``x``: dense, with zeros where inactive."""
        lead = x.shape[:-1]
        z = self.activate(self.pre_acts(x.reshape(-1, x.shape[-1])), training=False)
        return z.reshape(*lead, -1)

    def decode(self, z: Float[Array, "... M"]) -> Float[Array, "... O"]:
        """Reconstruction from latents ``z`` (without a transcoder's skip term)."""
        return matmul(z, self.W_dec) + self.b_dec

    def skip_term(self, x: Float[Array, "... D"]) -> Float[Array, "... O"] | float:
        """A transcoder's linear skip ``x W_skip`` (0 without one)."""
        return 0.0 if self.W_skip is None else matmul(x, self.W_skip)

    def __call__(self, x: Float[Array, "... D"]) -> Float[Array, "... O"]:
        return self.decode(self.encode(x)) + self.skip_term(x)

    # --------------------------------------------------------------- training
    def after_step(self, metrics: dict[str, Array]) -> Dictionary:
        """Non-gradient state updates after an optimizer step (e.g. a running threshold)."""
        return self

    @abc.abstractmethod
    def loss(self, x: Float[Array, "N D"], y: Float[Array, "N O"], ctx: LossContext) -> tuple[Float[Array, ""], dict]:
        """Scalar training loss and a dict of: the scalars ``metrics`` and ``step_values`` name, ``fired`` (bool
        ``[M]``: latents active in the batch) and, for architectures with an auxiliary loss, ``error`` (``y - y_hat``,
        ``[N O]``)."""

    def aux_loss(self, x: Float[Array, "N D"], y: Float[Array, "N O"], error: Float[Array, "N O"],
                 dead: Bool[Array, " M"]) -> Float[Array, ""] | None:
        """Auxiliary loss for dead latents, weighted by the config field ``aux.coeff`` names (None: the
        architecture has none).

        The trainer differentiates it separately, inside a ``lax.cond`` that skips it while no latent is dead:
        differentiating through a ``cond`` would keep ``[N M]`` residuals for the branch not taken."""
        return None

    # --------------------------------------------------------------- SAELens files
    def to_saelens(self) -> dict[str, Float[Array, " M"]]:
        """The tensors ``saelens.tensors`` names, as SAELens reads them."""
        return {}

    @classmethod
    def from_saelens(cls, cfg: DictConfig, tensors: dict[str, Float[np.ndarray, " M"]], dtype) -> dict[str, Array]:
        """The fields beyond the affine maps (as ``dtype``) from the tensors ``to_saelens`` wrote, each already
        checked for its shape ``[M]``, a floating dtype and finite values. A ``ValueError`` says why tensors cannot
        be this architecture's."""
        return {}

    @classmethod
    def config_from_saelens(cls, tensors: dict[str, np.ndarray]) -> dict:
        """Config fields beyond ``saelens.fields`` for a SAELens file that carries no interp config (whose
        ``tensors`` are not checked yet): only enough to make a valid config, the weights carry the rest."""
        return {}

    @classmethod
    def latent_axes(cls) -> dict[str, int]:
        """Array field -> the position of the latent axis M in its annotated shape (fields without one left out)."""
        axes = {}
        for name, hint in typing.get_type_hints(cls).items():
            for t in typing.get_args(hint) or (hint,):  # ``X | None`` holds the array type among its arguments
                dims = [getattr(d, "name", None) for d in getattr(t, "dims", ())]
                if "M" in dims:
                    axes[name] = dims.index("M")
        return axes


def nonnegative(name: str, t: np.ndarray) -> np.ndarray:
    """``t`` when it holds no negative values (thresholds), else a ``ValueError`` that names the tensor."""
    if (t < 0).any():
        raise ValueError(f"{name} holds negative values, which no trained dictionary has; the file is corrupt")
    return t


@dataclasses.dataclass(frozen=True)
class LossContext:
    """Per-step inputs a loss may use: which latents are dead, a warm-up factor for sparsity terms."""

    dead: Bool[Array, " M"]
    sparsity_scale: Float[Array, ""]  # in [0, 1]


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


def mse(y_hat: Float[Array, "N O"], y: Float[Array, "N O"]) -> Float[Array, ""]:
    """Squared error summed over features, averaged over activations."""
    return jnp.mean(jnp.sum(jnp.square(y_hat - y), axis=-1))


def total_variance(y: Float[Array, "N O"]) -> Float[Array, ""]:
    """Squared distance from the mean activation, summed over features, averaged over activations."""
    return jnp.mean(jnp.sum(jnp.square(y - jnp.mean(y, axis=0)), axis=-1))
