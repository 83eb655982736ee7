"""Crosscoders for model diffing (Lindsey et al. 2024, "Sparse Crosscoders for Cross-Layer Features and Model
Diffing").

Axis letters: N activations, P models (``n_models``), D activation dim, M dictionary latents.

A crosscoder reads the activations of the same tokens in several models at one hook point, ``x [N P D]``, and
explains them with one set of latents: ``f = act(sum_p x_p W_enc[p] + b_enc)`` and ``x̂_p = f W_dec[p] + b_dec[p]``.
A latent's decoder vector for each model says how much of it each model holds; the relative norm
``r = |d_1| / (|d_0| + |d_1|)`` (``crosscoder_diff``) is 0 for a latent only the first model has, 1 for one only
the second has, and about 0.5 for a shared one. With a base model first and a fine-tuned one second, the latents
with r near 1 point at what fine-tuning added.

Two sparsity mechanisms:

- ``l1_coeff``: the paper's ReLU + L1, whose penalty is ``sum_i f_i sum_p |W_dec[p, i]|``: the decoder norms are
  summed over models rather than taken jointly, so a latent two models share costs as much as two latents each
  model has alone, and the penalty does not press model-specific features into shared latents;
- ``k``: TopK over the joint pre-activations, chosen by ``relu(pre_i) sum_p |W_dec[p, i]|`` (the size of what
  latent i adds to the reconstruction, by the same summed norm), so that moving scale from a latent's decoder
  into its encoder does not change which latents are picked; the kept latents take their ReLU'd pre-activations.
  AuxK (Gao et al. 2024) gives latents that stopped firing gradient again.

Input normalisation: each model's activations are multiplied by ``scale[p]`` so that their mean squared norm is
D, then encoded; the decoder output is divided by ``scale[p]`` again. ``encode`` and ``decode`` take and return
activations in the models' own units; ``W_enc``, ``W_dec`` and ``b_dec`` live in the normalised units (the scale
is kept as a field and saved, not folded into the weights), so decoder norms of different models compare on the
same footing even when one model's activations are larger than the other's.

Files: a folder with ``cfg.json`` (``architecture: "crosscoder"`` and the config under ``interp``) and
``crosscoder_weights.safetensors`` (``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``, ``scale``; float32). SAELens has no
crosscoder layout, so this one is the package's own.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Sequence
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from interp._io import atomic_dir
from interp.checks import check_range
from interp.kernels import top_k
from interp.results import Result, Summary

WEIGHTS_FILE = "crosscoder_weights.safetensors"
CONFIG_FILE = "cfg.json"
_TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec", "scale")


@dataclasses.dataclass(frozen=True)
class CrosscoderConfig:
    """A crosscoder's shape and sparsity: ``n_models`` models with activations of size ``d_in``, ``width`` shared
    latents, and exactly one of ``k`` (TopK) or ``l1_coeff`` (ReLU + L1 on latents times summed decoder norms).
    ``hook_name`` and ``model_names`` record where the activations came from (for files and summaries)."""

    n_models: int
    d_in: int
    width: int
    k: int | None = None
    l1_coeff: float | None = None
    hook_name: str = ""
    model_names: tuple[str, ...] = ()

    def __post_init__(self):
        check_range("n_models", self.n_models, 1, integer=True)
        check_range("d_in", self.d_in, 1, integer=True)
        check_range("width", self.width, 1, integer=True)
        if (self.k is None) == (self.l1_coeff is None):
            raise ValueError("give exactly one of k (TopK crosscoder) or l1_coeff (ReLU + L1 crosscoder); got "
                             f"k={self.k!r}, l1_coeff={self.l1_coeff!r}")
        if self.k is not None:
            check_range("k", self.k, 1, self.width, integer=True, hi_open=True,
                        note=f": fewer latents active than the width={self.width}")
        if self.l1_coeff is not None:
            check_range("l1_coeff", self.l1_coeff, 0)
        if self.model_names and len(self.model_names) != self.n_models:
            raise ValueError(f"model_names {list(self.model_names)} name {len(self.model_names)} models, but "
                             f"n_models={self.n_models}; give one name per model or none")

    @property
    def kind(self) -> str:
        return "topk" if self.k is not None else "l1"

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "model_names": list(self.model_names)}

    @classmethod
    def from_dict(cls, d: dict) -> CrosscoderConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown crosscoder config fields {sorted(unknown)}; known: {sorted(names)}")
        d = dict(d)
        d["model_names"] = tuple(d.get("model_names") or ())
        return cls(**d)


class Crosscoder(eqx.Module):
    """Shared latents over ``n_models`` models' activations at one hook point (see the module docstring).

    ``encode(x [..., P, D]) -> [..., M]``, ``decode(f [..., M]) -> [..., P, D]``, ``__call__`` both. ``scale [P]``
    is the input normalisation (applied in ``encode``, undone in ``decode``); the other fields are in normalised
    units. A pytree: pass it through ``jit``."""

    W_enc: Float[Array, "P D M"]
    b_enc: Float[Array, " M"]
    W_dec: Float[Array, "P M D"]
    b_dec: Float[Array, "P D"]
    scale: Float[Array, " P"]
    cfg: CrosscoderConfig = eqx.field(static=True)

    @classmethod
    def init(cls, cfg: CrosscoderConfig, key: PRNGKeyArray, *, dec_init_norm: float = 0.1,
             b_dec: Float[Array, "P D"] | None = None, scale: Float[Array, " P"] | None = None) -> Crosscoder:
        """Random decoder vectors of norm ``dec_init_norm`` (per model and latent) and the encoder as their
        transpose, zero encoder bias; ``b_dec`` (normalised units, e.g. the data mean) and ``scale`` default to 0
        and 1."""
        P, D, M = cfg.n_models, cfg.d_in, cfg.width
        W_dec = jax.random.normal(key, (P, M, D), jnp.float32)
        W_dec = dec_init_norm * W_dec / jnp.linalg.norm(W_dec, axis=-1, keepdims=True)
        return cls(W_enc=jnp.swapaxes(W_dec, 1, 2), b_enc=jnp.zeros((M,), jnp.float32), W_dec=W_dec,
                   b_dec=jnp.zeros((P, D), jnp.float32) if b_dec is None else jnp.asarray(b_dec, jnp.float32),
                   scale=jnp.ones((P,), jnp.float32) if scale is None else jnp.asarray(scale, jnp.float32), cfg=cfg)

    def __check_init__(self):
        P, D, M = self.cfg.n_models, self.cfg.d_in, self.cfg.width
        want = {"W_enc": (P, D, M), "b_enc": (M,), "W_dec": (P, M, D), "b_dec": (P, D), "scale": (P,)}
        for name, shape in want.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"crosscoder {name} has shape {got}, but its config (n_models={P}, d_in={D}, "
                                 f"width={M}) implies {shape}")

    # ------------------------------------------------------------------ maps
    def _check_input(self, x) -> None:
        P, D = self.cfg.n_models, self.cfg.d_in
        if x.ndim < 2 or tuple(x.shape[-2:]) != (P, D):
            raise ValueError(f"crosscoder input has shape {tuple(x.shape)}; it needs [..., n_models={P}, d_in={D}] "
                             "(the same tokens' activations in each model, stacked on the second-to-last axis)")

    def pre_acts(self, x: Float[Array, "... P D"]) -> Float[Array, "... M"]:
        """Joint pre-activations ``sum_p (scale_p x_p) W_enc[p] + b_enc``."""
        self._check_input(x)
        xs = x.astype(jnp.float32) * self.scale[:, None]
        return jnp.einsum("...PD,PDM->...M", xs, self.W_enc) + self.b_enc

    def dec_norms(self) -> Float[Array, "P M"]:
        """Per model and latent, the norm of the decoder vector (normalised units)."""
        return jnp.linalg.norm(self.W_dec, axis=-1)

    def activate(self, pre: Float[Array, "... M"]) -> Float[Array, "... M"]:
        """Latents (dense, zeros where inactive) from pre-activations."""
        acts = jax.nn.relu(pre)
        if self.cfg.k is None:
            return acts
        weight = jnp.sum(self.dec_norms(), axis=0)
        _, idx = top_k(acts * weight, self.cfg.k)
        keep = jnp.zeros(acts.shape, bool)
        keep = jnp.put_along_axis(keep, idx, True, axis=-1, inplace=False)
        return jnp.where(keep, acts, 0.0)

    def encode(self, x: Float[Array, "... P D"]) -> Float[Array, "... M"]:
        """Latents of activations ``x`` (in the models' own units)."""
        return self.activate(self.pre_acts(x))

    def decode_normalised(self, f: Float[Array, "... M"]) -> Float[Array, "... P D"]:
        """Reconstruction in normalised units (what training compares with ``scale_p x_p``)."""
        return jnp.einsum("...M,PMD->...PD", f, self.W_dec) + self.b_dec

    def decode(self, f: Float[Array, "... M"]) -> Float[Array, "... P D"]:
        """Reconstruction of every model's activations (in the models' own units) from latents ``f``."""
        if f.shape[-1] != self.cfg.width:
            raise ValueError(f"latents have {f.shape[-1]} entries on the last axis; this crosscoder has "
                             f"width={self.cfg.width}")
        return self.decode_normalised(f) / self.scale[:, None]

    def __call__(self, x: Float[Array, "... P D"]) -> Float[Array, "... P D"]:
        return self.decode(self.encode(x))

    def loss(self, x: Float[Array, "N P D"], l1_scale: Float[Array, ""] | float = 1.0,
             dead: Bool[Array, " M"] | None = None, aux_coeff: float = 0.0) -> tuple[Float[Array, ""], dict]:
        """Training loss on normalised activations (``scale`` is not applied): squared error summed over models
        and features, averaged over activations, plus for L1 crosscoders ``l1_scale * l1_coeff`` times the mean of
        ``sum_i f_i sum_p |W_dec[p, i]|`` (``l1_scale`` ramps the penalty up at the start of training).

        With ``dead`` (latents silent for long) and ``aux_coeff``, TopK crosscoders add ``aux_coeff`` times AuxK
        (Gao et al. 2024): the reconstruction error, held fixed, is fitted by the largest pre-activations of dead
        latents, so that they get gradient again."""
        pre = jnp.einsum("NPD,PDM->NM", x, self.W_enc) + self.b_enc
        f = self.activate(pre)
        err = x - self.decode_normalised(f)
        mse = jnp.mean(jnp.sum(jnp.square(err), axis=(-2, -1)))
        var = jnp.mean(jnp.sum(jnp.square(x - jnp.mean(x, axis=0)), axis=(-2, -1)))
        l1 = jnp.mean(jnp.sum(f * jnp.sum(self.dec_norms(), axis=0), axis=-1))
        loss = mse if self.cfg.l1_coeff is None else mse + l1_scale * self.cfg.l1_coeff * l1
        m = {"mse": mse, "fvu": mse / var, "l1": l1, "l0": jnp.mean(jnp.sum(f > 0, axis=-1)),
             "fired": jnp.any(f > 0, axis=0)}
        if dead is not None and self.cfg.k is not None:
            k_aux = min(max(self.cfg.d_in // 2, 1), self.cfg.width)
            vals, idx = top_k(jnp.where(dead, pre, -jnp.inf), k_aux)
            vals = jnp.where(jnp.isfinite(vals), jax.nn.relu(vals), 0.0)
            f_aux = jnp.put_along_axis(jnp.zeros_like(pre), idx, vals, axis=-1, inplace=False)
            e_hat = jnp.einsum("NM,PMD->NPD", f_aux, self.W_dec)
            ramp = jnp.minimum(jnp.sum(dead).astype(jnp.float32) / k_aux, 1.0)  # fewer dead than k_aux: less
            aux = ramp * jnp.mean(jnp.sum(jnp.square(e_hat - jax.lax.stop_gradient(err)), axis=(-2, -1))) / var
            loss, m["auxk"] = loss + aux_coeff * aux, aux
        return loss, {"loss": loss, **m}

    # ------------------------------------------------------------------ files
    def save(self, folder: str | Path) -> Path:
        """Write ``cfg.json`` and ``crosscoder_weights.safetensors`` (float32) to ``folder``, atomically."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        weights = {name: np.asarray(getattr(self, name), np.float32) for name in _TENSORS}
        cfg = {"architecture": "crosscoder", "interp": self.cfg.to_dict(),
               "normalisation": "x_p * scale_p before encoding; decoder output / scale_p"}
        with atomic_dir(folder) as tmp:
            save_file(weights, str(tmp / WEIGHTS_FILE))
            (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Crosscoder:
        """A crosscoder from a folder written by ``save``; every tensor is checked against the config."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        folder = Path(folder)
        cfg_path, w_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        if not cfg_path.exists() or not w_path.exists():
            hint = (" (it holds sae_weights.safetensors: open it with interp.sae.load)"
                    if (folder / "sae_weights.safetensors").exists() else "")
            raise FileNotFoundError(f"{folder} is not a crosscoder folder: it needs {CONFIG_FILE} and {WEIGHTS_FILE}"
                                    f"{hint}")
        try:
            raw = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{cfg_path} is not valid JSON ({e}); save the crosscoder again") from None
        if not isinstance(raw, dict) or raw.get("architecture") != "crosscoder" or not isinstance(raw.get("interp"),
                                                                                                   dict):
            raise ValueError(f"{cfg_path} does not describe a crosscoder (it needs architecture 'crosscoder' and an "
                             "'interp' config object); save the crosscoder again")
        try:
            cfg = CrosscoderConfig.from_dict(raw["interp"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{cfg_path}: not a valid crosscoder config ({e}); save the crosscoder again") from None
        try:
            w = load_file(str(w_path))
        except (SafetensorError, OSError, TypeError) as e:
            raise ValueError(f"{w_path} cannot be read ({e}): the file is truncated or corrupt; save the crosscoder "
                             "again") from None
        P, D, M = cfg.n_models, cfg.d_in, cfg.width
        want = {"W_enc": (P, D, M), "b_enc": (M,), "W_dec": (P, M, D), "b_dec": (P, D), "scale": (P,)}
        for name, shape in want.items():
            if name not in w:
                raise ValueError(f"{w_path} lacks '{name}'; a crosscoder file holds {list(_TENSORS)}, this one "
                                 f"{sorted(w)}")
            a = w[name]
            if tuple(a.shape) != shape:
                raise ValueError(f"{w_path}: {name} has shape {tuple(a.shape)}, but {CONFIG_FILE} implies {shape} "
                                 f"(n_models={P}, d_in={D}, width={M}); the weights and the config belong to "
                                 "different crosscoders")
            if not np.issubdtype(a.dtype, np.floating):
                raise ValueError(f"{w_path}: {name} has dtype {a.dtype}; crosscoder weights must be floating point")
            if not np.isfinite(a).all():
                raise ValueError(f"{w_path}: {name} holds NaN or infinite values; the crosscoder is corrupt or "
                                 "diverged in training")
        if (w["scale"] <= 0).any():
            raise ValueError(f"{w_path}: scale holds values <= 0, which no trained crosscoder has; the file is corrupt")
        return cls(**{name: jnp.asarray(w[name], jnp.float32) for name in _TENSORS}, cfg=cfg)


# ---------------------------------------------------------------------- training


def _check_acts(acts, what: str = "acts") -> tuple[int, int, int]:
    shape = tuple(getattr(acts, "shape", ()))
    if len(shape) != 3:
        raise ValueError(f"{what} has shape {shape}; it needs [N, n_models, d_in] (the same tokens' activations in "
                         "each model, e.g. from crosscoder_acts)")
    if not jnp.issubdtype(acts.dtype, jnp.floating):
        raise ValueError(f"{what} has dtype {acts.dtype}; activations must be floating point")
    N = shape[0]
    for i in range(0, N, 65536):  # in chunks: a full boolean copy of a large array is not needed
        block = np.asarray(acts[i:i + 65536], np.float32)
        if not np.isfinite(block).all():
            n, p = np.argwhere(~np.isfinite(block))[0][:2]
            raise ValueError(f"{what} holds NaN or infinite values (first at row {i + n}, model {p}); drop those "
                             "rows (a diverged model or bad input) before training")
    return shape


def normalisation_scale(acts, n_rows: int = 65536) -> np.ndarray:
    """Per model, ``sqrt(D / mean |x_p|^2)`` over the first ``n_rows`` rows of ``acts [N P D]``: the factor that
    makes each model's mean squared norm D."""
    x = np.asarray(acts[:n_rows], np.float64)
    ms = np.mean(np.sum(np.square(x), axis=-1), axis=0)
    if (ms <= 0).any():
        p = int(np.argmin(ms))
        raise ValueError(f"the activations of model {p} are all zero; a crosscoder cannot normalise them")
    return np.sqrt(x.shape[-1] / ms).astype(np.float32)


def _optimizer(lr: float, steps: int):
    decay = max(int(steps * 0.2), 1)  # linear decay to 0 over the last fifth (Anthropic's SAE recipe)
    schedule = optax.join_schedules([optax.constant_schedule(lr), optax.linear_schedule(lr, 0.0, decay)],
                                    [max(steps - decay, 0)])
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


def _trained(cc: Crosscoder):
    """The filter of trained leaves: every floating array but ``scale`` (training sees normalised activations)."""
    return eqx.tree_at(lambda c: c.scale, jax.tree.map(eqx.is_inexact_array, cc), False)


@functools.lru_cache(maxsize=8)
def _trainer(cfg: CrosscoderConfig, lr: float, steps: int, aux_coeff: float, dead_after_tokens: int):
    """``(optimizer, static part, jitted step)`` for a config and schedule, kept so that training again with the
    same settings (another seed, other data of the same shape) compiles nothing."""
    optimizer = _optimizer(lr, steps)
    template = Crosscoder.init(cfg, jax.random.PRNGKey(0))
    _, static = eqx.partition(template, _trained(template))  # the config and scale 1

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def step(params, opt_state, since_fired, x, l1_scale):
        def loss_fn(p):
            return eqx.combine(p, static).loss(x, l1_scale, since_fired >= dead_after_tokens, aux_coeff)

        (_, m), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        since_fired = jnp.where(m.pop("fired"), 0, jnp.minimum(since_fired + x.shape[0], 2**30)).astype(jnp.int32)
        m["dead_fraction"] = jnp.mean((since_fired >= dead_after_tokens).astype(jnp.float32))
        with jax.numpy_dtype_promotion("standard"):  # optax mixes int step counts into float math
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, since_fired, m

    return optimizer, static, step


def train_crosscoder(acts: Float[np.ndarray, "N P D"] | Float[Array, "N P D"], *, width: int, k: int | None = None,
                     l1_coeff: float | None = None, steps: int = 2000, lr: float = 1e-3, batch_size: int = 1024,
                     seed: int = 0, progress: bool = True, dec_init_norm: float = 0.1,
                     l1_warmup_fraction: float = 0.05, aux_coeff: float = 1 / 32,
                     dead_after_tokens: int = 1_000_000, hook_name: str = "",
                     model_names: Sequence[str] = ()) -> Crosscoder:
    """Train a crosscoder on ``acts [N, n_models, D]`` (row n: one token's activations in every model).

    Exactly one of ``k`` (TopK) or ``l1_coeff`` (the paper's ReLU + L1 weighted by summed decoder norms) is given.
    Each model's activations are scaled to mean squared norm D (``normalisation_scale``; kept in ``scale``).
    Adam with gradient clipping at 1 and the learning rate decayed linearly to 0 over the last fifth of
    ``steps``; the L1 coefficient ramps up from 0 over the first ``l1_warmup_fraction`` of steps. Batches are
    drawn from ``acts`` (a NumPy array stays on the host) in a shuffled order seeded by ``seed``; the result is
    the same for the same seed and data. The decoder bias starts at the data mean.

    TopK crosscoders add AuxK (weighted by ``aux_coeff``; 0 turns it off) for latents silent for
    ``dead_after_tokens`` activations; the L1 penalty keeps latents alive on its own (the paper uses no
    auxiliary loss). ``hook_name`` and ``model_names`` are recorded in the config."""
    N, P, D = _check_acts(acts)
    check_range("steps", steps, 1, integer=True)
    check_range("batch_size", batch_size, 1, integer=True)
    check_range("lr", lr, 0, lo_open=True)
    check_range("dec_init_norm", dec_init_norm, 0, lo_open=True)
    check_range("l1_warmup_fraction", l1_warmup_fraction, 0, 1)
    check_range("aux_coeff", aux_coeff, 0)
    check_range("dead_after_tokens", dead_after_tokens, 1, integer=True)
    if P < 2:
        raise ValueError(f"acts hold {P} model's activations; a crosscoder for model diffing needs at least 2 "
                         "(stack them on axis 1: [N, n_models, D])")
    if batch_size > N:
        raise ValueError(f"batch_size={batch_size} is larger than the {N} activations given; lower batch_size or "
                         "harvest more activations")
    cfg = CrosscoderConfig(n_models=P, d_in=D, width=width, k=k, l1_coeff=l1_coeff, hook_name=hook_name,
                           model_names=tuple(model_names))
    scale = normalisation_scale(acts)
    mean = np.mean(np.asarray(acts[:65536], np.float64), axis=0) * scale[:, None]
    # names do not change the computation: one compiled step serves every hook and pair of models
    unnamed = dataclasses.replace(cfg, hook_name="", model_names=())
    cc = Crosscoder.init(unnamed, jax.random.PRNGKey(seed), dec_init_norm=dec_init_norm,
                         b_dec=mean.astype(np.float32))
    optimizer, static, step = _trainer(unnamed, lr, steps, aux_coeff, dead_after_tokens)
    since_fired = jnp.zeros((width,), jnp.int32)
    params, _ = eqx.partition(cc, _trained(cc))
    with jax.numpy_dtype_promotion("standard"):
        opt_state = optimizer.init(params)
    warm = max(int(steps * l1_warmup_fraction), 1)

    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    order, at = rng.permutation(N), 0
    scale_host = scale[None, :, None]
    bar = tqdm(total=steps, desc=f"train crosscoder {P} x {D} -> {width}", disable=not progress, unit="step")
    for i in range(steps):
        if at + batch_size > N:
            order, at = rng.permutation(N), 0
        idx = np.sort(order[at:at + batch_size])
        at += batch_size
        x = jnp.asarray(np.asarray(acts[idx], np.float32) * scale_host)
        params, opt_state, since_fired, m = step(params, opt_state, since_fired, x,
                                                 jnp.float32(min((i + 1) / warm, 1.0)))
        if i % 50 == 0 or i == steps - 1:
            loss = float(m["loss"])
            if not math.isfinite(loss):
                raise FloatingPointError(f"the crosscoder's loss became {loss} at step {i}; lower lr")
            bar.set_postfix(loss=f"{loss:.4g}", fvu=f"{float(m['fvu']):.3f}", l0=f"{float(m['l0']):.1f}",
                            dead=f"{float(m['dead_fraction']):.2f}")
        bar.update(1)
    bar.close()
    out = eqx.combine(params, static)
    return Crosscoder(W_enc=out.W_enc, b_enc=out.b_enc, W_dec=out.W_dec, b_dec=out.b_dec, scale=jnp.asarray(scale),
                      cfg=cfg)


@eqx.filter_jit
def _encode_decode(cc: Crosscoder, x):
    f = cc.encode(x)
    return f, cc.decode(f)


def evaluate_crosscoder(cc: Crosscoder, acts: Float[np.ndarray, "N P D"], *, batch_size: int = 4096) -> dict:
    """Reconstruction and sparsity of ``cc`` on ``acts [N P D]`` (models' own units): ``fvu`` (squared error over
    variance, all models together, in normalised units), ``fvu_per_model`` (each model's in its own units), ``l0``
    (mean active latents), ``fired`` (bool ``[M]``: latents active on any row) and ``dead_fraction``."""
    N, P, D = _check_acts(acts)
    cc._check_input(acts)
    err = np.zeros((P,))
    sum_x, sum_xx = np.zeros((P, D)), np.zeros((P,))
    l0, fired = 0.0, np.zeros((cc.cfg.width,), bool)
    for i in range(0, N, batch_size):
        x = np.asarray(acts[i:i + batch_size], np.float32)
        f, x_hat = (np.asarray(a) for a in _encode_decode(cc, jnp.asarray(x)))
        err += np.sum(np.square(x_hat.astype(np.float64) - x), axis=(0, 2))
        sum_x += x.sum(0)
        sum_xx += np.sum(np.square(x.astype(np.float64)), axis=(0, 2))
        l0 += float(np.sum(f > 0))
        fired |= (f > 0).any(0)
    var = sum_xx - np.sum(np.square(sum_x), axis=-1) / N  # per model, summed over rows and features
    s2 = np.square(np.asarray(cc.scale, np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):  # constant activations have no variance: NaN
        fvu = np.where(var > 0, err / np.where(var > 0, var, 1.0), np.nan)
        total = np.sum(err * s2) / np.sum(var * s2) if np.sum(var * s2) > 0 else float("nan")
    return {"fvu": float(total), "fvu_per_model": fvu.tolist(),
            "l0": l0 / N, "fired": fired, "dead_fraction": float(1 - fired.mean())}


# ---------------------------------------------------------------------- diffing


@dataclasses.dataclass(frozen=True, repr=False)
class CrosscoderDiff(Result):
    """Per-latent decoder norms of a crosscoder, compared between two of its models (``models``, default the
    first two: a base model and a fine-tuned one).

    ``norms [P M]``: decoder norm per model and latent (normalised units). ``relative_norm [M]``:
    ``r = |d_b| / (|d_a| + |d_b|)`` (0: only model a, 1: only model b; NaN for a latent with no decoder).
    ``cosine [M]``: cosine between a latent's two decoder vectors. ``second_only``, ``first_only``, ``shared``:
    latent ids with ``r > threshold``, ``r < 1 - threshold`` and ``|r - 0.5| <= shared_band``, each sorted by the
    latent's summed decoder norm (largest first). Latents known not to fire (``fired`` from ``acts``) are left out
    of the three lists."""

    norms: np.ndarray
    relative_norm: np.ndarray
    cosine: np.ndarray
    second_only: np.ndarray
    first_only: np.ndarray
    shared: np.ndarray
    models: tuple[int, int]
    model_names: tuple[str, str]
    threshold: float
    fired: np.ndarray | None = None

    def _summary(self) -> Summary:
        a, b = self.model_names
        facts = {f"{b} only": len(self.second_only), f"{a} only": len(self.first_only), "shared": len(self.shared)}
        if self.fired is not None:
            facts["dead"] = int((~self.fired).sum())
        top = [(f"latent {i} ({b} only)", float(self.relative_norm[i])) for i in self.second_only[:8]]
        return Summary(f"crosscoder diff, {a} vs {b}", {"latents": len(self.relative_norm)}, facts, top,
                       "relative decoder norm r of the largest latents only the second model has")

    def to_dict(self) -> dict:
        """Plain JSON-ready values: the three id lists, per-latent ``relative_norm``, ``cosine`` and ``norms``
        (NaN as None), the models compared and the threshold."""
        def floats(a):
            return [None if not np.isfinite(v) else float(v) for v in np.asarray(a).reshape(-1)]

        return {"models": list(self.models), "model_names": list(self.model_names), "threshold": self.threshold,
                "second_only": [int(i) for i in self.second_only], "first_only": [int(i) for i in self.first_only],
                "shared": [int(i) for i in self.shared], "relative_norm": floats(self.relative_norm),
                "cosine": floats(self.cosine), "norms": [floats(n) for n in self.norms],
                "fired": None if self.fired is None else [bool(v) for v in self.fired]}


def crosscoder_diff(cc: Crosscoder, *, models: tuple[int, int] = (0, 1), threshold: float = 0.9,
                    shared_band: float = 0.2, acts: Float[np.ndarray, "N P D"] | None = None) -> CrosscoderDiff:
    """Compare the decoder norms of models ``models = (a, b)`` of ``cc`` latent by latent (see ``CrosscoderDiff``).

    With ``acts`` the latents that fire on none of them are left out of the lists (an unused latent keeps its
    initial decoder, whose r says nothing)."""
    P = cc.cfg.n_models
    a, b = models
    if P < 2 or not (0 <= a < P and 0 <= b < P) or a == b:
        raise ValueError(f"models={models} must be two different model indices below n_models={P}")
    check_range("threshold", threshold, 0.5, 1, lo_open=True, hi_open=True)
    check_range("shared_band", shared_band, 0, 0.5)
    norms = np.asarray(cc.dec_norms(), np.float64)
    total = norms[a] + norms[b]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(total > 0, norms[b] / total, np.nan)
        da, db = np.asarray(cc.W_dec[a], np.float64), np.asarray(cc.W_dec[b], np.float64)
        cos = np.sum(da * db, -1) / (norms[a] * norms[b])
    fired = None if acts is None else evaluate_crosscoder(cc, acts)["fired"]
    live = np.ones_like(total, bool) if fired is None else fired
    by_norm = np.argsort(-total, kind="stable")

    def pick(mask):
        return by_norm[(mask & live)[by_norm]]

    rr = np.nan_to_num(r, nan=0.5)
    ok = np.isfinite(r)
    names = cc.cfg.model_names or tuple(f"model {p}" for p in range(P))
    return CrosscoderDiff(norms=norms, relative_norm=r, cosine=cos, second_only=pick(ok & (rr > threshold)),
                          first_only=pick(ok & (rr < 1 - threshold)),
                          shared=pick(ok & (np.abs(rr - 0.5) <= shared_band)),
                          models=(a, b), model_names=(names[a], names[b]), threshold=threshold, fired=fired)


# ---------------------------------------------------------------------- harvesting


def _token_rows(model, tokens_or_texts) -> tuple[list[np.ndarray], bool]:
    """Token id rows (one per text or row) and whether they came from text."""
    if isinstance(tokens_or_texts, str):
        tokens_or_texts = [tokens_or_texts]
    if isinstance(tokens_or_texts, np.ndarray) or hasattr(tokens_or_texts, "shape"):
        arr = np.asarray(tokens_or_texts)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"tokens must be integer ids [batch, pos]; got dtype {arr.dtype}, shape {arr.shape}")
        return [row for row in arr], False
    items = list(tokens_or_texts)
    if items and all(isinstance(t, str) for t in items):
        return [np.asarray(model.to_tokens(t)).reshape(-1) for t in items], True
    rows = []
    for t in items:
        row = np.asarray(t)
        if row.ndim != 1 or not np.issubdtype(row.dtype, np.integer):
            raise ValueError("tokens_or_texts must be texts, an integer array [batch, pos], or a list of integer id "
                             f"sequences; got an item of dtype {row.dtype}, shape {row.shape}")
        rows.append(row)
    return rows, False


def crosscoder_acts(model_a, model_b, tokens_or_texts, hook: str, *, batch_size: int = 8,
                    skip_positions: int = 1) -> Float[np.ndarray, "N 2 D"]:
    """Activations at ``hook`` of the same tokens in two models, aligned row by row: ``[N, 2, D]`` (float32).

    ``tokens_or_texts``: texts (tokenized with ``model_a``'s tokenizer; ``model_b``'s, if it has one, must give
    the same ids), an integer array ``[batch, pos]`` or a list of id sequences of any lengths. Sequences are run
    ``batch_size`` at a time, right-padded with an attention mask; padding is dropped, and so are the first
    ``skip_positions`` positions of each sequence (default 1: the first position's activations are orders of
    magnitude larger than the rest in most models and would dominate the normalisation)."""
    check_range("batch_size", batch_size, 1, integer=True)
    check_range("skip_positions", skip_positions, 0, integer=True)
    for m, which in ((model_a, "model_a"), (model_b, "model_b")):
        if hook not in m.hook_names:
            from interp.hooks import suggest

            raise ValueError(f"unknown hook '{hook}' in {which}{suggest(hook, m.hook_names)}")
    D_a, D_b = model_a.hook_shapes()[hook][-1], model_b.hook_shapes()[hook][-1]
    if D_a != D_b:
        raise ValueError(f"'{hook}' has size {D_a} in model_a and {D_b} in model_b; a crosscoder over one D needs "
                         "models of the same width at the hook")
    rows, from_text = _token_rows(model_a, tokens_or_texts)
    if from_text and getattr(model_b, "tokenizer", None) is not None:
        rows_b, _ = _token_rows(model_b, tokens_or_texts)
        if any(len(r) != len(s) or (r != s).any() for r, s in zip(rows, rows_b, strict=True)):
            raise ValueError("model_a and model_b tokenize the texts differently; a crosscoder compares the same "
                             "tokens: pass token ids, or use models that share a tokenizer")
    vocab = min(model_a.d_vocab, model_b.d_vocab)
    for r in rows:
        if r.size and (r.min() < 0 or r.max() >= vocab):
            raise ValueError(f"token id {int(r.max()) if r.max() >= vocab else int(r.min())} is outside the "
                             f"vocabulary the two models share (0..{vocab - 1})")
    out = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        T = max(len(r) for r in chunk)
        if T <= skip_positions:
            continue
        toks = np.zeros((len(chunk), T), np.int32)
        mask = np.zeros((len(chunk), T), np.int32)
        for j, r in enumerate(chunk):
            toks[j, :len(r)], mask[j, :len(r)] = r, 1
        keep = mask.astype(bool)
        keep[:, :skip_positions] = False
        both = []
        for m in (model_a, model_b):
            kw = {} if keep.all() else {"attention_mask": mask}
            _, cache = m.run_with_cache(toks, names=[hook], return_logits=False, **kw)
            both.append(np.asarray(cache[hook], np.float32)[keep])
        out.append(np.stack(both, axis=1))
    if not out:
        raise ValueError(f"no positions left: every sequence has at most skip_positions={skip_positions} tokens")
    return np.concatenate(out)
