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
import hashlib
import json
import math
import os
import re
import secrets
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

from interp._io import atomic_dir, atomic_file
from interp.checks import check_range
from interp.results import Result, Summary
from interp.sae._base import DictConfig, Dictionary, LossContext, architecture, create
from interp.weights.fingerprint import file_sha256

# Defaults that follow the token budget (see TrainConfig): a run of ``total_tokens`` gets at least MIN_STEPS
# optimizer steps where the batch can shrink that far, and a warm-up of a fraction of those steps.
MIN_STEPS = 200
MIN_BATCH, MAX_BATCH = 64, 4096
MAX_WARMUP, WARMUP_FRACTION = 50, 1 / 8


class _Derived(int):
    """A number ``TrainConfig`` worked out itself because the field was left unset. ``dataclasses.replace`` hands
    the old value back to ``__init__``; marking it lets the new config derive it again from the new settings
    instead of taking it for the user's choice. It is an ``int`` everywhere else (JSON, comparisons, repr)."""


def _pow2_floor(n: int) -> int:
    return 1 << (max(int(n), 1).bit_length() - 1)


def derived_batch_size(total_tokens: int, *, data_parallel: int = 1, chunk_rows: int | None = None) -> int:
    """``batch_size`` for a run of ``total_tokens`` when none is given: the largest power of two that still gives
    ``MIN_STEPS`` (200) steps, kept within [``MIN_BATCH``, ``MAX_BATCH``] = [64, 4096], never above
    ``total_tokens`` nor above ``chunk_rows`` (the activations one buffer holds), and rounded down to a multiple of
    ``data_parallel``. 2,000,000 tokens: 4096 (488 steps); 50,000 tokens: 128 (390 steps)."""
    b = max(_pow2_floor(total_tokens // MIN_STEPS), MIN_BATCH)
    b = min(b, MAX_BATCH, _pow2_floor(total_tokens), *([_pow2_floor(chunk_rows)] if chunk_rows else []))
    return max(data_parallel, b - b % data_parallel)


def derived_warmup_steps(steps: int, lr_decay_fraction: float) -> int:
    """``lr_warmup_steps`` for a run of ``steps`` when none is given: an eighth of the steps, at most 50, and never
    more than the steps left before the decay starts. 488 steps: 50; 390 steps: 48; 12 steps: 1."""
    return max(0, min(MAX_WARMUP, int(steps * WARMUP_FRACTION), steps - int(steps * lr_decay_fraction)))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs.

    Data
        dictionary: the dictionary to train (a ``DictConfig`` such as ``TopKConfig``): architecture, width
            (latents), k, d_in, and the hook point(s) it reads (and, for a transcoder, writes).
        model: the model whose activations are read: a packaged name, a checkpoint folder or a ``.gguf`` file.
            Saved dictionaries record it as ``metadata.model_name``; when ``train`` is given ``model=`` or an
            activation cache, name that model here.
        corpus: the text: None (the built-in default corpus), a text/JSONL/Parquet file or a folder of them, an
            iterable of strings or a callable returning one (see ``interp.sae.iter_texts``).
        activation_cache: a folder written by ``cache_activations``; activations are read from it instead of
            running the model (None: run the model).
        total_tokens: activations (tokens) the run trains on; the run is ``total_tokens // batch_size`` steps.
        context_size: tokens per context fed to the model.
        skip_positions: positions left out at the start of each context (tokens): their attention-sink activations
            are outliers (at SmolLM2's layer 15 position 0 has ~140x the typical norm and ~98% of the variance).
        model_batch: contexts per forward pass of the model while harvesting activations.
        buffer_tokens: tokens of contexts whose activations are harvested and shuffled together (one chunk); a
            multiple of ``context_size``.
        normalize: "none", or "expected_average_only_in" (SAELens): activations are scaled so their mean norm is
            sqrt(d_in) during training; the factor is folded into the weights on save.

    Optimisation
        batch_size: activations (tokens) per optimizer step. Unset (None): derived from ``total_tokens`` by
            ``derived_batch_size``: the largest power of two giving at least 200 steps, within [64, 4096] (and no
            more than one buffer of activations), rounded down to a multiple of ``data_parallel``.
        lr: peak learning rate of Adam.
        betas: Adam's (beta1, beta2), each in [0, 1).
        lr_warmup_steps: steps over which the learning rate rises linearly to ``lr``. Unset (None): derived from
            the number of steps by ``derived_warmup_steps``: an eighth of the steps, at most 50, and no more than
            the steps before the decay.
        lr_decay_fraction: fraction (0 to 1) of the steps, at the end of the run, over which the learning rate
            decays linearly to zero.
        sparsity_warmup_steps: steps over which the L1 / L0 coefficient ramps from 0 to its value (architectures
            with a sparsity penalty; 0: no ramp).
        dead_after_tokens: a latent silent for this many tokens counts as dead (for AuxK and ``dead_fraction``).
        seed: seeds the initialisation and the shuffling of activations (0 to 2**32 - 1).

    Output
        out_dir: folder for ``checkpoints/``, ``final/`` (SAELens layout) and ``history.json``; None: nothing is
            written.
        checkpoint_every: steps between checkpoints (0: only at the end).
        keep_checkpoints: how many of the newest checkpoints are kept.
        eval_every: steps between the averages logged to the history and the progress bar (0: only at the end).

    Devices
        data_parallel: devices over which the batch is split.
        latent_parallel: devices over which the latent dimension is split.

    Defaults that follow the token budget keep a short run from being a handful of steps that never leave their
    warm-up: 50,000 tokens become 390 steps of 128 with a 48-step warm-up rather than 12 steps of 4096 with 50.
    A value you set is never changed; ``train`` warns (``schedule_problems``) when the run is shorter than the
    schedule you set. ``dataclasses.replace`` derives the unset fields again from the new settings.
    """

    dictionary: DictConfig
    model: str = "smollm2-135m"
    corpus: Any = None
    activation_cache: str | None = None
    total_tokens: int = 2_000_000
    batch_size: int | None = None
    context_size: int = 128
    model_batch: int = 16
    buffer_tokens: int = 2**16
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    lr_warmup_steps: int | None = None
    lr_decay_fraction: float = 0.2
    sparsity_warmup_steps: int = 0
    dead_after_tokens: int = 1_000_000
    normalize: str = "none"
    skip_positions: int = 1
    seed: int = 0
    out_dir: str | None = None
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    eval_every: int = 100
    data_parallel: int = 1
    latent_parallel: int = 1

    def __post_init__(self):
        if not isinstance(self.dictionary, DictConfig):
            raise TypeError(f"dictionary must be a DictConfig such as TopKConfig(...), "
                            f"got {type(self.dictionary).__name__}")
        for name in ("total_tokens", "context_size", "model_batch", "buffer_tokens", "dead_after_tokens",
                     "keep_checkpoints", "data_parallel", "latent_parallel"):
            check_range(name, getattr(self, name), 1, integer=True)
        check_range("skip_positions", self.skip_positions, 0, self.context_size, integer=True, hi_open=True)
        check_range("lr_decay_fraction", self.lr_decay_fraction, 0, 1)
        if self.batch_size is None or isinstance(self.batch_size, _Derived):
            rows = None if self.activation_cache else \
                self.buffer_tokens // self.context_size * (self.context_size - self.skip_positions)
            object.__setattr__(self, "batch_size", _Derived(derived_batch_size(
                self.total_tokens, data_parallel=self.data_parallel, chunk_rows=rows)))
        check_range("batch_size", self.batch_size, 1, integer=True)
        check_range("total_tokens", self.total_tokens, self.batch_size, integer=True, note=" (one batch)")
        if self.lr_warmup_steps is None or isinstance(self.lr_warmup_steps, _Derived):
            object.__setattr__(self, "lr_warmup_steps",
                               _Derived(derived_warmup_steps(self.steps, self.lr_decay_fraction)))
        for name in ("lr_warmup_steps", "sparsity_warmup_steps", "checkpoint_every", "eval_every"):
            check_range(name, getattr(self, name), 0, integer=True)
        check_range("seed", self.seed, 0, 2**32 - 1, integer=True)  # jax.random.PRNGKey wraps larger seeds
        check_range("lr", self.lr, 0, lo_open=True)
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise ValueError(f"betas={self.betas!r} must be a pair (beta1, beta2) of numbers in [0, 1)")
        for i, beta in enumerate(self.betas):
            check_range(f"betas[{i}]", beta, 0, 1, hi_open=True)
        if self.normalize not in ("none", "expected_average_only_in"):
            raise ValueError(f"normalize must be 'none' or 'expected_average_only_in', got {self.normalize!r}")
        if self.batch_size % self.data_parallel:
            raise ValueError(f"batch_size {self.batch_size} must divide evenly over {self.data_parallel} devices")
        if self.dictionary.width % self.latent_parallel:
            raise ValueError(f"width {self.dictionary.width} must divide evenly over {self.latent_parallel} devices")

    @property
    def derived(self) -> tuple[str, ...]:
        """The fields left unset and derived from the token budget (``batch_size``, ``lr_warmup_steps``)."""
        return tuple(n for n in ("batch_size", "lr_warmup_steps") if isinstance(getattr(self, n), _Derived))

    def schedule_problems(self) -> list[str]:
        """Why this run is shorter than its schedule (empty: it is not), each with the numbers and the fix.
        ``train`` warns with these."""
        steps, batch, warm = self.steps, self.batch_size, self.lr_warmup_steps
        run = f"the run is {steps:,} steps (total_tokens={self.total_tokens:,} / batch_size={batch:,})"
        unset = [n for n in ("batch_size", "lr_warmup_steps") if n not in self.derived]
        auto = dataclasses.replace(self, batch_size=None, lr_warmup_steps=None)
        follow = (f"leave {' and '.join(unset)} unset so the schedule follows total_tokens (here batch_size="
                  f"{auto.batch_size:,} and lr_warmup_steps={auto.lr_warmup_steps}: {auto.steps:,} steps), or ")
        problems = []
        decay = int(steps * self.lr_decay_fraction)
        if warm + decay > steps:
            fixes = [f"lower lr_warmup_steps to at most {max(steps - decay, 0)}"]
            if self.lr_decay_fraction < 1:
                fits = lambda n: warm + int(n * self.lr_decay_fraction) <= n
                need = math.ceil(warm / (1 - self.lr_decay_fraction))
                while need > 1 and fits(need - 1):  # the decay's steps are rounded down: a step or two less may do
                    need -= 1
                fixes.insert(0, f"pass total_tokens >= {need * batch:,} ({need} steps of {batch:,})")
            problems.append(
                f"{run}, shorter than its learning-rate schedule: lr_warmup_steps={warm} warm-up steps and {decay} "
                f"decay steps (lr_decay_fraction={self.lr_decay_fraction}) need {warm + decay}, so the learning rate "
                f"never completes its warm-up to lr={self.lr} and never decays to zero, and the dictionary ends "
                f"undertrained. Fix: {follow}{', or '.join(fixes)}")
        if self.sparsity_warmup_steps > steps:
            need = self.sparsity_warmup_steps
            problems.append(
                f"{run}, shorter than sparsity_warmup_steps={need}: the sparsity coefficient never reaches its full "
                f"value (at most {steps / need:.0%} of it), so the dictionary ends less sparse than configured. Fix: "
                f"pass total_tokens >= {need * batch:,} ({need} steps of {batch:,}), or lower sparsity_warmup_steps "
                f"to at most {steps}")
        return problems

    @property
    def steps(self) -> int:
        return self.total_tokens // self.batch_size

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["dictionary"] = self.dictionary.to_dict()
        d["corpus"] = self.corpus if isinstance(self.corpus, (str, type(None))) else repr(type(self.corpus))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d["dictionary"] = DictConfig.from_dict(d["dictionary"])
        d["betas"] = tuple(d["betas"])
        return cls(**d)


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
            def aux_value_and_grad(p):
                return jax.value_and_grad(lambda q: eqx.combine(q, static).aux_loss(x, y, error, ctx.dead))(p)

            def no_aux(p):
                return jnp.zeros((), loss.dtype), jax.tree.map(jnp.zeros_like, p)

            aux_value, aux_grads = jax.lax.cond(jnp.any(ctx.dead), aux_value_and_grad, no_aux, params)
            c = getattr(state.dictionary.cfg, aux.coeff)
            grads = jax.tree.map(lambda g, a: g + c * a, grads, aux_grads)
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


# ----------------------------------------------------------------------------- checkpoints


def _flat(tree) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


STATE = "state.safetensors"
_STEP_DIR = re.compile(r"step-\d+")
# what an interrupted atomic write leaves beside its target (interp._io): the temporary folder or
# file, or the folder it was replacing
_LEFTOVER = re.compile(r"\..+\.(partial|old)-[A-Za-z0-9_]+")


def _meta_sha256(meta: dict) -> str:
    """Checksum of the metadata's own fields (all but ``sha256``), over their canonical JSON."""
    body = {k: v for k, v in meta.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def save_checkpoint(folder: Path, state: TrainState, meta: dict) -> Path:
    """Write ``state`` and ``meta`` to ``folder`` atomically; ``meta.json`` records the sha256 of the state file
    and of its own fields, which ``checkpoint_problem`` verifies."""
    from safetensors.numpy import save_file

    with atomic_dir(folder) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in _flat(state).items()}, str(tmp / STATE))
        meta = {**meta, "sha256": {STATE: file_sha256(tmp / STATE)}}
        meta["sha256"]["meta"] = _meta_sha256(meta)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return folder


def load_checkpoint(folder: Path, template: TrainState) -> tuple[TrainState, dict]:
    from safetensors.numpy import load_file

    arrays = load_file(str(folder / STATE))
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    names = [jax.tree_util.keystr(p) for p, _ in paths_leaves]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ValueError(f"checkpoint {folder} does not match this config (missing {missing[:3]})")
    leaves = [jnp.asarray(arrays[n], dtype=leaf.dtype).reshape(jnp.shape(leaf))
              for n, (_, leaf) in zip(names, paths_leaves)]
    return jax.tree_util.tree_unflatten(treedef, leaves), json.loads((folder / "meta.json").read_text())


def checkpoint_problem(folder: Path) -> str | None:
    """Why the checkpoint in ``folder`` cannot be trusted (None: it verifies against its checksums)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except FileNotFoundError:
        return "meta.json is missing"
    except ValueError:
        return "meta.json is not valid JSON"
    if not isinstance(meta, dict):
        return "meta.json holds no checkpoint metadata"
    sums = meta.get("sha256")
    if sums is not None and (not isinstance(sums, dict) or sums.get("meta") != _meta_sha256(meta)):
        return "meta.json does not match its sha256 checksum (corrupted)"
    if not (folder / STATE).is_file():
        return f"{STATE} is missing"
    if sums is None:  # written before checkpoints carried checksums: only the file's structure can be checked
        from safetensors import safe_open

        try:
            with safe_open(str(folder / STATE), "numpy"):
                pass
        except Exception as e:  # safetensors raises its own error types for damaged files
            return f"{STATE} cannot be read ({e})"
        return None
    if sums.get(STATE) != file_sha256(folder / STATE):
        return f"{STATE} does not match its sha256 checksum (truncated or corrupted)"
    return None


def _checkpoint_dirs(out_dir: Path) -> list[Path]:
    """The run's checkpoint folders, oldest first, whether or not they verify."""
    folder = out_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _STEP_DIR.fullmatch(p.name) and p.is_dir()),
                  key=lambda p: int(p.name[5:]))


