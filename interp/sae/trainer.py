"""Training dictionaries: optax, one jitted step with donated buffers, atomic checkpoints, exact resume.

``train(TrainConfig(...))`` streams activations from the hooked model (or an activation cache), trains,
evaluates periodically, checkpoints atomically to ``out_dir/checkpoints/step-NNNNNNNN`` (with sha256 checksums
in its ``meta.json``) and saves the final dictionary in SAELens's layout to ``out_dir/final``. The output folder
is checked for writing before the first step. ``train(..., resume=True)`` continues the newest checkpoint that
verifies: same data position, optimizer state, dead-latent counters, metric window; for a seed the weights and
the reported history (all but the wall-clock ``elapsed_s``) are identical to an uninterrupted run's. A run is
known by its settings and its data, not by where its files live (``run_identity``), so a run folder can be
copied or moved and resumed there."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from interp._io import atomic_file
from interp.results import Result, Summary
from interp.sae._base import DictConfig, Dictionary, LossContext, architecture, create
from interp.sae.checkpoints import (
    check_same_run,
    checkpoint_dirs,
    find_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    prepare_out_dir,
    run_identity,
    save_checkpoint,
)
from interp.sae.train_config import TrainConfig


class TrainState(eqx.Module):
    dictionary: Dictionary
    opt_state: Any
    since_fired: jax.Array  # int32 [M]: tokens since each latent last fired
    step: jax.Array  # int32 scalar


class TrainingDiverged(FloatingPointError):
    """Raised when training produces non-finite values; the message names the step and where the last checkpoint
    is."""


@dataclasses.dataclass
class TrainResult(Result):
    """What :func:`train` returns: the trained ``dictionary`` (the input scale folded back in), ``history`` (the
    metrics of each logged step), ``out_dir`` (None without one) and ``scale``, the input normalisation factor."""

    dictionary: Dictionary
    history: list[dict]
    out_dir: Path | None
    scale: float

    def _summary(self) -> Summary:
        last = self.history[-1] if self.history else {}
        cfg = self.dictionary.cfg
        return Summary(f"training of a {type(self.dictionary).__name__}", {"d_in": cfg.d_in, "width": cfg.width},
                       {"output folder": str(self.out_dir or "(none)"), "scale": self.scale,
                        **{k: v for k, v in last.items() if isinstance(v, (int, float))}})


def make_optimizer(cfg: TrainConfig):
    steps = cfg.steps
    warm = min(cfg.lr_warmup_steps, max(steps - 1, 0))
    decay = int(steps * cfg.lr_decay_fraction)
    flat = max(steps - warm - decay, 0)
    schedule = optax.join_schedules(
        [optax.linear_schedule(cfg.lr / max(warm, 1), cfg.lr, max(warm, 1)),
         optax.constant_schedule(cfg.lr),
         optax.linear_schedule(cfg.lr, 0.0, max(decay, 1))],
        [max(warm, 1), max(warm, 1) + flat],
    )
    return optax.adam(schedule, b1=cfg.betas[0], b2=cfg.betas[1])


def _unit_rows(w):
    return w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), 1e-12)


def metric_names(dictionary: DictConfig) -> tuple[str, ...]:
    """The metrics each training history row of ``dictionary``'s architecture carries, besides ``step``,
    ``tokens`` and ``elapsed_s``: those its loss reports (``Dictionary.metrics``), its auxiliary loss (``aux``),
    ``loss`` and ``dead_fraction``."""
    _, cls = architecture(dictionary.arch)
    return (*cls.metrics, *([cls.aux.name] if cls.aux else []), "loss", "dead_fraction")


def _check_reported(cls: type, reported) -> None:
    """The loss must report what its class declares: histories and ``after_step`` rely on the declaration."""
    got, want = set(reported) - {"fired", "error"}, {*cls.metrics, *cls.step_values}
    if got != want:
        raise TypeError(f"{cls.__name__}.loss reports {sorted(got)}, but the class declares metrics={cls.metrics} "
                        f"and step_values={cls.step_values}; make them agree")
    if cls.aux is not None and "error" not in reported:
        raise TypeError(f"{cls.__name__} declares an auxiliary loss ({cls.aux.name}), so its loss must report "
                        "'error' (y - y_hat) for it")


def make_step(cfg: TrainConfig, optimizer):
    """The jitted training step ``(state, x [N D], y [N O]) -> (state, metrics)``; ``state`` is donated."""
    normalize_decoder = cfg.dictionary.normalize_decoder
    dead_after = cfg.dead_after_tokens
    ramp = cfg.sparsity_warmup_steps
    _, cls = architecture(cfg.dictionary.arch)
    aux = cls.aux

    def step(state: TrainState, x, y):
        params, static = eqx.partition(state.dictionary, eqx.is_inexact_array)
        scale = jnp.minimum(1.0, (state.step.astype(jnp.float32) + 1) / ramp) if ramp else jnp.float32(1.0)
        ctx = LossContext(dead=state.since_fired >= dead_after, sparsity_scale=scale)

        def loss_fn(p):
            return eqx.combine(p, static).loss(x, y, ctx)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        _check_reported(cls, metrics)
        error = metrics.pop("error", None)
        if aux is not None:
            c = getattr(state.dictionary.cfg, aux.coeff)

            def with_aux(p, g):
                value, a = jax.value_and_grad(lambda q: eqx.combine(q, static).aux_loss(x, y, error, ctx.dead))(p)
                return value, jax.tree.map(lambda gi, ai: gi + c * ai, g, a)

            def no_aux(p, g):  # no latent is dead: the gradients pass through untouched, not plus zeros
                return jnp.zeros((), loss.dtype), g

            aux_value, grads = jax.lax.cond(jnp.any(ctx.dead), with_aux, no_aux, params, grads)
            loss = loss + c * aux_value
            metrics[aux.name] = aux_value
        if normalize_decoder:  # keep rows on the unit sphere: drop the gradient along each row
            w = params.W_dec
            g = grads.W_dec
            g = g - jnp.sum(g * w, axis=-1, keepdims=True) * w
            grads = eqx.tree_at(lambda t: t.W_dec, grads, g)
        with jax.numpy_dtype_promotion("standard"):  # optax mixes int step counts into float math
            updates, opt_state = optimizer.update(grads, state.opt_state, params)
            params = optax.apply_updates(params, updates)
        d = eqx.combine(params, static)
        if normalize_decoder:
            d = eqx.tree_at(lambda t: t.W_dec, d, _unit_rows(d.W_dec))
        d = d.after_step(metrics)
        fired = metrics.pop("fired")
        since = jnp.where(fired, 0, jnp.minimum(state.since_fired + x.shape[0], 2**30)).astype(jnp.int32)
        metrics["loss"] = loss
        metrics["dead_fraction"] = jnp.mean((since >= dead_after).astype(jnp.float32))
        for name in cls.step_values:
            del metrics[name]
        return TrainState(d, opt_state, since, state.step + 1), metrics

    return jax.jit(step, donate_argnums=0)


def init_state(cfg: TrainConfig, optimizer, mean: np.ndarray | None = None) -> TrainState:
    d = create(cfg.dictionary, jax.random.PRNGKey(cfg.seed))
    if mean is not None and not cfg.dictionary.is_transcoder:  # start b_dec at the data mean
        d = eqx.tree_at(lambda t: t.b_dec, d, jnp.asarray(mean, d.b_dec.dtype))
    params = eqx.filter(d, eqx.is_inexact_array)
    with jax.numpy_dtype_promotion("standard"):
        opt_state = optimizer.init(params)
    return TrainState(d, opt_state, jnp.zeros((cfg.dictionary.width,), jnp.int32), jnp.zeros((), jnp.int32))


# ----------------------------------------------------------------------------- the loop


def fold_scale(d: Dictionary, scale: float) -> Dictionary:
    """Fold an input normalization factor ``s`` (trained on ``s·x``) into the weights, so the dictionary
    reads and writes raw activations."""
    if scale == 1.0:
        return d
    s = jnp.asarray(scale, d.W_enc.dtype)
    # a skip connection maps s·x to s·y, so it is the same map on raw activations and needs no change
    return eqx.tree_at(lambda t: (t.W_enc, t.W_dec, t.b_dec), d, (d.W_enc * s, d.W_dec / s, d.b_dec / s))


def make_store(cfg: TrainConfig, model=None):
    from interp.sae.store import ActivationStore, CachedActivationStore

    d = cfg.dictionary
    if cfg.activation_cache:
        store = CachedActivationStore(cfg.activation_cache, batch_size=cfg.batch_size, seed=cfg.seed,
                                      skip_positions=cfg.skip_positions)
        wanted = [d.hook_name] + ([d.hook_name_out] if d.hook_name_out else [])
        if d.hook_name and list(store.names) != wanted:  # a dictionary that names no hook takes what is cached
            raise ValueError(f"the activation cache {cfg.activation_cache} holds {list(store.names)}, but the "
                             f"dictionary reads {wanted}; cache those hooks, or set the dictionary's hook names to "
                             "the cache's")
        return store
    if model is None:
        from interp.weights import load

        model = load(cfg.model)
    return ActivationStore(model, d.hook_name, cfg.corpus, hook_name_out=d.hook_name_out,
                           context_size=cfg.context_size, model_batch=cfg.model_batch,
                           buffer_tokens=cfg.buffer_tokens, batch_size=cfg.batch_size, seed=cfg.seed,
                           skip_positions=cfg.skip_positions, n_tokens=cfg.total_tokens)


def check_dimensions(cfg: TrainConfig, store) -> None:
    d = cfg.dictionary
    got = store.d_in
    if got != d.d_in:
        raise ValueError(f"d_in={d.d_in} does not match the activations at '{d.hook_name}', which have {got} features; "
                         f"set d_in={got}")


def _layout(cfg: TrainConfig) -> tuple[int, int]:
    """``(data_parallel, latent_parallel)``: the config's, or across several processes (``jax.distributed``) every
    device of every process, the batch split over all the devices the latents are not (``data_parallel`` 1)."""
    dp, lp = cfg.data_parallel, cfg.latent_parallel
    if jax.process_count() == 1:
        return dp, lp
    n, local = jax.device_count(), jax.local_device_count()
    if dp == 1 and n % lp == 0:
        dp = n // lp
    if dp * lp != n:
        raise ValueError(f"data_parallel × latent_parallel = {dp * lp}, but the {jax.process_count()} processes have "
                         f"{n} devices in all; a multi-process run uses every device: set data_parallel × "
                         f"latent_parallel = {n}, or leave data_parallel at 1 to split the batch over the rest")
    if local % lp:
        raise ValueError(f"latent_parallel={lp} must divide each process's {local} devices, so that a process "
                         "holds whole rows of the batch")
    if cfg.batch_size % dp:
        raise ValueError(f"batch_size {cfg.batch_size} must divide evenly over the {dp} devices the batch is split "
                         f"over; use a multiple of {dp}")
    return dp, lp


def _shardings(cfg: TrainConfig):
    dp, lp = _layout(cfg)
    n = dp * lp
    if n <= 1:
        return None
    if jax.device_count() < n:
        raise ValueError(f"data_parallel × latent_parallel = {n} devices requested, {jax.device_count()} available")
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.asarray(jax.devices()[:n]).reshape(dp, lp), ("data", "latent"))

    # where the latent axis is in each leaf of the dictionary (from its annotated shapes), the optimizer state (which
    # mirrors the dictionary's fields) and the dead-latent counters
    latent_axis = {**architecture(cfg.dictionary.arch)[1].latent_axes(), "since_fired": 0}

    def state_spec(path, leaf):
        axis = latent_axis.get(jax.tree_util.keystr(path).rsplit(".", 1)[-1])
        if lp > 1 and axis is not None and leaf.ndim > axis:
            return NamedSharding(mesh, P(*[None] * axis, "latent"))
        return NamedSharding(mesh, P())

    return NamedSharding(mesh, P("data")), state_spec


def _saelens_metadata(cfg: TrainConfig, store) -> dict:
    """What SAELens reads from ``cfg.json``'s metadata about the activations the dictionary was trained on, as far as
    ``store`` knows them: none for activations handed over as arrays."""
    stream = getattr(store, "stream_metadata", dict)()
    return {"model_name": str(cfg.model), **stream} if stream else {}


def train(cfg: TrainConfig, *, model=None, store=None, resume: bool = False, progress: bool = True,
          callback: Callable[[int, dict[str, float], Dictionary], None] | None = None) -> TrainResult:
    """Train a dictionary on activations ``x [N D]`` (targets ``y [N O]`` for a transcoder) from ``store`` (default:
    one built from ``cfg``: the model's activations at the hook, or the activation cache). ``callback(step, metrics,
    dictionary)`` runs after every step; ``metrics`` holds ``metric_names(cfg.dictionary)``.

    With ``progress`` (default) a bar reports from the start: loading the model, then harvesting activations from
    it (tokens and tokens/s; harvesting continues chunk by chunk while the run trains), and a second bar the
    training steps (steps/s, loss, FVU, L0, dead fraction). They are ``tqdm.auto`` bars, on stderr in a terminal
    and as widgets in a notebook; ``progress=False`` shows none. A run shorter than the schedule it was given
    warns first (``TrainConfig.schedule_problems``)."""
    from tqdm.auto import tqdm

    from interp.sae.files import save as save_dictionary
    from interp.sae.store import estimate_norm_scale

    for problem in cfg.schedule_problems():
        warnings.warn(problem, UserWarning, stacklevel=2)
    procs, rank = jax.process_count(), jax.process_index()
    lead = rank == 0  # writes files and shows progress
    progress = progress and lead
    out_dir = Path(cfg.out_dir) if cfg.out_dir else None
    if resume and out_dir is None:
        raise ValueError("resume=True needs out_dir: the folder of the run to continue")
    if out_dir:
        if lead:
            prepare_out_dir(out_dir)
        _sync("prepared the run folder")
        if not resume and checkpoint_dirs(out_dir):
            raise FileExistsError(f"{out_dir} already holds checkpoints; pass resume=True (--resume) "
                                  "or another out_dir")
    runs_model = hasattr(store, "on_harvest") if store is not None else not cfg.activation_cache
    if procs > 1 and runs_model:
        raise ValueError(f"a run over {procs} processes reads activations every process can open, an activation cache "
                         "(sae.cache_activations; --activation-cache) or arrays (ArrayActivationStore): harvesting "
                         f"them from the model in every process would repeat its forward passes {procs} times")
    show_harvest = progress and runs_model
    loads = store is None and model is None and runs_model
    harvest = bar = None
    try:
        if loads:
            from interp.weights import load

            # the bar that will count harvested activations names the model while it loads
            harvest = tqdm(desc=f"load {cfg.model}", unit="tok", unit_scale=True, disable=not show_harvest)
            model = load(cfg.model)
        store = store or make_store(cfg, model)
        check_dimensions(cfg, store)
        optimizer = make_optimizer(cfg)
        step_fn = make_step(cfg, optimizer)
        shard = _shardings(cfg)

        if resume:
            ckpt, skipped = find_checkpoint(out_dir)
            if ckpt is None and skipped:
                raise ValueError(f"no intact checkpoint to resume under {out_dir / 'checkpoints'}: "
                                 f"{'; '.join(skipped)}. Remove {out_dir / 'checkpoints'} to start the run over")
            if ckpt is None:
                raise FileNotFoundError(f"nothing to resume: no checkpoint under {out_dir / 'checkpoints'}")
            check_same_run(json.loads((ckpt / "meta.json").read_text()), cfg, ckpt)
            if skipped:
                warnings.warn(f"skipped checkpoints that fail verification: {'; '.join(skipped)}; resuming from "
                              f"{ckpt}", stacklevel=2)
            state, meta = load_checkpoint(ckpt, init_state(cfg, optimizer))
            store.restore(meta["store"])
            scale, history = meta["scale"], meta["history"]
            # the metric window and the clock continue, so the report equals an uninterrupted run's
            acc, elapsed = meta.get("window", {}), meta.get("elapsed_s", 0.0)
        start = int(state.step) if resume else 0
        if show_harvest:
            total = store.rows_ahead(cfg.steps - start)
            if harvest is None:
                harvest = tqdm(total=total, desc="harvest activations", unit="tok", unit_scale=True)
            else:
                harvest.set_description_str("harvest activations", refresh=False)
                harvest.reset(total=total)  # restarts the clock: the rate leaves out loading
            store.on_harvest = harvest.update
        if not resume:
            scale = estimate_norm_scale(store) if cfg.normalize != "none" else 1.0
            saved = store.state()
            x0, _ = store.next_batch()
            store.restore(saved)
            state = init_state(cfg, optimizer, mean=np.asarray(x0, np.float32).mean(0) * scale)
            history, acc, elapsed = [], {}, 0.0
        batch_sharding = None
        if shard is not None:
            batch_sharding, spec = shard
            state = jax.tree_util.tree_map_with_path(lambda p, l: _put(l, spec(p, l)), state)

        def to_device(a):
            a = np.asarray(a, np.float32)
            if scale != 1.0:
                a = a * np.float32(scale)
            if batch_sharding is None:
                return jnp.asarray(a)
            if procs == 1:
                return jax.device_put(a, batch_sharding)
            # every process reads the same shuffled batch and places only its own rows on its own devices
            rows = a.shape[0] // procs
            return jax.make_array_from_process_local_data(batch_sharding, a[rank * rows:(rank + 1) * rows], a.shape)

        bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.dictionary.arch} {cfg.dictionary.width}",
                   disable=not progress, unit="step")
        t0 = time.perf_counter() - elapsed
        identity = run_identity(cfg) if out_dir else None

        def checkpoint():
            meta = {"step": int(state.step), "store": store.state(), "scale": scale, "history": history,
                    "window": acc, "elapsed_s": time.perf_counter() - t0,
                    "config": json.loads(json.dumps(cfg.to_dict())), "identity": identity, "processes": procs}
            whole = _gather(state)  # every process joins the gather; the first one writes
            if lead:
                save_checkpoint(out_dir / "checkpoints" / f"step-{int(state.step):08d}", whole, meta)
                for old in checkpoint_dirs(out_dir)[: -cfg.keep_checkpoints]:
                    shutil.rmtree(old, ignore_errors=True)
            _sync(f"checkpoint at step {int(state.step)}")

        same_io = not cfg.dictionary.is_transcoder
        for i in range(start, cfg.steps):
            x, y = store.next_batch()
            xb = to_device(x)
            yb = xb if same_io else to_device(y)
            new_state, metrics = step_fn(state, xb, yb)
            metrics = {k: float(v) for k, v in metrics.items()}  # one host transfer per step, also for the NaN check
            loss = metrics["loss"]
            if not math.isfinite(loss):
                where = latest_checkpoint(out_dir) if out_dir else None
                raise TrainingDiverged(
                    f"the loss became {loss} at step {i + 1}; training stopped"
                    + (f" and the last good checkpoint ({where}) is intact" if where else "")
                    + ". Lower the learning rate (lr) or check the activations for NaN/inf."
                )
            state = new_state
            for k, v in metrics.items():
                acc.setdefault(k, []).append(v)
            step = i + 1
            if step % max(cfg.eval_every, 1) == 0 or step == cfg.steps:
                row = {"step": step, "tokens": step * cfg.batch_size,
                       **{k: float(np.mean(v)) for k, v in acc.items()}, "elapsed_s": time.perf_counter() - t0}
                history.append(row)
                acc = {}
                bar.set_postfix(loss=f"{row['loss']:.4f}", fvu=f"{row.get('fvu', float('nan')):.3f}",
                                l0=f"{row.get('l0', float('nan')):.1f}", dead=f"{row['dead_fraction']:.3f}")
            bar.update(1)
            if callback is not None:
                callback(step, metrics, state.dictionary)
            if out_dir and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                checkpoint()
    finally:
        if store is not None and getattr(store, "on_harvest", None) is not None:
            store.on_harvest = None  # a store handed in may be used again without these bars
        for b in (harvest, bar):
            if b is not None:
                b.close()
    if out_dir:
        checkpoint()
    final = fold_scale(_gather(state.dictionary) if procs > 1 else state.dictionary, scale)
    if out_dir and lead:
        save_dictionary(final, out_dir / "final", metadata={**_saelens_metadata(cfg, store),
                                                            "train_config": cfg.to_dict(), "history": history[-1:]})
        with atomic_file(out_dir / "history.json", "w") as fh:
            json.dump(history, fh, indent=2)
    if out_dir:
        _sync("wrote the final dictionary")
    return TrainResult(final, history, out_dir, scale)


def _put(leaf, sharding):
    """``leaf`` placed with ``sharding``; across processes each one builds its own devices' parts from the same
    host value (every process holds it: the same seed, or the same checkpoint)."""
    if jax.process_count() == 1:
        return jax.device_put(leaf, sharding)
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _gather(tree):
    """``tree``'s arrays whole on this host (they may be split over the devices of several processes)."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    arrays, rest = eqx.partition(tree, eqx.is_array)
    return eqx.combine(jax.tree.map(jnp.asarray, multihost_utils.process_allgather(arrays, tiled=True)), rest)


def _sync(what: str) -> None:
    """Every process waits here for the others (nothing to wait for in a single-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(what)
