"""Feature dashboards for many latents, side by side with sae-dashboard on the same dictionary, weights and tokens.

    python benchmarks/dashboards.py [--latents 1000] [--tokens 100000] [--batch 32] [--sae DIR]
                                    [--peer-python .venv-dashboard/bin/python] [--out DIR]
    make dashboard-peer     # once: sae-dashboard in its own venv, .venv-dashboard (benchmarks/peer_envs/dashboard.sh)

Target: dashboards of 1,000 latents from 100k tokens at least 3x faster than sae-dashboard (PyPI).

Both sides build the dashboards of the first ``--latents`` latents of one dictionary on the default model: ``--sae
DIR`` (a folder in SAELens's layout, as ``interp.sae.save`` writes), else a TopK SAE (width 4096, k 32) on the middle
layer's residual stream, trained here on ``--sae-tokens`` tokens of the built-in corpus and cached under
``$INTERP_CACHE/benchmarks/dashboards``. The text is WikiText-2 (test) cut into contexts of ``--seq`` tokens; our side
tokenizes it once and writes the ids to an .npy that the peer reads, so both see the same tokens. The first position
of each context is left out on both sides (its attention-sink activations are outliers, as in training).

sae-dashboard needs transformer-lens 2 and transformers < 4.57, so it runs in its own venv as a subprocess
(benchmarks/_dash_peer.py) on a TransformerLens model holding the same weights (the converted checkpoint folder of
``interp.weights.ensure_default()``). A peer that is missing or fails is reported as a note, with no figures.

Each side is timed once, after loading its model and dictionary and after a warm-up on one batch of contexts and two
latents (compilation and lazy set-up excluded, their time printed): compute (ours: ``feature_index`` over the
tokens, then ``feature_cards`` for the latents; theirs: ``SaeVisRunner.run`` with every latent in one feature batch,
so the model runs over the tokens once, not once per batch of latents) and HTML (ours: the cards added to a
``Report`` and saved; theirs: ``save_feature_centric_vis``). Our cards are asked for what sae-dashboard's default
layout shows where both have the setting (top contexts, context width, histogram bins, promoted/suppressed tokens);
what still differs is printed.
The two sides' active-token counts and top activations per latent are compared.

After both runs each side times its model alone over the same tokens, stopped after the hook's block and caching only
the hook: the least any dashboard code must run. Our total can't fall below our forward, so the peer's total over our
forward bounds the ratio this comparison can reach on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from _timing import running_peer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "corpora" / "wikitext2" / "test.txt"
PEER = Path(__file__).resolve().parent / "_dash_peer.py"
SKIP = 1  # positions left out at the start of each context, on both sides
BUFFER = 2**15  # tokens of contexts the SAE's training shuffles together
# sae-dashboard's default feature-centric layout, which our cards are asked to match
TOP, CONTEXT, BINS, LOGIT_ROWS = 20, 5, 50, 10


def context_ids(model, corpus: Path, n_rows: int, seq: int) -> np.ndarray:
    """``[n_rows, seq]`` token ids cut from the corpus's token stream (as training does)."""
    from interp.sae.store import iter_contexts

    if not corpus.exists():
        raise SystemExit(f"corpus {corpus} not found; pass --corpus PATH (a text file)")
    rows = []
    for ids in iter_contexts(model.tokenizer, str(corpus), seq, cycle=False):
        rows.append(ids)
        if len(rows) == n_rows:
            return np.stack(rows).astype(np.int32)
    raise SystemExit(f"{corpus} holds only {len(rows)} contexts of {seq} tokens ({len(rows) * seq:,} tokens); "
                     f"ask for at most --tokens {len(rows) * seq}")


