"""A set of per-layer transcoders (one per MLP), and training all of them from one pass over the model.

Each transcoder reads the MLP's normalised input (``blocks.{l}.ln2.hook_normalized``) and reconstructs the
MLP's output (``blocks.{l}.hook_mlp_out``); together they make the replacement model that attribution graphs
are traced through (``interp.circuits.graph``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from interp._io import atomic_dir
from interp.checks import check_range
from interp.sae.set_runs import SetRun, set_identity
from interp.sae.topk import TopKConfig
from interp.sae.trainer import TrainConfig, init_state, make_optimizer, make_step

HOOK_IN = "blocks.{layer}.ln2.hook_normalized"
HOOK_OUT = "blocks.{layer}.hook_mlp_out"


class Transcoders(eqx.Module):
    """One transcoder per layer (``dictionaries[l]`` reads ``hook_in`` and writes ``hook_out`` of layer l).

    Positions before ``skip_positions`` (attention-sink positions the transcoders were not trained on) are
    left to the model's own MLP (and to error nodes in attribution graphs). A pytree: pass it through ``jit``.
    """

    dictionaries: tuple
    hook_in: str = eqx.field(static=True, default=HOOK_IN)
    hook_out: str = eqx.field(static=True, default=HOOK_OUT)
    skip_positions: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        check_range("skip_positions", self.skip_positions, 0, integer=True)
        for l, d in enumerate(self.dictionaries):
            cfg = d.cfg
            want_in, want_out = self.hook_in.format(layer=l), self.hook_out.format(layer=l)
            if cfg.hook_name != want_in or cfg.hook_name_out != want_out:
                raise ValueError(f"transcoder {l} maps {cfg.hook_name} -> {cfg.hook_name_out}; expected "
                                 f"{want_in} -> {want_out} (one transcoder per layer, in layer order)")

    def __len__(self) -> int:
        return len(self.dictionaries)

    def splices(self, error_term: bool = True) -> list:
        """Splices that run every transcoder inside the model (with error terms: the model's own outputs)."""
        from interp.hooks import Splice

        return [Splice(d, self.hook_in.format(layer=l), self.hook_out.format(layer=l), error_term=error_term,
                       skip_positions=self.skip_positions) for l, d in enumerate(self.dictionaries)]

    # what attribution graphs read (shared with interp.sae.CrossLayerTranscoder)
    def span(self, layer: int) -> int:
        """How many consecutive MLP outputs, from ``layer`` on, a feature of ``layer`` writes to: its own only."""
        return 1

    def encode_layer(self, layer: int, x):
        return self.dictionaries[layer].encode(x)

    def encoder_direction(self, layer: int, feature: int):
        return self.dictionaries[layer].W_enc[:, feature]

    def decoder_rows(self, layer: int, ids):
        """``[A, 1, D]``: the writes of features ``ids`` of ``layer`` to its MLP output."""
        return self.dictionaries[layer].W_dec[ids][:, None]

    def output_bias(self):
        return jnp.stack([d.b_dec for d in self.dictionaries])

    def skip(self, layer: int, x):
        """Layer ``layer``'s skip term on its input ``x`` (0 without one)."""
        d = self.dictionaries[layer]
        return d.skip_term(x) if d.W_skip is not None else 0.0

    def latent_hook(self, layer: int) -> str:
        return f"{self.hook_in.format(layer=layer)}.sae.hook_latents"

    def save(self, folder: str | Path, *, info: dict | None = None, metadata: dict | None = None) -> Path:
        """``folder/layer_{l}`` in SAELens layout, plus ``transcoders.json``; written atomically. ``metadata``
        goes into every layer's ``cfg.json`` (see ``interp.sae.save``)."""
        from interp.sae import files

        folder = Path(folder)
        with atomic_dir(folder) as tmp:
            for l, d in enumerate(self.dictionaries):
                files.save(d, tmp / f"layer_{l}", metadata=metadata)
            (tmp / "transcoders.json").write_text(json.dumps(
                {"n_layers": len(self), "hook_in": self.hook_in, "hook_out": self.hook_out,
                 "skip_positions": self.skip_positions, **(info or {})}, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Transcoders:
        from interp.sae import files

        folder = Path(folder)
        meta_path = folder / "transcoders.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path} not found: a transcoder set is a folder written by "
                                    "Transcoders.save or `interp train-transcoders`")
        meta = json.loads(meta_path.read_text())
        ds = tuple(files.load(folder / f"layer_{l}") for l in range(meta["n_layers"]))
        return cls(ds, meta["hook_in"], meta["hook_out"], meta["skip_positions"])


def _batches(model, corpus, context_size: int, model_batch: int, seed: int):
    """Batches of contexts drawn at random from a rolling pool, so one batch mixes many documents."""
    from interp.sae.store import iter_contexts

    rng = np.random.default_rng(seed)
    pool: list[np.ndarray] = []
    if isinstance(corpus, np.ndarray):  # token ids [N, T]: cycle through their rows
        if corpus.ndim != 2 or corpus.shape[1] != context_size or not np.issubdtype(corpus.dtype, np.integer):
            raise ValueError(f"token corpus must be integer ids of shape [N, {context_size}]; got {corpus.dtype} "
                             f"{corpus.shape}")
        it = (corpus[i % len(corpus)] for i in range(2**62))
    else:
        if model.tokenizer is None:
            raise ValueError("this model has no tokenizer: pass corpus as token ids [N, context_size]")
        it = iter_contexts(model.tokenizer, corpus, context_size)
    while True:
        while len(pool) < 8 * model_batch:
            pool.append(next(it))
        pick = set(rng.choice(len(pool), model_batch, replace=False).tolist())
        yield np.stack([pool[i] for i in sorted(pick)])
        pool = [c for i, c in enumerate(pool) if i not in pick]


def _match_output_scale(state, x, y):
    """Start the decoder bias at the outputs' mean and scale the encoder so the first reconstructions have the
    outputs' typical size: an MLP's output can be orders of magnitude smaller than its normalised input, and
    Adam's bounded steps would otherwise spend most of a short run shrinking the encoder."""
    d = state.dictionary
    d = eqx.tree_at(lambda t: t.b_dec, d, jnp.mean(y, axis=0).astype(d.b_dec.dtype))
    centred = y - d.b_dec
    recon = d.decode(d.encode(x)) - d.b_dec
    ratio = jnp.sqrt(jnp.mean(jnp.sum(centred**2, -1)) / jnp.maximum(jnp.mean(jnp.sum(recon**2, -1)), 1e-12))
    d = eqx.tree_at(lambda t: (t.W_enc, t.b_enc), d, (d.W_enc * ratio, d.b_enc * ratio))
    return dataclasses.replace(state, dictionary=d)


def train_transcoders(
    model, *, width: int = 2048, k: int = 16, total_tokens: int = 200_000, corpus=None, context_size: int = 64,
    model_batch: int = 16, lr: float = 2e-3, skip_positions: int = 1, seed: int = 0, out_dir: str | Path | None = None,
    progress: bool = True, skip: bool = False, checkpoint_every: int = 0, resume: bool = False,
    callback: Callable[[int, list[float]], None] | None = None,
) -> tuple[Transcoders, list[dict]]:
    """Train a TopK transcoder for every layer from one forward pass per batch (the model runs once for all
    layers). Returns the set and a per-layer summary (final FVU and L0 averaged over the last steps); with
    ``out_dir`` the set is written there (``Transcoders.load(out_dir)`` reads it back). ``corpus``: anything
    ``interp.sae.iter_texts`` reads (None: the built-in text), or token ids ``[N, context_size]``. ``skip``: skip
    transcoders, each with an affine skip connection ``x W_skip`` beside its latents (Paulo et al. 2025).

    ``checkpoint_every``: steps between checkpoints under ``out_dir/checkpoints`` (0: none); ``resume=True``
    continues the newest intact one and ends where an uninterrupted run ends (see :mod:`interp.sae.set_runs`).
    ``callback(step, fvu)`` is called after each step with the step count and each layer's FVU."""
    from tqdm.auto import tqdm

    L, D = model.n_layers, model.d_model
    for name, value in (("context_size", context_size), ("model_batch", model_batch), ("total_tokens", total_tokens)):
        check_range(name, value, 1, integer=True)
    check_range("skip_positions", skip_positions, 0, context_size, integer=True, hi_open=True,
                note=": at least one position of each context must remain")
    rows = model_batch * (context_size - skip_positions)
    # every layer trains with the same step function: hook names are set only when the set is assembled
    proto = TopKConfig(d_in=D, width=width, k=k, hook_name="in", hook_name_out="out", skip=skip)
    cfg = TrainConfig(proto, total_tokens=total_tokens, batch_size=rows, lr=lr, context_size=context_size,
                      model_batch=model_batch, skip_positions=skip_positions, lr_warmup_steps=20, seed=seed)
    check_range("checkpoint_every", checkpoint_every, 0, integer=True)
    settings = {"trainer": "transcoders", "width": width, "k": k, "total_tokens": total_tokens,
                "context_size": context_size, "model_batch": model_batch, "lr": lr, "skip_positions": skip_positions,
                "seed": seed, "skip": skip}
    run = SetRun(out_dir, identity=lambda: set_identity(settings, model, corpus),
                 checkpoint_every=checkpoint_every, resume=resume)
    optimizer = make_optimizer(cfg)
    step = make_step(cfg, optimizer)
    states = [init_state(dataclasses.replace(cfg, seed=seed + l), optimizer) for l in range(L)]
    names = [h.format(layer=l) for l in range(L) for h in (HOOK_IN, HOOK_OUT)]
    recent: list[list[dict]] = [[] for _ in range(L)]
    start, elapsed = 0, 0.0
    resumed = run.start(states)
    if resumed is not None:
        states, meta = resumed
        start, elapsed, recent = meta["step"], meta["elapsed_s"], meta["recent"]
    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {L} transcoders x {width}", disable=not progress,
               unit="step")
    t0 = time.perf_counter() - elapsed
    batches = _batches(model, corpus, context_size, model_batch, seed)
    for _ in range(start):  # the batches a resumed run already trained on: drawn again (text is only tokenized)
        next(batches)
    for i in range(start, cfg.steps):
        _, cache = model.run_with_cache(next(batches), names, return_logits=False)
        for l in range(L):
            x = cache[HOOK_IN.format(layer=l)][:, skip_positions:].reshape(-1, D).astype(jnp.float32)
            y = cache[HOOK_OUT.format(layer=l)][:, skip_positions:].reshape(-1, D).astype(jnp.float32)
            if i == 0:
                states[l] = _match_output_scale(states[l], x, y)
            states[l], m = step(states[l], x, y)
            recent[l] = (recent[l] + [m])[-20:]
        losses = np.asarray(jnp.stack([r[-1]["loss"] for r in recent]))  # one transfer for every layer
        if not np.isfinite(losses).all():
            bad = int(np.argmin(np.isfinite(losses)))
            raise FloatingPointError(f"layer {bad}'s transcoder loss became {losses[bad]} at step {i + 1}; lower lr "
                                     f"(now {lr}). {run.where().capitalize()}")
        bar.update(1)
        run.after_step(i + 1, cfg.steps, states, lambda: {
            "elapsed_s": time.perf_counter() - t0,
            "recent": [[{key: float(v) for key, v in m.items()} for m in r] for r in recent]})
        if callback is not None:
            callback(i + 1, [float(r[-1]["fvu"]) for r in recent])
    bar.close()
    dictionaries, summary = [], []
    for l, st in enumerate(states):
        c = dataclasses.replace(proto, hook_name=HOOK_IN.format(layer=l), hook_name_out=HOOK_OUT.format(layer=l))
        dictionaries.append(dataclasses.replace(st.dictionary, cfg=c))
        avg = {key: float(np.mean([float(m[key]) for m in recent[l]])) for key in ("fvu", "l0", "dead_fraction")
               if key in recent[l][-1]}
        summary.append({"layer": l, **avg})
    tc = Transcoders(tuple(dictionaries), skip_positions=skip_positions)
    if out_dir is not None:
        from interp.sae.store import ActivationStore

        stream = {"context_size": context_size, "seqpos_slice": [skip_positions, None]}
        if not isinstance(corpus, np.ndarray):  # text is cut into contexts as an ActivationStore cuts it
            stream["prepend_bos"] = ActivationStore.prepend_bos
        tc.save(out_dir, info={"trained": {"width": width, "k": k, "skip": skip, "total_tokens": total_tokens,
                                           "context_size": context_size, "lr": lr, "seconds": time.perf_counter() - t0,
                                           "layers": summary}}, metadata=stream)
    return tc, summary
