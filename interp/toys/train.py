"""Training small models from scratch with measurements along the way: one compiled optax step, and named metrics
(any function of the model) recorded at a fixed interval, so a run's history shows when a circuit forms.

Axes: B batch, T positions, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Int

from interp.models import Model
from interp.results import Result, Summary


def next_token_loss(model: Model, tokens: Int[Array, "B T"]) -> Array:
    """Mean next-token cross-entropy (nats) over every position of ``tokens``."""
    logits = model.forward(tokens).astype(jnp.float32)
    lp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    return -jnp.mean(jnp.take_along_axis(lp, tokens[:, 1:, None], axis=-1))


@dataclasses.dataclass(frozen=True)
class History(Result):
    """A training run: ``loss [steps]`` (the training loss of every step), ``steps [N]`` (the steps at which the
    metrics were measured, 0 = before training) and ``metrics`` (name -> ``[N, ...]``), ``seconds`` of wall time."""

    loss: np.ndarray
    steps: np.ndarray
    metrics: dict[str, np.ndarray]
    seconds: float

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.metrics:
            raise KeyError(f"no metric '{name}' was recorded; recorded: {sorted(self.metrics)}")
        return self.metrics[name]

    def rows(self) -> list[dict]:
        """One dict per measurement: ``step``, the training loss of that step (``loss``; absent at step 0) and every
        scalar metric, as :func:`interp.viz.figures.training_figure` plots."""
        out = []
        for i, step in enumerate(self.steps):
            row = {"step": int(step)}
            if step > 0:
                row["loss"] = float(self.loss[step - 1])
            row.update({k: float(v[i]) for k, v in self.metrics.items() if np.ndim(v[i]) == 0})
            out.append(row)
        return out

    def _summary(self) -> Summary:
        last = {k: v[-1] for k, v in self.metrics.items() if np.ndim(v[-1]) == 0}
        return Summary("training history", {"step": len(self.loss), "measurement": len(self.steps)},
                       facts={"final loss": float(self.loss[-1]) if len(self.loss) else None,
                              "seconds": round(self.seconds, 1)},
                       top=list(last.items()), top_title="metrics at the last measurement")


def train(model: Model, data, *, steps: int, loss: Callable | None = None, lr: float = 1e-3,
          weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), warmup: int = 0,
          clip: float | None = 1.0, eval_every: int = 100,
          metrics: Mapping[str, Callable[[Model], object]] | None = None,
          progress: bool = False) -> tuple[Model, History]:
    """Train every float array of ``model`` for ``steps`` AdamW steps; returns ``(trained model, History)``.

    ``data``: a token array ``[B T]`` used at every step (full-batch training), or a function ``step -> [B T]``
    (a batch per step; make it a function of the step alone and the run is reproducible). ``loss(model, batch)``
    returns a scalar (default :func:`next_token_loss`). The learning rate rises linearly over ``warmup`` steps, then
    stays at ``lr``; weight decay applies to every array (as in the grokking experiments). ``metrics``: name ->
    ``fn(model)`` (a number or an array), measured before the first step, every ``eval_every`` steps and after the
    last one.
    """
    from tqdm.auto import tqdm

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 1:
        raise ValueError(f"eval_every must be a positive int, got {eval_every!r}")
    loss = next_token_loss if loss is None else loss
    if callable(data):
        batch_at = data
    else:
        fixed = jax.tree.map(jnp.asarray, data)

        def batch_at(_step):
            return fixed
    schedule = optax.linear_schedule(0.0, lr, warmup) if warmup else lr
    if warmup:
        schedule = optax.join_schedules([schedule, optax.constant_schedule(lr)], [warmup])
    opt = optax.adamw(schedule, b1=betas[0], b2=betas[1], weight_decay=weight_decay)
    if clip is not None:
        opt = optax.chain(optax.clip_by_global_norm(clip), opt)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    state = opt.init(params)

    @jax.jit
    def step(params, state, batch):
        value, grads = jax.value_and_grad(lambda p: loss(eqx.combine(p, static), batch))(params)
        with jax.numpy_dtype_promotion("standard"):  # optax's bias correction raises a float to an int power
            updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    metrics = dict(metrics or {})
    measured: dict[str, list] = {k: [] for k in metrics}
    at: list[int] = []

    def measure(i):
        m = eqx.combine(params, static)
        at.append(i)
        for k, fn in metrics.items():
            measured[k].append(np.asarray(fn(m)))

    values: list = []  # device scalars, read at each measurement so steps dispatch ahead
    start = time.perf_counter()
    if metrics:
        measure(0)
    for i in tqdm(range(steps), desc="train", unit="step", disable=not progress):
        params, state, value = step(params, state, jax.tree.map(jnp.asarray, batch_at(i)))
        values.append(value)
        if (i + 1) % eval_every == 0 or i + 1 == steps:
            if not np.isfinite(float(value)):
                raise FloatingPointError(f"the training loss is {float(value)} at step {i + 1}; lower lr "
                                         f"(now {lr}) or set clip")
            if metrics:
                measure(i + 1)
    losses = np.asarray(jnp.stack(values), np.float32)
    return eqx.combine(params, static), History(losses, np.asarray(at), {k: np.stack(v) for k, v in measured.items()},
                                                time.perf_counter() - start)
