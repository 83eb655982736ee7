"""A real dictionary run on the default model, for the record: TopK SAEs of several widths at fixed k on a
middle-layer residual stream, trained on English books, evaluated on held-out WikiText-2.

    python benchmarks/sae_quality.py --phase cache    # once: cache the activations (the slow part)
    python benchmarks/sae_quality.py --phase train    # train each width from the cache and evaluate

Prints FVU, L0, dead fraction, CE loss recovered and KL for each width. Gao et al. report FVU falling with
width at fixed k; this checks the same shape here.
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
    ap.add_argument("--phase", choices=["cache", "train", "all"], default="all")
    ap.add_argument("--hook", default="blocks.15.hook_resid_post")
    ap.add_argument("--tokens", type=int, default=2_000_000)
    ap.add_argument("--widths", default="4096,16384")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/interp/sae-quality"))
    ap.add_argument("--eval-contexts", type=int, default=64)
    args = ap.parse_args()

    import numpy as np

    import interp
    from interp import sae

    work = Path(args.work)
    model = interp.load("smollm2-135m")
    cache = work / f"acts-{args.hook}-{args.tokens}"
    if args.phase in ("cache", "all"):
        store = sae.ActivationStore(model, args.hook, CORPORA / "gutenberg" / "books", context_size=128,
                                    model_batch=16, buffer_tokens=2**16, batch_size=4096)
        t0 = time.perf_counter()
        sae.cache_activations(store, args.tokens, cache)
        print(f"cached {args.tokens} activations in {time.perf_counter() - t0:.0f} s -> {cache}")
    if args.phase in ("train", "all"):
        from interp.sae.store import iter_contexts

        ctx = iter_contexts(model.tokenizer, CORPORA / "wikitext2" / "test.txt", 128, cycle=False)
        eval_tokens = np.stack([next(ctx) for _ in range(args.eval_contexts)])
        rows = []
        for width in map(int, args.widths.split(",")):
            cfg = sae.TrainConfig(
                sae.TopKConfig(d_in=model.d_model, width=width, k=args.k, hook_name=args.hook),
                activation_cache=str(cache), total_tokens=args.tokens, batch_size=4096,
                lr=2e-4 * (16384 / width) ** 0.5, out_dir=str(work / f"topk-{width}"),
                dead_after_tokens=500_000, eval_every=50,
            )
            t0 = time.perf_counter()
            result = sae.train(cfg)
            secs = time.perf_counter() - t0
            m = sae.evaluate(model, result.dictionary, eval_tokens, skip_positions=cfg.skip_positions)
            rows.append({"width": width, "k": args.k, "train_s": round(secs), **m.as_dict()})
            print(json.dumps(rows[-1]))
        print(f"\n{'width':>6} {'FVU':>7} {'L0':>6} {'dead':>6} {'CE rec':>7} {'KL':>6} {'CE clean/spliced/zero':>24}")
        for r in rows:
            print(f"{r['width']:>6} {r['fvu']:7.4f} {r['l0']:6.1f} {r['dead_fraction']:6.3f} "
                  f"{r['ce_loss_recovered']:7.4f} {r['kl_to_clean']:6.3f} "
                  f"{r['ce_clean']:.3f}/{r['ce_spliced']:.3f}/{r['ce_zero_ablation']:.3f}")
        (work / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
