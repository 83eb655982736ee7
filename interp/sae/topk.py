"""TopK SAE with the AuxK loss for dead latents (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

Each activation keeps its k largest (ReLU'd) pre-activations. The decoder is applied sparsely: a gather of
the k active rows, not a dense matmul. AuxK reconstructs the residual error with the top ``aux_k`` dead
latents, so latents that stopped firing get gradient again.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import ClassVar

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from interp.checks import check_range
from interp.kernels import matmul, sparse_decode, top_k
from interp.kernels.sparse_decode import scatter_add_rows
from interp.sae._base import (
    AuxLoss,
    DictConfig,
    Dictionary,
    LossContext,
    Option,
    SAELensLayout,
    register,
    total_variance,
)


@dataclasses.dataclass(frozen=True)
class TopKConfig(DictConfig):
    """Config of a TopK SAE: ``k`` active latents per activation; ``aux_k``, ``aux_coeff`` and
    ``aux_batch_fraction`` set the AuxK loss that revives dead latents; ``normalize_decoder`` keeps decoder rows at
    unit norm."""

    k: int = 32
    aux_k: int | None = None  # dead latents used by AuxK; default d_in // 2
    aux_coeff: float = 1 / 32
    aux_batch_fraction: float = 0.125  # share of each batch the AuxK loss is estimated on
    normalize_decoder: bool = True
    options: ClassVar[Mapping[str, Option]] = {"k": Option("active latents per token", integer=True, lo=1)}

    def __post_init__(self):
        super().__post_init__()
        check_range("k", self.k, 1, integer=True)
        if self.aux_k is not None:
            check_range("aux_k", self.aux_k, 1, integer=True)
        check_range("aux_coeff", self.aux_coeff, 0)
        check_range("aux_batch_fraction", self.aux_batch_fraction, 0, 1, lo_open=True)
        if not 0 < self.k < self.width:
            raise ValueError(f"k={self.k} must be between 1 and width-1={self.width - 1}")

    def aux_rows(self, n: int) -> int:
        return min(n, max(int(n * self.aux_batch_fraction), 256))

    @property
    def k_aux(self) -> int:
        return min(self.aux_k or max(self.d_in // 2, 1), self.width)


def scatter_dense(values, indices, width: int):
    """Dense ``[N M]`` latents from ``values, indices [N k]``."""
    rows = jnp.arange(values.shape[0])[:, None]
    return jnp.zeros((values.shape[0], width), values.dtype).at[rows, indices].set(values)


def auxk_loss(model: Dictionary, x, y, error, dead, k_aux: int, rows: int | None = None):
    """AuxK: reconstruct ``error`` (held fixed) from the top ``k_aux`` pre-activations of dead latents,
    normalised like the main FVU and scaled down while fewer than ``k_aux`` latents are dead.

    It is estimated on the first ``rows`` activations of the batch (shuffled, so an unbiased sample) and
    decoded densely: with hundreds of auxiliary latents per row one matmul beats hundreds of gathers. While at most
    ``k_aux`` latents are dead, every dead one is selected, so the top-k (costly for hundreds of slots) is skipped:
    the codes are the dead latents' rectified pre-activations, the same matrix the selection would build."""
    if rows is not None and rows < x.shape[0]:
        x, y, error = x[:rows], y[:rows], error[:rows]
    pre = model.pre_acts(x)

    def every_dead(pre):
        return jnp.where(dead[None, :], jax.nn.relu(pre), 0.0).astype(pre.dtype)

    def top_dead(pre):
        vals, idx = top_k(jnp.where(dead[None, :], pre, -jnp.inf), k_aux)
        vals = jnp.where(jnp.isfinite(vals), jax.nn.relu(vals), 0.0).astype(pre.dtype)
        return scatter_dense(vals, idx, pre.shape[-1])

    e_hat = jax.lax.cond(jnp.sum(dead) <= k_aux, every_dead, top_dead, pre) @ model.W_dec
    error = jax.lax.stop_gradient(error)
    scale = jnp.minimum(jnp.sum(dead).astype(pre.dtype) / k_aux, 1.0)
    return scale * jnp.mean(jnp.sum(jnp.square(e_hat - error), axis=-1)) / total_variance(y)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def topk_codes(x, shift, W_enc, b_enc, k: int):
    """``relu(top_k((x - shift) W_enc + b_enc, k))`` as ``(values, indices) [N k]``.

    Its gradient touches only the k selected latents per row (scatter-adds into ``[M D]``) instead of a dense
    ``[N M]`` cotangent and two more dense matmuls; the shift's gradient is one mat-vec,
    ``-W_enc @ d_b_enc``, not a sum over a per-row ``[N D]`` cotangent (which XLA drops when ``x`` is data)."""
    vals, idx = top_k(matmul(x - shift, W_enc) + b_enc, k)
    return jax.nn.relu(vals), idx


