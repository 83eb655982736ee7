"""Attribution graphs on the default model: exactness, scores, an ablation, and time and memory by prompt length.

Needs a transcoder set for SmolLM2-135M-Instruct, trained once with

    interp train-transcoders --width 2048 --k 16 --tokens 200000 \\
        --corpus ../shared/data/corpora/gutenberg --out ~/.cache/interp/transcoders/smollm2-135m-w2048-k16

Then ``python benchmarks/graph.py`` traces "The capital of France is" and reports: how far the replacement model
(frozen attention and norms, transcoders plus error nodes) is from the real logits; the graph's replacement and
completeness scores before and after pruning; the top supernode's effect on " Paris" when ablated in the real
model (against as many other active features). Then it traces prompts of ``--lengths`` tokens (WikiText-2
text ending in the same question), each in its own process, and prints wall time and peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("INTERP_CACHE", Path.home() / ".cache" / "interp"))
DEFAULT_TC = CACHE / "transcoders" / "smollm2-135m-w2048-k16"
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpora" / "wikitext2" / "test.txt"
QUESTION = "The capital of France is"


def load(tc_dir):
    import interp
    from interp.sae import Transcoders

    if not Path(tc_dir).exists():
        raise SystemExit(f"no transcoder set at {tc_dir}; train one first (see this script's docstring)")
    return interp.load(), Transcoders.load(tc_dir)


def prompt_of_length(model, n: int) -> np.ndarray:
    q = model.to_tokens(QUESTION)[0]
    text = CORPUS.read_text(encoding="utf-8") if CORPUS.exists() else "The history of the city is long. " * 200
    filler = model.to_tokens(text[:20 * n])[0][: n - len(q)]
    return np.concatenate([filler, q]).astype(np.int32)


def one_length(tc_dir, n: int, max_nodes: int) -> dict:
    from interp.circuits import graph as G

    model, tc = load(tc_dir)
    toks = prompt_of_length(model, n)
    t0 = time.perf_counter()
    g = G.trace(model, tc, toks, max_feature_nodes=max_nodes)
    first = time.perf_counter() - t0
    return {"tokens": n, "first_s": first, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "active_features": g.info["n_active_features"], "feature_nodes": g.n_features, "nodes": g.n_nodes,
            "scores": g.scores(pruned=False), "top_logit": g.logit_strs[0]}


def factual(tc_dir, max_nodes: int) -> None:
    from interp.circuits import graph as G

    model, tc = load(tc_dir)
    info = json.loads((Path(tc_dir) / "transcoders.json").read_text()).get("trained", {})
    if info:
        fvu = [row.get("fvu", float("nan")) for row in info.get("layers", [])]
        print(f"transcoders: width {info.get('width')}, k {info.get('k')}, {info.get('total_tokens')} tokens; "
              f"training FVU by layer min {min(fvu):.3f} median {np.median(fvu):.3f} max {max(fvu):.3f}")
    same = G.intervene(model, tc, QUESTION, [], mode="frozen")
    gap = np.abs(same.after - same.before).max()
    print(f"replacement model vs real logits on {QUESTION!r}: max |difference| {gap:.2e}")
    t0 = time.perf_counter()
    g = G.trace(model, tc, QUESTION, max_feature_nodes=max_nodes)
    print(f"traced in {time.perf_counter() - t0:.1f} s: {g.info['n_active_features']} active features, "
          f"{g.n_features} feature nodes; logits {list(zip(g.logit_strs[:3], np.round(g.logit_probs[:3], 3)))}")
    print(f"  scores, full graph: {g.scores(pruned=False)}")
    p = G.prune(g)
    s = p.slices()
    print(f"  pruned (node 0.8, edge 0.98): {int(p.node_mask[s['feature']].sum())} features, "
          f"{int(p.node_mask[s['error']].sum())} error nodes, {int(p.edge_mask.sum())} edges; scores {p.scores()}")
    groups = G.auto_supernodes(p, tc.dictionaries)
    effect_on = g.signed_effect(0)  # linearised effect of each node on the top logit, by the graph
    ranked = sorted(groups.items(), key=lambda kv: -effect_on[kv[1]].sum())
    print(f"  {len(groups)} supernodes; most promoting the top logit by the graph: "
          f"{[(k, round(float(effect_on[v].sum()), 3)) for k, v in ranked[:3]]}")
    target = int(g.logit_tokens[0])

    def effect(nodes, graph):
        r = G.intervene(model, tc, QUESTION, G.feature_changes(graph, nodes, 0.0), mode="real")
        return r, r.centered_change(target), r.logprob_change(target)

    rng = np.random.default_rng(0)
    feats = [int(i) for i in p.kept() if p.kind(int(i)) == "feature"]
    top = sorted(feats, key=lambda i: -effect_on[i])[:10]
    for name, members in ranked[:1] + [("10 kept features promoting it most", top)]:
        res, centered, logprob = effect(members, p)
        others = [i for i in range(g.n_features) if i not in members]
        ctrl = [effect(rng.choice(others, len(members), replace=False), g)[1:] for _ in range(5)]
        print(f"  ablating {name!r} ({len(members)} features; graph predicts {-effect_on[members].sum():+.3f}) in the "
              f"real model: {g.logit_strs[0]!r} logit minus mean {centered:+.3f}, log-prob {logprob:+.3f}; as many "
              f"random traced features: {np.mean([c[0] for c in ctrl]):+.3f}, {np.mean([c[1] for c in ctrl]):+.3f} "
              f"(mean of 5)")
        print(f"    after: {res.top(model.tokenizer, 3)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transcoders", default=str(DEFAULT_TC))
    ap.add_argument("--lengths", type=int, nargs="*", default=[64, 256])
    ap.add_argument("--max-feature-nodes", type=int, default=512)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one_length(args.transcoders, args.one, args.max_feature_nodes)))
        return
    factual(args.transcoders, args.max_feature_nodes)
    for n in args.lengths:
        out = subprocess.run([sys.executable, __file__, "--transcoders", args.transcoders, "--one", str(n),
                              "--max-feature-nodes", str(args.max_feature_nodes)], capture_output=True, text=True)
        if out.returncode:
            print(f"{n} tokens: failed\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{n:4d} tokens: trace {r['first_s']:.1f} s (compilation included); "
              f"peak memory {r['peak_rss_gb']:.2f} GB (whole process, model included); {r['active_features']} active "
              f"features, {r['feature_nodes']} traced, {r['nodes']} nodes; scores {r['scores']}; "
              f"top logit {r['top_logit']!r}")


if __name__ == "__main__":
    main()
