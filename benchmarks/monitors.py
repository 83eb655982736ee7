"""The cost of monitors during generation: the same prompts generated with two monitors and without, in one run.

The default model (SmolLM2-135M-Instruct) continues 8 prompts (WikiText-2 text, left-padded batch) by 32 greedy
tokens, with no monitor and with two: a linear probe at ``blocks.6.hook_resid_post`` and a norm at
``blocks.20.hook_mlp_out``. Both scores are computed inside the compiled generation, which then also feeds the
last new token (its activations exist only once it is read). Printed: the median seconds of a few runs after a
warm-up (which absorbs compilation) for each, and their ratio (target: <= 1.10x).

    python benchmarks/monitors.py [--prompts 8] [--new 32] [--reps 5]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import timed  # noqa: E402

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpora" / "wikitext2" / "test.txt"


def prompt_texts(n: int) -> list[str]:
    """``n`` WikiText-2 snippets of 8 to 22 words."""
    text = CORPUS.read_text(encoding="utf-8") if CORPUS.exists() else " ".join(["The quick brown fox jumps."] * 400)
    words = [w for w in re.sub(r"\s+", " ", text.replace("@", "")).split(" ") if w and not w.startswith("=")]
    out, start = [], 300
    for i in range(n):
        size = 8 + (2 * i) % 15
        out.append(" ".join(words[start:start + size]))
        start += size + 11
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    import jax.numpy as jnp
    import numpy as np

    import interp
    from interp.probes import Monitor

    model = interp.load()
    prompts = prompt_texts(args.prompts)
    v = np.random.default_rng(0).normal(size=model.d_model).astype(np.float32) / np.sqrt(model.d_model)
    w = jnp.asarray(v)
    monitors = [Monitor(lambda x: x @ w, hook="blocks.6.hook_resid_post", name="probe"),
                Monitor(lambda x: jnp.linalg.norm(x, axis=-1), hook="blocks.20.hook_mlp_out", name="norm")]

    def plain():
        return model.generate(prompts, args.new, stop_tokens=[]).new_tokens

    def monitored():
        return model.generate(prompts, args.new, stop_tokens=[], monitors=monitors).new_tokens

    same = np.array_equal(plain(), monitored())
    # interleaved, so that a machine busy for a while weighs on both alike
    t_plain, t_mon = [], []
    for _ in range(args.reps):
        t_plain.append(timed(plain, 1, warmup=0))
        t_mon.append(timed(monitored, 1, warmup=0))
    a, b = float(np.median(t_plain)), float(np.median(t_mon))
    print(f"default model, {args.prompts} prompts x {args.new} new tokens (greedy), median of {args.reps} runs "
          "after warm-up")
    print(f"  without monitors : {a * 1e3:8.1f} ms   runs: {' '.join(f'{t * 1e3:.0f}' for t in t_plain)}")
    print(f"  with 2 monitors  : {b * 1e3:8.1f} ms   runs: {' '.join(f'{t * 1e3:.0f}' for t in t_mon)}")
    print(f"  ratio            : {b / a:.3f}x (target <= 1.10x); same tokens with and without: {same}")


if __name__ == "__main__":
    main()