def _topk_codes_fwd(x, shift, W_enc, b_enc, k):
    vals, idx = topk_codes(x, shift, W_enc, b_enc, k)
    return (vals, idx), (x - shift, W_enc, vals, idx)


def _topk_codes_bwd(k, res, cot):
    xc, W_enc, vals, idx = res
    g = jnp.where(vals > 0, cot[0], 0.0).astype(xc.dtype)  # relu's gradient; indices carry none
    g, idx = jax.lax.optimization_barrier((g, idx))
    M = W_enc.shape[1]
    d_W_enc = scatter_add_rows(g, xc, idx, M).astype(xc.dtype).T
    d_b_enc = jnp.zeros((M,), g.dtype).at[idx.reshape(-1)].add(g.reshape(-1))
    d_x = sparse_decode(g, idx, W_enc.T)
    return d_x, -(W_enc @ d_b_enc), d_W_enc, d_b_enc


topk_codes.defvjp(_topk_codes_fwd, _topk_codes_bwd)


def fired_from_sparse(values, indices, width: int):
    return jnp.zeros((width,), bool).at[indices.reshape(-1)].max((values > 0).reshape(-1))


@register("topk", TopKConfig)
class TopKSAE(Dictionary):
    """Keeps each activation's ``k`` largest pre-activations and decodes them sparsely (Gao et al. 2024);
    AuxK revives dead latents."""

    saelens = SAELensLayout("topk", fields=("k",), constants={"rescale_acts_by_decoder_norm": False})
    aux = AuxLoss("auxk", "aux_coeff")

    def select(self, pre: Float[Array, "N M"]) -> tuple[Float[Array, "N k"], Int[Array, "N k"]]:
        vals, idx = top_k(pre, self.cfg.k)
        return jax.nn.relu(vals), idx

    def encoder_shift(self) -> Float[Array, " D"]:
        if self.cfg.apply_b_dec_to_input and not self.cfg.is_transcoder:
            return self.b_dec
        return jnp.zeros((self.W_enc.shape[0],), self.W_enc.dtype)

    def activate(self, pre: Float[Array, "N M"], *, training: bool = False) -> Float[Array, "N M"]:
        vals, idx = self.select(pre)
        return scatter_dense(vals, idx, pre.shape[-1])

    def encode_sparse(self, x: Float[Array, "N D"]) -> tuple[Float[Array, "N k"], Int[Array, "N k"]]:
        """``(values, indices) [N k]`` of the active latents."""
        return topk_codes(x, self.encoder_shift(), self.W_enc, self.b_enc, self.cfg.k)

    def __call__(self, x: Float[Array, "... D"]) -> Float[Array, "... O"]:
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        vals, idx = self.encode_sparse(flat)
        y = sparse_decode(vals, idx, self.W_dec) + self.b_dec + self.skip_term(flat)
        return y.reshape(*lead, -1)

    def loss(self, x: Float[Array, "N D"], y: Float[Array, "N O"], ctx: LossContext) -> tuple[Float[Array, ""], dict]:
        vals, idx = self.encode_sparse(x)
        y_hat = sparse_decode(vals, idx, self.W_dec) + self.b_dec + self.skip_term(x)
        error = y - y_hat
        mse = jnp.mean(jnp.sum(jnp.square(error), axis=-1))
        fvu = mse / total_variance(y)
        return fvu, {"mse": mse, "fvu": fvu, "l0": jnp.mean(jnp.sum(vals > 0, axis=-1)),
                     "fired": fired_from_sparse(vals, idx, self.cfg.width), "error": error}

    def aux_loss(self, x: Float[Array, "N D"], y: Float[Array, "N O"], error: Float[Array, "N O"],
                 dead: Bool[Array, " M"]) -> Float[Array, ""]:
        return auxk_loss(self, x, y, error, dead, self.cfg.k_aux, self.cfg.aux_rows(x.shape[0]))
