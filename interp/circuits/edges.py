"""Edges between components: edge attribution patching (EAP, EAP-IG) and exact path patching.

Components write to and read from the residual stream. *Senders* (upstream nodes) are the embedding
(``embed``), every attention head (``L{l}H{h}``: ``z_h @ W_O[h]``) and every MLP (``MLP{l}``). *Receivers*
(downstream nodes) read the residual stream: each head's query input (``L{l}H{h}.q``), each key/value
head's key and value inputs (``L{l}H{k}.k``/``.v``, numbered over kv heads), each MLP's input (``MLP{l}``)
and the unembedding (``logits``). The edge ``u -> v`` carries ``u``'s output directly into ``v``'s input.

What a node reads follows from the block, not from the model family: heads read the stream entering their
block (``resid_pre``); an MLP reads ``resid_mid`` after its block's attention, or ``resid_pre`` in a block that
has no ``hook_resid_mid`` (attention and MLP side by side on the same stream), where no head of its own layer
feeds it. The embedding sends what starts the stream (``hook_embed``, plus ``hook_pos_embed`` with learned
positions). Where a block normalises its attention output again before it joins the stream (a post-attention
norm), the heads of one layer reach the stream through that norm together: a set of them sends
``post(a + their change) - post(a)`` (``a`` the base run's attention output before the norm), which is exact for
path patching and, one head at a time, what edge attribution multiplies by its gradients.

* ``path_patch`` is exact: the base run with the receivers' inputs changed by the senders' output
  difference (source minus base) along the direct edges only, everything downstream of the receivers
  recomputed.
* ``edge_attribution`` estimates every edge's effect at once to first order (Syed et al., 2023): the
  senders' output differences dotted with the gradient of the metric with respect to each receiver's input,
  from one forward and one backward pass; ``method="eap-ig"`` averages that gradient over inputs
  interpolated between the two runs' embeddings (Hanna et al., 2024).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

from interp.circuits.patching import (
    PatchResult,
    _metric_value,
    _readout,
    _runs,
    _source_acts,
    _tokens,
    run_blocks,
)
from interp.hooks import NOOP, Cache, act_name
from interp.models import attention_inputs, to_device
from interp.results import Result, Summary


# ---------------------------------------------------------------------------------------------- nodes
def senders(model) -> list[str]:
    """Labels of every component that writes to the residual stream, upstream first: ``embed``, then each
    layer's heads ``L{l}H{h}`` and its MLP ``MLP{l}``."""
    out = ["embed"]
    for l in range(model.n_layers):
        out += [f"L{l}H{h}" for h in range(model.blocks[l].attn.n_heads)] + [f"MLP{l}"]
    return out


def receivers(model) -> list[str]:
    """Labels of every input that reads the residual stream: each head's query ``L{l}H{h}.q``, each kv head's
    key and value ``L{l}H{k}.k``/``.v``, each MLP ``MLP{l}``, and finally ``logits``."""
    out = []
    for l in range(model.n_layers):
        a = model.blocks[l].attn
        out += [f"L{l}H{h}.q" for h in range(a.n_heads)]
        out += [f"L{l}H{k}.k" for k in range(a.n_kv_heads)] + [f"L{l}H{k}.v" for k in range(a.n_kv_heads)]
        out.append(f"MLP{l}")
    return out + ["logits"]


_NODE = re.compile(r"^(?:embed|logits|MLP(\d+)|L(\d+)H(\d+)(?:\.([qkv]))?)$")


