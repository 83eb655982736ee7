"""Forward-pass throughput on the default model, with peers side by side in the same process.

    python benchmarks/forward.py [--batch 8] [--seq 128] [--reps 5] [--dtype float32|bfloat16]

Prints tokens/s for: our plain forward, the same forward's matrix products run alone (its matmul floor: every
``dot_general`` of the traced forward with its shapes and dtypes, on random operands, ``benchmarks/_floor.py``;
target: forward <= 1.2 x floor), run_with_cache of every hook point (every entry read, and none: entries computed
when read are then not computed; also at a length between two length buckets, reading one entry or all of them),
one edit (a steering vector
added at a middle layer), harvesting one residual-stream hook at several layers (as a dictionary's activation
store does: the blocks after it do not run; target <= 1.1 x (L+1)/n_layers of the plain forward), transformers
on the same weights, and TransformerLens when it is installed; then
the ratios, and the bytes of a full activation cache, ours against TransformerLens's (target: ours <= theirs).
Every model runs in ``--dtype``. Timings are medians of ``--reps`` runs after a warm-up run (compilation excluded);
caching every hook and the matmul floor run alternately with the plain forward, and their ratios are also given as
the median of the ratios of those pairs. The plain forward's figure is the median of its four blocks of runs (alone,
and beside the floor and the two cache-all runs).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from _timing import running_peer, timed, timed_pair

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpora" / "wikitext2" / "test.txt"


def batch_tokens(model, batch: int, seq: int) -> np.ndarray:
    if CORPUS.exists():
        text = CORPUS.read_text(encoding="utf-8")
    else:
        import pydoc_data.topics

        text = "\n".join(pydoc_data.topics.topics.values())
    ids = model.tokenizer.encode(text[: 200_000])
    need = batch * seq
    if len(ids) < need:
        raise SystemExit(f"corpus too short for {batch}x{seq} tokens")
    return np.asarray(ids[:need], np.int32).reshape(batch, seq)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="every model's dtype")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    from _floor import floor, matmuls

    import interp
    from interp import edits
    from interp.weights import default_gguf_path

    model = interp.load("smollm2-135m", dtype=jnp.dtype(args.dtype))
    tokens = batch_tokens(model, args.batch, args.seq)
    n_tok = tokens.size
    results: dict[str, float] = {}

    # the plain forward is timed in four blocks (alone, then beside the floor and the two cache-all runs) and its
    # figure is the median of the blocks' medians: the first block alone ran 25% slow in float32 on a 2-core CPU
    def run_plain():
        jax.block_until_ready(model(tokens))

    plain_blocks = [timed(run_plain, args.reps)]
    dots = matmuls(model, jnp.asarray(tokens))
    plain_sec, floor_sec, floor_ratio = timed_pair(run_plain, floor(dots), args.reps)
    plain_blocks.append(plain_sec)
    results["interp plain, its matmuls alone (floor)"] = floor_sec
    _, full_cache = model.run_with_cache(tokens)
    written = {id(a): a for a in full_cache.entries().values() if isinstance(a, jax.Array)}  # before any read
    cache_bytes = {"interp written": sum(a.nbytes for a in written.values()),
                   "interp": sum(a.nbytes for a in {id(a): a for a in full_cache.values()}.values())}
    del full_cache, written
    # every entry read (the pytree's leaves: entries computed when read are computed), and the run alone (its
    # logits are ready when the program is: the entries it writes are too, the others are not yet computed)
    results["interp cache all hooks"], plain_sec, cache_ratio = timed_pair(
        lambda: jax.block_until_ready(model.run_with_cache(tokens)), run_plain, args.reps)
    plain_blocks.append(plain_sec)
    results["interp cache all hooks, none read"], plain_sec, unread_ratio = timed_pair(
        lambda: jax.block_until_ready(model.run_with_cache(tokens)[0]), run_plain, args.reps)
    plain_blocks.append(plain_sec)
    results = {"interp plain": float(np.median(plain_blocks)), **results}
    # a length between buckets: the run is padded, and each captured activation is cut when it is read
    short = tokens[:, : max(2, args.seq * 25 // 32)]
    results["interp plain, between buckets"] = timed(lambda: jax.block_until_ready(model(short)), args.reps)
    last = f"blocks.{model.n_layers - 1}.hook_resid_post"
    results["interp cache all hooks, between buckets, read one"] = timed(
        lambda: jax.block_until_ready(model.run_with_cache(short)[1][last]), args.reps)
    results["interp cache all hooks, between buckets, read all"] = timed(
        lambda: jax.block_until_ready(model.run_with_cache(short)), args.reps)
    steer = jnp.asarray(np.random.default_rng(0).normal(size=model.d_model).astype(np.float32))
    edit = [(f"blocks.{model.n_layers // 2}.hook_resid_post", edits.add, steer)]
    results["interp one edit"] = timed(lambda: jax.block_until_ready(model.run_with_hooks(tokens, edit)), args.reps)
    # harvesting one hook as a dictionary's activation store does: the blocks after it are not run
    harvest = {}
    for layer in sorted({0, model.n_layers // 4, model.n_layers // 2, model.n_layers - 1}):
        name = f"blocks.{layer}.hook_resid_post"
        harvest[layer] = timed(lambda name=name: jax.block_until_ready(
            model.run_with_cache(tokens, names=[name], return_logits=False)[1][name]), args.reps)

    notes = []
    with running_peer("transformers", notes):
        import torch
        from transformers import AutoModelForCausalLM

        gguf = default_gguf_path()
        torch_dtype = getattr(torch, args.dtype)
        hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch_dtype).eval()
        t = torch.tensor(tokens, dtype=torch.long)

        def hf_forward():
            with torch.no_grad():
                return hf(t).logits

        label = (f"transformers ({hf.config._attn_implementation}, torch {torch.__version__}, "
                 f"{torch.get_num_threads()} threads)")
        results[label] = timed(hf_forward, args.reps)

    with running_peer("TransformerLens", notes):
        import torch
        from _tl_peer import load_tl

        from interp.weights import ensure_default

        tl, note = load_tl(ensure_default(), getattr(torch, args.dtype))
        notes.append(note)
        tt = torch.tensor(tokens, dtype=torch.long)
        with torch.no_grad():
            results["TransformerLens plain"] = timed(lambda: tl(tt), args.reps)
            results["TransformerLens cache all hooks"] = timed(lambda: tl.run_with_cache(tt), args.reps)
            _, tl_cache = tl.run_with_cache(tt)
        # tensors that share storage (views) once
        cache_bytes["TransformerLens"] = sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                                              for t in tl_cache.values()}.values())
        cache_bytes["TransformerLens hooks"] = len(tl_cache)
        del tl_cache

    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}; "
          f"{args.dtype}, batch {args.batch} x {args.seq} tokens, median of {args.reps}")
    for name, sec in results.items():
        print(f"  {name:<60} {n_tok / sec:10.0f} tok/s  ({sec * 1e3:8.1f} ms)")
    plain = results["interp plain"]
    print("ratios:")
    flops = sum(d.flops for d in dots)
    print(f"  interp plain, its blocks' medians: {', '.join(f'{x * 1e3:.1f}' for x in plain_blocks)} ms")
    print(f"  interp plain / its matmul floor: {plain / floor_sec:.3f} (medians); {floor_ratio:.3f} (median of the "
          f"ratios of alternating runs) (target <= 1.2); {sum(d.count for d in dots)} matmuls, "
          f"{flops / 1e9:.1f} GFLOP, {flops / floor_sec / 1e9:.0f} GFLOP/s alone")
    for name, sec in results.items():
        if name.startswith("transformers"):
            print(f"  interp plain vs transformers: {sec / plain:.2f}x faster (target >= 1.0x)")
        if name.startswith("TransformerLens plain"):
            print(f"  interp plain vs TransformerLens: {sec / plain:.2f}x faster (target >= 1.3x)")
        if name.startswith("TransformerLens cache"):
            ratio = sec / results["interp cache all hooks"]
            print(f"  interp cache-all vs TransformerLens cache-all: {ratio:.2f}x faster")
    print(f"  cache-all-hooks time / plain time, every entry read: {results['interp cache all hooks'] / plain:.3f} "
          f"(medians); {cache_ratio:.3f} (median of the ratios of alternating runs) (target <= 1.05)")
    print(f"  cache-all-hooks time / plain time, none read (patterns and residual sums not yet computed): "
          f"{results['interp cache all hooks, none read'] / plain:.3f} (medians); {unread_ratio:.3f} (median of the "
          "ratios of alternating runs) (target <= 1.05)")
    between = results["interp plain, between buckets"]
    for what in ("read one", "read all"):
        sec = results[f"interp cache all hooks, between buckets, {what}"]
        print(f"  between buckets ({short.shape[1]} tokens), cache all hooks and {what} / plain: {sec / between:.3f}")
    print(f"  one-edit time / plain time: {results['interp one edit'] / plain:.3f}")
    for layer, sec in harvest.items():
        share = (layer + 1) / model.n_layers
        print(f"  harvest blocks.{layer}.hook_resid_post / plain: {sec / plain:.3f} (target <= 1.1 x {share:.3f} = "
              f"{1.1 * share:.3f}: {'met' if sec / plain <= 1.1 * share else 'missed'})")
    mib = 2**20
    line = (f"  full activation cache: interp {cache_bytes['interp'] / mib:.1f} MiB ({len(model.hook_names)} hooks; "
            f"{cache_bytes['interp written'] / mib:.1f} MiB written by the run, the rest computed when read)")
    if "TransformerLens" in cache_bytes:
        line += (f", TransformerLens {cache_bytes['TransformerLens'] / mib:.1f} MiB "
                 f"({cache_bytes['TransformerLens hooks']} hooks); ours / theirs "
                 f"{cache_bytes['interp'] / cache_bytes['TransformerLens']:.3f} (target <= 1)")
    print(line)
    for n in notes:
        print(f"note: {n}")


if __name__ == "__main__":
    main()
