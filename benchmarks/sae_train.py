"""TopK SAE training-step throughput, with peers side by side in the same process on identical activations.

    python benchmarks/sae_train.py [--d-in 576] [--width 16384] [--k 32] [--batch 4096] [--steps 5] [--warmup 1]
    python benchmarks/sae_train.py --activations PATH     # a folder written by interp.sae.cache_activations

Times one full optimizer step (forward, loss, backward, Adam update and each trainer's own bookkeeping) for:
interp's jitted step, the encoder matmul alone (``x @ W_enc``, the floor any step pays), SAELens's
``TopKTrainingSAE`` as its ``SAETrainer`` steps it, and sparsify's ``SparseCoder`` as its ``Trainer`` steps it
with Adam. Peers that are missing or fail are reported as notes. Figures are activations/s = batch / median
seconds per step over ``--steps`` steps after ``--warmup`` steps (compilation excluded).

The sparse parts of interp's step (top-k, scatter-adds, the decoder's gathered dot products) run as compiled
kernels over every core on a CPU (``interp.kernels.cpu_sparse``); ``INTERP_CPU_KERNELS=0`` times XLA's own.

Dead latents: every entry starts from a fresh dictionary, so no latent is dead yet and no AuxK loss runs in
any of them within a few steps; these figures are the main-loss step.
"""

from __future__ import annotations

import argparse

import numpy as np
from _timing import running_peer, timed


def interp_step(acts: np.ndarray, d_in: int, width: int, k: int):
    import jax
    import jax.numpy as jnp

    from interp import sae
    from interp.sae.trainer import init_state, make_optimizer, make_step

    batch = acts.shape[0]
    cfg = sae.TrainConfig(sae.TopKConfig(d_in=d_in, width=width, k=k), total_tokens=batch * 1000, batch_size=batch)
    opt = make_optimizer(cfg)
    step = make_step(cfg, opt)
    state = [init_state(cfg, opt)]  # the step donates its state: always rebind
    x = jnp.asarray(acts)

    def run():
        state[0], metrics = step(state[0], x, x)
        jax.block_until_ready((state[0], metrics))

    return run


def floor_step(acts: np.ndarray, width: int):
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(acts)
    w = np.random.default_rng(1).normal(size=(acts.shape[1], width)).astype(np.float32)
    w = jnp.asarray(w / acts.shape[1] ** 0.5)
    matmul = jax.jit(lambda x, w: x @ w)
    return lambda: jax.block_until_ready(matmul(x, w))


def saelens_step(acts: np.ndarray, d_in: int, width: int, k: int):
    """What ``sae_lens.training.sae_trainer.SAETrainer._train_step`` does, with the runner's defaults
    (Adam lr 3e-4, betas 0.9/0.999, dead_feature_window 1000, no autocast)."""
    import torch
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    model = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=width, k=k, dtype="float32", device="cpu"))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4, betas=(0.9, 0.999))
    since_fired = torch.zeros(width)
    act_freq = torch.zeros(width)
    x = torch.from_numpy(acts)

    def run():
        out = model.training_forward_pass(TrainStepInput(
            sae_in=x, coefficients={}, dead_neuron_mask=since_fired > 1000, n_training_steps=0, is_logging_step=False))
        with torch.no_grad():
            firing = out.feature_acts.bool().float()
            since_fired.add_(1)
            since_fired[firing.sum(-2).bool()] = 0
            act_freq.add_(firing.sum(0))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    return run


def sparsify_step(acts: np.ndarray, d_in: int, width: int, k: int):
    """What ``sparsify.Trainer.fit`` does per step for an SAE with ``loss_fn='fvu'`` and ``optimizer='adam'``
    (its default optimizer is signum; Adam is the like-for-like one), other settings at their defaults."""
    import torch
    from sparsify import SaeConfig, SparseCoder, TrainConfig

    tc = TrainConfig(SaeConfig(num_latents=width, k=k), optimizer="adam")
    model = SparseCoder(d_in, tc.sae, device="cpu", dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr or 2e-4 / (width / 2**14) ** 0.5)
    since_fired = torch.zeros(width, dtype=torch.long)
    x = torch.from_numpy(acts)

    def run():
        model.set_decoder_norm_to_unit_norm()
        dead = since_fired > tc.dead_feature_threshold if tc.auxk_alpha > 0 else None
        total_variance = (x - x.mean(0)).pow(2).sum()
        out = model(x, x, dead_mask=dead, total_variance=total_variance)
        fired = torch.zeros(width, dtype=torch.bool)
        fired[out.latent_indices.flatten()] = True
        (out.fvu + tc.auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8).backward()
        model.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            since_fired.add_(x.shape[0])
            since_fired[fired] = 0

    return run, tc.auxk_alpha


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-in", type=int, default=576)
    ap.add_argument("--width", type=int, default=16384)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--activations", help="folder written by interp.sae.cache_activations (default: random)")
    args = ap.parse_args()

    import jax

    if args.activations:
        from interp.sae import CachedActivationStore

        acts = np.asarray(CachedActivationStore(args.activations, batch_size=args.batch).next_batch()[0], np.float32)
        if acts.shape[1] != args.d_in:
            raise SystemExit(f"{args.activations} holds d_in={acts.shape[1]} activations; pass --d-in {acts.shape[1]}")
    else:
        acts = np.random.default_rng(0).normal(size=(args.batch, args.d_in)).astype(np.float32)
    acts = np.ascontiguousarray(acts)
    D, M, K, N = args.d_in, args.width, args.k, args.batch

    results: dict[str, float] = {}
    peers: list[str] = []
    notes: list[str] = []
    results["interp TopK step"] = timed(interp_step(acts, D, M, K), args.steps, args.warmup)
    results["floor: encoder matmul x @ W_enc"] = timed(floor_step(acts, M), args.steps, args.warmup)

    torch_line = "torch not installed"
    try:
        import torch

        torch_line = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        pass
    with running_peer("SAELens", notes):
        results["SAELens TopKTrainingSAE step"] = timed(saelens_step(acts, D, M, K), args.steps, args.warmup)
        peers.append("SAELens TopKTrainingSAE step")
    with running_peer("sparsify", notes):
        run, auxk_alpha = sparsify_step(acts, D, M, K)
        name = f"sparsify SparseCoder step (Adam, auxk_alpha={auxk_alpha:g})"
        results[name] = timed(run, args.steps, args.warmup)
        peers.append(name)

    from interp.kernels import cpu_sparse

    kernels = "compiled CPU kernels on" if cpu_sparse.available() else "compiled CPU kernels off"
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}; {torch_line}; "
          f"d_in {D}, width {M}, k {K}, batch {N}; median of {args.steps} steps after {args.warmup} warm-up; "
          f"{kernels} (INTERP_CPU_KERNELS=0 for XLA's own operations)")
    for name, sec in results.items():
        print(f"  {name:<52} {sec * 1e3:9.1f} ms/step  {N / sec:12.0f} act/s")
    ours = results["interp TopK step"]
    floor = results["floor: encoder matmul x @ W_enc"]
    print("ratios:")
    for name in peers:
        print(f"  interp throughput / {name}: {results[name] / ours:.2f}x")
    if peers:
        fastest = min(peers, key=results.get)
        print(f"  interp is {results[fastest] / ours:.2f}x the fastest peer ({fastest}) (target >= 1.5x)")
    print(f"  interp step / encoder-matmul floor: {ours / floor:.2f} (target <= 1.5); "
          f"floor alone would give {N / floor:.0f} act/s")
    for n in notes:
        print(f"note: {n}")


if __name__ == "__main__":
    main()
