"""TopK SAE scaling in the width at fixed k (Gao et al. 2024) on the default model's middle-layer residual stream:
one set of activations harvested from English books (less the attention sinks, rows of more than 10x the median
norm), a TopK SAE (AuxK on) of each width trained on it for the same
number of passes, each evaluated on held-out activations (later books' text), and the held-out normalised MSE
fitted as a power law of the width.

    python benchmarks/sae_scaling.py                      # 1M activations x 2 passes, widths 256-2048, k=32
    python benchmarks/sae_scaling.py --widths 1024,2048,4096,8192,16384 --tokens 4000000

Prints one row per width (held-out FVU and MSE, training FVU, L0, dead fraction, how much the training FVU still
fell over the run's last quarter) and the fitted exponent with its r^2. The activations are cached in --work (about
2.5 GB per million tokens) and reused by later runs.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpora"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hook", default="blocks.15.hook_resid_post")
    ap.add_argument("--tokens", type=int, default=1_000_000, help="training activations")
    ap.add_argument("--held-out", type=int, default=65_024)
    ap.add_argument("--widths", default="256,512,1024,2048")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/interp/benchmarks/sae-scaling"))
    args = ap.parse_args()

    import numpy as np

    import interp
    from interp.sae import scaling

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    buffer, context = 2**16, 128
    per_buffer = buffer // context * (context - 1)  # rows per shuffle buffer (each context's first position left out)
    # whole buffers, so the held-out rows come from later contexts than every training row
    n_train = -(-args.tokens // per_buffer) * per_buffer
    args.held_out = -(-args.held_out // per_buffer) * per_buffer
    cache = work / f"acts-{args.hook}-{n_train}-{args.held_out}.npy"
    if cache.exists():
        acts = np.load(cache, mmap_mode="r")
        print(f"activations from {cache}")
    else:
        model = interp.load("smollm2-135m")
        t0 = time.perf_counter()
        acts = scaling.harvest(model, args.hook, CORPORA / "gutenberg" / "books", n_train + args.held_out,
                               context_size=context, buffer_tokens=buffer)
        print(f"harvested {len(acts):,} activations in {time.perf_counter() - t0:.0f} s")
        tmp = cache.with_suffix(".tmp.npy")
        np.save(tmp, acts)
        os.replace(tmp, cache)
    x, held = np.asarray(acts[:n_train]), np.asarray(acts[n_train:])
    # attention sinks (end-of-text tokens between books: ~150x the typical norm) would carry most of the variance
    x, held = x[scaling.typical_rows(x)], held[scaling.typical_rows(held)]
    widths = [int(w) for w in args.widths.split(",")]
    sweep = scaling.width_sweep(x, held, widths, k=args.k, epochs=args.epochs, batch_size=args.batch,
                                hook_name=args.hook)
    print(f"\n{args.hook}, k={args.k}, {len(x):,} training activations x {args.epochs:g} passes, "
          f"{len(held):,} held out ({n_train + args.held_out - len(x) - len(held)} attention-sink rows left out)")
    print(f"{'width':>6} {'FVU':>7} {'MSE':>8} {'train FVU':>9} {'L0':>5} {'dead':>6} {'late fall':>9} {'s':>6}")
    for r in sweep.rows:
        print(f"{r['width']:>6} {r['held_out_fvu']:7.4f} {r['held_out_mse']:8.3f} {r['train_fvu']:9.4f} "
              f"{r['l0']:5.1f} {r['dead_fraction']:6.3f} {r['late_fall']:9.3f} {r['seconds']:6.0f}")
    fit = sweep.fit
    print(f"held-out FVU = {fit.prefactor:.3g} * width^{fit.exponent:.3f}   (r^2 {fit.r2:.4f})")
    (work / "results.json").write_text(json.dumps({"args": vars(args), "rows": sweep.rows,
                                                    "fit": {"exponent": fit.exponent, "prefactor": fit.prefactor,
                                                            "r2": fit.r2}}, indent=2))


if __name__ == "__main__":
    main()
