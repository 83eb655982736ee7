"""Circuit findings on the default model (SmolLM2-135M-Instruct), printed as figures.

1. Induction: head detector scores on repeated random tokens; the loss on the repeated half against the first
   half; ablating the top induction heads against ablating as many other heads from the same layers.
2. IOI (indirect object identification, ABC corruption): residual-stream patching by layer x position, head
   patching, direct logit attribution and path patching into the logits.
3. Approximations: attribution patching and EAP/EAP-IG against exact patching (Pearson correlation).

    python benchmarks/circuits_smollm2.py [--n 8]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import interp
from interp.circuits import (
    ablate_heads,
    attribute,
    direct_logit_attribution,
    edge_attribution,
    head_scores,
    metrics,
    patch,
    path_patch,
    per_token_loss,
    prompts,
    senders,
)


def corr(a, b) -> float:
    a, b = np.ravel(a), np.ravel(b)
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def induction(model, n: int, k: int = 4) -> None:
    half = 24
    toks = prompts.induction(model.d_vocab, n=n, length=half, seed=0, exclude=range(17))
    scores = head_scores(model, toks)
    top = scores.top("induction", k)
    print(f"[induction] {n} sequences of 2x{half} random tokens")
    print("  top induction heads (layer, head, score):", [(l, h, round(s, 3)) for l, h, s in top])
    print("  top previous-token heads:", [(l, h, round(s, 3)) for l, h, s in scores.top("previous_token", k)])
    print("  top duplicate-token heads:", [(l, h, round(s, 3)) for l, h, s in scores.top("duplicate_token", k)])
    loss = per_token_loss(model, toks)
    first, second = loss[:, : half - 1].mean(), loss[:, half:].mean()
    print(f"  loss first half {first:.3f}, repeated half {second:.3f} (drop {first - second:.3f} nats)")
    heads = [(l, h) for l, h, _ in top]
    abl = per_token_loss(model, toks, edits_=ablate_heads(model, heads))[:, half:].mean()
    rng = np.random.default_rng(0)
    ind = scores["induction"]
    controls = []
    for _ in range(5):
        ctrl = []
        for l, _h in heads:
            others = [h for h in range(ind.shape[1]) if (l, h) not in heads and (l, h) not in ctrl]
            ctrl.append((l, int(rng.choice(others))))
        controls.append(per_token_loss(model, toks, edits_=ablate_heads(model, ctrl))[:, half:].mean())
    print(f"  repeated-half loss with the top {k} induction heads zero-ablated: {abl:.3f} "
          f"(+{abl - second:.3f}); with {k} other heads of the same layers: {np.mean(controls):.3f} "
          f"(+{np.mean(controls) - second:.3f}, mean of 5 draws)")


def ioi(model, n: int) -> None:
    ps = prompts.ioi(model, n=n, seed=0, corruption="abc")
    metric = metrics.logit_diff(ps.answer, ps.wrong)
    print(f"[ioi] {n} prompts, e.g. {ps.clean_text[0]!r} -> answer {model.to_string([int(ps.answer[0])])!r}")
    t0 = time.perf_counter()
    resid = patch(model, ps.clean, ps.corrupted, metric, "resid_pre")
    print(f"  logit diff clean {resid.source:.3f}, corrupted {resid.base:.3f}; "
          f"resid sweep {time.perf_counter() - t0:.1f} s")
    norm = resid.normalized()
    toks = ps.str_tokens(0)
    for l in range(0, model.n_layers, 3):
        best = int(np.argmax(norm[l]))
        print(f"  layer {l:2d}: restored {norm[l, best]:+.2f} at {toks[best]!r}@{best}; "
              f"at the last position {norm[l, -1]:+.2f}")
    heads = patch(model, ps.clean, ps.corrupted, metric, "z", per="head")
    print("  heads whose clean output restores most (normalized):",
          [(lab, round(e / (resid.source - resid.base), 3)) for lab, e in heads.top(6)])
    dla = direct_logit_attribution(model, ps.clean, np.stack([ps.answer, ps.wrong], 1), per="head")
    ld = dla.logit_diff().mean(1)
    order = np.argsort(-np.abs(ld))[:6]
    print("  direct logit attribution to the logit diff, clean run:",
          [(dla.labels[i], round(float(ld[i]), 3)) for i in order])
    direct = path_patch(model, ps.clean, ps.corrupted, metric, "heads", "logits")
    print("  path patching head -> logits (normalized):",
          [(lab, round(e / (resid.source - resid.base), 3)) for lab, e in direct.top(6)])
    return ps, metric, resid, heads


def approximations(model, ps, metric, resid, heads) -> None:
    t0 = time.perf_counter()
    att = attribute(model, ps.clean, ps.corrupted, metric, ["resid_pre", "attn_out", "mlp_out", "z"], per=None)
    dt = time.perf_counter() - t0
    exact = {"resid_pre": resid, "z": heads,
             "attn_out": patch(model, ps.clean, ps.corrupted, metric, "attn_out"),
             "mlp_out": patch(model, ps.clean, ps.corrupted, metric, "mlp_out")}
    print(f"[approximations] attribution patching, 4 hooks, one forward + backward: {dt:.1f} s")
    for k, ex in exact.items():
        print(f"  {k:9s} attribution vs exact patching: r = {corr(att[k].effect, ex.effect):.3f}")
    recs = ["logits"] + [f"L{l}H{h}.q" for l in (20, 25) for h in (0, 4)]
    exact_edges = {r: path_patch(model, ps.clean, ps.corrupted, metric, senders(model), r, per_sender=True)
                   for r in recs}
    for method in ("eap", "eap-ig"):
        t0 = time.perf_counter()
        eap = edge_attribution(model, ps.clean, ps.corrupted, metric, method=method)
        dt = time.perf_counter() - t0
        a = np.concatenate([[eap.score(s, r) for s in senders(model)] for r in recs])
        e = np.concatenate([exact_edges[r].effect for r in recs])
        per = ", ".join(f"{r} {corr([eap.score(s, r) for s in senders(model)], exact_edges[r].effect):.3f}"
                        for r in recs)
        print(f"  {method:6s} ({dt:.1f} s, {np.isfinite(eap.scores).sum()} edges) vs exact path patching of "
              f"{np.isfinite(e).sum()} edges: r = {corr(a, e):.3f} overall; per receiver: {per}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--only", choices=["induction", "ioi", "all"], default="all")
    args = ap.parse_args()
    model = interp.load()
    if args.only in ("induction", "all"):
        induction(model, args.n)
    if args.only in ("ioi", "all"):
        approximations(model, *ioi(model, args.n))


if __name__ == "__main__":
    main()
