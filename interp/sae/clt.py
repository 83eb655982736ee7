"""Cross-layer transcoders (Ameisen et al. 2025): each layer's features read that layer's MLP input and write to
the MLP outputs of that layer and of every later one.

Layer ``l`` has an encoder ``W_enc[l] [D F]`` reading ``blocks.{l}.ln2.hook_normalized`` and a decoder
``W_dec[l] [F L-l D]`` whose slice ``[:, r]`` writes to ``blocks.{l+r}.hook_mlp_out``. Layer ``m``'s MLP output is
reconstructed as ``b_dec[m] + sum_{l <= m} z_l W_dec[l][:, m - l]``. A feature that the model computes in one
layer and uses several layers later is one feature here, not a chain of per-layer features: attribution graphs
over a CLT have shorter paths (a CLT feature is one node with edges to every later layer).

Features fire by a per-feature threshold (JumpReLU) at inference. Training keeps, at each layer, the ``k × N``
largest activations of a batch of ``N`` positions (BatchTopK, Bussmann et al. 2024), and sets the threshold to a
running average of the smallest kept one, as :class:`interp.sae.BatchTopKSAE` does.

Files: circuit-tracer's layout (``W_enc_{l}.safetensors`` holding ``W_enc_{l} [F D]``, ``b_enc_{l}``, ``b_dec_{l}``,
``threshold_{l}``; ``W_dec_{l}.safetensors`` holding ``W_dec_{l} [F L-l D]``), plus ``clt.json`` with the hook
names and how the set was trained.

Axis letters: L layers, D model, F features per layer, N positions, R output layers of one source layer.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int

from interp._io import atomic_dir
from interp.checks import check_range
from interp.kernels import top_k
from interp.sae.set_runs import SetRun, set_identity
from interp.sae.transcoders import HOOK_IN, HOOK_OUT, _batches


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """What feature dashboards read from a dictionary's config: its width and the hooks it reads and writes."""

    d_in: int
    width: int
    hook_name: str
    hook_name_out: str


class CLTLayer(eqx.Module):
    """One layer of a cross-layer transcoder, seen as a dictionary: ``encode`` gives that layer's features, ``W_dec``
    is their write to the layer's own MLP output, and ``decode_group`` reconstructs the layer's MLP output from
    the features of this and every earlier layer (what a splice of the whole set uses)."""

    clt: CrossLayerTranscoder
    layer: int = eqx.field(static=True)

    @property
    def cfg(self) -> LayerInfo:
        c = self.clt
        return LayerInfo(c.d_model, c.width, c.hook_in.format(layer=self.layer), c.hook_out.format(layer=self.layer))

    @property
    def W_enc(self) -> Float[Array, "D F"]:
        return self.clt.W_enc[self.layer]

    @property
    def W_dec(self) -> Float[Array, "F D"]:
        return self.clt.W_dec[self.layer][:, 0]

    @property
    def b_dec(self) -> Float[Array, " D"]:
        return self.clt.b_dec[self.layer]

    def encode(self, x: Float[Array, "... D"]) -> Float[Array, "... F"]:
        return self.clt.encode_layer(self.layer, x)

    def decode(self, z: Float[Array, "... F"]) -> Float[Array, "... D"]:
        """This layer's features alone written to its own MLP output (plus the bias)."""
        return z @ self.W_dec + self.b_dec

    def decode_group(self, zs: dict[int, Array]) -> Float[Array, "... D"]:
        """The layer's MLP output rebuilt from the features ``zs`` (source layer -> ``[..., F]``) of layers up to it."""
        out = self.b_dec
        for l, z in zs.items():
            if l <= self.layer:
                out = out + z @ self.clt.W_dec[l][:, self.layer - l]
        return out


