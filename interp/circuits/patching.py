"""Activation patching and attribution patching over layers, positions and heads.

A sweep patches one target at a time (a layer and a position, a layer and a head, ...) from a *source* run
into a *base* run and records a metric of the base run's logits. ``direction="denoise"`` (the default) patches
clean activations into the corrupted run; ``"noise"`` patches corrupted activations into the clean run.

The whole sweep is one compiled function. Patching layer ``l`` leaves the residual stream entering block
``l`` unchanged, so each patched run starts there from the base run's cached residual and runs only blocks
``l..L-1`` (``lax.fori_loop`` over a ``lax.switch`` of the blocks); the patches of one layer run as a batch
(``lax.map`` with ``batch_size`` bounds the memory), and the metric unembeds only the positions it reads.

Attribution patching replaces each patched run by its first-order estimate ``(source - base) . dmetric/dact``
taken from one forward and one backward pass of the base run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int
from tqdm.auto import tqdm

from interp.circuits.metrics import PositionMetric
from interp.hooks import NOOP, Cache, Hooks, act_name
from interp.models import attention_inputs, pad_positions, to_device
from interp.results import Result, Summary, top_entries

# hook short name -> layout of the activation (batch first)
LAYOUTS = {
    "resid_pre": "BTD", "resid_mid": "BTD", "resid_post": "BTD", "attn_out": "BTD", "mlp_out": "BTD",
    "pre": "BTD", "post": "BTD", "pre_linear": "BTD",
    "q": "BTHE", "k": "BTHE", "v": "BTHE", "rot_q": "BTHE", "rot_k": "BTHE", "z": "BTHE",
    "pattern": "BHTS", "attn_scores": "BHTS",
}
_TOKENS_PER_BATCH = 8192  # patched runs execute together up to this many tokens (bounds memory)
_PER = {"BTD": ("pos", "layer"), "BTHE": ("head", "head_pos", "pos", "layer"), "BHTS": ("head", "head_pos", "layer")}


@dataclasses.dataclass(frozen=True)
class PatchResult(Result):
    """A patching (or attribution) sweep: ``values`` with one axis per entry of ``axes``.

    ``labels[i]`` names the entries along ``axes[i]``. ``base`` is the metric of the unpatched base run,
    ``source`` that of the run the values come from (NaN when only its cache was given); ``normalized()``
    maps ``base`` to 0 and ``source`` to 1.
    """

    values: np.ndarray
    axes: tuple[str, ...]
    labels: tuple[tuple[str, ...], ...]
    hook: str
    base: float
    source: float
    method: str = "patching"

    def normalized(self) -> np.ndarray:
        return (self.values - self.base) / (self.source - self.base)

    @property
    def effect(self) -> np.ndarray:
        """Change of the metric caused by each patch (``values - base``)."""
        return self.values - self.base

    def _summary(self) -> Summary:
        kind = "attribution patching" if self.method == "attribution" else "activation patching"
        return Summary(f"{kind} of {self.hook}", dict(zip(self.axes, self.values.shape)),
                       {"base": self.base, "source": self.source},
                       top_entries(self.effect, self.labels, self.axes, k=10), "largest effects (patched - base)")

    def top(self, k: int = 5) -> list[tuple[tuple[str, ...], float]]:
        """The ``k`` entries with the largest absolute effect, as (labels, effect)."""
        eff = self.effect
        order = np.argsort(-np.abs(eff), axis=None)[:k]
        out = []
        for flat in order:
            idx = np.unravel_index(flat, eff.shape)
            out.append((tuple(self.labels[a][i] for a, i in enumerate(idx)), float(eff[idx])))
        return out


# ---------------------------------------------------------------------------------------------- targets
@dataclasses.dataclass(frozen=True)
class _Target:
    short: str
    layout: str
    per: str

    def suffix(self) -> str:
        return act_name(self.short, 0).split(".", 2)[2]

    def name(self, layer: int) -> str:
        return act_name(self.short, layer)

    def masks(self, shape: tuple[int, ...]) -> np.ndarray:
        """``[P, 1, ...]`` booleans, one per patch, broadcastable to the activation ``shape`` (batch first)."""
        if self.per == "layer":
            return np.ones((1,) + (1,) * len(shape), bool)
        if self.layout == "BTD" or (self.layout == "BTHE" and self.per == "pos"):
            T = shape[1]
            m = np.eye(T, dtype=bool).reshape(T, 1, T, *([1] * (len(shape) - 2)))
            return m
        if self.layout == "BTHE":
            _, T, H, _ = shape
            if self.per == "head":
                return np.eye(H, dtype=bool).reshape(H, 1, 1, H, 1)
            eye = np.eye(T * H, dtype=bool).reshape(T * H, 1, T, H, 1)
            return eye
        _, H, T, _ = shape  # BHTS
        if self.per == "head":
            return np.eye(H, dtype=bool).reshape(H, 1, H, 1, 1)
        m = np.zeros((T, H, 1, H, T, 1), bool)
        for t in range(T):
            for h in range(H):
                m[t, h, 0, h, t, 0] = True
        return m.reshape(T * H, 1, H, T, 1)

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.per == "layer":
            return ()
        if self.per == "pos":
            return (shape[1],)
        if self.layout == "BTHE":
            return (shape[2],) if self.per == "head" else (shape[1], shape[2])
        return (shape[1],) if self.per == "head" else (shape[2], shape[1])

    def axes(self) -> tuple[str, ...]:
        return {"layer": ("layer",), "pos": ("layer", "pos"), "head": ("layer", "head"),
                "head_pos": ("layer", "pos", "head")}[self.per]

    def reduce(self, prod: jax.Array) -> jax.Array:
        """Sum ``prod [L, B, ...]`` over everything one patch covers (attribution patching)."""
        p = prod.sum(axis=1)
        if self.per == "layer":
            return p.reshape(p.shape[0], -1).sum(-1)
        if self.layout == "BTD":
            return p.sum(-1)
        if self.layout == "BTHE":
            return {"pos": lambda: p.sum((2, 3)), "head": lambda: p.sum((1, 3)),
                    "head_pos": lambda: p.sum(3)}[self.per]()
        return {"head": lambda: p.sum((2, 3)), "head_pos": lambda: p.sum(3).transpose(0, 2, 1)}[self.per]()


def _target(hook: str, per: str | None) -> _Target:
    short = hook.split(".")[-1].removeprefix("hook_") if "." in hook or hook.startswith("hook_") else hook
    short = {"attn": "pattern", "result": "z"}.get(short, short)
    if short not in LAYOUTS:
        raise ValueError(f"cannot sweep hook '{hook}'; per-layer hooks that can be swept: {sorted(LAYOUTS)}")
    layout = LAYOUTS[short]
    per = per or ("pos" if layout == "BTD" else "head")
    if per not in _PER[layout]:
        raise ValueError(f"per='{per}' does not apply to '{short}' (layout {layout}); choose one of {_PER[layout]}")
    return _Target(short, layout, per)


# why a model can lack a per-layer hook point that others have, and what to sweep instead
_ABSENT = {
    "resid_mid": "its blocks run attention and the MLP side by side on the stream entering the block (resid_pre), "
                 "so there is no stream between the two; sweep resid_pre, attn_out or mlp_out instead",
    "pre_linear": "its MLPs are not gated (one input projection); sweep 'pre' instead",
    "rot_q": "its attention has no rotary embedding (positions enter at the embedding); sweep 'q' instead",
    "rot_k": "its attention has no rotary embedding (positions enter at the embedding); sweep 'k' instead",
}


def _check_present(model, targets, layers) -> None:
    """Refuse a hook point this model's blocks do not have, saying why and what to sweep instead."""
    names = model.hook_shapes()
    for t in targets:
        missing = [t.name(l) for l in layers if t.name(l) not in names]
        if missing:
            have = [s for s in LAYOUTS if act_name(s, layers[0]) in names]
            why = _ABSENT.get(t.short, f"hooks of this model that can be swept: {have}")
            raise ValueError(f"this model has no hook point '{missing[0]}': {why}")