def find_checkpoint(out_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint under ``out_dir/checkpoints`` that verifies, and why each newer one does not."""
    skipped = []
    for folder in reversed(_checkpoint_dirs(out_dir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder, skipped
        skipped.append(f"{folder} ({problem})")
    return None, skipped


def latest_checkpoint(out_dir: Path) -> Path | None:
    return find_checkpoint(out_dir)[0]


def check_writable(folder: Path) -> None:
    """Create ``folder`` and write and remove a file there, so a run learns that it cannot save before it trains."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe.partial-{secrets.token_hex(6)}"  # a leftover name: a kill here leaves nothing
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a folder" if blocker else (e.strerror or str(e))
        raise type(e)(f"cannot write the output folder {folder}: {why}; choose another out_dir (--out)") from None


def prepare_out_dir(out_dir: Path) -> None:
    """Check that the run can write ``out_dir`` and its checkpoints, and remove what writes interrupted by a crash
    or a kill left there: the leftovers of atomic writes in those two folders, nothing else."""
    for folder in (out_dir, out_dir / "checkpoints"):
        check_writable(folder)
        for entry in folder.iterdir():
            if _LEFTOVER.fullmatch(entry.name):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)


_DATA = ("corpus", "activation_cache")


def _fingerprint(path) -> str:
    """The data at ``path``, wherever it lives: how many files, their bytes, and a checksum of their names (relative
    to ``path``) and sizes. Reading every byte would take minutes on a large corpus or cache."""
    path = Path(path).expanduser()
    if not path.exists():
        return "missing"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    listing = [(p.relative_to(path).as_posix(), p.stat().st_size) for p in files]
    digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]
    return f"{len(files)} files, {sum(size for _, size in listing)} bytes, names and sizes sha256 {digest}"


