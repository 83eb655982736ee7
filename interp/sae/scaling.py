"""Scaling sweeps (Gao et al. 2024): TopK SAEs of several widths trained at fixed ``k`` on the same activations, their
held-out reconstruction error, and the power law it follows in the width.

    >>> acts = sae.scaling.harvest(model, "blocks.15.hook_resid_post", corpus, 17 * 65024)  # 17 buffers
    >>> x, held = acts[:16 * 65024], acts[16 * 65024:]  # the last buffer held out
    >>> x, held = x[sae.scaling.typical_rows(x)], held[sae.scaling.typical_rows(held)]  # attention sinks out
    >>> sweep = sae.scaling.width_sweep(x, held, [256, 512, 1024, 2048], k=32)
    >>> sweep.fit.exponent, sweep.fit.r2
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float

from interp.results import Result, Summary
from interp.sae._base import Dictionary
from interp.sae.store import ActivationStore, ArrayActivationStore
from interp.sae.topk import TopKConfig
from interp.sae.trainer import TrainConfig, train


def typical_rows(x: Float[ArrayLike, "N D"], max_norm_ratio: float = 10.0) -> np.ndarray:
    """Mask ``[N]`` of the rows whose norm is at most ``max_norm_ratio`` times the median row norm. The rows it
    leaves out are attention sinks: in SmolLM2's middle layers the end-of-text tokens between documents have ~150
    times the typical norm, and a few dozen of them in 150,000 rows carry ~85% of the variance, so any FVU or MSE
    that keeps them measures those rows alone."""
    n = np.linalg.norm(np.asarray(x, np.float32), axis=-1)
    return n <= max_norm_ratio * np.median(n)


def harvest(model, hook_name: str, corpus, n_tokens: int, *, context_size: int = 128, skip_positions: int = 1,
            model_batch: int = 16, buffer_tokens: int = 2**16, seed: int = 0, progress: bool = True) -> np.ndarray:
    """``n_tokens`` activations ``[n_tokens D]`` (float32) of ``model`` at ``hook_name`` on ``corpus``, in the order
    a training run would draw them: contexts read in turn through the corpus (their first ``skip_positions`` left
    out), shuffled within each buffer of ``buffer_tokens`` tokens, which yields
    ``buffer_tokens // context_size * (context_size - skip_positions)`` rows. Rows past a whole number of buffers
    come from later contexts than every row before them, so a tail cut there is held-out text. Every row is kept:
    cut first, then leave out the attention sinks of each part with :func:`typical_rows`."""
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        raise ValueError(f"n_tokens must be a positive int, got {n_tokens!r}")
    # one batch per buffer: every row of a buffer is served, in its shuffled order
    per_buffer = buffer_tokens // context_size * (context_size - skip_positions)
    store = ActivationStore(model, hook_name, corpus, context_size=context_size, model_batch=model_batch,
                            buffer_tokens=buffer_tokens, batch_size=max(per_buffer, 1), seed=seed,
                            skip_positions=skip_positions, n_tokens=n_tokens)
    out = np.empty((n_tokens, model.d_model), np.float32)
    from tqdm.auto import tqdm

    with tqdm(total=n_tokens, desc="harvest", unit="tok", disable=not progress) as bar:
        at = 0
        while at < n_tokens:
            x = np.asarray(store.next_batch()[0])
            out[at:at + len(x)] = x[:n_tokens - at]
            bar.update(min(len(x), n_tokens - at))
            at += len(x)
    return out


@dataclasses.dataclass(frozen=True)
class PowerLaw(Result):
    """``y = prefactor * x ** exponent``, fitted by least squares on ``log y`` against ``log x``; ``r2`` is that fit's
    coefficient of determination (1: every point on the line)."""

    exponent: float
    prefactor: float
    r2: float

    def __call__(self, x) -> np.ndarray:
        return self.prefactor * np.asarray(x, np.float64) ** self.exponent

    def _summary(self) -> Summary:
        return Summary("power law", {"exponent": self.exponent}, {"prefactor": self.prefactor, "r2": self.r2})


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> PowerLaw:
    """The power law through points ``(x, y)`` (at least 3, all positive)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 3:
        raise ValueError(f"need at least 3 paired points, got x {x.shape} and y {y.shape}")
    if (x <= 0).any() or (y <= 0).any():
        raise ValueError("a power law is fitted in log space: every x and y must be positive")
    lx, ly = np.log(x), np.log(y)
    slope, intercept = np.polyfit(lx, ly, 1)
    resid = ly - (slope * lx + intercept)
    total = ((ly - ly.mean()) ** 2).sum()
    r2 = 1.0 - float((resid**2).sum() / total) if total > 0 else float("nan")
    return PowerLaw(float(slope), float(np.exp(intercept)), r2)


