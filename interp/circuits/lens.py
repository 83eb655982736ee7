"""Logit lens: read the residual stream after each block through the final norm and the unembedding."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from interp.hooks._spec import NOOP


@dataclasses.dataclass(frozen=True)
class LensResult:
    """``logits [L+1, B, T, V]``: row 0 reads the embedding, row l+1 the output of block l
    (the last row equals the model's logits). ``labels`` names the rows."""

    logits: Float[Array, "L B T V"]
    labels: tuple[str, ...]

    def probs(self) -> Float[Array, "L B T V"]:
        return jax.nn.softmax(self.logits.astype(jnp.float32), axis=-1)


def logit_lens(model, tokens, **kwargs) -> LensResult:
    """Logit lens over every block for ``tokens`` (ids or text); extra kwargs go to ``run_with_cache``."""
    names = ["hook_embed"] + [f"blocks.{l}.hook_resid_post" for l in range(model.n_layers)]
    _, cache = model.run_with_cache(tokens, names, return_logits=False, **kwargs)
    resid = jnp.stack([cache[n] for n in names])
    logits = _read_out(model, resid)
    labels = ("embed",) + tuple(f"block {l}" for l in range(model.n_layers))
    return LensResult(logits=logits, labels=labels)


@jax.jit
def _read_out(model, resid):
    return jax.vmap(lambda r: model.ln_final(r, NOOP, "ln_final") @ model.W_U)(resid)


def top_tokens(lens: LensResult, batch: int = 0, pos: int = -1) -> list[tuple[int, float]]:
    """(token id, probability) of the top prediction at each lens row."""
    p = np.asarray(lens.probs()[:, batch, pos])
    return [(int(row.argmax()), float(row.max())) for row in p]
