"""Logit lens: read the residual stream after each block through the final norm and the unembedding."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from interp.circuits.dla import apply_final_norm
from interp.hooks import NOOP
from interp.results import Result, Summary, token_texts


@dataclasses.dataclass(frozen=True)
class LensResult(Result):
    """``logits [L+1, B, T, V]``: row 0 reads the embedding, row l+1 the output of block l
    (the last row equals the model's logits). ``labels`` names the rows.

    ``tokens [B T]`` are the prompt's ids, ``scale`` the normalisation the rows were read with (``"own"`` or
    ``"final"``) and ``tokenizer`` turns ids into text for figures and the summary (``None``: ``#id``).
    """

    logits: Float[Array, "L B T V"]
    labels: tuple[str, ...]
    tokens: np.ndarray | None = None
    scale: str = "own"
    tokenizer: Any = dataclasses.field(default=None, repr=False, compare=False)

    def probs(self) -> Float[Array, "L B T V"]:
        """Softmax of each readout over the vocabulary (float32)."""
        return jax.nn.softmax(self.logits.astype(jnp.float32), axis=-1)

    def top(self, batch: int = 0, pos: int = -1) -> list[tuple[str, int, float]]:
        """(row label, top token id, its probability) at each readout row for one prompt and position."""
        return [(lab, t, p) for lab, (t, p) in zip(self.labels, top_tokens(self, batch, pos))]

    def _summary(self) -> Summary:
        L, B, T, V = self.logits.shape
        rows = self.top(0, -1)
        keep = sorted(set(np.linspace(0, L - 1, min(L, 8)).round().astype(int)))
        text = token_texts(self.tokenizer, [rows[i][1] for i in keep])
        width = max(len(t) for t in text)
        top = [(rows[i][0], f"{t:<{width}}  {rows[i][2]:.4f}") for i, t in zip(keep, text)]
        return Summary(f"logit lens, {self.scale} scale", {"readout": L, "batch": B, "pos": T, "vocab": V},
                       top=top, top_title="top token (probability) at the last position of prompt 0")


def logit_lens(model, tokens: Int[Array, "B T"] | str, *, scale: str = "own", **kwargs) -> LensResult:
    """Logit lens over every block for ``tokens`` (ids or text); extra kwargs go to ``run_with_cache``.

    ``scale="own"`` normalises each layer's residual stream by its own RMS (the usual logit lens);
    ``"final"`` divides by the final norm's scale from the run (``ln_final.hook_scale``), which keeps the
    map linear, so the difference of consecutive rows is exactly what that block adds to the logits. On a model
    that soft-caps its logits, ``"own"`` rows are capped as the model's are and ``"final"`` rows are the logits
    before the cap (the cap is not linear), which are what :func:`direct_logit_attribution` splits.
    """
    if scale not in ("own", "final"):
        raise ValueError(f"scale must be 'own' or 'final', got {scale!r}")
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in range(model.n_layers)]
    if scale == "final":
        names.append("ln_final.hook_scale")
    toks, mask, _ = model.check_inputs(tokens, kwargs.pop("attention_mask", None), None)
    _, cache = model.run_with_cache(toks, names, return_logits=scale == "final", attention_mask=mask, **kwargs)
    resid = jnp.stack([cache[n] for n in names if n != "ln_final.hook_scale"])
    logits = _read_out(model, resid) if scale == "own" else _read_out_frozen(model, resid, cache["ln_final.hook_scale"])
    labels = ("embed",) + tuple(f"block {l}" for l in range(model.n_layers))
    return LensResult(logits=logits, labels=labels, tokens=np.asarray(toks), scale=scale,
                      tokenizer=getattr(model, "tokenizer", None))


@jax.jit
def _read_out(model, resid):
    return jax.vmap(lambda r: model.unembed_logits(model.ln_final(r, NOOP, "ln_final")))(resid)


@jax.jit
def _read_out_frozen(model, resid, scale):
    logits = apply_final_norm(model, resid, scale) @ model.W_U
    return logits if model.b_U is None else logits + model.b_U


def top_tokens(lens: LensResult, batch: int = 0, pos: int = -1) -> list[tuple[int, float]]:
    """(token id, probability) of the top prediction at each lens row."""
    p = np.asarray(jax.nn.softmax(lens.logits[:, batch, pos].astype(jnp.float32), axis=-1))
    return [(int(row.argmax()), float(row.max())) for row in p]

