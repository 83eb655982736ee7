"""Fine-tuning runs: one compiled step (optax AdamW with warmup and gradient clipping), a loss on chosen positions
plus an optional KL-to-base term, atomic checkpoints with checksums and exact resume, as dictionary training has.

``finetune(model, data, FinetuneConfig(...), out=...)`` trains low-rank adapters (``lora_rank``) or every float
array of the model (``lora_rank=None``), checkpointing to ``out/checkpoints/step-NNNNNNNN`` (the newest three are
kept) and writing ``out/history.json`` at the end; ``resume=True`` continues the newest checkpoint that verifies
and ends with the adapters, optimizer state and history an uninterrupted run ends with. Batches are a function
of (seed, step) alone, padded on the right to one length, so the step compiles once.

Axes: B batch, T positions, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from interp._io import atomic_file
from interp.finetune.data import (
    Example,
    as_examples,
    batch_indices,
    check_examples,
    make_batch,
    padded_length,
    slot_count,
    target_positions,
)
from interp.finetune.lora import TARGETS, LoRA, check_targets, lora, merge
from interp.hooks import NOOP
from interp.models import Model
from interp.results import Result, Summary
from interp.sae import TrainingDiverged
from interp.sae.checkpoints import (
    checkpoint_dirs,
    find_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    prepare_out_dir,
    save_checkpoint,
)
from interp.weights import save_hf_dir, weights_hash

_KEEP_CHECKPOINTS = 3


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Settings of a fine-tuning run. ``lora_rank=None`` trains every float array (full fine-tuning); otherwise
    adapters of that rank on ``lora_targets`` of every block, scaled by ``lora_alpha / lora_rank``. The learning
    rate rises linearly over ``warmup_steps`` and then stays at ``lr``; gradients are clipped to global norm
    ``grad_clip`` (0 or None: not clipped). ``kl_weight`` weighs the KL(base || tuned) term on ``kl_data``."""

    steps: int = 200
    lr: float = 1e-3
    batch_size: int = 8
    lora_rank: int | None = 8
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = TARGETS
    kl_weight: float = 0.0
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    seed: int = 0
    checkpoint_every: int = 50

    def __post_init__(self):
        object.__setattr__(self, "lora_targets", check_targets(self.lora_targets))
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"FinetuneConfig.{name} must be a positive integer, got {v!r}")
        for name in ("warmup_steps", "checkpoint_every", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"FinetuneConfig.{name} must be a non-negative integer, got {v!r}")
        if self.lora_rank is not None and (isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int)
                                           or self.lora_rank < 1):
            raise ValueError(f"FinetuneConfig.lora_rank must be a positive integer or None (full fine-tuning), got "
                             f"{self.lora_rank!r}")
        for name, low in (("lr", 0.0), ("lora_alpha", 0.0), ("kl_weight", None), ("weight_decay", None),
                          ("grad_clip", None)):
            v = getattr(self, name)
            if v is None and name == "grad_clip":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (
                    low is not None and v <= low):
                raise ValueError(f"FinetuneConfig.{name} must be a {'positive' if low is not None else 'non-negative'} "
                                 f"finite number, got {v!r}")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "lora_targets": list(self.lora_targets)}


@dataclasses.dataclass
class Finetuned(Result):
    """What :func:`finetune` returns: ``model`` (adapters merged: an ordinary model of the base's family),
    ``history`` (``{"step", "loss", "kl"}`` per step; ``kl`` None without ``kl_data``), ``config``, and ``adapters``
    (the :class:`LoRA`, None after full fine-tuning)."""

    model: Model
    history: list[dict]
    config: FinetuneConfig
    adapters: LoRA | None = None

    def save(self, folder: str | Path, *, overwrite: bool = False, extra: Mapping[str, str] | None = None) -> Path:
        """A Hugging Face folder of the tuned model (:func:`interp.weights.save_hf_dir`) with ``finetune.json``
        (config and history) and any ``extra`` files (name -> text), written in one atomic step."""
        record = json.dumps({"config": self.config.to_dict(), "history": self.history}, indent=1)
        return save_hf_dir(self.model, folder, overwrite=overwrite, extra={"finetune.json": record, **(extra or {})})

    def _summary(self) -> Summary:
        last = self.history[-1] if self.history else {}
        kind = "full fine-tuning" if self.adapters is None else f"LoRA fine-tuning (rank {self.config.lora_rank})"
        facts = {"steps": len(self.history), "first loss": self.history[0]["loss"] if self.history else float("nan"),
                 "last loss": last.get("loss", float("nan"))}
        if last.get("kl") is not None:
            facts["last kl"] = last["kl"]
        return Summary(kind, {}, facts)