@dataclasses.dataclass(frozen=True)
class WidthSweep(Result):
    """What :func:`width_sweep` returns: one row per width (``width``, ``held_out_fvu`` (the normalised MSE),
    ``held_out_mse``, ``train_fvu``, ``l0``, ``dead_fraction`` (latents silent on every held-out activation),
    ``steps``, ``tokens``, ``seconds``, ``late_fall``: how much the training FVU fell over the last quarter of the run,
    relative (small: converged)), ``fit``: the power law of the held-out FVU in the width, and the ``dictionaries``."""

    rows: list[dict]
    fit: PowerLaw
    dictionaries: dict[int, Dictionary] = dataclasses.field(repr=False)

    def column(self, name: str) -> np.ndarray:
        return np.array([r[name] for r in self.rows])

    def _summary(self) -> Summary:
        return Summary("TopK width sweep", {"widths": [r["width"] for r in self.rows]},
                       {"held-out FVU": [round(r["held_out_fvu"], 4) for r in self.rows],
                        "dead fraction": [round(r["dead_fraction"], 4) for r in self.rows],
                        "exponent": self.fit.exponent, "r2": self.fit.r2})


@eqx.filter_jit
def _chunk_stats(dictionary, x):
    z = dictionary.encode(x)
    err = jnp.sum(jnp.square(dictionary.decode(z) - x))
    return err, jnp.sum(z > 0, axis=0), jnp.sum(z > 0)


def _metrics(dictionary, x: np.ndarray, chunk: int = 4096) -> dict[str, float]:
    """Held-out MSE (summed over dimensions, averaged over rows), FVU, L0 and the fraction of latents that never
    fire, in chunks (a wide dictionary's pre-activations for every row would not fit in memory)."""
    err, fired, active = 0.0, np.zeros(dictionary.cfg.width, np.int64), 0
    for i in range(0, len(x), chunk):
        e, f, a = _chunk_stats(dictionary, jnp.asarray(x[i:i + chunk]))
        err, fired, active = err + float(e), fired + np.asarray(f), active + int(a)
    total = float(np.sum(np.square(x - x.mean(axis=0, dtype=np.float64))))
    return {"mse": err / len(x), "fvu": err / total, "l0": active / len(x), "dead_fraction": float(np.mean(fired == 0))}


def _late_fall(history: list[dict]) -> float:
    """Relative fall of the training FVU over the last quarter of the run (means of the tenth of the logged rows
    that ends at 75% of the run and of the last tenth)."""
    fvu = np.array([r["fvu"] for r in history if "fvu" in r], np.float64)
    if len(fvu) < 8:
        return float("nan")
    n = max(1, len(fvu) // 10)
    at = (3 * len(fvu)) // 4
    before, end = fvu[at - n:at].mean(), fvu[-n:].mean()
    return float((before - end) / before)


def width_sweep(x: Float[ArrayLike, "N D"], held_out: Float[ArrayLike, "M D"], widths: Sequence[int], *, k: int = 32,
                epochs: float = 4.0, batch_size: int = 512, lr: float | None = None, hook_name: str = "",
                seed: int = 0, progress: bool = True) -> WidthSweep:
    """Train a TopK SAE (AuxK on) of each width on activations ``x`` for ``epochs`` passes, evaluate each on
    ``held_out``, and fit the held-out FVU as a power law of the width.

    ``lr``: None scales Adam's learning rate as ``2e-3 * sqrt(1024 / width)`` (Gao et al. scale it as one over the
    square root of the width; the constant suits batches of a few hundred rows); a number is used at every width."""
    x = np.asarray(x, np.float32)
    held_out = np.asarray(held_out, np.float32)
    widths = [int(w) for w in widths]
    if len(widths) < 3 or len(set(widths)) != len(widths):
        raise ValueError(f"need at least 3 distinct widths to fit a power law, got {widths}")
    if x.ndim != 2 or held_out.ndim != 2 or x.shape[1] != held_out.shape[1]:
        raise ValueError(f"x {x.shape} and held_out {held_out.shape} must be [N, d] with the same d")
    steps = int(epochs * len(x)) // batch_size
    if steps < 1:
        raise ValueError(f"{epochs} passes over {len(x)} activations is not one batch of {batch_size}")
    d = x.shape[1]
    rows, dicts = [], {}
    for width in widths:
        store = ArrayActivationStore(x, batch_size=batch_size, seed=seed)
        cfg = TrainConfig(TopKConfig(d_in=d, width=width, k=k, hook_name=hook_name or "activations"),
                          total_tokens=steps * batch_size, batch_size=batch_size,
                          lr=lr if lr is not None else 2e-3 * (1024 / width) ** 0.5,
                          dead_after_tokens=min(len(x), 1_000_000), eval_every=max(1, steps // 50), seed=seed)
        t0 = time.perf_counter()
        result = train(cfg, store=store, progress=progress)
        seconds = time.perf_counter() - t0
        dictionary = result.dictionary
        held = _metrics(dictionary, held_out)
        train_fvu = _metrics(dictionary, x[:: max(1, len(x) // len(held_out))][: len(held_out)])["fvu"]
        rows.append({"width": width, "k": k, "held_out_fvu": held["fvu"], "held_out_mse": held["mse"],
                     "train_fvu": train_fvu, "l0": held["l0"], "dead_fraction": held["dead_fraction"], "steps": steps,
                     "tokens": steps * batch_size, "seconds": round(seconds, 1),
                     "late_fall": _late_fall(result.history)})
        dicts[width] = dictionary
    fit = fit_power_law(widths, [r["held_out_fvu"] for r in rows])
    return WidthSweep(rows, fit, dicts)
