"""The linear replacement model: the model with every transcoder's write taken as given, and attention patterns
and normalisation scales frozen at their values on one prompt, so the residual stream is linear in what is
written into it. Tracing (:mod:`._trace`) differentiates it; frozen interventions (:mod:`._interventions`) run it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from interp.hooks import act_name
from interp.models import attention_inputs
from interp.sae.clt import CrossLayerTranscoder
from interp.sae.transcoders import Transcoders

# what the replacement model replaces the MLPs with: one transcoder per layer, or one cross-layer transcoder
Replacement = Transcoders | CrossLayerTranscoder


def _frozen_names(model, tc: Replacement) -> list[str]:
    L = model.n_layers
    names = ["hook_embed", "ln_final.hook_scale", "ln_final.hook_normalized"]
    for l in range(L):
        names += [f"blocks.{l}.ln1.hook_scale", f"blocks.{l}.ln2.hook_scale", act_name("pattern", l),
                  tc.hook_in.format(layer=l), tc.hook_out.format(layer=l)]
    return names


def frozen_forward(
    model, tc: Replacement, tokens: Int[Array, "B T"], frozen: dict[str, Array], embed_w: Float[Array, "B T D"],
    writes: Float[Array, "L B T D"], top: Int[Array, ""] | None = None,
) -> tuple[Float[Array, "L B T D"], Float[Array, "B T D"], Float[Array, "B T V"]]:
    """The linear replacement model: residual stream built from ``embed_w [B T D]`` and MLP writes
    ``writes [L B T D]`` (what is written to each MLP output; each transcoder's skip term on its live input is
    added), with attention patterns and norm scales taken from ``frozen``. Returns (transcoder inputs
    ``[L B T D]``, final normalised stream ``[B T D]``, logits).

    With ``top`` (a traced layer index) only blocks ``0..top`` run; the later ones pass the stream through, and
    their transcoder inputs come back as zeros. What reads at most the transcoder input of layer ``top`` is
    unchanged, and its vector-Jacobian product skips the blocks above (``lax.cond``, one compilation)."""
    reads = {}
    outs = {tc.hook_out.format(layer=l): l for l in range(model.n_layers)}
    ins = {tc.hook_in.format(layer=l): l for l in range(model.n_layers)}

    def hk(name, x):
        if name == "hook_embed":
            return embed_w.astype(x.dtype)
        if name.endswith("hook_scale") or name.endswith("attn.hook_pattern"):
            return frozen[name].astype(x.dtype)
        if name in ins:
            reads[ins[name]] = x
        if name in outs:
            l = outs[name]
            return (writes[l] + tc.skip(l, reads[l])).astype(x.dtype)
        if name == "ln_final.hook_normalized":
            reads["final"] = x
        return x

    if top is None:
        logits = model.forward(tokens, hk)
        return jnp.stack([reads[l] for l in range(model.n_layers)]), reads["final"], logits

    positions, mask = attention_inputs(tokens.shape, None, None)
    x = model.embed(tokens, hk, positions)
    for layer, block in enumerate(model.blocks):
        def run(x, layer=layer, block=block):
            y = block(x, hk, f"blocks.{layer}", positions, mask)
            if layer not in reads:
                raise ValueError(f"{tc.hook_in.format(layer=layer)} is not a hook point of block {layer}")
            return y, reads.pop(layer).astype(x.dtype)

        x, reads[layer] = jax.lax.cond(layer <= top, run, lambda x: (x, jnp.zeros_like(x)), x)
    logits = model.unembed_logits(model.ln_final(x, hk, "ln_final"))
    return jnp.stack([reads[l] for l in range(model.n_layers)]), reads["final"], logits
