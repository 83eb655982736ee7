"""Tracing: the attribution graph of one prompt, built from batched vector-Jacobian products through the linear
replacement model (targets in batches under ``jit``, so memory stays bounded by ``batch_size``).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from jaxtyping import Int

from interp.circuits.graph._data import Graph
from interp.circuits.graph._replacement import Replacement, _frozen_names, frozen_forward


@eqx.filter_jit
def _max_active(tc: Replacement, n2, skip_positions: int):
    counts = [jnp.max(jnp.sum(tc.encode_layer(l, n2[l])[skip_positions:] > 0, axis=-1)) for l in range(len(tc))]
    return jnp.max(jnp.stack(counts))


@eqx.filter_jit
def _encode_all(tc: Replacement, n2, skip_positions: int, k: int):
    """Activations of every layer's features on their inputs ``n2 [L T D]`` -> top-k (values, ids) ``[L T k]``."""
    vals, ids = [], []
    for l in range(len(tc)):
        a = tc.encode_layer(l, n2[l]).at[:skip_positions].set(0.0)
        v, i = jax.lax.top_k(a, k)
        vals.append(jnp.maximum(v, 0.0))
        ids.append(i)
    return jnp.stack(vals), jnp.stack(ids)


def _writes_of_active(tc: Replacement, vals: np.ndarray, ids: np.ndarray):
    """Every (active feature, MLP output it writes to) pair: the write ``[P D]`` (activation x decoder row), the
    output layer and position ``[P]``, and the feature's flat index into ``[L T k]`` ``[P]``. A per-layer
    transcoder's feature writes to one output, a cross-layer transcoder's to every output from its layer on; only
    the kept slots are written (anything dropped belongs to the error node)."""
    L, T, k = vals.shape
    rows, out_layer, pos, col = [], [], [], []
    for l in range(L):
        t, sl = np.nonzero(vals[l] > 0)
        if not len(t):
            continue
        R = tc.span(l)
        w = tc.decoder_rows(l, jnp.asarray(ids[l, t, sl])) * jnp.asarray(vals[l, t, sl])[:, None, None]  # [A R D]
        rows.append(w.astype(jnp.float32).reshape(-1, w.shape[-1]))
        out_layer.append(np.repeat(np.arange(l, l + R)[None], len(t), 0).reshape(-1))
        pos.append(np.repeat(t, R))
        col.append(np.repeat((l * T + t) * k + sl, R))
    if not rows:
        D = tc.output_bias().shape[-1]
        return jnp.zeros((0, D), jnp.float32), *(jnp.zeros(0, jnp.int32) for _ in range(3))
    return (jnp.concatenate(rows), *(jnp.asarray(np.concatenate(a), jnp.int32) for a in (out_layer, pos, col)))


@eqx.filter_jit
def _reconstruction(tc: Replacement, n2, pair_writes, out_layer, pos):
    """What the kept features, decoder biases and skip terms write to each MLP output ``[L T D]``, and the skip terms
    alone ``[L T D]``."""
    L, T, D = n2.shape
    recon = jnp.broadcast_to(tc.output_bias().astype(jnp.float32)[:, None], (L, T, D))
    recon = recon.at[out_layer, pos].add(pair_writes)
    skips = jnp.stack([jnp.broadcast_to(jnp.asarray(tc.skip(l, n2[l]), jnp.float32), (T, D)) for l in range(L)])
    return recon + skips, skips


@eqx.filter_jit
def _rows(model, tc, tokens, frozen, embed_w, writes, at_final, layer, pos, vec):
    """Incoming direct effects of a batch of N targets. Target i reads direction ``vec[i] [D]`` at position
    ``pos[i]`` of the transcoder input of ``layer[i]`` (or of the final normalised stream when ``at_final[i]``).
    Returns the gradient at the writes ``[N L T D]`` (the host dots it with what each feature writes:
    :func:`_feature_rows` or :class:`_PairWrites`) and the embeddings' rows ``[N T]``."""
    L, _, T, D = writes.shape
    # the deepest block any target reads from: the blocks above it carry no gradient and are skipped
    top = jnp.max(jnp.where(at_final, L, layer))

    def f(e, w):
        n2, nf, _ = frozen_forward(model, tc, tokens, frozen, e, w, top)
        return n2[:, 0], nf[0]

    # the writes go in one array per layer: the gradient of indexing one [L 1 T D] array would pad every layer's
    # gradient out to the whole array, L of them alive at once
    _, vjp = jax.vjp(f, embed_w, tuple(writes[l] for l in range(L)))

    def one(fin, l, p, v):
        v = v.astype(jnp.float32)
        ci = jnp.zeros((L, T, D), jnp.float32).at[l, p].set(jnp.where(fin, 0.0, v))
        cf = jnp.zeros((T, D), jnp.float32).at[p].set(jnp.where(fin, v, 0.0))
        g_embed, g_writes = vjp((ci.astype(writes.dtype), cf.astype(writes.dtype)))
        g_w = jnp.stack([g[0] for g in g_writes]).astype(jnp.float32)  # [L T D]
        emb = jnp.einsum("TD,TD->T", g_embed[0].astype(jnp.float32), embed_w[0].astype(jnp.float32))
        return g_w, emb

    return jax.vmap(one)(at_final, layer, pos, vec)


