"""How good a dictionary is: reconstruction (FVU), sparsity (L0, dead/dense latents), and downstream
fidelity with the dictionary spliced into the model (CE loss recovered against zero-ablation, KL)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float, Int

from interp.hooks import Splice
from interp.results import Result, Summary


@dataclasses.dataclass(frozen=True)
class DictionaryMetrics(Result):
    """What ``evaluate`` measures over ``n_tokens`` tokens: FVU and explained variance, L0, dead and dense fractions,
    and with the dictionary spliced into the model the next-token loss (clean, spliced, zero-ablated, the fraction
    recovered) and the KL divergence to the clean run (None where not measured)."""

    fvu: float  # fraction of variance unexplained
    explained_variance: float
    l0: float  # mean active latents per activation
    dead_fraction: float  # latents that never fired on the evaluation tokens
    dense_fraction: float  # latents firing on more than ``dense_threshold`` of tokens
    ce_clean: float | None = None
    ce_spliced: float | None = None
    ce_zero_ablation: float | None = None
    ce_loss_recovered: float | None = None
    kl_to_clean: float | None = None
    n_tokens: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def _summary(self) -> Summary:
        return Summary("dictionary metrics", {"tokens": self.n_tokens},
                       {k: v for k, v in self.as_dict().items() if v is not None and k != "n_tokens"})


def _next_token_ce(logits, tokens):
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))


def _kl(clean_logits, logits):
    p = jax.nn.log_softmax(clean_logits.astype(jnp.float32), axis=-1)
    q = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.mean(jnp.sum(jnp.exp(p) * (p - q), axis=-1))


def reconstruction_metrics(dictionary, x: Float[ArrayLike, "N D"], y: Float[ArrayLike, "N O"] | None = None,
                           dense_threshold: float = 0.1) -> dict[str, float]:
    """FVU, L0, dead and dense fractions on activations ``x [N D]`` (targets ``y`` for transcoders)."""
    x = jnp.asarray(x, jnp.float32)
    y = x if y is None else jnp.asarray(y, jnp.float32)
    z = dictionary.encode(x)
    y_hat = dictionary(x)
    resid = jnp.sum(jnp.square(y - y_hat))
    total = jnp.sum(jnp.square(y - jnp.mean(y, axis=0)))
    freq = jnp.mean((z > 0).astype(jnp.float32), axis=0)
    fvu = float(resid / total)
    return {"fvu": fvu, "explained_variance": 1 - fvu, "l0": float(jnp.mean(jnp.sum(z > 0, axis=-1))),
            "dead_fraction": float(jnp.mean(freq == 0)), "dense_fraction": float(jnp.mean(freq > dense_threshold))}


def _zero_from(x, name, start):
    """Zero-ablate positions ``>= start`` (``start`` is traced)."""
    keep = (jnp.arange(x.shape[1]) < start)[None, :, None]
    return jnp.where(keep, x, jnp.zeros_like(x))


def evaluate(model, dictionary, tokens: Int[ArrayLike, "B T"], *, batch: int = 8, dense_threshold: float = 0.1,
             skip_positions: int = 0) -> DictionaryMetrics:
    """All metrics on ``tokens [B T]``: the dictionary reads its ``cfg.hook_name`` (and writes
    ``cfg.hook_name_out`` for a transcoder) inside ``model``. With ``skip_positions`` the first positions
    of each sequence are left to the model (not spliced, not ablated, not counted in FVU/L0), as for a
    dictionary trained without them."""
    cfg = dictionary.cfg
    hook_in, hook_out = cfg.hook_name, cfg.hook_name_out or cfg.hook_name
    tokens = np.asarray(tokens)
    names = [hook_in] + ([hook_out] if hook_out != hook_in else [])
    xs, ys, ce, ce_s, ce_z, kl = [], [], [], [], [], []
    splice = Splice(dictionary, hook_in, hook_out, skip_positions=skip_positions)
    sp = skip_positions
    for i in range(0, len(tokens), batch):
        t = tokens[i:i + batch]
        logits, cache = model.run_with_cache(t, names=names)
        xs.append(np.asarray(cache[hook_in])[:, sp:].reshape(-1, cache[hook_in].shape[-1]))
        ys.append(np.asarray(cache[hook_out])[:, sp:].reshape(-1, cache[hook_out].shape[-1]))
        spliced = model.run_with_hooks(t, splices=[splice])
        zeroed = model.run_with_hooks(t, [(hook_out, _zero_from, sp)])
        tj = jnp.asarray(t)
        ce.append(float(_next_token_ce(logits, tj)))
        ce_s.append(float(_next_token_ce(spliced, tj)))
        ce_z.append(float(_next_token_ce(zeroed, tj)))
        kl.append(float(_kl(logits, spliced)))
    rec = reconstruction_metrics(dictionary, np.concatenate(xs), np.concatenate(ys) if hook_out != hook_in else None,
                                 dense_threshold)
    c, s, z = float(np.mean(ce)), float(np.mean(ce_s)), float(np.mean(ce_z))
    return DictionaryMetrics(**rec, ce_clean=c, ce_spliced=s, ce_zero_ablation=z,
                             ce_loss_recovered=(z - s) / (z - c) if z != c else float("nan"),
                             kl_to_clean=float(np.mean(kl)), n_tokens=int(tokens.size))