def dictionary_folder(model, args) -> Path:
    """The SAELens-layout folder of the dictionary: ``--sae``, or the cached TopK SAE (trained on first use)."""
    from interp import sae
    from interp.weights.default import cache_dir

    if args.sae:
        folder = Path(args.sae).expanduser()
        if not (folder / "cfg.json").exists():
            raise SystemExit(f"--sae {folder} holds no cfg.json; pass a dictionary folder in SAELens's layout "
                             "(written by interp.sae.save or by SAELens)")
        return folder
    layer = model.n_layers // 2
    hook = f"blocks.{layer}.hook_resid_post"
    folder = cache_dir() / "benchmarks" / "dashboards" / (
        f"topk-smollm2-135m-L{layer}-w{args.width}-k{args.k}-t{args.sae_tokens}-s{args.seed}")
    if (folder / "cfg.json").exists():
        return folder
    t = time.perf_counter()
    steps = max(args.sae_tokens // 1024, 1)
    tcfg = sae.TrainConfig(
        sae.TopKConfig(d_in=model.d_model, width=args.width, k=args.k, hook_name=hook), model="smollm2-135m",
        total_tokens=steps * 1024, batch_size=1024, context_size=args.seq, lr=1e-3, eval_every=5, seed=args.seed,
        buffer_tokens=min(BUFFER, -(-2 * args.sae_tokens // args.seq) * args.seq),
        lr_warmup_steps=min(10, max(1, steps // 8)))
    d = sae.train(tcfg, model=model, progress=False).dictionary
    sae.save(d, folder, metadata={"model_name": "smollm2-135m", "context_size": args.seq})
    print(f"dictionary: trained on {steps * 1024:,} tokens of the built-in corpus at {hook} (width {args.width}, "
          f"k {args.k}) in {time.perf_counter() - t:.0f} s; cached at {folder}")
    return folder


def build(model, d, tokens, latents, batch: int, out: Path) -> tuple[dict, object, int]:
    """Our dashboards of ``latents`` over ``tokens``, written to ``out``: (seconds per phase, index, file size)."""
    from interp.features import feature_cards, feature_index
    from interp.report import Report

    t0 = time.perf_counter()
    index = feature_index(model, d, tokens, skip_positions=SKIP, batch=batch)
    t1 = time.perf_counter()
    cards = feature_cards(model, d, index, latents, n_contexts=TOP, before=CONTEXT, after=CONTEXT, n_logits=LOGIT_ROWS,
                          bins=BINS)
    t2 = time.perf_counter()
    report = Report(f"Feature dashboards: {len(latents)} latents of {d.cfg.hook_name}")
    report.add(cards, title="Feature dashboards", note=f"{index.n_tokens:,} tokens")
    report.save(out)
    t3 = time.perf_counter()
    return {"index": t1 - t0, "cards": t2 - t1, "compute": t2 - t0, "html": t3 - t2}, index, out.stat().st_size


def forward_time(model, hook: str, tokens, batch: int) -> float:
    """Seconds of our model alone over ``tokens`` up to ``hook`` (what ``feature_index`` runs before encoding), in
    batches of ``batch`` contexts: the floor under any dashboard code on this model."""
    import jax
    import jax.numpy as jnp

    t = time.perf_counter()
    for i in range(0, len(tokens), batch):
        chunk = tokens[i:i + batch]
        if len(chunk) < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
        _, cache = model.run_with_cache(jnp.asarray(chunk), [hook], return_logits=False)
        jax.block_until_ready(cache[hook])
    return time.perf_counter() - t


def our_checks(index, latents, context: int) -> list[list]:
    """The peer's check values computed from our index: per latent [active tokens, top activation among the
    positions sae-dashboard may show (``context + 1`` from a row's start, ``context`` from its end), its row, its
    position]."""
    T = index.tokens.shape[1]
    out = []
    for f in latents:
        pos, val = index.entries(f)
        t = pos % T
        ok = np.flatnonzero((t >= context + 1) & (t < T - context))
        if not len(ok):
            out.append([len(val), 0.0, -1, -1])
            continue
        i = ok[np.argmax(val[ok])]
        out.append([len(val), float(val[i]), int(pos[i] // T), int(t[i])])
    return out


def run_peer(python: Path, args, model_dir: Path, sae_dir: Path, hook: str, tokens_path: Path, latents,
             out: Path) -> dict:
    if not python.exists():
        raise ImportError(name=f"no {python}; create its venv with `make dashboard-peer` "
                               "(benchmarks/peer_envs/dashboard.sh) or pass --peer-python")
    cmd = [str(python), str(PEER), "--model", str(model_dir), "--sae", str(sae_dir), "--hook", hook,
           "--tokens", str(tokens_path), "--latents", ",".join(map(str, latents)), "--out", str(out),
           "--batch", str(args.batch), "--skip-positions", str(SKIP), "--context", str(CONTEXT)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)  # the main venv's packages must not shadow the peer venv's
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"{python} {PEER.name} exited with {proc.returncode}: {tail}")
    return json.loads(lines[-1])


def agreement(ours: list[list], theirs: list[list]) -> list[str]:
    a, b = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    n = len(a)
    count_diff = np.abs(a[:, 0] - b[:, 0])
    both = (a[:, 0] > 0) & (b[:, 0] > 0)
    why = "; TopK's choice flips where two pre-activations are nearly tied" if count_diff.any() else ""
    lines = [f"active-token counts equal on {int((count_diff == 0).sum())}/{n} latents (largest difference "
             f"{int(count_diff.max())}, largest count {int(a[:, 0].max())}{why})"]
    if both.any():
        act = np.abs(a[both, 1] - b[both, 1])
        same = (a[both, 2] == b[both, 2]) & (a[both, 3] == b[both, 3])
        lines.append(f"top activation: largest |difference| {act.max():.2e}, median {np.median(act):.1e}, "
                     f"largest top activation {a[both, 1].max():.2f} (theirs rounded to 4 decimals); same top "
                     f"token on {int(same.sum())}/{int(both.sum())} latents that fire on both sides")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latents", type=int, default=1000, help="dashboards of the first N latents")
    ap.add_argument("--tokens", type=int, default=100_000, help="tokens (rounded up to whole contexts)")
    ap.add_argument("--seq", type=int, default=128, help="tokens per context")
    ap.add_argument("--batch", type=int, default=32, help="contexts per forward pass, on both sides")
    ap.add_argument("--corpus", default=str(CORPUS))
    ap.add_argument("--sae", help="dictionary folder in SAELens's layout (default: a TopK SAE trained and cached here)")
    ap.add_argument("--sae-tokens", type=int, default=65_536, help="training tokens of the default SAE")
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peer-python", default=str(REPO / ".venv-dashboard" / "bin" / "python"),
                    help="python of the sae-dashboard venv")
    ap.add_argument("--out", help="folder for the token ids and both HTML files (default: a temporary one, removed)")
    args = ap.parse_args()

    import jax

    import interp
    from interp import sae
    from interp.features import feature_cards, feature_index
    from interp.report import Report
    from interp.weights import ensure_default

    model = interp.load("smollm2-135m")
    sae_dir = dictionary_folder(model, args)
    d = sae.load(sae_dir)
    hook = d.cfg.hook_name
    if not hook:
        raise SystemExit(f"{sae_dir}/cfg.json names no hook point (metadata.hook_name); add the one it reads")
    if args.latents > d.cfg.width:
        raise SystemExit(f"--latents {args.latents} is more than the dictionary's {d.cfg.width} latents")
    latents = list(range(args.latents))
    n_rows = -(-args.tokens // args.seq)
    tokens = context_ids(model, Path(args.corpus), n_rows, args.seq)
    norms = np.linalg.norm(np.asarray(d.W_dec), axis=-1)

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="interp-dashboards-"))
    work.mkdir(parents=True, exist_ok=True)
    tokens_path = work / "tokens.npy"
    np.save(tokens_path, tokens)
    try:
        t = time.perf_counter()
        warm = feature_index(model, d, tokens[:args.batch], skip_positions=SKIP, batch=args.batch)
        warm_cards = feature_cards(model, d, warm, latents, n_contexts=TOP, before=CONTEXT, after=CONTEXT,
                                   n_logits=LOGIT_ROWS, bins=BINS)  # compiles the logit effects' chunk shape
        Report("warm-up").add(warm_cards[:2]).to_html()
        warmup = time.perf_counter() - t
        ours, index, our_bytes = build(model, d, tokens, latents, args.batch, work / "interp.html")
        mine = our_checks(index, latents, CONTEXT)
        ours["forward"] = forward_time(model, hook, tokens, args.batch)

        notes: list[str] = []
        peer = None
        with running_peer("sae-dashboard", notes):
            peer = run_peer(Path(args.peer_python), args, ensure_default(), sae_dir, hook, tokens_path, latents,
                            work / "sae_dashboard.html")
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)

    N, T = tokens.shape
    fire = int((np.asarray(mine)[:, 0] > 0).sum())
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}; "
          f"{len(latents)} latents (0..{len(latents) - 1}; {fire} fire) of {d.cfg.arch} width {d.cfg.width} "
          f"at {hook}; {N} contexts x {T} = {N * T:,} tokens of {Path(args.corpus).name}, position 0 of each left "
          f"out; {args.batch} contexts per forward pass; one timed run per side after a warm-up")
    print(f"  {'':<16}{'compute':>10}{'html':>10}{'total':>10}   (seconds)")
    our_total = ours["compute"] + ours["html"]
    print(f"  {'interp':<16}{ours['compute']:10.2f}{ours['html']:10.2f}{our_total:10.2f}   index "
          f"{ours['index']:.2f} + cards {ours['cards']:.2f}; warm-up {warmup:.1f}; {our_bytes / 1e6:.1f} MB, "
          "self-contained (plotly.js inlined)")
    if peer:
        peer_total = peer["compute_s"] + peer["html_s"]
        v = peer["versions"]
        print(f"  {'sae-dashboard':<16}{peer['compute_s']:10.2f}{peer['html_s']:10.2f}{peer_total:10.2f}   "
              f"warm-up {peer['warmup_s']:.1f}; {peer['html_bytes'] / 1e6:.1f} MB, loads d3 and plotly from CDNs")
        print("ratios:")
        print(f"  total: interp {peer_total / our_total:.2f}x faster than sae-dashboard (target >= 3x)")
        print(f"  compute: {peer['compute_s'] / ours['compute']:.2f}x; html: {peer['html_s'] / ours['html']:.2f}x")
        if "forward_s" in peer:
            print(f"  the model alone up to {hook} over the same tokens (timed after the runs, caching only the hook): "
                  f"ours {ours['forward']:.2f} s, theirs (TransformerLens, stop_at_layer) {peer['forward_s']:.2f} s "
                  f"= {peer['forward_s'] / ours['forward']:.2f}x; it is {100 * ours['forward'] / our_total:.0f}% of "
                  f"our total and {100 * peer['forward_s'] / peer_total:.0f}% of theirs")
            print(f"  bound: with dashboards costing nothing beyond our forward, the ratio would be "
                  f"{peer_total / ours['forward']:.2f}x")
        print("agreement (same dictionary, weights and tokens; TransformerLens vs our model):")
        for line in agreement(mine, peer["checks"]):
            print(f"  {line}")
        lay = peer["layout"]
        print("what differs:")
        print(f"  both: top {TOP} contexts of {CONTEXT} tokens either side, a {BINS}-bin activation histogram, "
              f"{LOGIT_ROWS} promoted and {LOGIT_ROWS} suppressed tokens (theirs: top {lay['top']}, buffer "
              f"{tuple(lay['buffer'])}, {lay['act_bins']} bins, {lay['logit_rows']} rows)")
        print(f"  sae-dashboard also builds {lay['quantile_groups']} quantile groups of {lay['per_quantile_group']} "
              f"contexts, a {lay['logit_bins']}-bin histogram of the logit effects, feature tables "
              f"({lay['feature_table_rows']} rows each: decoder vs neuron basis, correlation with neurons and with the "
              "other latents, running over all tokens) and activation quantiles per latent")
        print("  its top contexts skip the first 6 and last 5 positions of a context; ours may sit anywhere (windows "
              "cut at the context's edge)")
        print("  logit effects: ours through the final norm's weight and W_U, theirs through W_U alone")
        print("  HTML: ours draws each card's two charts as plotly figures in the page; theirs stores each latent's "
              "data as JSON that its scripts draw in the browser")
        print(f"  model: ours JAX; theirs TransformerLens {v['transformer-lens']} (torch {v['torch']}, "
              f"{peer['threads']} threads); both stop after the dictionary's layer")
        print(f"  versions: sae-dashboard {v['sae-dashboard']}, sae-lens {v['sae-lens']}, transformers "
              f"{v['transformers']}; {peer['note']}")
    print(f"note: decoder row norms {norms.min():.4f}..{norms.max():.4f}; sae-dashboard's fold of them into the "
          "encoder is skipped so both sides show the dictionary's own activations")
    for n in notes:
        print(f"note: {n}")
    if args.out:
        print(f"files: {work}")


if __name__ == "__main__":
    main()
