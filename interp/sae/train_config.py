"""The settings of a dictionary training run (:class:`TrainConfig`), and the defaults that follow its token budget
(batch size, warm-up)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from interp.checks import check_range
from interp.sae._base import DictConfig

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