class _State(eqx.Module):
    params: Any
    opt_state: Any
    step: jax.Array  # int32 scalar


# ----------------------------------------------------------------------------- losses
def _slots(targets, pos):
    """``(positions [B R], weights [B R])`` the loss reads: ``pos`` as given (-1 = none), or every position with
    ``targets`` of the next token as its weight."""
    if pos is None:
        B, T = targets.shape
        return jnp.broadcast_to(jnp.arange(T - 1), (B, T - 1)), targets[:, 1:].astype(jnp.float32)
    return jnp.maximum(pos, 0), (pos >= 0).astype(jnp.float32)


def _log_probs(model: Model, tokens, mask, pos):
    """Log-probabilities ``[B R V]`` (float32) of the token after each of positions ``pos [B R]``: the final
    normalised stream is gathered at those positions before the unembedding, so other positions cost no
    vocabulary-wide product."""
    x = model.forward(tokens, attention_mask=mask, stop_at_layer=model.n_layers)
    x = model.ln_final(x, NOOP, "ln_final")
    x = jnp.take_along_axis(x, pos[..., None], axis=1)
    return jax.nn.log_softmax(model.unembed_logits(x).astype(jnp.float32), axis=-1)


def target_nll(model: Model, tokens, mask, targets, pos=None):
    """``(sum of -log p(tokens[t] | tokens[:t]) over target positions, number of target positions)``. ``pos``
    (``[B R]``, from :func:`interp.finetune.data.target_positions`) names the predicting positions so that only
    those are unembedded; without it every position is."""
    pos, w = _slots(targets, pos)
    logp = _log_probs(model, tokens, mask, pos)
    nxt = jnp.take_along_axis(tokens, pos + 1, axis=1)
    nll = -jnp.take_along_axis(logp, nxt[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * w), jnp.sum(w)


def target_kl(model: Model, base: Model, tokens, mask, targets, pos=None):
    """``(sum of KL(base || model) of the next-token distribution over target positions, their number)``, nats.
    ``pos`` as in :func:`target_nll`."""
    pos, w = _slots(targets, pos)
    logp = _log_probs(model, tokens, mask, pos)
    base_logp = jax.lax.stop_gradient(_log_probs(base, tokens, mask, pos))
    kl = jnp.sum(jnp.exp(base_logp) * (base_logp - logp), axis=-1)
    return jnp.sum(kl * w), jnp.sum(w)


def _build(params, base: Model) -> Model:
    """The model a step computes with: the base with adapters merged, or the trained arrays (float32 masters) cast to
    the base's dtypes in its place."""
    if isinstance(params, LoRA):
        return merge(base, params)
    floats, static = eqx.partition(base, eqx.is_inexact_array)
    return eqx.combine(jax.tree.map(lambda p, b: p.astype(b.dtype), params, floats), static)


# ----------------------------------------------------------------------------- the run
@functools.lru_cache(maxsize=8)
def _optimizer(grad_clip: float | None):
    """AdamW whose learning rate and weight decay are inputs of each step (the host computes the schedule), so
    runs that differ in them share one compiled step."""
    adamw = optax.inject_hyperparams(optax.adamw)(learning_rate=0.0, weight_decay=0.0)
    return optax.chain(optax.clip_by_global_norm(grad_clip), adamw) if grad_clip else adamw


def _learning_rate(cfg: FinetuneConfig, step: int) -> float:
    """Linear warmup from ``lr / warmup_steps`` to ``lr`` over ``warmup_steps``, then constant."""
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr


def _set_hyperparams(opt_state, lr, weight_decay):
    inject = opt_state[-1] if isinstance(opt_state, tuple) and not hasattr(opt_state, "hyperparams") else opt_state
    new = inject._replace(hyperparams={**inject.hyperparams, "learning_rate": lr, "weight_decay": weight_decay})
    return new if inject is opt_state else (*opt_state[:-1], new)


@functools.lru_cache(maxsize=8)
def _make_step(grad_clip: float | None, use_kl: bool):
    """The compiled step ``(state, base, batch, kl_batch, lr, weight_decay, kl_weight) -> (state, loss, kl)``."""
    optimizer = _optimizer(grad_clip)

    @eqx.filter_jit
    def step(state: _State, base: Model, batch, kl_batch, lr, weight_decay, kl_weight):
        def loss_fn(params):
            model = _build(params, base)
            nll, n = target_nll(model, *batch)
            loss = nll / n
            if not use_kl:
                return loss, (loss, jnp.zeros((), jnp.float32))
            kl, m = target_kl(model, base, *kl_batch)
            kl = kl / m
            return loss + kl_weight * kl, (loss, kl)

        (_, (loss, kl)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        opt_state = _set_hyperparams(state.opt_state, lr, weight_decay)
        with jax.numpy_dtype_promotion("standard"):  # optax mixes int step counts into float math
            updates, opt_state = optimizer.update(grads, opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
        return _State(params, opt_state, state.step + 1), loss, kl

    return step


def _init(model: Model, cfg: FinetuneConfig, optimizer) -> _State:
    if cfg.lora_rank is None:  # float32 masters: Adam's moments and bias corrections need float32's precision
        params = jax.tree.map(lambda x: x.astype(jnp.float32), eqx.filter(model, eqx.is_inexact_array))
    else:
        params = lora(model, cfg.lora_rank, cfg.lora_targets, cfg.lora_alpha, jax.random.key(cfg.seed))
    with jax.numpy_dtype_promotion("standard"):
        opt_state = optimizer.init(eqx.filter(params, eqx.is_inexact_array))
    return _State(params, opt_state, jnp.zeros((), jnp.int32))


def _data_hash(examples: Sequence[Example] | None) -> str | None:
    if examples is None:
        return None
    h = hashlib.sha256()
    for ex in examples:
        h.update(np.int64(ex.tokens.size).tobytes() + ex.tokens.tobytes() + ex.targets.tobytes())
    return h.hexdigest()


def _identity(model: Model, cfg: FinetuneConfig, data, kl_data) -> dict:
    """What makes a checkpoint belong to a run: its settings (all but ``checkpoint_every``), its data and its base
    model's weights."""
    settings = {k: v for k, v in cfg.to_dict().items() if k != "checkpoint_every"}
    return {"config": settings, "data": _data_hash(data), "kl_data": _data_hash(kl_data),
            "base": weights_hash(model)}


def _check_same_run(saved: dict, now: dict, folder: Path) -> None:
    diffs = []
    for key in now:
        a, b = saved.get(key), now[key]
        if key == "config" and isinstance(a, dict):
            diffs += [f"{k}: checkpoint {a.get(k)!r}, now {b[k]!r}" for k in b if a.get(k) != b[k]]
        elif a != b:
            diffs.append(f"{key} differs from the checkpoint's")
    if diffs:
        raise ValueError(f"resume=True with another run than the checkpoint {folder}: {'; '.join(diffs)}. Resume "
                         "with the checkpoint's model, data and settings, or start a new run in another folder")


def _batch(examples: Sequence[Example], cfg: FinetuneConfig, step: int, T: int, R: int, pad: int, seed: int):
    idx = batch_indices(len(examples), cfg.batch_size, step, seed)
    tokens, mask, targets = make_batch([examples[i] for i in idx], T, pad)
    return tuple(jax.device_put(a) for a in (tokens, mask, targets, target_positions(targets, R)))


def finetune(model: Model, data: Sequence[Example], config: FinetuneConfig | None = None, *,
             kl_data: Sequence[Example] | None = None, out: str | Path | None = None, resume: bool = False,
             progress: bool = True) -> Finetuned:
    """Fine-tune ``model`` on ``data`` (:class:`Example` s, or token id lists: every token but the first a target).

    The loss is the mean negative log-likelihood over the target positions of a batch, plus ``kl_weight`` times the
    mean KL(base || tuned) of the next-token distribution over the target positions of a batch of ``kl_data`` (which
    keeps behaviour elsewhere close to the base model's). With ``out`` a checkpoint is written every
    ``checkpoint_every`` steps and at the end; ``resume=True`` continues the newest intact one. A non-finite loss
    stops the run with :class:`interp.sae.TrainingDiverged` naming the last intact checkpoint. ``progress`` shows a
    ``tqdm.auto`` bar. Returns :class:`Finetuned` (adapters merged into ``.model``)."""
    from tqdm.auto import tqdm

    cfg = config or FinetuneConfig()
    if not isinstance(model, Model):
        raise TypeError(f"finetune takes an interp.Model, got {type(model).__name__}")
    data = as_examples(data, "data")
    check_examples(data, model.d_vocab, model.n_ctx, "data")
    if kl_data is not None:
        kl_data = as_examples(kl_data, "kl_data")
        check_examples(kl_data, model.d_vocab, model.n_ctx, "kl_data")
    elif cfg.kl_weight > 0:
        raise ValueError(f"kl_weight={cfg.kl_weight} needs kl_data: the examples on which the tuned model should stay "
                         "close to the base model")
    out = Path(out).expanduser() if out is not None else None
    if resume and out is None:
        raise ValueError("resume=True needs out: the folder of the run to continue")
    if out is not None:
        prepare_out_dir(out)
        if not resume and checkpoint_dirs(out):
            raise FileExistsError(f"{out} already holds checkpoints; pass resume=True to continue that run, or "
                                  "choose another out folder")

    state = _init(model, cfg, _optimizer(cfg.grad_clip))
    identity = _identity(model, cfg, data, kl_data) if out is not None else None
    history: list[dict] = []
    if resume:
        ckpt, skipped = find_checkpoint(out)
        if ckpt is None:
            why = f": {'; '.join(skipped)}" if skipped else ""
            raise FileNotFoundError(f"nothing to resume: no intact checkpoint under {out / 'checkpoints'}{why}")
        state, meta = load_checkpoint(ckpt, state)
        _check_same_run(meta.get("identity", {}), identity, ckpt)
        history = meta["history"]

    pad = model.tokenizer.pad_id if model.tokenizer is not None and model.tokenizer.pad_id is not None else 0
    pad = pad if pad < model.d_vocab else 0
    T = padded_length(data, model.n_ctx)
    T_kl = padded_length(kl_data, model.n_ctx) if kl_data is not None else 0
    R, R_kl = slot_count(data, T), slot_count(kl_data, T_kl) if kl_data is not None else 0
    step_fn = _make_step(cfg.grad_clip, kl_data is not None)
    weight_decay, kl_weight = jnp.float32(cfg.weight_decay), jnp.float32(cfg.kl_weight)

    def checkpoint():
        step = int(state.step)
        meta = {"step": step, "history": history, "identity": identity}
        save_checkpoint(out / "checkpoints" / f"step-{step:08d}", state, meta)
        for old in checkpoint_dirs(out)[:-_KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)

    start = int(state.step)
    with tqdm(total=cfg.steps, initial=start, desc="finetune", unit="step", disable=not progress) as bar:
        for i in range(start, cfg.steps):
            batch = _batch(data, cfg, i, T, R, pad, cfg.seed)
            kl_batch = _batch(kl_data, cfg, i, T_kl, R_kl, pad, cfg.seed + 1) if kl_data is not None else None
            lr = jnp.float32(_learning_rate(cfg, i))
            new_state, loss, kl = step_fn(state, model, batch, kl_batch, lr, weight_decay, kl_weight)
            loss, kl = float(loss), float(kl) if kl_data is not None else None
            if not math.isfinite(loss) or (kl is not None and not math.isfinite(kl)):
                where = latest_checkpoint(out) if out is not None else None
                raise TrainingDiverged(
                    f"the loss became {loss if not math.isfinite(loss) else kl} at step {i + 1}; fine-tuning stopped"
                    + (f" and the last intact checkpoint is {where}" if where else " (no checkpoint was written)")
                    + ". Lower the learning rate (lr), raise warmup_steps or check the data")
            state = new_state
            history.append({"step": i + 1, "loss": loss, "kl": kl})
            bar.set_postfix(loss=f"{loss:.4f}", **({"kl": f"{kl:.4f}"} if kl is not None else {}))
            bar.update(1)
            if out is not None and cfg.checkpoint_every and (i + 1) % cfg.checkpoint_every == 0 and i + 1 < cfg.steps:
                checkpoint()
    if out is not None:
        checkpoint()
        with atomic_file(out / "history.json", "w") as fh:
            json.dump(history, fh, indent=1)
    tuned = _build(state.params, model)
    return Finetuned(tuned, history, cfg, state.params if isinstance(state.params, LoRA) else None)


def next_token_kl(model: Model, base: Model, examples: Sequence[Example] | Sequence[Sequence[int]], *,
                  batch_size: int = 8) -> float:
    """Mean over target positions of KL(base || model) of the next-token distribution, in nats. ``examples``:
    :class:`Example` s or token id lists (every token but the first a target)."""
    examples = as_examples(examples, "examples")
    check_examples(examples, model.d_vocab, model.n_ctx, "examples")
    if base.d_vocab != model.d_vocab:
        raise ValueError(f"the base model's vocabulary ({base.d_vocab}) differs from the model's ({model.d_vocab}); "
                         "KL needs the two models to share a tokenizer")
    T = padded_length(examples, model.n_ctx)
    R = slot_count(examples, T)
    total, count = 0.0, 0.0
    for s in range(0, len(examples), batch_size):
        chunk = list(examples[s:s + batch_size])
        filler = Example(chunk[0].tokens, np.zeros_like(chunk[0].targets))  # a full batch: one compiled shape
        tokens, mask, targets = make_batch(chunk + [filler] * (batch_size - len(chunk)), T)
        pos = target_positions(targets, R)
        kl, n = _kl_sums(model, base, *(jax.device_put(a) for a in (tokens, mask, targets, pos)))
        total, count = total + float(kl), count + float(n)
    return total / count


@eqx.filter_jit
def _kl_sums(model, base, tokens, mask, targets, pos):
    return target_kl(model, base, tokens, mask, targets, pos)