def _labels(model, tokens, target: _Target, shape, layers) -> tuple[tuple[str, ...], ...]:
    out = [tuple(str(l) for l in layers)]
    pos_labels = tuple(str(i) for i in range(shape[1 if target.layout != "BHTS" else 2]))
    if model.tokenizer is not None and tokens is not None:
        try:
            toks = model.to_str_tokens(np.asarray(tokens)[0])
            pos_labels = tuple(f"{t}@{i}" for i, t in enumerate(toks))
        except Exception:  # labels are a convenience; ids that do not decode keep numeric labels
            pass
    n_heads = shape[2] if target.layout == "BTHE" else shape[1]
    heads = tuple(f"H{h}" for h in range(n_heads))
    if target.per == "pos":
        out.append(pos_labels)
    elif target.per == "head":
        out.append(heads)
    elif target.per == "head_pos":
        out += [pos_labels, heads]
    return tuple(out)


# ---------------------------------------------------------------------------------------------- runs
def _runs(model, clean, corrupted, direction: str, attention_mask):
    if direction not in ("denoise", "noise"):
        raise ValueError("direction must be 'denoise' (clean into corrupted) or 'noise' (corrupted into clean), "
                         f"got {direction!r}")
    return (corrupted, clean) if direction == "denoise" else (clean, corrupted)


