"""Activation-patching sweeps on the default model: interp against TransformerLens's patching helpers.

Both sweep the same IOI-style prompt pairs (``interp.circuits.prompts.ioi``) on the same weights (SmolLM2-135M-
Instruct; TransformerLens gets the converted float32 folder, see ``_tl_peer.py``) with the same logit-difference
metric, in the same process:

* residual stream, every layer x position (``resid_pre``): TransformerLens ``get_act_patch_resid_pre``;
* every head's output over all positions (``z``): TransformerLens ``get_act_patch_attn_head_out_all_pos``.

interp is timed on its first call (compilation included) and warm (median of ``--reps``); TransformerLens once
per sweep (it has no compilation, and a sweep takes minutes). The two sweeps' values are compared as well.

The gain of skipping the positions before each patch (``skip_prefix``, the default) is measured on the IOI prompts
and on ``--long`` tokens of book text with three positions corrupted: the same sweep with ``skip_prefix=False``
(every patched run computes the whole sequence), both warm, and the largest difference of their values.

    python benchmarks/patching.py [--n 2] [--reps 3] [--long 64] [--no-peer] [--only-skip-prefix]
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
    ap.add_argument("--only-skip-prefix", action="store_true", help="measure only what skip_prefix gains")
    ap.add_argument("--long", type=int, default=64, help="tokens of the text sweep that measures skip_prefix")
    args = ap.parse_args()

    model = interp.load()
    ps = prompts.ioi(model, n=args.n, seed=0, corruption="abc")
    metric = metrics.logit_diff(ps.answer, ps.wrong)
    B, T = ps.clean.shape
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}; "
          f"{B} IOI prompt pairs x {T} tokens; {model.n_layers} layers, {model.blocks[0].attn.n_heads} heads")
    if args.only_skip_prefix:
        skip_prefix_gain(model, ps, metric, args)
        return
    sweeps = {"resid_pre (layer x pos)": dict(hook="resid_pre"),
              "z (layer x head, all pos)": dict(hook="z", per="head")}
    ours, first = {}, {}
    for name, kw in sweeps.items():
        t0 = time.perf_counter()
        ours[name] = patch(model, ps.clean, ps.corrupted, metric, progress=False, **kw)
        first[name] = time.perf_counter() - t0
    warm = {name: timed(lambda kw=kw: patch(model, ps.clean, ps.corrupted, metric, progress=False, **kw), args.reps,
                        warmup=0)
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
    skip_prefix_gain(model, ps, metric, args)
    for n in notes:
        print(f"note: {n}")


def skip_prefix_gain(model, ps, metric, args) -> None:
    """Warm times of position sweeps with and without skipping the positions before each patch."""
    from pathlib import Path

    books = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpora" / "gutenberg" / "books"
    book = sorted(books.glob("*.txt"))[0]
    tokens = np.asarray(model.to_tokens(book.read_text()[20_000:40_000]))[:, : args.long]
    corrupted = tokens.copy()
    L = tokens.shape[1]
    for p in (L // 8, L // 2, L - 3):
        corrupted[:, p] = (tokens[:, p] + 1000) % model.d_vocab
    last = np.asarray(tokens[:, -1])
    at = metrics.log_prob(last, pos=-2)
    every3 = list(range(0, model.n_layers, 3))
    cases = {f"IOI resid_pre ({ps.clean.shape[1]} tokens)": (ps.clean, ps.corrupted, metric, "resid_pre", {}),
             f"text resid_pre ({L} tokens)": (tokens, corrupted, at, "resid_pre", {}),
             f"text z per head and position ({L // 2} tokens, every third layer)": (
                 tokens[:, : L // 2], corrupted[:, : L // 2], metrics.log_prob(last, pos=L // 2 - 2 - L), "z",
                 {"per": "head_pos", "layers": every3})}
    print(f"skipping the positions before each patch (skip_prefix), warm, median of {args.reps}:")
    for name, (clean, corr, m, hook, kw) in cases.items():
        out, times = {}, {}
        for skip in (True, False):
            def run(skip=skip, out=out, inputs=(clean, corr, m, hook), kw=kw):
                out[skip] = patch(model, *inputs, skip_prefix=skip, progress=False, **kw)
            times[skip] = timed(run, args.reps, warmup=1)
        diff = np.abs(out[True].values - out[False].values).max()
        print(f"  {name}: {times[False]:6.1f} s whole runs, {times[True]:6.1f} s skipping, "
              f"{times[False] / times[True]:.2f}x; max |difference| {diff:.1e}")


if __name__ == "__main__":
    main()
