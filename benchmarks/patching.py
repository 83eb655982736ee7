"""Activation-patching sweeps on the default model: interp against TransformerLens's patching helpers.

Both sweep the same IOI-style prompt pairs (``interp.circuits.prompts.ioi``) on the same weights (SmolLM2-135M-
Instruct; TransformerLens gets the converted float32 folder, see ``_tl_peer.py``) with the same logit-difference
metric, in the same process:

* residual stream, every layer x position (``resid_pre``): TransformerLens ``get_act_patch_resid_pre``;
* every head's output over all positions (``z``): TransformerLens ``get_act_patch_attn_head_out_all_pos``.

interp is timed on its first call (compilation included) and warm (median of ``--reps``); TransformerLens once
per sweep (it has no compilation, and a sweep takes minutes). The two sweeps' values are compared as well.

    python benchmarks/patching.py [--n 2] [--reps 3] [--no-peer]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np
from _timing import running_peer, timed

import interp
from interp.circuits import metrics, patch, prompts

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2, help="prompt pairs in the batch")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-peer", action="store_true", help="skip TransformerLens")
    args = ap.parse_args()

    model = interp.load()
    ps = prompts.ioi(model, n=args.n, seed=0, corruption="abc")
    metric = metrics.logit_diff(ps.answer, ps.wrong)
    B, T = ps.clean.shape
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}; "
          f"{B} IOI prompt pairs x {T} tokens; {model.n_layers} layers, {model.blocks[0].attn.n_heads} heads")
    sweeps = {"resid_pre (layer x pos)": dict(hook="resid_pre"),
              "z (layer x head, all pos)": dict(hook="z", per="head")}
    ours, first = {}, {}
    for name, kw in sweeps.items():
        t0 = time.perf_counter()
        ours[name] = patch(model, ps.clean, ps.corrupted, metric, **kw)
        first[name] = time.perf_counter() - t0
    warm = {name: timed(lambda kw=kw: patch(model, ps.clean, ps.corrupted, metric, **kw), args.reps, warmup=0)
            for name, kw in sweeps.items()}
    peer, notes = {}, []
    if not args.no_peer:
        with running_peer("TransformerLens", notes):
            import torch
            from _tl_peer import load_tl, tl_head_sweep, tl_resid_sweep

            from interp.weights import ensure_default

            torch.set_num_threads(os.cpu_count() or 1)
            tl, note = load_tl(ensure_default())
            notes.append(note)
            clean_t, corr_t = torch.tensor(ps.clean, dtype=torch.long), torch.tensor(ps.corrupted, dtype=torch.long)
            ans, wrong = torch.tensor(ps.answer, dtype=torch.long), torch.tensor(ps.wrong, dtype=torch.long)

            def tl_metric(logits):
                last = logits[:, -1]
                return (last.gather(1, ans[:, None]) - last.gather(1, wrong[:, None])).mean()

            for name, fn in zip(sweeps, (tl_resid_sweep, tl_head_sweep)):
                t0 = time.perf_counter()
                vals = fn(tl, corr_t, clean_t, tl_metric).numpy()
                peer[name] = (time.perf_counter() - t0, vals)
    for name in sweeps:
        res = ours[name]
        runs = res.values.size
        print(f"{name}: {runs} patched runs of {B}x{T} tokens")
        print(f"  interp first call (compile included) {first[name]:7.1f} s")
        print(f"  interp warm (median of {args.reps})          {warm[name]:7.1f} s")
        if name in peer:
            sec, vals = peer[name]
            diff = np.abs(vals.reshape(res.values.shape) - res.values).max()
            print(f"  TransformerLens                     {sec:7.1f} s   max |difference| of values {diff:.2e}")
            print(f"  interp vs TransformerLens: {sec / warm[name]:.1f}x faster warm, "
                  f"{sec / first[name]:.1f}x on the first call (target >= 5x)")
        print(f"  top effects: {res.top(3)}")
    for n in notes:
        print(f"note: {n}")


if __name__ == "__main__":
    main()