def _tokens(model, x, attention_mask):
    tokens, mask, _ = model.check_inputs(x, attention_mask, None)
    return tokens, mask


@eqx.filter_jit
def _apply_metric(metric, logits):
    return metric(logits)


def _metric_value(metric, logits) -> float:
    v = np.asarray(_apply_metric(metric, logits) if isinstance(metric, eqx.Module) else metric(logits))
    if v.shape != ():
        raise ValueError(f"the metric must return a scalar; it returned shape {v.shape} (average over the batch)")
    return float(v)


def _source_acts(model, source, names, attention_mask, metric, padded: int, base_shape: tuple[int, int] | None = None):
    """The source run's activations at ``names``, at the sweep's length (``padded``, or the prompt's own when 0),
    and its metric."""
    if isinstance(source, Cache):
        missing = [n for n in names if n not in source]
        if missing:
            raise ValueError(f"the source cache lacks {missing[:3]}...; capture them with run_with_cache first")
        if not padded:
            return source, float("nan")
        axes = model.position_axes()
        return Cache({n: pad_positions(source[n], axes[n], padded) for n in names}), float("nan")
    tokens, mask = _tokens(model, source, attention_mask)
    if base_shape is not None and tuple(tokens.shape) != tuple(base_shape):
        raise ValueError(f"clean and corrupted runs differ in shape: {tuple(tokens.shape)} vs {tuple(base_shape)}; "
                         "patching needs prompts of equal length (pad them with an attention_mask)")
    logits, cache = model.run(tokens, Hooks(capture=list(names)), attention_mask=mask, keep_padding=padded > 0)
    return cache, _metric_value(metric, logits)


def _sweep_length(model, metric, T: int) -> tuple[int, Callable]:
    """The length a sweep runs at, and the metric to use there.

    Sweeps run at the prompt's length bucket (a prompt of a new length reuses the compiled sweep) when the
    metric is a :class:`PositionMetric`: its positions are made absolute so that they read the same tokens
    after padding. Any other metric sees the logits of the whole sequence and runs at the exact length."""
    padded = model.bucket_length(T)
    if padded == T or not isinstance(metric, PositionMetric):
        return 0, metric
    return padded, eqx.tree_at(lambda m: m.pos, metric, to_device(np.asarray(metric.pos) % T, np.int32))


def _label_tokens(model, clean, base_tokens, mask):
    """Axis labels name the clean prompt's tokens (the corrupted run's when only a clean cache is given)."""
    return base_tokens if isinstance(clean, Cache) else _tokens(model, clean, mask)[0]


def _layers(model, layers) -> list[int]:
    if layers is None:
        return list(range(model.n_layers))
    layers = [int(l) for l in np.atleast_1d(layers)]
    bad = [l for l in layers if not 0 <= l < model.n_layers]
    if bad:
        raise ValueError(f"layers {bad} are outside 0..{model.n_layers - 1}")
    return layers


