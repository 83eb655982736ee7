"""The TopK decoder's forward and backward: the library's decoder against plain autodiff of the same gathers and a
dense matmul, on identical codes, side by side in one process.

    python benchmarks/sparse_decode.py [--d 576] [--reps 5]

For each (rows N, latents M, active slots k): milliseconds for one jitted ``grad`` of a squared-error loss with
respect to the codes' values and the decoder (what a training step pays for decoding), by
- ``autodiff``: JAX's own gradient of the per-slot gather loop (an unrolled chain of k scatter-adds into [M D]);
- ``reference``: ``interp.kernels.sparse_decode_reference`` (its hand-written backward, one scatter-add per slot in
  a loop whose accumulator is updated in place);
- ``dense``: ``interp.kernels.dense_decode`` (dense codes and one matmul);
- ``library``: ``interp.kernels.sparse_decode``, which picks dense at most 32 latents per slot;
and the largest relative difference of each gradient from the reference's (all compute the same function).
"""

from __future__ import annotations

import argparse
import functools

import numpy as np
from _timing import timed

GRID = [(1024, 1024, 16), (1024, 1024, 64), (1024, 4096, 64), (4096, 4096, 128), (4096, 16384, 8),
        (4096, 16384, 32)]


def _grad(fn, indices, target):
    import jax
    import jax.numpy as jnp

    return jax.jit(jax.grad(lambda v, w: jnp.sum(jnp.square(fn(v, indices, w) - target)), argnums=(0, 1)))


def _block(g, *args):
    import jax

    return jax.block_until_ready(g(*args))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=576, help="output width (the default model's d_model)")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp

    from interp.kernels import dense_decode, sparse_decode, sparse_decode_reference
    from interp.kernels.sparse_decode import _gather_sum

    ways = {"autodiff": _gather_sum, "reference": sparse_decode_reference, "dense": dense_decode,
            "library": sparse_decode}
    rng = np.random.default_rng(0)
    print(f"device: {jax.devices()[0].platform}, jax {jax.__version__}; D {args.d}; median of {args.reps} after one "
          "warm-up; ms per grad (values and W_dec)")
    print(f"{'N':>5} {'M':>6} {'k':>4} " + " ".join(f"{w:>10}" for w in ways) + "   autodiff/library  max rel diff")
    for n, m, k in GRID:
        values = jnp.asarray(rng.random((n, k)), jnp.float32)
        indices = jnp.asarray(np.argsort(rng.random((n, m)), axis=1)[:, :k], jnp.int32)  # distinct, as top-k's
        w_dec = jnp.asarray(rng.standard_normal((m, args.d)) / args.d ** 0.5, jnp.float32)
        target = jnp.asarray(rng.standard_normal((n, args.d)), jnp.float32)
        times, grads = {}, {}
        for name, fn in ways.items():
            g = _grad(fn, indices, target)
            grads[name] = g(values, w_dec)
            times[name] = timed(functools.partial(_block, g, values, w_dec), args.reps) * 1e3
        ref = grads["reference"]
        diff = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for name in ways
                   for a, b in zip(grads[name], ref))
        print(f"{n:>5} {m:>6} {k:>4} " + " ".join(f"{times[w]:10.1f}" for w in ways)
              + f"   {times['autodiff'] / times['library']:16.1f}  {diff:12.1e}", flush=True)


if __name__ == "__main__":
    main()