def _parse(label: str, model) -> tuple[str, int, int]:
    """(kind, layer, head) with kind in embed/head/mlp/q/k/v/logits; layer is where the node sits
    (embed -1, logits L)."""
    m = _NODE.match(label)
    if not m:
        raise ValueError(f"unknown component '{label}'; use 'embed', 'L3H2', 'MLP4', 'L5H1.q' (.k/.v) or 'logits'")
    if label == "embed":
        return "embed", -1, 0
    if label == "logits":
        return "logits", model.n_layers, 0
    if m.group(1) is not None:
        kind, layer, head = "mlp", int(m.group(1)), 0
    else:
        kind, layer, head = (m.group(4) or "head"), int(m.group(2)), int(m.group(3))
    if not 0 <= layer < model.n_layers:
        raise ValueError(f"component '{label}': layer {layer} is outside 0..{model.n_layers - 1}")
    a = model.blocks[layer].attn
    limit = a.n_kv_heads if kind in ("k", "v") else a.n_heads
    if kind not in ("mlp",) and not 0 <= head < limit:
        raise ValueError(f"component '{label}': head {head} is outside 0..{limit - 1}")
    return kind, layer, head


def _mlp_reads(model) -> list[str]:
    """The residual stream each layer's MLP reads, by hook name: ``blocks.{l}.hook_resid_mid`` where the block
    has that stream (its attention writes before its MLP reads), else ``blocks.{l}.hook_resid_pre`` (a block
    without ``hook_resid_mid`` runs attention and MLP side by side on the stream entering it)."""
    names = model.hook_shapes()
    return [act_name("resid_mid", l) if act_name("resid_mid", l) in names else act_name("resid_pre", l)
            for l in range(model.n_layers)]


def _precedes(sender, receiver, reads) -> bool:
    """Whether ``sender`` writes to the stream ``receiver`` reads; ``reads`` is ``_mlp_reads(model)``."""
    (sk, sl, _), (rk, rl, _) = sender, receiver
    return sl < rl or (sk == "head" and rk == "mlp" and sl == rl and reads[rl].endswith("resid_mid"))


# ---------------------------------------------------------------------------------------------- outputs
def _out_names(model) -> list[str]:
    embed = ["hook_embed"] + (["hook_pos_embed"] if "hook_pos_embed" in model.hook_shapes() else [])
    return embed + [act_name(s, l) for l in range(model.n_layers) for s in ("z", "mlp_out")]


def _sender_outputs(model, cache) -> jax.Array:
    """``[U B T D]`` outputs of every sender, in ``senders(model)`` order (a head's is ``z_h @ W_O[h]``, before
    any post-attention norm: see ``_renormed``)."""
    embed = cache["hook_embed"]
    if "hook_pos_embed" in cache:  # learned positions: the stream starts as their sum
        embed = embed + cache["hook_pos_embed"]
    outs = [embed[None]]
    for l, blk in enumerate(model.blocks):
        outs.append(jnp.einsum("BTHE,HED->HBTD", cache[act_name("z", l)], blk.attn.W_O))
        outs.append(cache[act_name("mlp_out", l)][None])
    return jnp.concatenate(outs).astype(jnp.float32)


def _attn_post(block):
    """The norm ``block`` applies to its attention output before it joins the stream, or None."""
    return getattr(block, "ln1_post", None)


@eqx.filter_jit
def _renormed(model, zs, diff, groups):
    """What to add to ``groups @ diff`` ``[N B T D]`` so that each group of senders (``groups [N U]``, 0/1)
    changes the stream as it does in the model: the heads of a layer whose attention output is normalised
    again before it joins the stream change it by ``post(a + d) - post(a)``, where ``a`` is the base run's
    attention output before that norm (from ``zs``, the base run's ``hook_z`` by layer) and ``d`` the sum of the
    group's head differences there, not by ``d`` itself."""
    out = jnp.zeros((groups.shape[0],) + diff.shape[1:], jnp.float32)
    u = 1
    for blk, z in zip(model.blocks, zs):
        H, post = blk.attn.n_heads, _attn_post(blk)
        if post is not None:
            a = jnp.einsum("BTHE,HED->BTD", z, blk.attn.W_O)
            a = a if blk.attn.b_O is None else a + blk.attn.b_O
            d = jnp.einsum("NH,HBTD->NBTD", groups[:, u:u + H].astype(jnp.float32), diff[u:u + H])

            def f(x, post=post, dtype=a.dtype):
                return post(x.astype(dtype), NOOP, "post").astype(jnp.float32)

            out = out + jax.vmap(f)(a.astype(jnp.float32) + d) - f(a)[None] - d
        u += H + 1
    return out