def _error_rows(g: np.ndarray, errors: np.ndarray, m: int) -> np.ndarray:
    """``[N L*T]``: the gradient ``g [N L*T D]`` dotted with each error node's write, over the first ``m`` of them (the
    gradient is zero past them)."""
    N, LT, D = g.shape
    err = np.zeros((N, LT), np.float32)
    err[:, :m] = np.einsum("nbd,bd->nb", g[:, :m], errors.reshape(LT, D)[:m], optimize=True)
    return err


def _feature_rows(g_w: np.ndarray, slots: np.ndarray, errors: np.ndarray, top: int):
    """Rows from the gradient at the writes ``g_w [N L T D]`` of a batch whose targets read no deeper than layer
    ``top`` (zero gradient above it): features ``[N L*T*k]`` (slot s of position t in layer l is column
    (l T + t) k + s: the gradient dotted with the slot's write, ``slots [L T k D]``) and errors ``[N L*T]``.
    numpy's einsum runs these many small products as matrix products; XLA's CPU backend runs this batched
    contraction an order of magnitude slower."""
    N, L, T, D = g_w.shape
    k = slots.shape[2]
    m = min(top + 1, L) * T
    g = g_w.reshape(N, L * T, D)
    feats = np.zeros((N, L * T, k), np.float32)
    feats[:, :m] = np.einsum("nbd,bkd->nbk", g[:, :m], slots.reshape(L * T, k, D)[:m], optimize=True)
    return feats.reshape(N, -1), _error_rows(g, errors, m)


class _PairWrites:
    """A cross-layer set's writes, one per (active feature, MLP output it writes to), grouped by the (output
    layer, position) whose gradient they are dotted with, so a batch's feature rows are one small matrix product
    per group on the host. (Gathering the gradient for every pair inside the VJP's program instead ran a
    per-element loop over targets x pairs x D: seconds a batch on a few tokens.)"""

    def __init__(self, pair_writes, out_layer, pos, col, T: int, n_cols: int):
        key = np.asarray(out_layer) * T + np.asarray(pos)
        order = np.argsort(key, kind="stable")
        self.w = np.asarray(pair_writes, np.float32)[order]  # [P D]
        self.col = np.asarray(col)[order]
        key = key[order]
        self.keys, starts = np.unique(key, return_index=True)
        self.bounds = np.r_[starts, len(key)]
        self.n_cols = n_cols

    def rows(self, g_w: np.ndarray, errors: np.ndarray, top: int):
        """Features ``[N n_cols]`` and errors ``[N L*T]`` from the gradient at the writes ``g_w [N L T D]`` of a
        batch whose targets read no deeper than layer ``top``."""
        N, L, T, D = g_w.shape
        m = min(top + 1, L) * T
        g = g_w.reshape(N, L * T, D)
        per = np.zeros((N, len(self.w)), np.float32)
        for j, key in enumerate(self.keys):
            if key >= m:  # sorted: every later group reads a zero gradient
                break
            a, b = self.bounds[j], self.bounds[j + 1]
            per[:, a:b] = g[:, key] @ self.w[a:b].T
        # a column (feature slot) holds one pair per MLP output the feature writes to
        feats = np.stack([np.bincount(self.col, weights=p, minlength=self.n_cols) for p in per])
        return feats.astype(np.float32), _error_rows(g, errors, m)


