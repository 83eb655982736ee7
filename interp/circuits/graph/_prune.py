"""Pruning a graph to the nodes and edges that carry most of the influence on the logits, and grouping the kept
features into supernodes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from interp.circuits.graph._data import Graph, _influence, _normalize


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