def _group_deltas(model, base_cache, diff, rows: np.ndarray | None, per_sender: bool) -> jax.Array:
    """The stream change ``[N B T D]`` of the senders ``rows`` (indices into ``diff``; None: all of them), each
    on its own (``per_sender``) or all together (N = 1)."""
    U = diff.shape[0]
    if rows is None:
        deltas = diff if per_sender else diff.sum(0, keepdims=True)
        rows = np.arange(U)
    else:
        deltas = diff[rows] if per_sender else diff[rows].sum(0, keepdims=True)
    if all(_attn_post(b) is None for b in model.blocks):
        return deltas
    groups = np.zeros((len(rows) if per_sender else 1, U), np.float32)
    groups[np.arange(len(rows)) if per_sender else 0, rows] = 1.0
    zs = [base_cache[act_name("z", l)] for l in range(model.n_layers)]
    return deltas + _renormed(model, zs, diff, to_device(groups))


def _normalized(norm, x):
    box = {}

    def hk(name, a):
        if name.endswith("hook_normalized"):
            box["n"] = a
        return a

    norm(x, hk, "norm")
    return box["n"]


# ---------------------------------------------------------------------------------------------- EAP
@dataclasses.dataclass(frozen=True)
class EdgeResult(Result):
    """``scores [U V]``: estimated change of the metric from patching edge ``senders[u] -> receivers[v]``
    alone (NaN where ``u`` does not precede ``v``). ``base`` and ``source`` are the metric of the base run and
    of the source run; ``method`` is ``"eap"`` or ``"eap-ig"``."""

    scores: np.ndarray
    senders: tuple[str, ...]
    receivers: tuple[str, ...]
    base: float
    source: float
    method: str

    def score(self, sender: str, receiver: str) -> float:
        """The score of one edge, by its end points' labels."""
        return float(self.scores[self.senders.index(sender), self.receivers.index(receiver)])

    def top(self, k: int = 10) -> list[tuple[str, str, float]]:
        """The ``k`` edges with the largest absolute score, as (sender, receiver, score)."""
        s = np.nan_to_num(self.scores, nan=0.0)
        order = np.argsort(-np.abs(s), axis=None)[:k]
        return [(self.senders[u], self.receivers[v], float(s[u, v])) for u, v in zip(*np.unravel_index(order, s.shape))]

    def _summary(self) -> Summary:
        U, V = self.scores.shape
        return Summary(f"edge attribution ({self.method})", {"sender": U, "receiver": V},
                       {"base": self.base, "source": self.source, "edges": int(np.isfinite(self.scores).sum())},
                       [(f"{u} -> {v}", s) for u, v, s in self.top(8)],
                       "largest edges (estimated change of the metric)")


def _hook_points(model):
    """(hook points where receivers take their inputs, residual streams the receivers read)."""
    L = model.n_layers
    deltas = [act_name(s, l) for l in range(L) for s in ("q", "k", "v")]
    deltas += [f"blocks.{l}.ln2.hook_normalized" for l in range(L)] + ["ln_final.hook_normalized"]
    keep = [act_name("resid_pre", l) for l in range(L)] + [n for n in _mlp_reads(model) if n.endswith("resid_mid")]
    return deltas, keep + [act_name("resid_post", L - 1)]


