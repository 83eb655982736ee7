"""Per-layer transcoders, skip transcoders and a cross-layer transcoder on the default model, trained on the same
text with the same width, k and number of tokens: per-layer FVU on two held-out texts, training time, and the
graph replacement and completeness scores of attribution graphs on a fixed set of prompts.

    python benchmarks/replacement.py [--tokens 200000] [--width 1024] [--k 16] [--kinds per-layer skip clt]
                                     [--max-feature-nodes N] [--no-bos] [--no-graphs]

Each set is trained once into ``~/.cache/interp/benchmarks/replacement/{kind}-w{width}-k{k}-t{tokens}`` and read
from there on later runs (delete the folder to retrain). Training text: the Gutenberg books of the shared corpora;
held-out text: WikiText-2 (test) and the second half of the last book; the summary's FVU is on the latter. The
per-layer sets keep k features per position at every layer (TopK); the cross-layer set keeps k per layer and
position on average over a batch (BatchTopK) and at inference fires by its learned thresholds, so its L0 is printed
beside its FVU.

The graphs trace each prompt after the tokenizer's BOS token, as circuit-tracer does (``--no-bos``: as the prompt
tokenizes), and each graph's scores are printed twice: counting every error node, and as circuit-tracer counts them,
leaving out the error nodes at the positions the transcoders skip (``Graph.scores(skipped_errors=False)``: there an
error node holds the whole MLP output of the attention sink, which circuit-tracer zeroes). circuit-tracer, the
reference implementation of these scores, reports the second. Every active feature is a node unless
``--max-feature-nodes`` caps them, as circuit-tracer's ``attribute`` keeps every one by default.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from interp.sae import CrossLayerTranscoder

CACHE = Path(os.environ.get("INTERP_CACHE", Path.home() / ".cache" / "interp")) / "benchmarks" / "replacement"
CORPORA = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpora"
PROMPTS = [
    "The capital of France is",
    "The opposite of hot is",
    "Monday, Tuesday, Wednesday,",
    "The Eiffel Tower is in the city of",
    "Michael Jordan plays the sport of",
    "One, two, three, four,",
]


def train(model, kind: str, width: int, k: int, tokens: int, lr: float | None):
    from interp.sae import Transcoders, train_clt, train_transcoders

    folder = CACHE / f"{kind}-w{width}-k{k}-t{tokens}"
    if kind == "clt":
        if not (folder / "clt.json").exists():
            train_clt(model, width=width, k=k, total_tokens=tokens, corpus=str(CORPORA / "gutenberg"),
                      lr=lr or 1e-3, out_dir=folder)
        meta = json.loads((folder / "clt.json").read_text())
        return CrossLayerTranscoder.load(folder), meta["trained"]
    if not (folder / "transcoders.json").exists():
        train_transcoders(model, width=width, k=k, total_tokens=tokens, corpus=str(CORPORA / "gutenberg"),
                          lr=lr or 2e-3, skip=kind == "skip", out_dir=folder)
    meta = json.loads((folder / "transcoders.json").read_text())
    return Transcoders.load(folder), meta["trained"]


def held_out_texts() -> dict[str, str]:
    """WikiText-2 (test), another kind of text than the training books, and the second half of the last book (the
    training run reads far less than the books hold, from their start)."""
    books = sorted((CORPORA / "gutenberg" / "books").glob("*.txt"))
    last = books[-1].read_text(encoding="utf-8")
    return {"wikitext": (CORPORA / "wikitext2" / "test.txt").read_text(encoding="utf-8"),
            f"{books[-1].stem} (2nd half)": last[len(last) // 2:]}


def held_out_fvu(model, tc, text: str, n_contexts: int = 32, context_size: int = 64) -> dict[str, np.ndarray]:
    """Per layer, on held-out contexts (first position left out, as in training), each layer fed the model's own MLP
    inputs: FVU of the reconstruction of the MLP output over all positions (``fvu_all``) and over the positions whose
    MLP output is within 10x the layer's median norm (``fvu``: a few outlier positions, such as attention sinks,
    otherwise carry most of the variance), the share of positions left out, and L0."""
    import jax.numpy as jnp

    from interp.sae import iter_contexts

    it = iter_contexts(model.tokenizer, [text], context_size)
    toks = np.stack([next(it) for _ in range(n_contexts)])
    L = model.n_layers
    names = [h.format(layer=l) for l in range(L) for h in (tc.hook_in, tc.hook_out)]
    _, cache = model.run_with_cache(jnp.asarray(toks), names, return_logits=False)
    x = jnp.stack([cache[tc.hook_in.format(layer=l)][:, 1:].reshape(-1, model.d_model) for l in range(L)])
    y = jnp.stack([cache[tc.hook_out.format(layer=l)][:, 1:].reshape(-1, model.d_model) for l in range(L)])
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    if isinstance(tc, CrossLayerTranscoder):
        z = tc.encode(x)
        recon = tc.decode(z)
    else:
        z = jnp.stack([tc.encode_layer(l, x[l]) for l in range(L)])
        recon = jnp.stack([tc.dictionaries[l](x[l]) for l in range(L)])
    err = np.asarray(jnp.sum(jnp.square(y - recon), -1))  # [L N]
    yn = np.asarray(y)
    norm = np.linalg.norm(yn, axis=-1)
    keep = norm <= 10 * np.median(norm, axis=1, keepdims=True)
    out = {"fvu": [], "fvu_all": [], "left_out": 1.0 - keep.mean(1), "l0": np.asarray(jnp.mean(jnp.sum(z > 0, -1), -1))}
    for l in range(L):
        for key, rows in (("fvu", keep[l]), ("fvu_all", np.ones_like(keep[l]))):
            yl = yn[l][rows]
            out[key].append(err[l][rows].mean() / ((yl - yl.mean(0)) ** 2).sum(-1).mean())
    return {k: np.asarray(v) for k, v in out.items()}


def graph_scores(model, tc, max_nodes: int, bos: bool = True) -> list[dict]:
    """Each prompt's unpruned graph scores, counting every error node (``replacement``, ``completeness``) and as
    circuit-tracer counts them (``ct_replacement``, ``ct_completeness``: the error nodes at the positions the
    transcoders skip left out). With ``bos`` the prompt starts with the tokenizer's BOS, as circuit-tracer's do, so
    that the skipped position is not the prompt's first word."""
    from interp.circuits import graph as G

    rows = []
    for p in PROMPTS:
        t0 = time.perf_counter()
        ids = model.tokenizer.encode(p, prepend_bos=True) if bos else p
        g = G.trace(model, tc, ids, max_feature_nodes=max_nodes)
        ct = g.scores(pruned=False, skipped_errors=False)
        rows.append({"prompt": p, **g.scores(pruned=False), "ct_replacement": ct["replacement"],
                     "ct_completeness": ct["completeness"], "top": g.logit_strs[0],
                     "seconds": time.perf_counter() - t0, "active": g.info["n_active_features"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=200_000)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--lr", type=float, default=None, help="default: 2e-3 per-layer, 1e-3 cross-layer")
    ap.add_argument("--kinds", nargs="*", default=["per-layer", "skip", "clt"])
    ap.add_argument("--max-feature-nodes", type=int, default=None,
                    help="feature nodes per graph (default: every active feature, as circuit-tracer's attribute keeps)")
    ap.add_argument("--no-graphs", action="store_true", help="FVU only, no attribution graphs")
    ap.add_argument("--no-bos", action="store_true", help="trace the prompts as they tokenize, without a BOS first")
    args = ap.parse_args()

    import interp

    model = interp.load()
    summary = {}
    for kind in args.kinds:
        tc, trained = train(model, kind, args.width, args.k, args.tokens, args.lr)
        nodes = args.max_feature_nodes or 2**31 - 1
        scores = [] if args.no_graphs else graph_scores(model, tc, nodes, bos=not args.no_bos)
        print(f"\n{kind}: width {args.width}, k {args.k}, {args.tokens} tokens, trained in "
              f"{trained.get('seconds', float('nan')):.0f} s; training FVU (last steps) median "
              f"{np.median([r['fvu'] for r in trained['layers']]):.3f}")
        for name, text in held_out_texts().items():
            ev = held_out_fvu(model, tc, text)
            fvu, l0 = ev["fvu"], ev["l0"]
            print(f"  held-out FVU on {name} by layer: " + " ".join(f"{v:.2f}" for v in fvu))
            print(f"    min {fvu.min():.3f} median {np.median(fvu):.3f} max {fvu.max():.3f} (outlier positions left "
                  f"out: median {np.median(ev['left_out']):.1%} of a layer's; with them, median "
                  f"{np.median(ev['fvu_all']):.3f}); L0 median {np.median(l0):.1f} (min {l0.min():.1f}, "
                  f"max {l0.max():.1f})")
        summary[kind] = {"train_s": trained.get("seconds", float("nan")), "fvu": fvu, "scores": scores}
        for r in scores:
            print(f"  {r['prompt']!r:40} -> {r['top']!r:10} replacement {r['replacement']:.3f} completeness "
                  f"{r['completeness']:.3f}; as circuit-tracer counts: {r['ct_replacement']:.3f} "
                  f"{r['ct_completeness']:.3f} ({r['active']} active features, {r['seconds']:.0f} s)")
    n = args.max_feature_nodes
    nodes_text = f"at most {n} feature nodes" if n else "every active feature a node"
    print(f"\ngraphs: {nodes_text}, unpruned; "
          + ("prompts as they tokenize" if args.no_bos else "a BOS before each prompt")
          + "; scores counting every error node / as circuit-tracer counts them (the error nodes at the positions "
          "the transcoders skip left out)")
    print("kind       train s  median FVU  mean replacement   mean completeness   France: replacement  completeness")
    nan = float("nan")
    for kind, s in summary.items():
        sc = s["scores"] or [dict.fromkeys(("replacement", "completeness", "ct_replacement", "ct_completeness"), nan)]

        def both(key, rows=sc):
            return f"{np.mean([r[key] for r in rows]):.3f} / {np.mean([r['ct_' + key] for r in rows]):.3f}"

        print(f"{kind:10} {s['train_s']:7.0f}  {np.median(s['fvu']):10.3f}  {both('replacement'):>16}  "
              f"{both('completeness'):>17}   {both('replacement', sc[:1]):>18}  {both('completeness', sc[:1]):>12}")
    print("targets (France prompt, best set): replacement >= 0.5, completeness >= 0.8")


if __name__ == "__main__":
    main()
