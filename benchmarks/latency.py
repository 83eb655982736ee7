"""Time to first result in a notebook-like session: a fresh process, then a second fresh process, then new prompts.

Ten prompts of different lengths (WikiText-2 text, about 5 to 45 tokens) go through four operations on the default
model (SmolLM2-135M-Instruct), each timed until its result is on the host:

* ``forward``: ``model(prompt)`` logits;
* ``cache``: ``model.run_with_cache(prompt)``, every hook point;
* ``generate``: ``model.generate(prompt, 20)``, greedy, 20 new tokens;
* ``patch``: a residual-stream patching sweep over every position of five layers (``circuits.patch``,
  ``resid_pre``, layers 0, 6, ..., 24, a logit-difference metric; the corrupted prompt changes one token).

Each process runs the ten prompts in order and reports every call's seconds and the compilations it triggered
(``interp.compile_stats``). Two fresh processes share one new persistent compilation cache folder: the first
compiles, the second loads the programs from disk. Printed: the time from process start to the first result of
each operation in both processes and their ratio (target: the second >= 3x faster), and, within a warm process,
what a prompt of a new length costs (target: no compilation when its length bucket is already compiled).

    python benchmarks/latency.py [--prompts 10] [--keep-cache DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START = time.perf_counter()
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpora" / "wikitext2" / "test.txt"
OPS = ("forward", "cache", "generate", "patch")


def prompt_texts(n: int) -> list[str]:
    """``n`` prompts of spread-out lengths: WikiText-2 text cut to 4, 8, 12, ... words."""
    text = CORPUS.read_text(encoding="utf-8") if CORPUS.exists() else " ".join(["The quick brown fox jumps."] * 400)
    words = [w for w in re.sub(r"\s+", " ", text.replace("@", "")).split(" ") if w and not w.startswith("=")]
    out, start = [], 200
    for i in range(n):
        size = 4 + 4 * i
        out.append(" ".join(words[start:start + size]))
        start += size + 17
    return out


def child(n: int) -> None:
    """One process: the four operations on every prompt, as JSON lines on stdout."""
    import numpy as np

    import interp
    from interp.circuits import metrics, patch

    t_import = time.perf_counter() - START
    model = interp.load()
    t_load = time.perf_counter() - START
    paris, london = model.to_single_token(" Paris"), model.to_single_token(" London")
    rows = []
    for i, text in enumerate(prompt_texts(n)):
        tokens = np.asarray(model.to_tokens(text))
        corrupted = tokens.copy()
        corrupted[0, tokens.shape[1] // 2] = paris  # one token changed
        ops = {
            "forward": lambda t, c: np.asarray(model(t)),
            "cache": lambda t, c: [np.asarray(a) for a in model.run_with_cache(t)[1].values()],
            "generate": lambda t, c: model.generate(t, 20, stop_tokens=[]).new_tokens,
            "patch": lambda t, c: patch(model, t, c, metrics.logit_diff(paris, london), "resid_pre",
                                        layers=range(0, model.n_layers, 6), progress=False).values,
        }
        for op, fn in ops.items():
            before = interp.compile_stats()
            t0 = time.perf_counter()
            fn(tokens, corrupted)
            t1 = time.perf_counter()
            after = interp.compile_stats()
            rows.append({"prompt": i, "length": int(tokens.shape[1]), "bucket": model.bucket_length(tokens.shape[1]),
                         "op": op, "seconds": t1 - t0, "since_start": t1 - START,
                         "compiled": after.compiled - before.compiled, "loaded": after.loaded - before.loaded})
            print(f"prompt {i} ({tokens.shape[1]} tokens) {op}: {t1 - t0:.2f} s", file=sys.stderr, flush=True)
    print(json.dumps({"import": t_import, "load": t_load, "rows": rows}))


def run_child(n: int, cache: Path) -> dict:
    env = {**os.environ, "INTERP_COMPILATION_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", "--prompts", str(n)], env=env, stdout=subprocess.PIPE,
                         text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall"] = time.perf_counter() - t0
    return result


def firsts(run: dict, field: str) -> dict[str, float]:
    """Each operation's ``field`` at its first call: ``since_start`` (seconds from process start to its first
    result) or ``seconds`` (the call's own latency, compilation or loading from disk included)."""
    out = {}
    for r in run["rows"]:
        out.setdefault(r["op"], r[field])
    return out


def table(title: str, first: dict[str, float], second: dict[str, float], fmt: str, total: tuple) -> None:
    """One row per operation (first process, second process, ratio), then ``total = (label, reduce, note)``."""
    print(f"{title:<48}{'1st process':>12}{'2nd process':>12}{'ratio':>8}")
    rows = [(op, first[op], second[op], "") for op in OPS]
    label, reduce, note = total
    rows.append((label, reduce(first.values()), reduce(second.values()), note))
    for name, a, b, end in rows:
        print(f"  {name:<46}{a:>12{fmt}}{b:>12{fmt}}{a / b:>7.1f}x{end}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--keep-cache", type=Path, default=None, help="use this compilation cache folder (kept)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.prompts)

    with tempfile.TemporaryDirectory() as tmp:
        cache = args.keep_cache or Path(tmp) / "programs"
        print(f"compilation cache: {cache} (new)" if not cache.exists() else f"compilation cache: {cache}")
        cold = run_child(args.prompts, cache)
        warm = run_child(args.prompts, cache)

    print(f"\nfresh processes: import {cold['import']:.1f} s / {warm['import']:.1f} s, "
          f"model load {cold['load'] - cold['import']:.1f} s / {warm['load'] - warm['import']:.1f} s")
    fc, fw = firsts(cold, "since_start"), firsts(warm, "since_start")
    table("time to first result (s, from process start)", fc, fw, ".1f",
          ("all four on the first prompt", max, "   (target >= 3x)"))
    print(f"  {'whole run (' + str(args.prompts) + ' prompts, process wall)':<46}{cold['wall']:>12.1f}"
          f"{warm['wall']:>12.1f}{cold['wall'] / warm['wall']:>7.1f}x")
    print()
    table("first call of each operation (s, its own latency)", firsts(cold, "seconds"), firsts(warm, "seconds"),
          ".2f", ("all four", sum, ""))

    print("\nin the first process, per prompt (seconds; compilations in brackets):")
    print(f"  {'prompt':>6}{'tokens':>7}{'bucket':>7}" + "".join(f"{op:>14}" for op in OPS))
    seen: set[int] = set()
    new_length_in_known_bucket = []
    for i in range(args.prompts):
        rows = {r["op"]: r for r in cold["rows"] if r["prompt"] == i}
        length, bucket = rows["forward"]["length"], rows["forward"]["bucket"]
        cells = "".join(f"{rows[op]['seconds']:>9.2f} [{rows[op]['compiled'] + rows[op]['loaded']:>2}]" for op in OPS)
        print(f"  {i:>6}{length:>7}{bucket:>7}{cells}")
        if bucket in seen:
            new_length_in_known_bucket.append(sum(rows[op]["compiled"] + rows[op]["loaded"] for op in OPS))
        seen.add(bucket)
    if new_length_in_known_bucket:
        print(f"\nprompts of a new length in an already compiled bucket: {len(new_length_in_known_bucket)}, "
              f"compilations they triggered: {sum(new_length_in_known_bucket)} (target 0)")


if __name__ == "__main__":
    main()