def _input_grads(model, acts, g, reads) -> list[jax.Array]:
    """``dmetric/d(stream read)`` of every receiver, ``[V_l B T D]`` per group of receivers, from the gradients
    ``g`` at their hook points and the streams ``acts`` they read (``reads``: ``_mlp_reads(model)``)."""
    out = []
    for l, blk in enumerate(model.blocks):
        a, r = blk.attn, acts[act_name("resid_pre", l)]
        _, vjp1 = jax.vjp(lambda x, blk=blk: blk.ln1(x, NOOP, "ln1"), r)
        cot = jnp.concatenate([
            jnp.einsum("BTHE,DHE->HBTD", g[act_name("q", l)], a.W_Q),
            jnp.einsum("BTKE,DKE->KBTD", g[act_name("k", l)], a.W_K),
            jnp.einsum("BTKE,DKE->KBTD", g[act_name("v", l)], a.W_V),
        ])
        out.append(jax.vmap(lambda c, vjp1=vjp1, dtype=r.dtype: vjp1(c.astype(dtype))[0])(cot))
        _, vjp2 = jax.vjp(lambda x, blk=blk: _normalized(blk.ln2, x), acts[reads[l]])
        out.append(vjp2(g[f"blocks.{l}.ln2.hook_normalized"])[0][None])
    _, vjpf = jax.vjp(lambda x: _normalized(model.ln_final, x), acts[act_name("resid_post", model.n_layers - 1)])
    out.append(vjpf(g["ln_final.hook_normalized"])[0][None])
    return out


@eqx.filter_jit
def _receiver_grads(model, tokens, attention_mask, zeros, metric, embeds, alphas):
    """Mean over ``alphas`` of ``dmetric/d(receiver input)`` ``[V B T D]``, the embedding set to
    ``embeds[0] + alpha (embeds[1] - embeds[0])``."""
    _, keep = _hook_points(model)
    reads = _mlp_reads(model)

    def at(alpha):
        def f(deltas):
            acts = {}

            def hk(name, x):
                if name == "hook_embed":
                    x = (embeds[0] + alpha * (embeds[1] - embeds[0])).astype(x.dtype)
                if name in deltas:
                    x = x + deltas[name].astype(x.dtype)
                if name in keep:
                    acts[name] = x
                return x

            return metric(model.forward(tokens, hk, attention_mask=attention_mask)), acts

        (_, acts), g = jax.value_and_grad(f, has_aux=True)(zeros)
        return jnp.concatenate(_input_grads(model, acts, g, reads)).astype(jnp.float32)

    return jax.lax.map(at, alphas).mean(axis=0)


def _valid(model) -> np.ndarray:
    s = [_parse(x, model) for x in senders(model)]
    r = [_parse(x, model) for x in receivers(model)]
    reads = _mlp_reads(model)
    return np.array([[_precedes(a, b, reads) for b in r] for a in s])


def edge_attribution(
    model, clean: Int[Array, "B T"] | str | Cache, corrupted: Int[Array, "B T"] | str | Cache, metric: Callable, *,
    method: str = "eap", steps: int = 5, direction: str = "denoise", attention_mask: Int[Array, "B T"] | None = None,
) -> EdgeResult:
    """Scores of every sender -> receiver edge (see the module docstring). ``method``: ``"eap"`` (gradient at
    the base run) or ``"eap-ig"`` (gradient averaged over ``steps`` embeddings interpolated from the base run
    to the source run)."""
    if method not in ("eap", "eap-ig"):
        raise ValueError(f"method must be 'eap' or 'eap-ig', got {method!r}")
    base, source = _runs(model, clean, corrupted, direction, attention_mask)
    base_tokens, mask = _tokens(model, base, attention_mask)
    base_logits, bc = model.run_with_cache(base_tokens, _out_names(model), attention_mask=mask)
    sc, src_metric = _source_outputs(model, source, mask, metric)
    _same_shape(bc, sc)
    diff = _sender_outputs(model, sc) - _sender_outputs(model, bc)
    diff = _group_deltas(model, bc, diff, None, per_sender=True)
    deltas, _ = _hook_points(model)
    shapes = model.hook_shapes(*base_tokens.shape)
    zeros = {n: jnp.zeros(shapes[n], jnp.float32) for n in deltas}
    alphas = jnp.zeros((1,), jnp.float32) if method == "eap" else jnp.arange(1, steps + 1, dtype=jnp.float32) / steps
    grads = _receiver_grads(model, base_tokens, mask, zeros, metric, (bc["hook_embed"], sc["hook_embed"]), alphas)
    scores = np.asarray(jnp.einsum("UBTD,VBTD->UV", diff, grads), np.float64)
    scores[~_valid(model)] = np.nan
    return EdgeResult(scores, tuple(senders(model)), tuple(receivers(model)), _metric_value(metric, base_logits),
                      src_metric, method)