def run_identity(cfg: TrainConfig) -> dict:
    """What makes a checkpoint belong to ``cfg``'s run: every setting that changes the numbers, and not where files
    live. ``out_dir`` is left out, and a corpus or activation cache given as a path counts by its content (see
    ``_fingerprint``), so a run folder and its data can be copied, moved or renamed and the run resumed there;
    other data is another run."""
    d = json.loads(json.dumps(cfg.to_dict()))
    del d["out_dir"]
    for key in _DATA:
        if isinstance(getattr(cfg, key), (str, os.PathLike)):
            d[key] = _fingerprint(getattr(cfg, key))
    return d


def _differences(saved: dict, now: dict, prefix: str = "") -> list[str]:
    def show(v):
        return v if isinstance(v, str) else repr(v)

    out = []
    for key in [*now, *(k for k in saved if k not in now)]:
        a, b = saved.get(key, "(absent)"), now.get(key, "(absent)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            name = f"{key} (the data, not its location)" if key in _DATA and not prefix else prefix + key
            out.append(f"{name}: checkpoint {show(a)}, now {show(b)}")
    return out


def check_same_run(meta: dict, cfg: TrainConfig, folder: Path) -> None:
    """Refuse to resume ``cfg`` from a checkpoint of another run, naming each setting that differs."""
    now = run_identity(cfg)
    saved = meta.get("identity")
    if saved is None:  # written before checkpoints recorded their identity: paths are all they say of the data
        saved = {k: v for k, v in meta["config"].items() if k != "out_dir"}
        saved.update({k: now[k] for k in _DATA if isinstance(getattr(cfg, k), (str, os.PathLike))})
    diffs = _differences(saved, now)
    if diffs:
        raise ValueError(f"--resume with a different config than the checkpoint {folder}: {'; '.join(diffs)}. "
                         "Resume with the checkpoint's settings, or start a new run in another out_dir")


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


def _shardings(cfg: TrainConfig):
    n = cfg.data_parallel * cfg.latent_parallel
    if n <= 1:
        return None
    if jax.device_count() < n:
        raise ValueError(f"data_parallel × latent_parallel = {n} devices requested, {jax.device_count()} available")
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.asarray(jax.devices()[:n]).reshape(cfg.data_parallel, cfg.latent_parallel), ("data", "latent"))

    # where the latent axis is in each leaf of the dictionary (from its annotated shapes), the optimizer state (which
    # mirrors the dictionary's fields) and the dead-latent counters
    latent_axis = {**architecture(cfg.dictionary.arch)[1].latent_axes(), "since_fired": 0}

    def state_spec(path, leaf):
        axis = latent_axis.get(jax.tree_util.keystr(path).rsplit(".", 1)[-1])
        if cfg.latent_parallel > 1 and axis is not None and leaf.ndim > axis:
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
    out_dir = Path(cfg.out_dir) if cfg.out_dir else None
    if resume and out_dir is None:
        raise ValueError("resume=True needs out_dir: the folder of the run to continue")
    if out_dir:
        prepare_out_dir(out_dir)
        if not resume and _checkpoint_dirs(out_dir):
            raise FileExistsError(f"{out_dir} already holds checkpoints; pass resume=True (--resume) "
                                  "or another out_dir")
    runs_model = hasattr(store, "on_harvest") if store is not None else not cfg.activation_cache
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
            state = jax.tree_util.tree_map_with_path(lambda p, l: jax.device_put(l, spec(p, l)), state)

        def to_device(a):
            a = np.asarray(a, np.float32)
            if scale != 1.0:
                a = a * np.float32(scale)
            return jnp.asarray(a) if batch_sharding is None else jax.device_put(a, batch_sharding)

        bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.dictionary.arch} {cfg.dictionary.width}",
                   disable=not progress, unit="step")
        t0 = time.perf_counter() - elapsed
        identity = run_identity(cfg) if out_dir else None

        def checkpoint():
            meta = {"step": int(state.step), "store": store.state(), "scale": scale, "history": history,
                    "window": acc, "elapsed_s": time.perf_counter() - t0,
                    "config": json.loads(json.dumps(cfg.to_dict())), "identity": identity}
            save_checkpoint(out_dir / "checkpoints" / f"step-{int(state.step):08d}", state, meta)
            for old in _checkpoint_dirs(out_dir)[: -cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)

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
    final = fold_scale(state.dictionary, scale)
    if out_dir:
        checkpoint()
        save_dictionary(final, out_dir / "final", metadata={**_saelens_metadata(cfg, store),
                                                            "train_config": cfg.to_dict(), "history": history[-1:]})
        with atomic_file(out_dir / "history.json", "w") as fh:
            json.dump(history, fh, indent=2)
    return TrainResult(final, history, out_dir, scale)
