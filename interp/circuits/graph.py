"""Attribution graphs over per-layer transcoders (circuit tracing as in Ameisen et al., 2025).

The *replacement model* is the model with each MLP replaced by a transcoder that reads the MLP's normalised
input (``blocks.{l}.ln2.hook_normalized``) and writes its output (``blocks.{l}.hook_mlp_out``), with every
attention pattern and normalisation scale frozen at its value on the traced prompt, and an *error node* per
layer and position holding what the transcoder misses. With those frozen, the residual stream is a linear
function of what is written into it: token embeddings, active features (activation x decoder row) and error
nodes. So the direct effect of one node on another is exact and computed with vector-Jacobian products:
the gradient of a target (a feature's pre-activation, or a logit minus the mean logit) with respect to every
write, dotted with each source's write. Targets are processed in batches under ``jit``, so memory stays bounded
by ``batch_size`` whatever the prompt length.

Node order in a :class:`Graph`: features, then error nodes (layer-major, ``[L, T]``), then token embeddings
(``[T]``), then logits. ``adjacency[t, s]`` is the direct effect of node ``s`` on node ``t``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from interp._io import atomic_file
from interp.hooks import act_name
from interp.results import Result, Summary
from interp.sae.transcoders import HOOK_IN, HOOK_OUT, Transcoders

__all__ = ["HOOK_IN", "HOOK_OUT", "Graph", "Intervention", "Transcoders", "auto_supernodes", "feature_changes",
           "frozen_forward", "intervene", "prune", "trace"]


# ---------------------------------------------------------------------------------------------- the linear replacement
def _frozen_names(model, tc: Transcoders) -> list[str]:
    L = model.n_layers
    names = ["hook_embed", "ln_final.hook_scale", "ln_final.hook_normalized"]
    for l in range(L):
        names += [f"blocks.{l}.ln1.hook_scale", f"blocks.{l}.ln2.hook_scale", act_name("pattern", l),
                  tc.hook_in.format(layer=l), tc.hook_out.format(layer=l)]
    return names


def frozen_forward(model, tc: Transcoders, tokens, frozen: dict, embed_w, writes):
    """The linear replacement model: residual stream built from ``embed_w [B T D]`` and MLP writes
    ``writes [L B T D]`` (plus each transcoder's skip term on its live input), with attention patterns and
    norm scales taken from ``frozen``. Returns (transcoder inputs ``[L B T D]``, final normalised stream
    ``[B T D]``, logits)."""
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
            d = tc.dictionaries[l]
            skip = d.skip_term(reads[l]) if d.W_skip is not None else 0.0
            return (writes[l] + skip).astype(x.dtype)
        if name == "ln_final.hook_normalized":
            reads["final"] = x
        return x

    logits = model.forward(tokens, hk)
    return jnp.stack([reads[l] for l in range(model.n_layers)]), reads["final"], logits


@dataclasses.dataclass(frozen=True)
class _Active:
    """Active features per (layer, position), padded to ``k`` slots: ids, activations, written vectors."""

    ids: np.ndarray  # [L T k]
    acts: np.ndarray  # [L T k]
    writes: jax.Array  # [L T k D]


@eqx.filter_jit
def _max_active(tc: Transcoders, n2, skip_positions: int):
    counts = [jnp.max(jnp.sum(d.encode(n2[l])[skip_positions:] > 0, axis=-1)) for l, d in enumerate(tc.dictionaries)]
    return jnp.max(jnp.stack(counts))


@eqx.filter_jit
def _encode_all(tc: Transcoders, n2, skip_positions: int, k: int):
    """Activations of every transcoder on its inputs ``n2 [L T D]`` -> top-k (values, ids) per position and
    the reconstruction (with skip term)."""
    vals, ids, recons = [], [], []
    for l, d in enumerate(tc.dictionaries):
        a = d.encode(n2[l])
        a = a.at[:skip_positions].set(0.0)
        v, i = jax.lax.top_k(a, k)
        vals.append(v)
        ids.append(i)
        # reconstruct from the kept slots only: anything dropped belongs to the error node
        kept = jnp.zeros_like(a).at[jnp.arange(a.shape[0])[:, None], i].set(v)
        recons.append(d.decode(kept) + (d.skip_term(n2[l]) if d.W_skip is not None else 0.0))
    return jnp.stack(vals), jnp.stack(ids), jnp.stack(recons)


@eqx.filter_jit
def _rows(model, tc, tokens, frozen, embed_w, writes, at_final, layer, pos, vec, act_writes, errors):
    """Incoming direct effects of a batch of N targets. Target i reads direction ``vec[i] [D]`` at position
    ``pos[i]`` of the transcoder input of ``layer[i]`` (or of the final normalised stream when ``at_final[i]``).
    Returns (features [N L T k], errors [N L T], embeddings [N T])."""
    L, T, D = act_writes.shape[0], act_writes.shape[1], act_writes.shape[-1]

    def f(e, w):
        n2, nf, _ = frozen_forward(model, tc, tokens, frozen, e, w)
        return n2[:, 0], nf[0]

    _, vjp = jax.vjp(f, embed_w, writes)

    def one(fin, l, p, v):
        v = v.astype(jnp.float32)
        ci = jnp.zeros((L, T, D), jnp.float32).at[l, p].set(jnp.where(fin, 0.0, v))
        cf = jnp.zeros((T, D), jnp.float32).at[p].set(jnp.where(fin, v, 0.0))
        g_embed, g_writes = vjp((ci.astype(writes.dtype), cf.astype(writes.dtype)))
        g_w = g_writes[:, 0].astype(jnp.float32)  # [L T D]
        return (jnp.einsum("LTD,LTKD->LTK", g_w, act_writes), jnp.einsum("LTD,LTD->LT", g_w, errors),
                jnp.einsum("TD,TD->T", g_embed[0].astype(jnp.float32), embed_w[0].astype(jnp.float32)))

    return jax.vmap(one)(at_final, layer, pos, vec)


class _Rows:
    """Incoming-edge rows of the traced targets (logits first, then features in tracing order), preallocated,
    with their absolute values normalised per row kept for influence estimates."""

    def __init__(self, n_rows: int, n_feat_cols: int, n_err: int, n_emb: int):
        self.feat = np.zeros((n_rows, n_feat_cols), np.float32)
        self.norm = np.zeros((n_rows, n_feat_cols), np.float32)
        self.err = np.zeros((n_rows, n_err), np.float32)
        self.emb = np.zeros((n_rows, n_emb), np.float32)
        self.n = 0

    def add(self, f, e, m) -> None:
        k = len(f)
        sl = slice(self.n, self.n + k)
        self.feat[sl], self.err[sl], self.emb[sl] = f, e, m
        a = np.abs(f)
        total = a.sum(1) + np.abs(e).sum(1) + np.abs(m).sum(1)
        self.norm[sl] = a / np.maximum(total, 1e-30)[:, None]
        self.n += k

    def influence(self, logit_probs: np.ndarray, visited: list[int], depth: int) -> np.ndarray:
        """Estimated influence on the logits of every feature column (paths through traced targets only)."""
        K, F = len(logit_probs), len(visited)
        direct = logit_probs @ self.norm[:K]
        inf = direct
        for _ in range(depth + 1):
            new = direct + (inf[visited] @ self.norm[K:K + F] if F else 0.0)
            if np.allclose(new, inf, rtol=1e-6, atol=1e-12):
                break
            inf = new
        return inf


# ---------------------------------------------------------------------------------------------- the graph
@dataclasses.dataclass
class Graph(Result):
    """An attribution graph for one prompt (see the module docstring for the node order).

    ``tokens [T]`` and ``str_tokens`` are the prompt; feature node ``i`` is latent ``feature_id[i]`` of layer
    ``feature_layer[i]``'s transcoder at position ``feature_pos[i]``, active at ``feature_act[i]``; the logit
    nodes are ``logit_tokens [K]`` with their probabilities ``logit_probs``. ``adjacency [N N]`` holds the direct
    effects (row target, column source); ``node_mask`` and ``edge_mask`` are what :func:`prune` kept;
    ``supernodes`` are named groups of feature nodes; ``info`` is free-form metadata saved with the graph.
    """

    tokens: np.ndarray  # [T]
    str_tokens: list[str]
    feature_layer: np.ndarray  # [F]
    feature_pos: np.ndarray
    feature_id: np.ndarray
    feature_act: np.ndarray
    n_layers: int
    logit_tokens: np.ndarray  # [K]
    logit_probs: np.ndarray  # [K]
    logit_strs: list[str]
    adjacency: np.ndarray  # [N N]
    node_mask: np.ndarray | None = None  # after pruning: kept nodes
    edge_mask: np.ndarray | None = None
    supernodes: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    info: dict = dataclasses.field(default_factory=dict)

    def _summary(self) -> Summary:
        pruned = self.node_mask is not None
        prompt = "".join(self.str_tokens)
        facts: dict = {"prompt": prompt if len(prompt) <= 80 else prompt[:77] + "...",
                       "logits": ", ".join(f"{s!r} {p:.3f}" for s, p in zip(self.logit_strs, self.logit_probs))}
        if pruned:
            facts["kept nodes"] = int(self.node_mask.sum())
        facts["edges"] = len(self.edges(pruned))
        facts.update(self.scores(pruned=pruned))
        influence = self.influence(pruned=pruned)
        feats = [int(i) for i in self.kept() if self.kind(int(i)) == "feature"]
        best = sorted(feats, key=lambda i: -influence[i])[:8]
        return Summary("attribution graph", {"feature": self.n_features, "node": self.n_nodes, "pos": self.n_pos,
                                             "layer": self.n_layers}, facts,
                       [(self.label(i), float(influence[i])) for i in best], "most influential features")

    # node bookkeeping
    @property
    def n_features(self) -> int:
        """Number of feature nodes."""
        return len(self.feature_id)

    @property
    def n_pos(self) -> int:
        """Number of prompt positions."""
        return len(self.tokens)

    @property
    def n_nodes(self) -> int:
        """Number of nodes of every kind."""
        return self.adjacency.shape[0]

    def slices(self) -> dict[str, slice]:
        """Node index range of each kind: ``feature``, ``error``, ``embed``, ``logit``."""
        F, E, T = self.n_features, self.n_layers * self.n_pos, self.n_pos
        return {"feature": slice(0, F), "error": slice(F, F + E), "embed": slice(F + E, F + E + T),
                "logit": slice(F + E + T, self.n_nodes)}

    def kind(self, i: int) -> str:
        """The kind of node ``i``: ``feature``, ``error``, ``embed`` or ``logit``."""
        return next(k for k, s in self.slices().items() if s.start <= i < s.stop)

    def label(self, i: int) -> str:
        """A short name for node ``i``: ``L3/F17@5`` (layer, feature, position), ``err L3@5``, ``emb ' the'@2``,
        ``logit ' Paris'``."""
        s = self.slices()
        kind = self.kind(i)
        j = i - s[kind].start
        if kind == "feature":
            return f"L{self.feature_layer[j]}/F{self.feature_id[j]}@{self.feature_pos[j]}"
        if kind == "error":
            return f"err L{j // self.n_pos}@{j % self.n_pos}"
        if kind == "embed":
            return f"emb {self.str_tokens[j]!r}@{j}"
        return f"logit {self.logit_strs[j]!r}"

    def node_layer_pos(self, i: int) -> tuple[int, int]:
        """(layer, position) for plotting: embeddings at layer -1, logits at layer ``n_layers``."""
        s = self.slices()
        kind, j = self.kind(i), i - s[self.kind(i)].start
        if kind == "feature":
            return int(self.feature_layer[j]), int(self.feature_pos[j])
        if kind == "error":
            return j // self.n_pos, j % self.n_pos
        if kind == "embed":
            return -1, j
        return self.n_layers, self.n_pos - 1

    def logit_weights(self) -> np.ndarray:
        """``[N]``: each logit node's probability, zero elsewhere (the weights influence is measured with)."""
        w = np.zeros(self.n_nodes)
        w[self.slices()["logit"]] = self.logit_probs
        return w

    # influence and scores (on the adjacency, or on the pruned one)
    def _matrix(self, pruned: bool) -> np.ndarray:
        a = self.adjacency
        if pruned and self.node_mask is not None:
            a = a * self.node_mask[:, None] * self.node_mask[None, :]
            if self.edge_mask is not None:
                a = a * self.edge_mask
        return a

    def influence(self, pruned: bool = False) -> np.ndarray:
        """Each node's total (direct and indirect) influence on the logits, with edge weights taken as
        absolute values normalised per target."""
        return _influence(_normalize(self._matrix(pruned)), self.logit_weights())

    def scores(self, pruned: bool = True) -> dict[str, float]:
        """The paper's graph scores. *replacement*: share of the end-to-end influence on the logits that starts
        at token embeddings rather than error nodes. *completeness*: share of the nodes' incoming influence
        (weighted by their own influence on the output) that comes from non-error nodes."""
        a = _normalize(self._matrix(pruned))
        w = self.logit_weights()
        inf = _influence(a, w)
        s = self.slices()
        tok, err = inf[s["embed"]].sum(), inf[s["error"]].sum()
        non_error = 1.0 - a[:, s["error"]].sum(axis=1)
        out = inf + w
        has_inputs = a.sum(axis=1) > 0
        return {"replacement": float(tok / (tok + err)),
                "completeness": float((non_error * out * has_inputs).sum() / (out * has_inputs).sum())}

    def kept(self) -> np.ndarray:
        """Indices of the nodes pruning kept (every node of an unpruned graph)."""
        return np.arange(self.n_nodes) if self.node_mask is None else np.flatnonzero(self.node_mask)

    def edges(self, pruned: bool = True) -> list[tuple[int, int, float]]:
        """(source, target, weight) of the edges (those kept by pruning when ``pruned``)."""
        a = self._matrix(pruned)
        t, s = np.nonzero(a)
        return [(int(si), int(ti), float(a[ti, si])) for ti, si in zip(t, s)]

    def signed_effect(self, logit: int = 0, pruned: bool = False) -> np.ndarray:
        """Each node's signed, linearised total effect on logit node ``logit`` (its logit minus the mean logit):
        what removing the node would take away, summed over every path of the graph. A path's weight is the
        product of its edges, each divided by the activation of the feature it enters (an active feature's
        activation follows its pre-activation one for one)."""
        a = self._matrix(pruned)
        s = self.slices()
        direct = a[s["logit"].start + logit].astype(np.float64)
        rel = a[s["feature"]] / np.maximum(self.feature_act, 1e-12)[:, None]  # [F N]
        e = direct.copy()
        for _ in range(self.n_layers + 2):
            new = direct + e[s["feature"]] @ rel
            if np.allclose(new, e, rtol=1e-9, atol=1e-12):
                break
            e = new
        return e

    # supernodes (editable)
    def group(self, name: str, nodes: Sequence[int]) -> None:
        """Make (or replace) the supernode ``name`` from feature node indices."""
        nodes = [int(n) for n in nodes]
        bad = [n for n in nodes if self.kind(n) != "feature"]
        if bad:
            raise ValueError(f"supernodes group feature nodes; {[self.label(b) for b in bad]} are not features")
        for other in self.supernodes.values():
            other[:] = [n for n in other if n not in nodes]
        self.supernodes = {k: v for k, v in self.supernodes.items() if v}
        self.supernodes[name] = nodes

    def ungroup(self, name: str) -> None:
        """Remove the supernode ``name`` (its features stay in the graph)."""
        self.supernodes.pop(name)

    # files
    def to_json(self) -> dict:
        """The node/link layout Neuronpedia's graph viewer reads, plus what reloads this Graph exactly."""
        inf = self.influence(pruned=False)
        nodes = []
        for i in range(self.n_nodes):
            kind = self.kind(i)
            layer, pos = self.node_layer_pos(i)
            j = i - self.slices()[kind].start
            node = {"node_id": self.label(i), "layer": str(layer) if kind != "embed" else "E", "ctx_idx": pos,
                    "feature_type": {"feature": "cross layer transcoder", "error": "mlp reconstruction error",
                                     "embed": "embedding", "logit": "logit"}[kind],
                    "influence": float(inf[i]), "index": i}
            if kind == "feature":
                node.update(feature=int(self.feature_id[j]), activation=float(self.feature_act[j]))
            if kind == "logit":
                node.update(token_prob=float(self.logit_probs[j]), clerp=self.logit_strs[j],
                            feature=int(self.logit_tokens[j]))
            if kind == "embed":
                node.update(clerp=self.str_tokens[j], feature=int(self.tokens[j]))
            nodes.append(node)
        links = [{"source": self.label(s), "target": self.label(t), "weight": w} for s, t, w in self.edges(True)]
        return {
            "metadata": {"prompt_tokens": self.str_tokens, "scores": self.scores(pruned=self.node_mask is not None),
                         **self.info},
            "nodes": nodes, "links": links,
            "interp": {
                "tokens": self.tokens.tolist(), "feature_layer": self.feature_layer.tolist(),
                "feature_pos": self.feature_pos.tolist(), "feature_id": self.feature_id.tolist(),
                "feature_act": self.feature_act.tolist(), "n_layers": self.n_layers,
                "logit_tokens": self.logit_tokens.tolist(), "logit_probs": self.logit_probs.tolist(),
                "logit_strs": self.logit_strs, "adjacency": self.adjacency.tolist(),
                "node_mask": None if self.node_mask is None else self.node_mask.tolist(),
                "edge_mask": None if self.edge_mask is None else np.argwhere(self.edge_mask).tolist(),
                "supernodes": {k: [int(x) for x in v] for k, v in self.supernodes.items()},
            },
        }

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_json` to ``path`` atomically; :meth:`load` reads it back."""
        path = Path(path)
        with atomic_file(path, "w") as fh:
            fh.write(json.dumps(self.to_json()))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Graph:
        """A graph written by :meth:`save`."""
        d = json.loads(Path(path).read_text())
        if "interp" not in d:
            raise ValueError(f"{path} holds no interp graph data (it was not written by Graph.save)")
        g, meta = d["interp"], d["metadata"]
        adj = np.asarray(g["adjacency"], np.float32)
        edge_mask = None
        if g["edge_mask"] is not None:
            edge_mask = np.zeros(adj.shape, bool)
            idx = np.asarray(g["edge_mask"], int).reshape(-1, 2)
            edge_mask[idx[:, 0], idx[:, 1]] = True
        info = {k: v for k, v in meta.items() if k not in ("prompt_tokens", "scores")}
        return cls(np.asarray(g["tokens"]), list(meta["prompt_tokens"]), np.asarray(g["feature_layer"], int),
                   np.asarray(g["feature_pos"], int), np.asarray(g["feature_id"], int),
                   np.asarray(g["feature_act"], np.float32), g["n_layers"], np.asarray(g["logit_tokens"], int),
                   np.asarray(g["logit_probs"]), list(g["logit_strs"]), adj,
                   None if g["node_mask"] is None else np.asarray(g["node_mask"], bool), edge_mask,
                   {k: list(v) for k, v in g["supernodes"].items()}, info)


def _normalize(a: np.ndarray) -> np.ndarray:
    a = np.abs(a)
    s = a.sum(axis=1, keepdims=True)
    return np.divide(a, s, out=np.zeros_like(a), where=s > 0)


def _influence(a: np.ndarray, w: np.ndarray, max_iter: int = 1000) -> np.ndarray:
    """``w^T (A + A^2 + ...)``: the series ends because the graph is acyclic (edges go forward)."""
    total = np.zeros_like(w)
    cur = w @ a
    for _ in range(max_iter):
        if not np.any(cur > 1e-30):
            return total
        total += cur
        cur = cur @ a
    raise RuntimeError("influence did not converge: the adjacency has a cycle")


# ---------------------------------------------------------------------------------------------- tracing
def trace(
    model, tc: Transcoders, prompt, *, max_logits: int = 10, logit_prob: float = 0.95, max_feature_nodes: int = 512,
    batch_size: int | None = None, k_per_position: int | None = None, progress: bool = False,
) -> Graph:
    """The attribution graph of ``prompt`` (text or ids ``[T]``) under the replacement model.

    Logit nodes: the most likely next tokens at the last position, up to ``max_logits`` of them or until
    their probability mass reaches ``logit_prob``. Feature nodes: active features chosen greedily by their
    estimated influence on those logits (recomputed after each batch of targets) up to ``max_feature_nodes``;
    the others' effects are left out of the graph. ``batch_size`` targets share one batched VJP (default:
    16, fewer for long prompts so that batch x tokens stays at 1024, which bounds memory).
    ``k_per_position`` (default: the most features active at any position) sets the feature slots per position.
    """
    if len(tc) != model.n_layers:
        raise ValueError(f"{len(tc)} transcoders for a {model.n_layers}-layer model; need one per layer")
    tokens, _, _ = model.check_inputs(prompt, None, None)
    if tokens.shape[0] != 1:
        raise ValueError(f"trace takes one prompt; got a batch of {tokens.shape[0]}")
    L, T = model.n_layers, tokens.shape[1]
    if batch_size is None:
        batch_size = max(1, min(16, 1024 // T))
    if T <= tc.skip_positions:
        raise ValueError(f"the prompt has {T} tokens but the transcoders skip the first {tc.skip_positions}: "
                         "trace a longer prompt")
    logits, cache = model.run_with_cache(tokens, _frozen_names(model, tc))
    frozen = {n: cache[n] for n in cache if n.endswith("hook_scale") or n.endswith("attn.hook_pattern")}
    n2 = jnp.stack([cache[tc.hook_in.format(layer=l)][0] for l in range(L)])  # [L T D]
    mlp_out = jnp.stack([cache[tc.hook_out.format(layer=l)][0] for l in range(L)])
    # slots per position: every active feature must get one, or the writes would not add up to the MLP output
    k = int(_max_active(tc, n2, tc.skip_positions)) if k_per_position is None else k_per_position
    vals, ids, recons = _encode_all(tc, n2, tc.skip_positions, max(k, 1))
    vals = jnp.maximum(vals, 0.0)
    errors = (mlp_out - recons).astype(jnp.float32)  # [L T D]; at skipped positions: mlp_out - b_dec - skip
    W_dec = [d.W_dec for d in tc.dictionaries]
    act_writes = jnp.stack([W_dec[l][ids[l]] * vals[l][..., None] for l in range(L)]).astype(jnp.float32)
    embed_w = cache["hook_embed"]
    # what each layer writes besides its skip term: features + decoder bias + error = the MLP's own output
    b_dec = jnp.stack([d.b_dec for d in tc.dictionaries]).astype(jnp.float32)[:, None]
    writes = (act_writes.sum(2) + b_dec + errors)[:, None]  # [L 1 T D]

    # logit targets
    probs = np.asarray(jax.nn.softmax(logits[0, -1].astype(jnp.float32)))
    order = np.argsort(-probs)
    K = max(1, min(max_logits, int(np.searchsorted(np.cumsum(probs[order]), logit_prob)) + 1))
    logit_tokens = order[:K]
    W_U = model.W_U.astype(jnp.float32)
    dirs = W_U[:, logit_tokens] - W_U.mean(axis=1, keepdims=True)  # [D K]: logit minus the mean logit
    w_f = _final_weight_vjp(model, cache["ln_final.hook_normalized"])
    acts_np, ids_np = np.asarray(vals), np.asarray(ids)
    active = np.flatnonzero(acts_np.reshape(-1) > 0)  # flat index into [L T k]
    budget = min(max_feature_nodes, active.size)
    rows = _Rows(K + budget, acts_np.size, L * T, T)

    def run(at_final, layer, pos, vec):
        n = len(layer)
        pad = batch_size - n  # one batch shape, one compilation
        f, e, m = _rows(model, tc, tokens, frozen, embed_w, writes,
                        jnp.asarray(np.r_[at_final, np.zeros(pad, bool)]), jnp.asarray(np.r_[layer, np.zeros(pad, int)], jnp.int32),
                        jnp.asarray(np.r_[pos, np.zeros(pad, int)], jnp.int32),
                        jnp.concatenate([vec, jnp.zeros((pad, vec.shape[1]), vec.dtype)]), act_writes, errors)
        rows.add(np.asarray(f)[:n].reshape(n, -1), np.asarray(e)[:n].reshape(n, -1), np.asarray(m)[:n])

    logit_vecs = w_f(dirs.T)  # [K D]: gradient of (logit - mean logit) w.r.t. the final normalised stream
    for s in range(0, K, batch_size):
        n = min(batch_size, K - s)
        run(np.ones(n, bool), np.zeros(n, int), np.full(n, T - 1), logit_vecs[s:s + n])

    # feature targets, chosen by their influence estimated from the rows so far
    W_enc = [d.W_enc for d in tc.dictionaries]
    visited: list[int] = []
    while len(visited) < budget:
        inf = rows.influence(probs[logit_tokens], visited, L)
        inf[visited] = -1.0
        order = active[np.argsort(-inf[active])]
        cand = [int(c) for c in order[: min(batch_size, budget - len(visited))] if inf[c] > 0]
        if not cand:
            break
        l_c, p_c, s_c = np.unravel_index(np.asarray(cand), acts_np.shape)
        vec = jnp.stack([W_enc[l][:, ids_np[l, p, sl]] for l, p, sl in zip(l_c, p_c, s_c)]).astype(jnp.float32)
        run(np.zeros(len(cand), bool), l_c, p_c, vec)
        visited += cand
        if progress:
            print(f"traced {len(visited)}/{budget} features", flush=True)

    feat_rows, err_rows, emb_rows = rows.feat[:rows.n], rows.err[:rows.n], rows.emb[:rows.n]
    F = len(visited)
    E = L * T
    N = F + E + T + K
    adj = np.zeros((N, N), np.float32)
    sel = np.asarray(visited, int)
    feat_part = feat_rows[:, sel] if F else np.zeros((len(feat_rows), 0), np.float32)
    # rows: first K are logits, then features in visiting order
    for r, node in [(r, F + E + T + r) for r in range(K)] + [(K + j, j) for j in range(F)]:
        adj[node, :F] = feat_part[r]
        adj[node, F:F + E] = err_rows[r]
        adj[node, F + E:F + E + T] = emb_rows[r]
    l_idx, p_idx, s_idx = np.unravel_index(sel, acts_np.shape) if F else (np.zeros(0, int),) * 3
    ids0 = np.asarray(tokens)[0]
    str_tokens = model.to_str_tokens(ids0) if model.tokenizer is not None else [str(t) for t in ids0]
    logit_strs = [model.to_string([int(t)]) if model.tokenizer is not None else str(int(t)) for t in logit_tokens]
    return Graph(np.asarray(tokens)[0], list(str_tokens), l_idx.astype(int), p_idx.astype(int),
                 ids_np[l_idx, p_idx, s_idx].astype(int), acts_np[l_idx, p_idx, s_idx].astype(np.float32), L,
                 logit_tokens.astype(int), probs[logit_tokens], logit_strs, adj,
                 info={"n_active_features": int(active.size), "max_feature_nodes": max_feature_nodes})


def _final_weight_vjp(model, normalized):
    """``v -> d(v . ln_final output) / d(normalized)``: the final norm's weight applied to ``v``."""
    _, vjp = jax.vjp(lambda n: _final_from_normalized(model, n), normalized[0, :1])
    return lambda v: jax.vmap(lambda r: vjp(r[None].astype(normalized.dtype))[0][0])(v)


def _final_from_normalized(model, n):
    def hk(name, x):
        return n.astype(x.dtype) if name.endswith("hook_normalized") else x

    return model.ln_final(jnp.ones_like(n), hk, "ln_final")


# ---------------------------------------------------------------------------------------------- pruning, supernodes
def _cumulative_keep(scores: np.ndarray, threshold: float) -> np.ndarray:
    """The smallest set of the largest ``scores`` whose sum reaches ``threshold`` of the total."""
    total = scores.sum()
    if total <= 0:
        return np.zeros(scores.shape, bool)
    order = np.argsort(-scores, axis=None)
    cum = np.cumsum(scores.reshape(-1)[order]) / total
    n = int(np.searchsorted(cum, threshold)) + 1
    keep = np.zeros(scores.size, bool)
    keep[order[:n]] = True
    return keep.reshape(scores.shape)


def prune(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Graph:
    """Keep the feature and error nodes that carry ``node_threshold`` of the influence on the logits, then the
    edges that carry ``edge_threshold`` of the influence among them (edge score: normalised weight times the
    target's influence). Token embeddings and logits are always kept; nodes left without a path to a logit
    are dropped. Returns a new Graph (same adjacency, with masks)."""
    w = graph.logit_weights()
    a = _normalize(graph.adjacency)
    inf = _influence(a, w)
    s = graph.slices()
    node_mask = np.zeros(graph.n_nodes, bool)
    node_mask[s["embed"]] = True
    node_mask[s["logit"]] = True
    prunable = np.r_[np.arange(s["feature"].start, s["feature"].stop), np.arange(s["error"].start, s["error"].stop)]
    node_mask[prunable[_cumulative_keep(inf[prunable], node_threshold)]] = True
    a_kept = _normalize(graph.adjacency * node_mask[:, None] * node_mask[None, :])
    target_inf = _influence(a_kept, w) + w
    edge_scores = a_kept * target_inf[:, None]
    edge_mask = _cumulative_keep(edge_scores, edge_threshold) & (edge_scores > 0)
    # drop nodes that no longer reach a logit
    reach = np.zeros(graph.n_nodes, bool)
    reach[s["logit"]] = True
    for _ in range(graph.n_layers + 2):
        new = reach | (edge_mask & reach[:, None]).any(axis=0)
        if np.array_equal(new, reach):
            break
        reach = new
    node_mask &= reach | np.isin(np.arange(graph.n_nodes), np.r_[s["embed"], s["logit"]])
    edge_mask &= node_mask[:, None] & node_mask[None, :]
    return dataclasses.replace(graph, node_mask=node_mask, edge_mask=edge_mask, supernodes={})


def auto_supernodes(graph: Graph, decoders: Sequence | None = None, *, threshold: float = 0.6,
                    min_size: int = 2) -> dict[str, list[int]]:
    """Group kept feature nodes that play the same role: average-linkage clustering on the cosine similarity
    of their outgoing-edge profiles (which kept nodes they drive, normalised), averaged with the cosine of
    their decoder directions when ``decoders`` (``tc.dictionaries``) are given. Groups of ``min_size`` or more
    become supernodes named after their layer range and positions; they are stored on the graph (edit them
    with ``graph.group`` / ``graph.ungroup``) and returned."""
    from scipy.cluster.hierarchy import fcluster, linkage

    s = graph.slices()
    kept = [int(i) for i in graph.kept() if graph.kind(int(i)) == "feature"]
    if len(kept) < min_size:
        graph.supernodes = {}
        return {}
    a = graph._matrix(pruned=True)
    prof = np.abs(a[:, kept]).T  # [n, N]: whom each feature drives
    prof = prof / np.maximum(np.linalg.norm(prof, axis=1, keepdims=True), 1e-12)
    sim = prof @ prof.T
    if decoders is not None:
        j = np.asarray(kept) - s["feature"].start
        vecs = np.stack([np.asarray(decoders[graph.feature_layer[x]].W_dec[graph.feature_id[x]]) for x in j])
        vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        sim = 0.5 * (sim + vecs @ vecs.T)
    dist = np.clip(1.0 - sim, 0.0, 2.0)
    cond = dist[np.triu_indices(len(kept), 1)]
    labels = fcluster(linkage(cond, method="average"), t=1.0 - threshold, criterion="distance")
    groups: dict[str, list[int]] = {}
    for c in np.unique(labels):
        members = [int(kept[i]) for i in np.flatnonzero(labels == c)]
        if len(members) < min_size:
            continue
        lp = [graph.node_layer_pos(m) for m in members]
        ls, ps = sorted({x for x, _ in lp}), sorted({y for _, y in lp})
        name = f"L{ls[0]}-{ls[-1]} @{','.join(map(str, ps))} ({len(members)})"
        while name in groups:
            name += "'"
        groups[name] = members
    graph.supernodes = groups
    return groups


# ---------------------------------------------------------------------------------------------- interventions
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

    before: np.ndarray  # [V]
    after: np.ndarray

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


def intervene(model, tc: Transcoders, prompt, changes: Sequence[tuple[int, int, int, float]], *,
              mode: str = "real") -> Intervention:
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
    skips = jnp.stack([d.skip_term(n2[l]) if d.W_skip is not None else jnp.zeros_like(writes[l])
                       for l, d in enumerate(tc.dictionaries)])
    writes = writes - skips
    for l, p, f, v in changes:
        d = tc.dictionaries[l]
        old = d.encode(n2[l, 0, p])[f]
        writes = writes.at[l, 0, p].add((v - old) * d.W_dec[f])
    _, _, logits = frozen_forward(model, tc, tokens, frozen, cache["hook_embed"], writes)
    return Intervention(before, np.asarray(logits[0, -1], np.float32))