def _readout(model, metric, x):
    """Metric of the final residual ``x [B T D]``; position metrics unembed only the positions they read."""
    if isinstance(metric, PositionMetric):
        x = metric.gather(x)[:, None]
        return metric.read(model.unembed_logits(model.ln_final(x, NOOP, "ln_final")[:, 0]))
    return metric(model.unembed_logits(model.ln_final(x, NOOP, "ln_final")))


def run_blocks(model, x, start, positions, mask, hook_fn=None, kv=None, index: int = 0):
    """Run blocks ``start..L-1`` (``start`` may be traced) on the residual ``x`` entering block ``start``.

    ``hook_fn(layer, i, name, a) -> a`` is called at every hook point of block ``layer`` while the loop is at
    iteration ``i`` (traced), so an edit can be made to act only where ``i`` equals some traced layer.

    With ``kv`` (a :class:`~interp.models.KVCache` of a whole run) ``x [B T-index D]`` holds the positions from
    ``index`` on, and every block reads the keys and values of the earlier positions from ``kv``: a change at
    ``index`` or later cannot reach them.
    """
    L = model.n_layers

    def branch(j):
        def f(x, i):
            hk = NOOP if hook_fn is None else (lambda name, a: hook_fn(j, i, name, a))
            if kv is None:
                return model.blocks[j](x, hk, f"blocks.{j}", positions, mask)
            out, _ = model.blocks[j](x, hk, f"blocks.{j}", positions, mask, (kv.keys[j], kv.values[j], index),
                                     kv.positions)
            return out
        return f

    branches = [branch(j) for j in range(L)]
    return jax.lax.fori_loop(start, L, lambda i, x: jax.lax.switch(i, branches, x, i), x)


@eqx.filter_jit
def _sweep(model, layer, resid, src, masks, attention_mask, metric, suffix, batch_size, n_real=None):
    """The metric of every patch of one layer (``layer`` is traced, so every layer shares the program): ``resid``
    is the base run's residual entering the layer and ``src`` the source activation to patch in.

    ``n_real`` (traced): only the first ``n_real`` patches matter (a sweep padded to its length bucket lists the
    padding positions' patches last); the patches run in chunks and the chunks past ``n_real`` are skipped, so a
    padded prompt costs what its real positions do while every length of a bucket shares the program. The values
    of skipped patches are 0."""
    positions, mask = attention_inputs(resid.shape[:2], attention_mask)

    def one(m):
        def hook_fn(j, i, name, a):
            if name != f"blocks.{j}.{suffix}":
                return a
            return jnp.where(m & (i == layer), src, a).astype(a.dtype)

        return _readout(model, metric, run_blocks(model, resid, layer, positions, mask, hook_fn))

    return _map_patches(one, masks, batch_size, n_real)


