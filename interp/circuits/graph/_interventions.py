"""Interventions: set feature activations and see the next-token logits change, in the real model with the
transcoders spliced in, or in the frozen replacement model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from jaxtyping import Float, Int

from interp.circuits.graph._data import Graph
from interp.circuits.graph._replacement import Replacement, _frozen_names, frozen_forward
from interp.results import Result, Summary


def _set_latents(z, name, pos, feat, values):
    return z.at[:, pos, feat].set(values.astype(z.dtype))


def feature_changes(graph: Graph, nodes, scale: float = 0.0) -> list[tuple[int, int, int, float]]:
    """(layer, position, feature, new activation) that scale the given feature nodes (indices, or a supernode
    name) by ``scale`` (0 ablates)."""
    if isinstance(nodes, str):
        if nodes not in graph.supernodes:
            raise KeyError(f"no supernode '{nodes}'; have {sorted(graph.supernodes)}")
        nodes = graph.supernodes[nodes]
    out = []
    for n in nodes:
        if graph.kind(int(n)) != "feature":
            raise ValueError(f"{graph.label(int(n))} is not a feature node; only features can be ablated or steered")
        j = int(n) - graph.slices()["feature"].start
        out.append((int(graph.feature_layer[j]), int(graph.feature_pos[j]), int(graph.feature_id[j]),
                    float(graph.feature_act[j]) * scale))
    return out


@dataclasses.dataclass(frozen=True)
class Intervention(Result):
    """Next-token logits ``before [V]`` and ``after [V]`` an intervention, at the last position."""

    before: Float[np.ndarray, " V"]
    after: Float[np.ndarray, " V"]

    def _summary(self) -> Summary:
        d = self.after - self.before
        order = np.argsort(-np.abs(d), kind="stable")[:8]
        facts = {"top before": f"#{int(np.argmax(self.before))}", "top after": f"#{int(np.argmax(self.after))}",
                 "largest |logit change|": float(np.abs(d).max())}
        return Summary("intervention on the next-token logits", {"vocab": len(self.before)}, facts,
                       [(f"#{int(t)}", float(d[t])) for t in order], "largest logit changes")

    def change(self, token: int) -> float:
        """Change of the token's raw logit."""
        return float(self.after[token] - self.before[token])

    def centered_change(self, token: int) -> float:
        """Change of the token's logit minus the mean logit (what graph logit nodes measure)."""
        return float((self.after[token] - self.after.mean()) - (self.before[token] - self.before.mean()))

    def logprob_change(self, token: int) -> float:
        """Change of the token's log-probability."""
        lb, la = jax.nn.log_softmax(self.before), jax.nn.log_softmax(self.after)
        return float(la[token] - lb[token])

    def top(self, tokenizer=None, k: int = 5) -> list[tuple[str, float, float]]:
        """(token, probability before, after) for the ``k`` most likely tokens after the intervention."""
        pb, pa = jax.nn.softmax(self.before), jax.nn.softmax(self.after)
        order = np.argsort(-np.asarray(pa))[:k]
        name = (lambda t: tokenizer.to_string([int(t)])) if tokenizer is not None else str
        return [(name(t), float(pb[t]), float(pa[t])) for t in order]


def intervene(model, tc: Replacement, prompt: str | Int[ArrayLike, " T"],
              changes: Sequence[tuple[int, int, int, float]], *, mode: str = "real") -> Intervention:
    """Set features ``(layer, position, feature, value)`` and report the last position's logits.

    ``mode="real"``: the real model with every transcoder spliced in with its error term (so without changes it
    is the model itself); the set latents replace the transcoder's, and everything downstream recomputes.
    ``mode="frozen"``: the replacement model with attention patterns, norm scales and all other feature
    activations frozen, so only the direct linear effects of the changes propagate.
    """
    tokens, _, _ = model.check_inputs(prompt, None, None)
    before = np.asarray(model(tokens)[0, -1], np.float32)
    if mode == "real":
        by_layer: dict[int, list] = {}
        for l, p, f, v in changes:
            by_layer.setdefault(int(l), []).append((p, f, v))
        edits = []
        for l, items in by_layer.items():
            pos, feat, vals = (np.asarray(x) for x in zip(*items))
            edits.append((tc.latent_hook(l), _set_latents, jnp.asarray(pos, jnp.int32), jnp.asarray(feat, jnp.int32),
                          jnp.asarray(vals, jnp.float32)))
        after = model.run_with_hooks(tokens, edits, splices=tc.splices(error_term=True))
        return Intervention(before, np.asarray(after[0, -1], np.float32))
    if mode != "frozen":
        raise ValueError(f"mode must be 'real' or 'frozen', got {mode!r}")
    L = model.n_layers
    _, cache = model.run_with_cache(tokens, _frozen_names(model, tc))
    frozen = {n: cache[n] for n in cache if n.endswith("hook_scale") or n.endswith("attn.hook_pattern")}
    writes = jnp.stack([cache[tc.hook_out.format(layer=l)] for l in range(L)])
    n2 = jnp.stack([cache[tc.hook_in.format(layer=l)] for l in range(L)])
    writes = writes - jnp.stack([jnp.broadcast_to(jnp.asarray(tc.skip(l, n2[l]), writes.dtype), writes.shape[1:])
                                 for l in range(L)])
    for l, p, f, v in changes:
        old = tc.encode_layer(l, n2[l, 0, p])[f]
        rows = tc.decoder_rows(l, jnp.asarray([f]))[0]  # [R D]: its writes to the MLP outputs from layer l on
        writes = writes.at[l:l + len(rows), 0, p].add((v - old) * rows)
    _, _, logits = frozen_forward(model, tc, tokens, frozen, cache["hook_embed"], writes)
    return Intervention(before, np.asarray(logits[0, -1], np.float32))