def _source_outputs(model, source, mask, metric):
    """The source run's sender outputs (hooks ``_out_names``) at the prompt's own length, and its metric (NaN
    when the source is a ``Cache``)."""
    names = _out_names(model)
    if isinstance(source, Cache):
        missing = [n for n in names if n not in source]
        if missing:
            raise ValueError(f"the source cache lacks {missing[:3]}...; capture them with run_with_cache first")
        return source, float("nan")
    return _source_acts(model, source, names, mask, metric, 0)


def _same_shape(base_cache, source_cache):
    a, b = base_cache["hook_embed"].shape, source_cache["hook_embed"].shape
    if a != b:
        raise ValueError(f"clean and corrupted runs differ in shape: {b[:2]} vs {a[:2]}; "
                         "they need prompts of equal length (pad them with an attention_mask)")


# ---------------------------------------------------------------------------------------------- path patching
def _receiver_edit_fn(model, rec, base, delta):
    """(hook name, function of the live activation) that gives receiver ``rec`` the input base + delta."""
    kind, l, h = rec
    if kind == "logits":
        return act_name("resid_post", model.n_layers - 1), lambda x: x + delta.astype(x.dtype)
    blk = model.blocks[l]
    if kind == "mlp":  # the block's own MLP path (its norm's weight, any post-MLP norm) runs on the new input
        read = _mlp_reads(model)[l]
        new = _normalized(blk.ln2, base[read] + delta.astype(base[read].dtype))
        return f"blocks.{l}.ln2.hook_normalized", lambda x: new.astype(x.dtype)
    r = base[act_name("resid_pre", l)] + delta.astype(base[act_name("resid_pre", l)].dtype)
    a = blk.attn
    w, b = {"q": (a.W_Q, a.b_Q), "k": (a.W_K, a.b_K), "v": (a.W_V, a.b_V)}[kind]
    y = jnp.einsum("BTD,DE->BTE", blk.ln1(r, NOOP, "ln1"), w[:, h])
    if b is not None:
        y = y + b[h]
    return act_name(kind, l), lambda x: x.at[:, :, h].set(y.astype(x.dtype))


@eqx.filter_jit
def _path_sweep(model, base, deltas, positions, mask, metric, recs, batch_size):
    start = min(r[1] for r in recs)

    def one(delta):
        fns: dict[str, list] = {}
        for rec in recs:
            name, fn = _receiver_edit_fn(model, rec, base, delta)
            fns.setdefault(name, []).append(fn)

        def hook_fn(j, i, name, a):
            for fn in fns.get(name, ()):
                a = fn(a)
            return a

        if start >= model.n_layers:
            x = base[act_name("resid_post", model.n_layers - 1)]
            for fn in fns[act_name("resid_post", model.n_layers - 1)]:
                x = fn(x)
            return _readout(model, metric, x)
        x = run_blocks(model, base[act_name("resid_pre", start)], jnp.int32(start), positions, mask, hook_fn)
        return _readout(model, metric, x)

    if batch_size >= deltas.shape[0]:
        return jax.vmap(one)(deltas)
    return jax.lax.map(one, deltas, batch_size=batch_size)