class CrossLayerTranscoder(eqx.Module):
    """A cross-layer transcoder over ``L`` layers (see the module docstring). A pytree: pass it through ``jit``.

    Positions before ``skip_positions`` (attention sinks the set was not trained on) are left to the model's own
    MLPs, as in :class:`interp.sae.Transcoders`."""

    W_enc: Float[Array, "L D F"]
    b_enc: Float[Array, "L F"]
    W_dec: tuple  # W_dec[l]: [F, L - l, D]
    b_dec: Float[Array, "L D"]
    threshold: Float[Array, "L F"]
    hook_in: str = eqx.field(static=True, default=HOOK_IN)
    hook_out: str = eqx.field(static=True, default=HOOK_OUT)
    skip_positions: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        check_range("skip_positions", self.skip_positions, 0, integer=True)
        L, D, F = self.W_enc.shape
        want = {"b_enc": (L, F), "b_dec": (L, D), "threshold": (L, F)}
        for name, shape in want.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} has shape {getattr(self, name).shape}; W_enc {self.W_enc.shape} needs "
                                 f"{shape}")
        if len(self.W_dec) != L or any(w.shape != (F, L - l, D) for l, w in enumerate(self.W_dec)):
            got = [tuple(w.shape) for w in self.W_dec]
            raise ValueError(f"W_dec must hold one [F, L - l, D] array per layer l (F={F}, L={L}, D={D}); got {got}")

    # ------------------------------------------------------------------ shapes
    @property
    def n_layers(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_model(self) -> int:
        return self.W_enc.shape[1]

    @property
    def width(self) -> int:
        return self.W_enc.shape[2]

    def __len__(self) -> int:
        return self.n_layers

    def span(self, layer: int) -> int:
        """How many consecutive MLP outputs, from ``layer`` on, a feature of ``layer`` writes to."""
        return self.n_layers - layer

    @property
    def dictionaries(self) -> tuple[CLTLayer, ...]:
        """Each layer as a dictionary (for feature dashboards and supernodes)."""
        return tuple(CLTLayer(self, l) for l in range(self.n_layers))

    # ------------------------------------------------------------------ maps
    def pre_acts(self, layer: int, x: Float[Array, "... D"]) -> Float[Array, "... F"]:
        return x @ self.W_enc[layer] + self.b_enc[layer]

    def encode_layer(self, layer: int, x: Float[Array, "... D"]) -> Float[Array, "... F"]:
        """Features of ``layer`` on its MLP inputs ``x``: dense, zero where a feature does not pass its threshold."""
        pre = self.pre_acts(layer, x)
        return jnp.where(pre > self.threshold[layer], jax.nn.relu(pre), 0.0)

    def encode(self, x: Float[Array, "L ... D"]) -> Float[Array, "L ... F"]:
        """Features of every layer, from each layer's MLP input (``x[l]``)."""
        return jnp.stack([self.encode_layer(l, x[l]) for l in range(self.n_layers)])

    def decode(self, z: Float[Array, "L ... F"]) -> Float[Array, "L ... D"]:
        """Every layer's MLP output from the features of all layers (``z[l]`` for layer ``l``)."""
        out = jnp.broadcast_to(self.b_dec.reshape((self.n_layers,) + (1,) * (z.ndim - 2) + (self.d_model,)),
                               z.shape[:-1] + (self.d_model,))
        for l in range(self.n_layers):
            contrib = jnp.einsum("...F,FRD->R...D", z[l], self.W_dec[l])
            out = out.at[l:].add(contrib.astype(out.dtype))
        return out

    def __call__(self, x: Float[Array, "L ... D"]) -> Float[Array, "L ... D"]:
        return self.decode(self.encode(x))

    # ------------------------------------------------------------------ what attribution graphs read
    def encoder_direction(self, layer: int, feature: int) -> Float[Array, " D"]:
        return self.W_enc[layer][:, feature]

    def decoder_rows(self, layer: int, ids: Int[Array, " A"]) -> Float[Array, "A R D"]:
        """The writes of features ``ids`` of ``layer`` to each MLP output from ``layer`` on (``R = span(layer)``)."""
        return self.W_dec[layer][ids]

    def output_bias(self) -> Float[Array, "L D"]:
        return self.b_dec

    def skip(self, layer: int, x) -> float:
        return 0.0

    def latent_hook(self, layer: int) -> str:
        return f"{self.hook_in.format(layer=layer)}.sae.hook_latents"

    def splices(self, error_term: bool = True) -> list:
        """Splices that run the set inside the model: layer ``m``'s MLP output is replaced by what the features of
        layers ``<= m`` write to it (with error terms: plus the model's own output minus that), so an edit of a
        feature's latent reaches every later MLP output it writes to."""
        from interp.hooks import Splice

        return [Splice(CLTLayer(self, l), self.hook_in.format(layer=l), self.hook_out.format(layer=l),
                       error_term=error_term, skip_positions=self.skip_positions, group="clt")
                for l in range(self.n_layers)]

    # ------------------------------------------------------------------ files
    def save(self, folder: str | Path, *, info: dict | None = None) -> Path:
        """Write the set in circuit-tracer's layout plus ``clt.json``, atomically."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        with atomic_dir(folder) as tmp:
            for l in range(self.n_layers):
                save_file({f"W_enc_{l}": np.ascontiguousarray(np.asarray(self.W_enc[l], np.float32).T),
                           f"b_enc_{l}": np.asarray(self.b_enc[l], np.float32),
                           f"b_dec_{l}": np.asarray(self.b_dec[l], np.float32),
                           f"threshold_{l}": np.asarray(self.threshold[l], np.float32)},
                          str(tmp / f"W_enc_{l}.safetensors"))
                save_file({f"W_dec_{l}": np.asarray(self.W_dec[l], np.float32)}, str(tmp / f"W_dec_{l}.safetensors"))
            (tmp / "clt.json").write_text(json.dumps(
                {"n_layers": self.n_layers, "d_model": self.d_model, "width": self.width, "hook_in": self.hook_in,
                 "hook_out": self.hook_out, "skip_positions": self.skip_positions, **(info or {})}, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, hook_in: str = HOOK_IN, hook_out: str = HOOK_OUT,
             skip_positions: int = 1) -> CrossLayerTranscoder:
        """Read a set from ``folder`` (circuit-tracer's layout). ``clt.json``, when there, gives the hooks and
        ``skip_positions``; a folder without it (written by circuit-tracer) takes the arguments. A layer without
        ``threshold_{l}`` fires by ReLU alone."""
        from safetensors.numpy import load_file

        folder = Path(folder)
        meta_path = folder / "clt.json"
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            hook_in, hook_out, skip_positions = meta["hook_in"], meta["hook_out"], meta["skip_positions"]
        L = 0
        while (folder / f"W_enc_{L}.safetensors").exists():
            L += 1
        if L == 0:
            raise FileNotFoundError(f"{folder} holds no W_enc_0.safetensors: a cross-layer transcoder is a folder "
                                    "written by CrossLayerTranscoder.save (or circuit-tracer's to_safetensors)")
        enc, dec = [], []
        for l in range(L):
            dec_path = folder / f"W_dec_{l}.safetensors"
            if not dec_path.exists():
                raise FileNotFoundError(f"{dec_path} is missing: each layer needs its encoder and decoder file")
            enc.append(load_file(str(folder / f"W_enc_{l}.safetensors")))
            dec.append(load_file(str(dec_path))[f"W_dec_{l}"])
        W_enc = jnp.stack([jnp.asarray(e[f"W_enc_{l}"], jnp.float32).T for l, e in enumerate(enc)])
        F = W_enc.shape[2]
        thr = [e.get(f"threshold_{l}", np.zeros(F, np.float32)) for l, e in enumerate(enc)]
        return cls(W_enc, jnp.stack([jnp.asarray(e[f"b_enc_{l}"], jnp.float32) for l, e in enumerate(enc)]),
                   tuple(jnp.asarray(w, jnp.float32) for w in dec),
                   jnp.stack([jnp.asarray(e[f"b_dec_{l}"], jnp.float32) for l, e in enumerate(enc)]),
                   jnp.stack([jnp.asarray(np.reshape(t, -1), jnp.float32) for t in thr]), hook_in, hook_out,
                   skip_positions)


def init_clt(n_layers: int, d_model: int, width: int, key, *, skip_positions: int = 1) -> CrossLayerTranscoder:
    """Encoders with unit-norm random columns; each layer's decoder to its own MLP output the transpose of its encoder
    and, to later outputs, small random rows (``1 / sqrt(L)`` of the own-layer norm), so that at the start every
    layer's reconstruction comes mostly from its own features; zero biases and thresholds."""
    L, D, F = n_layers, d_model, width
    keys = jax.random.split(key, 2 * L)
    W_enc, W_dec = [], []
    for l in range(L):
        w = jax.random.normal(keys[2 * l], (D, F))
        w = w / jnp.linalg.norm(w, axis=0, keepdims=True)
        later = jax.random.normal(keys[2 * l + 1], (F, L - l - 1, D)) / math.sqrt(D * L)
        W_enc.append(w)
        W_dec.append(jnp.concatenate([w.T[:, None], later], axis=1))
    return CrossLayerTranscoder(jnp.stack(W_enc), jnp.zeros((L, F)), tuple(W_dec), jnp.zeros((L, D)),
                                jnp.zeros((L, F)), skip_positions=skip_positions)


def _select(pre: Float[Array, "N F"], k: int, c: int):
    """A layer's BatchTopK as exactly ``k × N`` (value, row, feature) triples (the batch's largest activations; a
    value may be 0 when fewer are positive), from each row's ``c`` largest candidates."""
    N = pre.shape[0]
    cand, idx = top_k(jax.nn.relu(pre), c)
    vals, flat = top_k(cand.reshape(-1), k * N)
    return vals, flat // c, idx.reshape(-1)[flat]


def clt_loss(clt: CrossLayerTranscoder, x: Float[Array, "L N D"], y: Float[Array, "L N D"], k: int,
             candidates: int) -> tuple[Float[Array, ""], dict]:
    """Mean over layers of each layer's FVU (so the small early MLP outputs count as much as the large late ones),
    with each layer's features chosen by BatchTopK; and per-layer metrics. The definition, in one function; training
    uses :func:`clt_value_and_grad`, which computes the same a layer at a time."""
    L, N, D = y.shape
    recon = [jnp.broadcast_to(clt.b_dec[m], (N, D)) for m in range(L)]
    kths, l0s, fired = [], [], []
    for l in range(L):
        vals, rows, feats = _select(clt.pre_acts(l, x[l]), k, min(candidates, clt.width))
        W = clt.W_dec[l].reshape(clt.width, -1)
        out = jax.ops.segment_sum(W[feats] * vals[:, None], rows, num_segments=N).reshape(N, L - l, D)
        for r in range(L - l):
            recon[l + r] = recon[l + r] + out[:, r]
        live = vals > 0
        kths.append(jnp.min(jnp.where(live, vals, jnp.inf)))
        l0s.append(jnp.sum(live) / N)
        fired.append(jnp.zeros(clt.width, bool).at[feats].max(live))
    recon = jnp.stack(recon)
    mse = jnp.mean(jnp.sum(jnp.square(y - recon), -1), -1)  # [L]
    tv = jnp.mean(jnp.sum(jnp.square(y - jnp.mean(y, axis=1, keepdims=True)), -1), -1)
    fvu = mse / jnp.maximum(tv, 1e-12)
    return jnp.mean(fvu), {"fvu": fvu, "l0": jnp.stack(l0s), "batch_threshold": jax.lax.stop_gradient(jnp.stack(kths)),
                           "fired": jnp.stack(fired)}


def _pad_to(n: int, step: int = 6) -> int:
    """Source layers' output counts rounded up, so that a few compilations serve every layer."""
    return -(-n // step) * step


@functools.partial(jax.jit, static_argnums=(6, 7), donate_argnums=(4,))
def _layer_forward(W_enc, b_enc, W_dec, x, recon, l, k: int, c: int):
    """Source layer ``l``: its latents ``z [N F]`` (BatchTopK), kept dense (a row of the decoder is reused by every
    position where its feature fires, so a dense product beats gathering rows on a CPU), and ``recon [N L' D]``
    (updated in place) with its writes ``[N R D]`` added to the MLP outputs from layer ``l`` on."""
    N = x.shape[1]
    F, R, D = W_dec.shape
    vals, rows, feats = _select(x[l] @ W_enc[l] + b_enc[l], k, c)
    z = jnp.zeros((N, F), x.dtype).at[rows, feats].add(vals)
    out = (z @ W_dec.reshape(F, -1)).reshape(N, R, D)
    recon = jax.lax.dynamic_update_slice_in_dim(recon, jax.lax.dynamic_slice_in_dim(recon, l, R, 1) + out, l, 1)
    live = vals > 0
    return z, recon, (jnp.min(jnp.where(live, vals, jnp.inf)), jnp.sum(live) / N,
                      jnp.zeros(F, bool).at[feats].max(live))


@jax.jit
def _layer_backward(W_dec, x, z, g, l):
    """Gradients of ``sum(g * writes)`` for source layer ``l`` (``g [N L' D]``, read from layer ``l`` on), from its
    forward's latents ``z``: the selection passes gradient to the kept latents only (its threshold is piecewise
    constant)."""
    F, R, _ = W_dec.shape
    g2 = jax.lax.dynamic_slice_in_dim(g, l, R, 1).reshape(g.shape[0], -1)
    dz = jnp.where(z > 0, g2 @ W_dec.reshape(F, -1).T, 0.0)
    return x[l].T @ dz, jnp.sum(dz, axis=0), (z.T @ g2).reshape(W_dec.shape)


def clt_value_and_grad(clt: CrossLayerTranscoder, x: Float[Array, "L N D"], y: Float[Array, "L N D"], k: int,
                       candidates: int) -> tuple[tuple[Float[Array, ""], dict], CrossLayerTranscoder]:
    """``clt_loss`` and its gradient, computed one source layer at a time with the backward pass written out: each
    layer's forward and backward are separate compiled calls (decoders padded to a multiple of 6 output layers,
    the layer an argument, so a few compilations serve every layer; the reconstruction is updated in place).
    Memory holds one layer's temporaries at a time; in one compiled function XLA may run the layers concurrently
    and hold all of theirs."""
    L, N, D = y.shape
    c = min(candidates, clt.width)
    pad = [jnp.pad(clt.W_dec[l], ((0, 0), (0, _pad_to(L - l) - (L - l)), (0, 0))) for l in range(L)]
    Lp = max(l + p.shape[1] for l, p in enumerate(pad))  # room for every padded layer's writes
    recon = jnp.concatenate([jnp.broadcast_to(clt.b_dec[None], (N, L, D)), jnp.zeros((N, Lp - L, D), y.dtype)], 1)
    zs, kths, l0s, fired = [], [], [], []
    for l in range(L):
        z, recon, (kth, l0, f) = _layer_forward(clt.W_enc, clt.b_enc, pad[l], x, recon, l, k, c)
        zs.append(z)
        kths.append(kth)
        l0s.append(l0)
        fired.append(f)
    recon = jnp.swapaxes(recon[:, :L], 0, 1)
    mse = jnp.mean(jnp.sum(jnp.square(y - recon), -1), -1)  # [L]
    tv = jnp.maximum(jnp.mean(jnp.sum(jnp.square(y - jnp.mean(y, axis=1, keepdims=True)), -1), -1), 1e-12)
    fvu = mse / tv
    g = (2.0 / (L * N)) * (recon - y) / tv[:, None, None]  # d mean(fvu) / d recon
    g_nld = jnp.pad(jnp.swapaxes(g, 0, 1), ((0, 0), (0, Lp - L), (0, 0)))
    gW_enc, gb_enc, gW_dec = [], [], []
    for l in range(L):
        a, b, w = _layer_backward(pad[l], x, zs[l], g_nld, l)
        gW_enc.append(a)
        gb_enc.append(b)
        gW_dec.append(w[:, : L - l])
    grads = dataclasses.replace(clt, W_enc=jnp.stack(gW_enc), b_enc=jnp.stack(gb_enc), W_dec=tuple(gW_dec),
                                b_dec=jnp.sum(g, axis=1), threshold=jnp.zeros_like(clt.threshold))
    metrics = {"fvu": fvu, "l0": jnp.stack(l0s), "batch_threshold": jnp.stack(kths), "fired": jnp.stack(fired)}
    return (jnp.mean(fvu), metrics), grads


def train_clt(
    model, *, width: int = 1024, k: int = 16, total_tokens: int = 200_000, corpus=None, context_size: int = 64,
    model_batch: int = 16, lr: float = 1e-3, skip_positions: int = 1, seed: int = 0,
    out_dir: str | Path | None = None, progress: bool = True, candidate_factor: int = 4,
    threshold_decay: float | None = None, checkpoint_every: int = 0, resume: bool = False,
    callback: Callable[[int, list[float]], None] | None = None,
) -> tuple[CrossLayerTranscoder, list[dict]]:
    """Train a cross-layer transcoder for every layer of ``model`` from one forward pass per batch, with ``k`` active
    features per layer and position on average (BatchTopK). Returns the set and a per-layer summary (FVU and L0
    averaged over the last 20 steps, the fraction of features that never fired in the last 100 steps). Arguments
    as for :func:`interp.sae.train_transcoders` (``checkpoint_every``, ``resume`` and ``callback`` too: a checkpoint
    of a CLT at width 1024 on SmolLM2-135M holds ~3.5 GB, parameters and Adam's moments). ``threshold_decay``: of
    the running average that sets the inference thresholds (default: an average over about the last tenth of
    training, at least 10 steps).

    Cost: a dense product per source layer and the MLP outputs it writes to, so a step costs about ``(L + 1) / 2``
    times a per-layer set's decoder work (on SmolLM2-135M at width 1024: ~13 s a step of 1,008 positions on two
    CPU cores, against ~2 s for per-layer transcoders)."""
    from tqdm.auto import tqdm

    L, D = model.n_layers, model.d_model
    for name, value in (("width", width), ("k", k), ("context_size", context_size), ("model_batch", model_batch),
                        ("total_tokens", total_tokens), ("candidate_factor", candidate_factor)):
        check_range(name, value, 1, integer=True)
    if threshold_decay is not None:
        check_range("threshold_decay", threshold_decay, 0, 1)
    check_range("skip_positions", skip_positions, 0, context_size, integer=True, hi_open=True,
                note=": at least one position of each context must remain")
    check_range("checkpoint_every", checkpoint_every, 0, integer=True)
    if k > width:
        raise ValueError(f"k={k} exceeds width={width}: a layer cannot keep more features than it has")
    rows = model_batch * (context_size - skip_positions)
    steps = max(1, total_tokens // rows)
    warmup = min(20, max(1, steps // 10))
    if threshold_decay is None:
        threshold_decay = 1.0 - 1.0 / max(10, steps // 10)
    settings = {"trainer": "clt", "width": width, "k": k, "total_tokens": total_tokens, "context_size": context_size,
                "model_batch": model_batch, "lr": lr, "skip_positions": skip_positions, "seed": seed,
                "candidate_factor": candidate_factor, "threshold_decay": threshold_decay}
    run = SetRun(out_dir, identity=lambda: set_identity(settings, model, corpus),
                 checkpoint_every=checkpoint_every, resume=resume)
    schedule = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup),
                                     optax.linear_schedule(lr, lr * 0.1, max(1, steps - warmup))], [warmup])
    opt = optax.adam(schedule)
    names = [h.format(layer=l) for l in range(L) for h in (HOOK_IN, HOOK_OUT)]
    c = min(candidate_factor * k, width)

    @eqx.filter_jit(donate="all")
    def update(clt, grads, opt_state, batch_threshold):
        with jax.numpy_dtype_promotion("standard"):  # optax mixes int step counts into float math
            updates, opt_state = opt.update(grads, opt_state, eqx.filter(clt, eqx.is_array))
        clt = eqx.apply_updates(clt, updates)
        # thresholds are not trained by gradient: a running average of each layer's smallest kept activation
        old = clt.threshold[:, 0]
        new = jnp.where(old == 0, batch_threshold, threshold_decay * old + (1 - threshold_decay) * batch_threshold)
        return eqx.tree_at(lambda t: t.threshold, clt, jnp.broadcast_to(new[:, None], clt.threshold.shape)), opt_state

    def step(clt, opt_state, x, y):
        (loss, m), grads = clt_value_and_grad(clt, x, y, k, c)
        clt, opt_state = update(clt, grads, opt_state, m["batch_threshold"])
        return clt, opt_state, loss, m

    @eqx.filter_jit
    def match_scale(clt, x, y):
        """Decoder biases at the outputs' means; encoders scaled so the first reconstructions have the outputs'
        typical size (an MLP's output can be orders of magnitude smaller than its normalised input)."""
        clt = eqx.tree_at(lambda t: t.b_dec, clt, jnp.mean(y, axis=1))
        centred = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(y - clt.b_dec[:, None]), -1), -1))  # [L]
        pre = jnp.stack([jnp.mean(jnp.linalg.norm(jax.lax.top_k(clt.pre_acts(l, x[l]), k)[0], axis=-1))
                         for l in range(L)])
        ratio = centred / jnp.maximum(pre, 1e-12)
        return eqx.tree_at(lambda t: t.W_enc, clt, clt.W_enc * ratio[:, None, None])

    clt = init_clt(L, D, width, jax.random.PRNGKey(seed), skip_positions=skip_positions)
    with jax.numpy_dtype_promotion("standard"):
        opt_state = opt.init(eqx.filter(clt, eqx.is_array))
    recent: list[dict] = []
    fired_recent = jnp.zeros((L, width), bool)
    start, elapsed = 0, 0.0
    resumed = run.start((clt, opt_state, fired_recent))
    if resumed is not None:
        (clt, opt_state, fired_recent), meta = resumed
        start, elapsed = meta["step"], meta["elapsed_s"]
        recent = [{key: np.asarray(v, np.float32) for key, v in r.items()} for r in meta["recent"]]
    bar = tqdm(total=steps, initial=start, desc=f"train a {L}-layer CLT x {width}", disable=not progress, unit="step")
    t0 = time.perf_counter() - elapsed
    batches = _batches(model, corpus, context_size, model_batch, seed)
    for _ in range(start):  # the batches a resumed run already trained on: drawn again (text is only tokenized)
        next(batches)
    for i in range(start, steps):
        _, cache = model.run_with_cache(next(batches), names, return_logits=False)
        x = jnp.stack([cache[HOOK_IN.format(layer=l)][:, skip_positions:].reshape(-1, D) for l in range(L)])
        y = jnp.stack([cache[HOOK_OUT.format(layer=l)][:, skip_positions:].reshape(-1, D) for l in range(L)])
        x, y = x.astype(jnp.float32), y.astype(jnp.float32)
        if i == 0:
            clt = match_scale(clt, x, y)
        clt, opt_state, loss, m = step(clt, opt_state, x, y)
        fired_recent = m["fired"] if i == max(0, steps - 100) else fired_recent | m["fired"]
        recent = (recent + [{key: np.asarray(m[key]) for key in ("fvu", "l0")}])[-20:]
        if not math.isfinite(float(loss)):
            raise FloatingPointError(f"the CLT's loss became {float(loss)} at step {i + 1}; lower lr (now {lr}). "
                                     f"{run.where().capitalize()}")
        bar.update(1)
        run.after_step(i + 1, steps, (clt, opt_state, fired_recent), lambda window=recent: {
            "elapsed_s": time.perf_counter() - t0,
            "recent": [{key: v.tolist() for key, v in r.items()} for r in window]})
        if callback is not None:
            callback(i + 1, recent[-1]["fvu"].tolist())
    bar.close()
    dead = 1.0 - np.asarray(fired_recent).mean(axis=1)
    fvu = np.mean([r["fvu"] for r in recent], axis=0)
    l0 = np.mean([r["l0"] for r in recent], axis=0)
    summary = [{"layer": l, "fvu": float(fvu[l]), "l0": float(l0[l]), "dead_fraction": float(dead[l])}
               for l in range(L)]
    if out_dir is not None:
        clt.save(out_dir, info={"trained": {"width": width, "k": k, "total_tokens": total_tokens,
                                            "context_size": context_size, "lr": lr,
                                            "seconds": time.perf_counter() - t0, "layers": summary}})
    return clt, summary