def _map_patches(one, masks, batch_size: int, n_real=None, pieces: int = 8, whole_when_full: bool = False):
    """``one`` over every patch mask, ``batch_size`` at a time; with ``n_real`` (traced) only the first ``n_real``
    run, in chunks of a ``pieces``-th of the patches, and the rest are 0. ``whole_when_full``: when every patch is
    real, run them as without ``n_real`` (one program holds both ways)."""
    P = masks.shape[0]
    if n_real is None:
        if batch_size >= P:
            return jax.vmap(one)(masks)
        return jax.lax.map(one, masks, batch_size=batch_size)
    if whole_when_full:
        return jax.lax.cond(n_real >= P, lambda: _map_patches(one, masks, batch_size),
                            lambda: _map_patches(one, masks, batch_size, n_real, pieces))
    # chunks of at most a pieces-th of the patches, so that little past n_real runs
    chunk = max(1, min(batch_size, -(-P // pieces)))
    n_chunks = -(-P // chunk)
    if n_chunks * chunk > P:
        masks = jnp.concatenate([masks, jnp.zeros((n_chunks * chunk - P,) + masks.shape[1:], masks.dtype)])
    out = jax.eval_shape(jax.vmap(one), masks[:chunk])
    out = jnp.zeros((n_chunks * chunk,) + out.shape[1:], out.dtype)

    def body(c, out):
        vals = jax.vmap(one)(jax.lax.dynamic_slice_in_dim(masks, c * chunk, chunk))
        return jax.lax.dynamic_update_slice_in_dim(out, vals, c * chunk, 0)

    return jax.lax.fori_loop(0, (n_real + chunk - 1) // chunk, body, out)[:P]


@eqx.filter_jit
def _base_kv(model, tokens, attention_mask):
    """The base run's keys and values at every layer (a :class:`~interp.models.KVCache` over its positions) and
    its final residual stream (before the final norm)."""
    B, T = tokens.shape
    mask = jnp.ones((B, T), jnp.int32) if attention_mask is None else attention_mask
    positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0).astype(jnp.int32)
    last = f"blocks.{model.n_layers - 1}.hook_resid_post"
    seen = {}

    def hk(name, a):
        if name == last:
            seen["final"] = a
        return a

    _, kv = model.forward(tokens, hk, attention_mask=mask, positions=positions, kv=model.init_cache(B, T))
    return kv, seen["final"]


@eqx.filter_jit
def _sweep_suffix(model, layer, resid, src, masks, kv, final, metric, suffix, batch_size, span, n_real=None):
    """``_sweep`` for the patches at positions ``start..stop-1`` (``span = (start, stop, patches per position)``,
    static): a patch there cannot change the positions before ``start``, so each patched run computes only the
    positions from ``start`` on, attending to the base run's keys and values (``kv``) for the earlier ones, and the
    metric reads the base run's ``final`` residual there."""
    start, stop, per_pos = span
    T = resid.shape[1]
    slots = jnp.arange(T)
    causal = slots[None, :] <= (start + jnp.arange(T - start))[:, None]
    mask = kv.valid[:, None, :] & causal[None]
    positions = kv.positions[:, start:]
    x0, src = resid[:, start:], src[:, start:]
    head = final[:, :start]

    def one(m):
        def hook_fn(j, i, name, a):
            if name != f"blocks.{j}.{suffix}":
                return a
            return jnp.where(m & (i == layer), src, a).astype(a.dtype)

        x = run_blocks(model, x0, layer, positions, mask, hook_fn, kv, start)
        return _readout(model, metric, jnp.concatenate([head, x.astype(head.dtype)], axis=1))

    return _map_patches(one, masks[start * per_pos:stop * per_pos, :, start:], batch_size, n_real, pieces=4,
                        whole_when_full=True)


# Sweeps at least this long (tokens, after padding to the bucket) skip the positions before each patch. Shorter
# ones run whole: on SmolLM2-135M, IOI prompts at 32 positions gain 1.26x warm but compile for twice as long (66 s
# against 33 s on the first call); 64 tokens of text gain 1.6x.
SKIP_PREFIX_FROM = 64


def _spans(target: _Target, length: int, skip_prefix: bool) -> list[tuple[int, int]] | None:
    """The position ranges a sweep runs as separate programs, each computing only the positions from its start on
    (None: the sweep runs whole). Only patches of one position at a time can skip the positions before them."""
    if (not skip_prefix or length < SKIP_PREFIX_FROM or target.per not in ("pos", "head_pos")
            or target.layout not in ("BTD", "BTHE")):
        return None
    groups = 4
    cuts = [g * length // groups for g in range(groups + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def patch(
    model,
    clean: Int[Array, "B T"] | str | Cache,
    corrupted: Int[Array, "B T"] | str | Cache,
    metric: Callable,
    hook: str = "resid_pre",
    *,
    per: str | None = None,
    layers: Sequence[int] | None = None,
    direction: str = "denoise",
    attention_mask: Int[Array, "B T"] | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    skip_prefix: bool = True,
) -> PatchResult:
    """Activation patching of ``hook`` at every layer (or ``layers``), one target at a time.

    ``clean``/``corrupted``: token ids ``[B T]`` (or text) of equal shape; the source side may also be a
    ``Cache`` holding ``hook`` at every swept layer. ``metric(logits [B T V]) -> scalar``
    (see ``interp.circuits.metrics``). ``per``: ``"pos"`` (layer x position) for residual-stream-shaped
    hooks; ``"head"`` (layer x head, all positions), ``"head_pos"`` (layer x position x head), ``"pos"`` or
    ``"layer"`` for ``z``/``q``/``k``/``v`` (kv heads for ``k``, ``v``) and ``pattern``. ``batch_size``
    bounds how many patched runs execute at once (default: as many as fit in 8192 tokens). A sweep that takes
    more than two seconds shows a progress bar by layer with an estimate of the time left (``progress=False``:
    none). With a position metric (``interp.circuits.metrics``) the sweep runs at the prompt's length bucket, so
    a prompt of a new length reuses its compiled program.

    ``skip_prefix``: a patch at one position cannot change the positions before it (attention is causal), so
    sweeps over positions (``per="pos"`` or ``"head_pos"``) of at least ``SKIP_PREFIX_FROM`` (64) tokens run in four
    ranges of positions, each computing only the positions from the range's start on with the base run's keys and
    values for the earlier ones: about 0.6x the work of whole-sequence runs, at the cost of compiling one program per
    range. ``False``: every patched run computes the whole sequence.
    """
    target = _target(hook, per)
    base, source = _runs(model, clean, corrupted, direction, attention_mask)
    layers = _layers(model, layers)
    _check_present(model, [target], layers)
    base_tokens, mask = _tokens(model, base, attention_mask)
    T = base_tokens.shape[1]
    padded, metric = _sweep_length(model, metric, T)
    names = [target.name(l) for l in layers]
    resid_names = [act_name("resid_pre", l) for l in layers]
    base_logits, base_cache = model.run(base_tokens, Hooks(capture=resid_names), attention_mask=mask,
                                        keep_padding=padded > 0)
    src_cache, src_metric = _source_acts(model, source, names, mask, metric, padded, base_tokens.shape)
    shape = tuple(src_cache[names[0]].shape)
    if shape[0] != base_tokens.shape[0] or (target.layout != "BHTS" and shape[1] != max(padded, T)):
        raise ValueError(f"clean and corrupted runs differ in shape: {shape[:2]} vs {tuple(base_tokens.shape)}; "
                         "patching needs prompts of equal length (pad them with an attention_mask)")
    if padded:
        mask = pad_positions(mask if mask is not None else np.ones((shape[0], T), np.int32), (1,), padded)
    masks = to_device(target.masks(shape))
    # a padded sweep lists the padding positions' patches last (position-major): only the first n_real matter
    n_real = None
    if padded and target.per in ("pos", "head_pos"):
        n_real = to_device(np.int32(masks.shape[0] // max(padded, T) * T))
    if batch_size is None:
        batch_size = max(1, _TOKENS_PER_BATCH // (shape[0] * max(padded, T)))
    # one compiled call per layer (the layer is traced, the arrays are the cache's own: no eager stacking or
    # slicing, which would compile programs of their own), so that a long sweep can show its progress
    bar = tqdm(total=len(layers), desc=f"patching {target.short}", unit="layer", delay=2.0, disable=not progress,
               leave=False)
    length = max(padded, T)
    spans = _spans(target, length, skip_prefix)
    if spans is not None:
        kv, final = _base_kv(model, pad_positions(base_tokens, (1,), padded) if padded else base_tokens, mask)
        per_pos = masks.shape[0] // length
    values = []
    with bar:
        for l, name, resid_name in zip(layers, names, resid_names):
            layer = to_device(np.int32(l))
            if spans is None:
                values.append(np.asarray(_sweep(model, layer, base_cache[resid_name], src_cache[name], masks, mask,
                                                metric, target.suffix(), batch_size, n_real), np.float64))
            else:
                parts = []
                for start, stop in spans:
                    rows = (stop - start) * per_pos
                    # every prompt length of the bucket shares the ranges' programs: a range holding only real
                    # positions runs whole, the one holding the prompt's end skips its padding patches, and one
                    # past the end runs none (its program is compiled all the same, for longer prompts)
                    real = to_device(np.int32(min(rows, max(0, T - start) * per_pos))) if padded else None
                    parts.append(np.asarray(_sweep_suffix(
                        model, layer, base_cache[resid_name], src_cache[name], masks, kv, final, metric,
                        target.suffix(), batch_size, (start, stop, per_pos), real), np.float64))
                values.append(np.concatenate(parts))
            bar.update(1)
    values = np.concatenate(values).reshape((len(layers),) + target.out_shape(shape))
    if padded and target.per in ("pos", "head_pos"):
        values = values[:, :T]
    real_shape = _real_shape(shape, target, T)
    labels = _labels(model, _label_tokens(model, clean, base_tokens, attention_mask), target, real_shape, layers)
    return PatchResult(values, target.axes(), labels, target.short, _metric_value(metric, base_logits), src_metric)


def _real_shape(shape: tuple[int, ...], target: _Target, T: int) -> tuple[int, ...]:
    """The activation shape at the prompt's own length (the sweep may run padded)."""
    if target.layout == "BHTS":
        return shape[:2] + (T, T)
    return (shape[0], T) + shape[2:]


# ---------------------------------------------------------------------------------------------- attribution
@eqx.filter_jit
def _grads(model, tokens, attention_mask, zeros: dict, metric):
    """Metric, activations and ``dmetric/dactivation`` at the hooks named in ``zeros`` (one forward + backward)."""

    def f(deltas):
        acts = {}

        def hk(name, x):
            if name in deltas:
                x = x + deltas[name].astype(x.dtype)
                acts[name] = x
            return x

        return metric(model.forward(tokens, hk, attention_mask=attention_mask)), acts

    (value, acts), grads = jax.value_and_grad(f, has_aux=True)(zeros)
    return value, acts, grads


def attribute(
    model,
    clean: Int[Array, "B T"] | str | Cache,
    corrupted: Int[Array, "B T"] | str | Cache,
    metric: Callable,
    hook: str | Sequence[str] = "resid_pre",
    *,
    per: str | None = None,
    layers: Sequence[int] | None = None,
    direction: str = "denoise",
    attention_mask: Int[Array, "B T"] | None = None,
) -> PatchResult | dict[str, PatchResult]:
    """Attribution patching: the first-order estimate of ``patch(...)`` with the same arguments, from one
    forward and one backward pass of the base run. ``values`` are estimated patched metrics (``base`` plus
    the estimated effect), so they compare directly with ``patch``'s. Several hooks (a list) share the pass
    and give a dict by hook."""
    hooks = [hook] if isinstance(hook, str) else list(hook)
    targets = [_target(h, per) for h in hooks]
    base, source = _runs(model, clean, corrupted, direction, attention_mask)
    layers = _layers(model, layers)
    _check_present(model, targets, layers)
    base_tokens, mask = _tokens(model, base, attention_mask)
    B, T = base_tokens.shape
    padded, metric = _sweep_length(model, metric, T)
    names = sorted({t.name(l) for t in targets for l in layers})
    run_tokens, run_mask = base_tokens, mask
    if padded:  # the pass runs at the prompt's length bucket; padded positions get no gradient from the metric
        run_mask = pad_positions(mask if mask is not None else np.ones((B, T), np.int32), (1,), padded)
        run_tokens = pad_positions(base_tokens, (1,), padded)
    shapes = model.hook_shapes(B, max(padded, T))
    zeros = {n: to_device(np.zeros(shapes[n], np.float32)) for n in names}
    value, acts, grads = _grads(model, run_tokens, run_mask, zeros, metric)
    src_cache, src_metric = _source_acts(model, source, names, mask, metric, padded, base_tokens.shape)
    out = {}
    label_tokens = _label_tokens(model, clean, base_tokens, attention_mask)
    for t, h in zip(targets, hooks):
        ln = [t.name(l) for l in layers]
        diff = jnp.stack([src_cache[n].astype(jnp.float32) - acts[n].astype(jnp.float32) for n in ln])
        grad = jnp.stack([grads[n] for n in ln])
        effect = np.asarray(t.reduce(diff * grad), np.float64)
        if padded and t.per in ("pos", "head_pos"):
            effect = effect[:, :T]
        shape = _real_shape(shapes[ln[0]], t, T)
        out[h] = PatchResult(float(value) + effect, t.axes(), _labels(model, label_tokens, t, shape, layers), t.short,
                             float(value), src_metric, method="attribution")
    return out[hooks[0]] if isinstance(hook, str) else out