def path_patch(
    model, clean: Int[Array, "B T"] | str | Cache, corrupted: Int[Array, "B T"] | str | Cache, metric: Callable,
    senders_: Sequence[str] | str, receivers_: Sequence[str] | str, *, direction: str = "denoise",
    attention_mask: Int[Array, "B T"] | None = None, per_sender: bool = False, batch_size: int | None = None,
) -> float | PatchResult:
    """Exact path patching from ``senders_`` to ``receivers_`` (labels as in ``senders(model)`` and
    ``receivers(model)``; a head label ``L5H1`` as a receiver means its query, key and value inputs).

    Returns the patched metric; with ``per_sender=True`` each sender is patched on its own and the result is a
    ``PatchResult`` over the senders (``senders_="heads"`` sweeps every head: values ``[layer, head]``).
    """
    base, source = _runs(model, clean, corrupted, direction, attention_mask)
    base_tokens, mask = _tokens(model, base, attention_mask)
    heads_grid = isinstance(senders_, str) and senders_ == "heads"
    if heads_grid:
        senders_ = [s for s in senders(model) if s.startswith("L")]
        per_sender = True
    senders_ = [senders_] if isinstance(senders_, str) else list(senders_)
    receivers_ = [receivers_] if isinstance(receivers_, str) else list(receivers_)
    recs = []
    for r in receivers_:
        kind, l, h = _parse(r, model)
        if kind == "head":
            kv = h // (model.blocks[l].attn.n_heads // model.blocks[l].attn.n_kv_heads)
            recs += [("q", l, h), ("k", l, kv), ("v", l, kv)]
        elif kind == "embed":
            raise ValueError("'embed' cannot receive; receivers are head inputs, MLPs or 'logits'")
        else:
            recs.append((kind, l, h))
    sends = [_parse(s, model) for s in senders_]
    reads = _mlp_reads(model)
    for s, label in zip(sends, senders_):
        if s[0] not in ("embed", "head", "mlp"):
            raise ValueError(f"'{label}' cannot send; senders are 'embed', heads 'L3H2' and MLPs 'MLP4'")
        late = [r for r in recs if not _precedes(s, r, reads)]
        if late and not per_sender:
            why = ""
            if s[0] == "head" and late[0][:2] == ("mlp", s[1]):
                why = (f" (block {s[1]} has no hook_resid_mid: its MLP reads {reads[s[1]]}, beside the attention, "
                       "so its own heads reach it only through later layers)")
            raise ValueError(f"sender '{label}' does not come before receiver {late[0]}{why}; a path must go "
                             "forward")
    L = model.n_layers
    _, keep = _hook_points(model)
    base_logits, bc = model.run_with_cache(base_tokens, keep + _out_names(model), attention_mask=mask)
    sc, src_metric = _source_outputs(model, source, mask, metric)
    _same_shape(bc, sc)
    index = {s: i for i, s in enumerate(senders(model))}
    diff = _sender_outputs(model, sc) - _sender_outputs(model, bc)
    rows = [index[s] for s in senders_]
    valid = np.array([all(_precedes(s, r, reads) for r in recs) for s in sends])
    deltas = _group_deltas(model, bc, diff, np.asarray(rows), per_sender)
    positions, amask = attention_inputs(base_tokens.shape, mask)
    if batch_size is None:
        batch_size = max(1, 8192 // base_tokens.size)
    base_acts = {k: bc[k] for k in keep}
    values = np.asarray(_path_sweep(model, base_acts, deltas, positions, amask, metric, tuple(recs), batch_size),
                        np.float64)
    base_metric = _metric_value(metric, base_logits)
    if not per_sender:
        return float(values[0])
    values = np.where(valid, values, np.nan)
    if heads_grid:
        H = model.blocks[0].attn.n_heads
        return PatchResult(values.reshape(L, H), ("layer", "head"), (tuple(map(str, range(L))),
                           tuple(f"H{h}" for h in range(H))), "path", base_metric, src_metric, method="path patching")
    return PatchResult(values, ("sender",), (tuple(senders_),), "path", base_metric, src_metric, method="path patching")