def _slot_writes(tc: Replacement, vals: np.ndarray, ids: np.ndarray):
    """``[L T k D]``: what each feature slot writes to its own layer's MLP output (activation x decoder row; zero
    for an empty slot), for transcoders whose features write to one layer only; None for a cross-layer set."""
    L, T, k = vals.shape
    if any(tc.span(l) != 1 for l in range(L)):
        return None
    rows = [tc.decoder_rows(l, jnp.asarray(ids[l].reshape(-1)))[:, 0].astype(jnp.float32)
            * jnp.asarray(vals[l].reshape(-1), jnp.float32)[:, None] for l in range(L)]
    return jnp.stack(rows).reshape(L, T, k, -1)


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

    def influence(self, logit_probs: np.ndarray, visited: list[int]) -> np.ndarray:
        """Estimated influence on the logits of every feature column (paths through traced targets only): the
        direct part ``d`` plus, through the traced features, ``x @ rows`` where ``x = d[visited] + x A`` and ``A``
        holds the edges among them; ``A`` has no cycles (edges go to later layers), so ``x`` solves
        ``x (I - A) = d[visited]`` exactly, in one F x F solve and one pass over the rows."""
        K, F = len(logit_probs), len(visited)
        direct = logit_probs @ self.norm[:K]
        if not F:
            return direct
        feats = self.norm[K:K + F]
        A = feats[:, visited].astype(np.float64)
        x = np.linalg.solve(np.eye(F) - A.T, direct[visited].astype(np.float64))
        return direct + x.astype(np.float32) @ feats


