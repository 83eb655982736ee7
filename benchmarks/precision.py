"""Memory and accuracy of the default model in float32, bfloat16 and float16.

    python benchmarks/precision.py [--seq 128]

For each dtype, in a fresh process so that its peak memory is its own: the parameter bytes (every array of the
model), the bytes of a full activation cache (``run_with_cache`` of every hook point; an array two hook names share,
such as a block's resid_post and the next block's resid_pre, counted once) for one prompt of ``--seq`` tokens, the
peak resident memory of the process after loading the model and running it once, and the largest difference of its
logits from the float32 model's (the logits are float32 in every dtype; see ``interp.models._blocks``, "Precision"),
with the logits' magnitude for scale. With transformers installed, the same for transformers on the same weights
(its own dtype against its own float32), and the largest difference between our logits and transformers' in each
dtype.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpora" / "wikitext2" / "test.txt"
DTYPES = ("float32", "bfloat16", "float16")


def prompt(model, seq: int) -> np.ndarray:
    if CORPUS.exists():
        text = CORPUS.read_text(encoding="utf-8")[:20_000]
    else:
        import pydoc_data.topics

        text = "\n".join(pydoc_data.topics.topics.values())[:20_000]
    ids = model.tokenizer.encode(text)[:seq]
    if len(ids) < seq:
        raise SystemExit(f"corpus too short for {seq} tokens")
    return np.asarray(ids, np.int32)[None]


def measure(dtype: str, seq: int, out: Path) -> None:
    """One dtype, in this process: prints a JSON line and saves the logits to ``out``."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import interp

    model = interp.load("smollm2-135m", dtype=getattr(jnp, dtype))
    params = sum(x.nbytes for x in jax.tree.leaves(eqx.filter(model, eqx.is_array)))
    tokens = prompt(model, seq)
    logits, cache = model.run_with_cache(tokens)
    cache_bytes = sum(a.nbytes for a in {id(a): a for a in cache.values()}.values())  # names sharing one array once
    np.save(out, np.asarray(logits, np.float32))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    print(json.dumps({"dtype": dtype, "params": params, "cache": cache_bytes, "hooks": len(cache), "peak_rss": peak}))


def transformers_logits(tokens: np.ndarray) -> dict[str, np.ndarray] | None:
    """transformers' logits (upcast to float32) on the same checkpoint in each dtype; None without it."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    from interp.weights import ensure_default

    model = transformers.AutoModelForCausalLM.from_pretrained(ensure_default("smollm2-135m"), dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    out = {}
    for dtype in DTYPES:
        with torch.no_grad():
            logits = model.to(getattr(torch, dtype))(torch.as_tensor(tokens, dtype=torch.long)).logits
        out[dtype] = logits.float().numpy()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--one", choices=DTYPES, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        measure(args.one, args.seq, args.out)
        return
    rows, logits = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in DTYPES:
            out = Path(tmp) / f"{dtype}.npy"
            run = subprocess.run([sys.executable, __file__, "--one", dtype, "--seq", str(args.seq), "--out", str(out)],
                                 capture_output=True, text=True, check=True)
            rows[dtype] = json.loads(run.stdout.strip().splitlines()[-1])
            logits[dtype] = np.load(out)
    import interp

    peer = transformers_logits(prompt(interp.load("smollm2-135m"), args.seq))

    def maxdiff(a, b):  # "max / mean" absolute difference
        d = np.abs(a.astype(np.float64) - b)
        return f"{d.max():.3f} / {d.mean():.4f}"

    ref, base, mib = logits["float32"], rows["float32"], 2.0**20
    print(f"smollm2-135m, one prompt of {args.seq} tokens; logits' largest magnitude {np.abs(ref).max():.2f}")
    print(f"{'dtype':<10}{'params MiB':>11}{'cache MiB':>11}{'fraction':>15}{'peak RSS MiB':>14}"
          f"{'|dlogit| to f32':>18}{'hf to hf f32':>18}{'ours to hf':>18}")
    for dtype, r in rows.items():
        hf = f"{maxdiff(peer[dtype], peer['float32']):>18}{maxdiff(logits[dtype], peer[dtype]):>18}" if peer else ""
        print(f"{dtype:<10}{r['params'] / mib:>11.1f}{r['cache'] / mib:>11.1f}"
              f"{r['params'] / base['params']:>8.3f} / {r['cache'] / base['cache']:.3f}{r['peak_rss'] / mib:>14.0f}"
              f"{maxdiff(logits[dtype], ref):>18}{hf}")
    print(f"(fraction: parameter bytes / cache bytes of float32's; {base['hooks']} hook points cached; |dlogit|: "
          "max / mean absolute logit difference; hf: transformers on the same weights, eager attention)"
          if peer else "(transformers not installed)")


if __name__ == "__main__":
    main()
