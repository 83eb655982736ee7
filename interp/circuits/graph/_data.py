"""The :class:`Graph` result: node bookkeeping, influence and scores, editable supernodes, and its JSON file
(the layout Neuronpedia's graph viewer reads, plus what reloads the graph exactly).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from jaxtyping import Bool, Float, Int

from interp._io import atomic_file
from interp.results import Result, Summary


@dataclasses.dataclass
class Graph(Result):
    """An attribution graph for one prompt (see the module docstring for the node order).

    ``tokens [T]`` and ``str_tokens`` are the prompt; feature node ``i`` is latent ``feature_id[i]`` of layer
    ``feature_layer[i]``'s transcoder at position ``feature_pos[i]``, active at ``feature_act[i]``; the logit
    nodes are ``logit_tokens [K]`` with their probabilities ``logit_probs``. ``adjacency [N N]`` holds the direct
    effects (row target, column source); ``node_mask`` and ``edge_mask`` are what :func:`prune` kept;
    ``supernodes`` are named groups of feature nodes; ``info`` is free-form metadata saved with the graph.
    """

    tokens: Int[np.ndarray, " T"]
    str_tokens: list[str]
    feature_layer: Int[np.ndarray, " F"]
    feature_pos: Int[np.ndarray, " F"]
    feature_id: Int[np.ndarray, " F"]
    feature_act: Float[np.ndarray, " F"]
    n_layers: int
    logit_tokens: Int[np.ndarray, " K"]
    logit_probs: Float[np.ndarray, " K"]
    logit_strs: list[str]
    adjacency: Float[np.ndarray, "N N"]
    node_mask: Bool[np.ndarray, " N"] | None = None  # after pruning: kept nodes
    edge_mask: Bool[np.ndarray, "N N"] | None = None
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

    def logit_weights(self) -> Float[np.ndarray, " N"]:
        """``[N]``: each logit node's probability, zero elsewhere (the weights influence is measured with)."""
        w = np.zeros(self.n_nodes)
        w[self.slices()["logit"]] = self.logit_probs
        return w

    # influence and scores (on the adjacency, or on the pruned one)
    def _matrix(self, pruned: bool) -> Float[np.ndarray, "N N"]:
        a = self.adjacency
        if pruned and self.node_mask is not None:
            a = a * self.node_mask[:, None] * self.node_mask[None, :]
            if self.edge_mask is not None:
                a = a * self.edge_mask
        return a

    def influence(self, pruned: bool = False) -> Float[np.ndarray, " N"]:
        """Each node's total (direct and indirect) influence on the logits, with edge weights taken as
        absolute values normalised per target."""
        return _influence(_normalize(self._matrix(pruned)), self.logit_weights())

    def scores(self, pruned: bool = True, *, skipped_errors: bool = True) -> dict[str, float]:
        """The paper's graph scores. *replacement*: share of the end-to-end influence on the logits that starts
        at token embeddings rather than error nodes. *completeness*: share of the nodes' incoming influence
        (weighted by their own influence on the output) that comes from non-error nodes.

        At the first positions, which the transcoders skip (``info["skip_positions"]``: the attention sink), an error
        node holds the whole MLP output. ``skipped_errors=False`` leaves those nodes out as circuit-tracer does (it
        zeroes their error vectors, and prepends a BOS token so that the skipped position is not a word of the
        prompt): what the MLP writes there counts as a constant, like a bias, and the scores are comparable with
        its own."""
        a = self._matrix(pruned)
        if not skipped_errors:
            if "skip_positions" not in self.info:
                raise ValueError("skipped_errors=False needs the number of positions the transcoders skip, which this "
                                 "graph does not record (a graph traced by an older version): trace it again, or set "
                                 "graph.info['skip_positions'] (the transcoders' skip_positions)")
            skip = min(int(self.info["skip_positions"]), self.n_pos)
            cols = self.slices()["error"].start + (np.arange(self.n_layers)[:, None] * self.n_pos + np.arange(skip))
            a = a.copy()
            a[:, cols.reshape(-1)] = 0.0
        a = _normalize(a)
        w = self.logit_weights()
        inf = _influence(a, w)
        s = self.slices()
        tok, err = inf[s["embed"]].sum(), inf[s["error"]].sum()
        non_error = 1.0 - a[:, s["error"]].sum(axis=1)
        out = inf + w
        has_inputs = a.sum(axis=1) > 0
        return {"replacement": float(tok / (tok + err)),
                "completeness": float((non_error * out * has_inputs).sum() / (out * has_inputs).sum())}

    def kept(self) -> Int[np.ndarray, " kept"]:
        """Indices of the nodes pruning kept (every node of an unpruned graph)."""
        return np.arange(self.n_nodes) if self.node_mask is None else np.flatnonzero(self.node_mask)

    def edges(self, pruned: bool = True) -> list[tuple[int, int, float]]:
        """(source, target, weight) of the edges (those kept by pruning when ``pruned``)."""
        a = self._matrix(pruned)
        t, s = np.nonzero(a)
        return [(int(si), int(ti), float(a[ti, si])) for ti, si in zip(t, s)]

    def signed_effect(self, logit: int = 0, pruned: bool = False) -> Float[np.ndarray, " N"]:
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


def _normalize(a: Float[np.ndarray, "N N"]) -> Float[np.ndarray, "N N"]:
    a = np.abs(a)
    s = a.sum(axis=1, keepdims=True)
    return np.divide(a, s, out=np.zeros_like(a), where=s > 0)


def _influence(a: Float[np.ndarray, "N N"], w: Float[np.ndarray, " N"], max_iter: int = 1000
               ) -> Float[np.ndarray, " N"]:
    """``w^T (A + A^2 + ...)``: the series ends because the graph is acyclic (edges go forward)."""
    total = np.zeros_like(w)
    cur = w @ a
    for _ in range(max_iter):
        if not np.any(cur > 1e-30):
            return total
        total += cur
        cur = cur @ a
    raise RuntimeError("influence did not converge: the adjacency has a cycle")