def trace(
    model, tc: Replacement, prompt: str | Int[ArrayLike, " T"], *, max_logits: int = 10, logit_prob: float = 0.95,
    max_feature_nodes: int = 512, batch_size: int | None = None, k_per_position: int | None = None,
    rerank_every: int = 4, progress: bool = False,
) -> Graph:
    """The attribution graph of ``prompt`` (text or ids ``[T]``) under the replacement model.

    Logit nodes: the most likely next tokens at the last position, up to ``max_logits`` of them or until
    their probability mass reaches ``logit_prob``. Feature nodes: active features chosen greedily by their
    estimated influence on those logits up to ``max_feature_nodes``; the others' effects are left out of the
    graph. The influence is recomputed every ``rerank_every`` batches of targets (as circuit-tracer's
    ``update_interval``): the top ``batch_size x rerank_every`` candidates of one ranking are traced lowest layer
    first, and each batch's VJP runs only the blocks up to its deepest target. ``batch_size`` targets share one
    batched VJP (default: 16, fewer for prompts past 256 tokens so that batch x tokens stays at 4096, which bounds
    memory).
    ``k_per_position`` (default: the most features active at any position) sets the feature slots per position.
    """
    if rerank_every < 1:
        raise ValueError(f"rerank_every must be at least 1, got {rerank_every}")
    if len(tc) != model.n_layers:
        raise ValueError(f"{len(tc)} transcoders for a {model.n_layers}-layer model; need one per layer")
    tokens, _, _ = model.check_inputs(prompt, None, None)
    if tokens.shape[0] != 1:
        raise ValueError(f"trace takes one prompt; got a batch of {tokens.shape[0]}")
    L, T = model.n_layers, tokens.shape[1]
    if batch_size is None:
        batch_size = max(1, min(16, 4096 // T))
    if T <= tc.skip_positions:
        raise ValueError(f"the prompt has {T} tokens but the transcoders skip the first {tc.skip_positions}: "
                         "trace a longer prompt")
    logits, cache = model.run_with_cache(tokens, _frozen_names(model, tc))
    frozen = {n: cache[n] for n in cache if n.endswith("hook_scale") or n.endswith("attn.hook_pattern")}
    n2 = jnp.stack([cache[tc.hook_in.format(layer=l)][0] for l in range(L)])  # [L T D]
    mlp_out = jnp.stack([cache[tc.hook_out.format(layer=l)][0] for l in range(L)])
    # slots per position: every active feature must get one, or the writes would not add up to the MLP output
    k = int(_max_active(tc, n2, tc.skip_positions)) if k_per_position is None else k_per_position
    vals, ids = _encode_all(tc, n2, tc.skip_positions, max(k, 1))
    acts_np, ids_np = np.asarray(vals), np.asarray(ids)
    pairs = _writes_of_active(tc, acts_np, ids_np)
    recons, skips = _reconstruction(tc, n2.astype(jnp.float32), *pairs[:3])
    slots = _slot_writes(tc, acts_np, ids_np)
    row_pairs = None if slots is not None else _PairWrites(*pairs, T, acts_np.size)
    slots_np = None if slots is None else np.asarray(slots)
    del pairs, slots  # what the rows read: row_pairs (cross-layer) or slots_np
    # [L T D]; at skipped positions: mlp_out - b_dec - skip
    errors_np = np.asarray((mlp_out - recons).astype(jnp.float32))
    embed_w = cache["hook_embed"]
    # what each layer writes besides its skip term (features + decoder bias + error): the MLP output minus the skip
    writes = (mlp_out.astype(jnp.float32) - skips)[:, None]  # [L 1 T D]

    # logit targets
    probs = np.asarray(jax.nn.softmax(logits[0, -1].astype(jnp.float32)))
    order = np.argsort(-probs)
    K = max(1, min(max_logits, int(np.searchsorted(np.cumsum(probs[order]), logit_prob)) + 1))
    logit_tokens = order[:K]
    W_U = model.W_U.astype(jnp.float32)
    dirs = W_U[:, logit_tokens] - W_U.mean(axis=1, keepdims=True)  # [D K]: logit minus the mean logit
    w_f = _final_weight_vjp(model, cache["ln_final.hook_normalized"])
    active = np.flatnonzero(acts_np.reshape(-1) > 0)  # flat index into [L T k]
    k_slots = acts_np.shape[2]
    budget = min(max_feature_nodes, active.size)
    rows = _Rows(K + budget, acts_np.size, L * T, T)

    encoders: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def directions(l: int, feature: int) -> np.ndarray:
        """Encoder direction ``[D]`` of an active feature, from one gather per layer of its active features' ones."""
        if l not in encoders:
            f_l = np.unique(ids_np[l][acts_np[l] > 0])
            encoders[l] = (f_l, np.asarray(tc.encoder_direction(l, jnp.asarray(f_l)), np.float32).T)
        f_l, dirs_l = encoders[l]
        return dirs_l[np.searchsorted(f_l, feature)]

    def run(at_final, layer, pos, vec):
        n = len(layer)
        pad = batch_size - n  # one batch shape, one compilation
        vec = np.asarray(vec, np.float32)
        out = _rows(model, tc, tokens, frozen, embed_w, writes, jnp.asarray(np.r_[at_final, np.zeros(pad, bool)]),
                    jnp.asarray(np.r_[layer, np.zeros(pad, int)], jnp.int32),
                    jnp.asarray(np.r_[pos, np.zeros(pad, int)], jnp.int32),
                    jnp.asarray(np.concatenate([vec, np.zeros((pad, vec.shape[1]), np.float32)])))
        g_w, m = np.asarray(out[0])[:n], np.asarray(out[1])[:n]
        top = L if at_final.any() else int(np.max(layer))
        if slots_np is None:
            f, e = row_pairs.rows(g_w, errors_np, top)
        else:
            f, e = _feature_rows(g_w, slots_np, errors_np, top)
        rows.add(f.reshape(n, -1), e.reshape(n, -1), m)

    logit_vecs = w_f(dirs.T)  # [K D]: gradient of (logit - mean logit) w.r.t. the final normalised stream
    for s in range(0, K, batch_size):
        n = min(batch_size, K - s)
        run(np.ones(n, bool), np.zeros(n, int), np.full(n, T - 1), logit_vecs[s:s + n])

    # feature targets, chosen by their influence estimated from the rows so far
    visited: list[int] = []
    while len(visited) < budget:
        inf = rows.influence(probs[logit_tokens], visited)
        inf[visited] = -1.0
        order = active[np.argsort(-inf[active])]
        cand = [int(c) for c in order[: min(batch_size * rerank_every, budget - len(visited))] if inf[c] > 0]
        if not cand:
            break
        # lowest layers first: a batch's VJP runs only the blocks up to its deepest target
        cand = sorted(cand, key=lambda c: c // (T * k_slots))
        for s in range(0, len(cand), batch_size):
            l_c, p_c, s_c = np.unravel_index(np.asarray(cand[s:s + batch_size]), acts_np.shape)
            run(np.zeros(len(l_c), bool), l_c, p_c, np.stack([directions(l, int(ids_np[l, p, sl]))
                                                              for l, p, sl in zip(l_c, p_c, s_c)]))
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
                 info={"n_active_features": int(active.size), "max_feature_nodes": max_feature_nodes,
                       "batch_size": batch_size, "skip_positions": int(tc.skip_positions)})


def _final_weight_vjp(model, normalized):
    """``v -> d(v . ln_final output) / d(normalized)``: the final norm's weight applied to ``v``."""
    _, vjp = jax.vjp(lambda n: _final_from_normalized(model, n), normalized[0, :1])
    return lambda v: jax.vmap(lambda r: vjp(r[None].astype(normalized.dtype))[0][0])(v)


def _final_from_normalized(model, n):
    def hk(name, x):
        return n.astype(x.dtype) if name.endswith("hook_normalized") else x

    return model.ln_final(jnp.ones_like(n), hk, "ln_final")
