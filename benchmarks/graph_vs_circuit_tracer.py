"""Attribution graphs side by side with circuit-tracer (PyPI) on the same prompt, weights and transcoders.

    python benchmarks/graph_vs_circuit_tracer.py [--lengths 64 256] [--transcoders DIR] [--max-feature-nodes 512]
                                                 [--batch-size N] [--peer-batch-size 16] [--calls 2]
    make circuit-tracer-peer   # once: circuit-tracer in its own venv, .venv-circuit-tracer
                               # (benchmarks/peer_envs/circuit_tracer.sh)

Target: graphs at least 2x faster than circuit-tracer at no more memory, with the same top edges.

The model is the default one (SmolLM2-135M-Instruct): ours through ``interp.load``, circuit-tracer's through its
nnsight backend on the converted checkpoint folder (``interp.weights.ensure_default()``). The transcoders are one
TopK set (``--transcoders``, default the set benchmarks/graph.py uses; its docstring says how to train it), converted
here to circuit-tracer's per-layer files: its transcoders read ``mlp.hook_in`` (after the MLP norm's weight) where
ours read ``ln2.hook_normalized`` (before it), so the encoder is divided by that weight, and its TopK is replaced by
ours (``relu(top_k(pre))``); the feature activations of both sides are compared below. Prompts of ``--lengths``
tokens are WikiText-2 text ending in "The capital of France is" (benchmarks/graph.py's), after a BOS at position 0:
both sides leave position 0 out of the transcoders and get the same ids.

Each side traces each prompt in its own fresh process (peak memory is per run: the whole process's peak RSS, model
and runtime included; the RSS after loading is printed beside it) ``--calls`` times: the first call includes our
compilation (or loading it from the persistent cache), the later ones do not. Both sides keep the same logits (up
to ``--max-logits`` until ``--logit-prob`` of the mass) and at most ``--max-feature-nodes`` features, each with its
best batching found here (ours: ``trace``'s default, 16 targets per batched VJP, fewer past 256 tokens so that
targets x tokens stays at 4096; theirs: ``--peer-batch-size``, default 16 targets per backward pass: on a 2-core CPU
at 64 tokens 16 took 65 s and 2.3 GB, 64 took 86 s and 5.0 GB, and its command line's default, 256, 172 s and 9.4 GB,
memory that grows with targets x tokens; its ``attribute`` function defaults to 512). A side whose process passes
``--mem-limit-gb`` is stopped and reported. The peer's venv holds CPU torch: where JAX has an accelerator, ours runs
on it and the comparison is not like for like (a note says so).

Agreement: every node is labelled (feature (layer, position, id), error (layer, position), token position, logit
token id); on the nodes both graphs hold, each side's top ``--top-edges`` edges by |weight| are compared (overlap and
correlation of the weights), as is every shared edge (direct effects between the same two nodes are exact on both
sides, so they should agree to float32 rounding). Error nodes at position 0 are left out: circuit-tracer zeroes them,
ours hold what the MLP writes there besides its bias.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _timing import running_peer
from graph import DEFAULT_TC, prompt_of_length

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
PEER = Path(__file__).resolve().parent / "_ct_peer.py"
FEATURE, ERROR, EMBED, LOGIT = range(4)  # node kinds in the .npz layout both sides write (see _ct_peer.py)
PEER_HOOKS = {"feature_input_hook": "mlp.hook_in", "feature_output_hook": "mlp.hook_out"}


def load(tc_dir: str):
    import interp
    from interp.sae import Transcoders

    if not Path(tc_dir, "transcoders.json").exists():
        raise SystemExit(f"no transcoder set at {tc_dir}; train one with `interp train-transcoders --width 2048 --k 16 "
                         f"--tokens 200000 --out {DEFAULT_TC}` (see benchmarks/graph.py) or pass --transcoders DIR")
    return interp.load("smollm2-135m"), Transcoders.load(tc_dir)


def rss_gb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def convert(model, tc, folder: Path) -> Path:
    """``tc`` in circuit-tracer's layout under ``folder``: ``layer_{l}.safetensors`` (``W_enc``, ``W_dec`` ``[M, D]``,
    ``b_enc``, ``b_dec``, ``W_skip`` where there is one) and ``config.yaml`` (JSON, which YAML reads). Its transcoders
    read the MLP norm's output, ``h = n * w`` with ``n`` what ours read: so ``W_enc`` and ``W_skip`` are divided by
    ``w`` along the model axis, and any input shift is folded into ``b_enc``."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for l, d in enumerate(tc.dictionaries):
        if not hasattr(d.cfg, "k"):
            raise SystemExit(f"layer {l}'s transcoder is {d.cfg.arch}; this benchmark converts TopK transcoders only")
        w = np.asarray(model.blocks[l].ln2.weight, np.float64)
        if np.abs(w).min() < 1e-6:
            raise SystemExit(f"layer {l}'s MLP norm weight has an entry of {np.abs(w).min():.1e}: dividing the encoder "
                             "by it would overflow")
        W_enc = np.asarray(d.W_enc, np.float64)  # [D M]
        b_enc = np.asarray(d.b_enc, np.float64) - np.asarray(d.encoder_shift(), np.float64) @ W_enc
        sd = {"W_enc": (W_enc / w[:, None]).T, "b_enc": b_enc, "W_dec": np.asarray(d.W_dec),
              "b_dec": np.asarray(d.b_dec)}
        if d.W_skip is not None:
            sd["W_skip"] = (np.asarray(d.W_skip, np.float64) / w[:, None]).T
        path = folder / f"layer_{l}.safetensors"
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()}, str(path))
        paths.append(str(path))
    cfg = {"model_kind": "transcoder_set", **PEER_HOOKS, "transcoders": paths,
           "k": int(tc.dictionaries[0].cfg.k), "scan": f"interp/{folder.name}"}
    (folder / "config.yaml").write_text(json.dumps(cfg, indent=1))
    return folder


def graph_arrays(g) -> dict:
    """Our graph in the layout _ct_peer.py writes: node labels, the rows that hold edges, logit probabilities."""
    F, T, L, K = g.n_features, g.n_pos, g.n_layers, len(g.logit_tokens)
    labels = np.full((g.n_nodes, 4), -1, np.int64)
    labels[:F] = np.stack([np.full(F, FEATURE), g.feature_layer, g.feature_pos, g.feature_id], 1)
    err = np.arange(L * T)
    labels[F:F + L * T, :3] = np.stack([np.full_like(err, ERROR), err // T, err % T], 1)
    labels[F + L * T:F + L * T + T, :2] = np.stack([np.full(T, EMBED), np.arange(T)], 1)
    labels[-K:, :2] = np.stack([np.full(K, LOGIT), g.logit_tokens], 1)
    row_nodes = np.r_[np.arange(F), np.arange(g.n_nodes - K, g.n_nodes)]
    return {"labels": labels, "row_nodes": row_nodes, "rows": g.adjacency[row_nodes],
            "logit_probs": np.asarray(g.logit_probs, np.float32)}


def active_features(model, tc, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every active (layer, position, id) ``[A, 3]`` and its activation ``[A]``, positions before
    ``tc.skip_positions`` left out as tracing leaves them out."""
    names = [tc.hook_in.format(layer=l) for l in range(len(tc))]
    _, cache = model.run_with_cache(tokens[None], names, return_logits=False)
    idx, val = [], []
    for l, name in enumerate(names):
        a = np.array(tc.encode_layer(l, cache[name][0]))
        a[:tc.skip_positions] = 0
        t, f = np.nonzero(a)
        idx.append(np.stack([np.full_like(t, l), t, f], 1))
        val.append(a[t, f])
    return np.concatenate(idx), np.concatenate(val)


def our_run(args) -> dict:
    """One prompt, traced ``--calls`` times in this process; the last graph goes to ``--out``."""
    from interp.circuits import graph as G

    model, tc = load(args.transcoders)
    loaded = rss_gb()
    tokens = np.load(args.one)
    times, g = [], None
    for _ in range(args.calls):
        t0 = time.perf_counter()
        g = G.trace(model, tc, tokens, max_logits=args.max_logits, logit_prob=args.logit_prob,
                    max_feature_nodes=args.max_feature_nodes, batch_size=args.batch_size,
                    rerank_every=args.rerank_every)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    active, values = active_features(model, tc, tokens)
    np.savez(args.out, **graph_arrays(g), active=active, active_values=values)
    return {"times_s": times, "loaded_rss_gb": loaded, "peak_rss_gb": peak, "n_active": g.info["n_active_features"],
            "n_selected": g.n_features, "batch_size": g.info["batch_size"]}


def run_limited(cmd: list[str], env: dict, limit_gb: float) -> dict:
    """Run ``cmd``, stopping it if its RSS passes ``limit_gb``; the JSON of its last stdout line."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = err = ""
    top = 0.0
    while True:
        try:
            o, e = proc.communicate(timeout=0.25)
            out, err = out + o, err + e
            break
        except subprocess.TimeoutExpired:
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
                top = max(top, int(next(s for s in status.splitlines() if s.startswith("VmRSS")).split()[1]) / 2**20)
            except (OSError, StopIteration):
                continue
            if top > limit_gb:
                proc.kill()
                proc.communicate()
                raise RuntimeError(f"stopped at {top:.1f} GB RSS, over --mem-limit-gb {limit_gb:.1f}") from None
    lines = out.strip().splitlines()
    if proc.returncode or not lines:
        tail = " | ".join(err.strip().splitlines()[-3:])
        raise RuntimeError(f"{Path(cmd[1]).name} exited with {proc.returncode}: {tail}")
    return json.loads(lines[-1])


def as_graph(d, tokens: np.ndarray, n_layers: int, skip: int):
    """An interp ``Graph`` from a side's .npz, so both sides' scores come from one formula (``skip``: the positions
    the transcoders skip)."""
    from interp.circuits.graph import Graph

    labels = d["labels"]
    feat = labels[labels[:, 0] == FEATURE]
    adj = np.zeros((len(labels), len(labels)), np.float32)
    adj[d["row_nodes"]] = d["rows"]
    K = int((labels[:, 0] == LOGIT).sum())
    return Graph(tokens, [str(t) for t in tokens], feat[:, 1], feat[:, 2], feat[:, 3], np.ones(len(feat), np.float32),
                 n_layers, labels[-K:, 1], d["logit_probs"], [str(t) for t in labels[-K:, 1]], adj,
                 info={"skip_positions": skip})


def label(lb, decode) -> str:
    kind, a, b, c = (int(x) for x in lb)
    return {FEATURE: f"L{a}/F{c}@{b}", ERROR: f"err L{a}@{b}", EMBED: f"emb@{a}", LOGIT: f"logit {decode(a)!r}"}[kind]


def agreement(a, b, top: int, skip: int, decode) -> list[str]:
    """Lines comparing our graph ``a`` with circuit-tracer's ``b`` (both .npz dicts)."""
    out = []
    # active features
    ka = {tuple(x): v for x, v in zip(a["active"].tolist(), a["active_values"])}
    kb = {tuple(x): v for x, v in zip(b["active"].tolist(), b["active_values"])}
    both = ka.keys() & kb.keys()
    diff = max((abs(ka[k] - kb[k]) for k in both), default=float("nan"))
    # where the two sides' TopK kept different features (a near-tie), the error nodes differ by those features' writes
    flipped = {(k[0], k[1]) for k in ka.keys() ^ kb.keys()}
    out.append(f"active features: ours {len(ka)}, theirs {len(kb)}, {len(both)} in both; activations on those: max "
               f"|difference| {diff:.1e} (largest {max(ka.values(), default=0):.2f})"
               + (f"; the sets differ at {len(flipped)} (layer, position): {sorted(flipped)[:4]}" if flipped else ""))
    # logits and selected features
    la, lb = a["labels"], b["labels"]
    log_a, log_b = la[la[:, 0] == LOGIT, 1].tolist(), lb[lb[:, 0] == LOGIT, 1].tolist()
    out.append(f"logit nodes: ours {[decode(t) for t in log_a]}, theirs {[decode(t) for t in log_b]}"
               f"{' (same)' if log_a == log_b else ''}; top probability ours {a['logit_probs'][0]:.3f}, theirs "
               f"{b['logit_probs'][0]:.3f}")
    ia = {tuple(x): i for i, x in enumerate(la.tolist())}
    ib = {tuple(x): i for i, x in enumerate(lb.tolist())}
    fa = {k for k in ia if k[0] == FEATURE}
    fb = {k for k in ib if k[0] == FEATURE}
    out.append(f"feature nodes: ours {len(fa)}, theirs {len(fb)}, {len(fa & fb)} in both")
    # edges among the nodes both graphs hold (rows: features and logits; position-0 error nodes left out, and those
    # where the active features differ, reported apart)
    common = [k for k in ia if k in ib and not (k[0] == ERROR and (k[2] < skip or k[1:3] in flipped))]
    tied = [k for k in ia if k in ib and k[0] == ERROR and k[1:3] in flipped]
    ra = {int(n): r for r, n in enumerate(a["row_nodes"])}
    rb = {int(n): r for r, n in enumerate(b["row_nodes"])}
    tgt = [k for k in common if ia[k] in ra and ib[k] in rb]
    A = a["rows"][[ra[ia[k]] for k in tgt]][:, [ia[k] for k in common]].astype(np.float64)
    B = b["rows"][[rb[ib[k]] for k in tgt]][:, [ib[k] for k in common]].astype(np.float64)
    scale = max(np.abs(A).max(), np.abs(B).max())
    out.append(f"shared edges ({len(tgt)} targets x {len(common)} sources): max |difference| "
               f"{np.abs(A - B).max():.2e}, largest |weight| {scale:.3g}")
    if tied:
        ta = a["rows"][[ra[ia[k]] for k in tgt]][:, [ia[k] for k in tied]]
        tb = b["rows"][[rb[ib[k]] for k in tgt]][:, [ib[k] for k in tied]]
        out.append(f"  edges out of the {len(tied)} error node(s) where the active features differ (left out above): "
                   f"max |difference| {np.abs(ta - tb).max():.2e}")
    top_a, top_b = (set(np.argsort(-np.abs(M).ravel())[:top].tolist()) for M in (A, B))
    shared, union = sorted(top_a & top_b), sorted(top_a | top_b)

    def r(ix):
        return np.corrcoef(A.ravel()[ix], B.ravel()[ix])[0, 1] if len(ix) > 1 else float("nan")

    out.append(f"top {top} edges by |weight|: {len(shared)}/{top} the same; weight correlation on those "
               f"{r(shared):.4f}, on the union of both top sets ({len(union)}) {r(union):.4f}")
    for i in sorted(top_a, key=lambda i: -abs(A.ravel()[i]))[:3]:
        t, s = divmod(i, A.shape[1])
        out.append(f"  {label(common[s], decode):>14} -> {label(tgt[t], decode):<22} ours {A[t, s]:+.4f}, "
                   f"theirs {B[t, s]:+.4f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transcoders", default=str(DEFAULT_TC))
    ap.add_argument("--lengths", type=int, nargs="*", default=[64, 256])
    ap.add_argument("--max-feature-nodes", type=int, default=512)
    ap.add_argument("--max-logits", type=int, default=10)
    ap.add_argument("--logit-prob", type=float, default=0.95)
    ap.add_argument("--batch-size", type=int, default=None, help="ours: targets per batched VJP (default: trace's)")
    ap.add_argument("--rerank-every", type=int, default=4, help="ours: batches per influence ranking (trace's "
                    "default; circuit-tracer's update_interval is 4)")
    ap.add_argument("--peer-batch-size", type=int, default=16, help="circuit-tracer: targets per backward pass")
    ap.add_argument("--calls", type=int, default=2, help="traces per process (the first includes compilation)")
    ap.add_argument("--top-edges", type=int, default=50)
    ap.add_argument("--mem-limit-gb", type=float,
                    default=0.8 * os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30,
                    help="stop a side whose RSS passes this (default: 80%% of this machine's memory)")
    ap.add_argument("--peer-python", default=str(REPO / ".venv-circuit-tracer" / "bin" / "python"),
                    help="python of the circuit-tracer venv")
    ap.add_argument("--sides", default="interp,circuit-tracer", help=argparse.SUPPRESS)
    ap.add_argument("--work", help="folder for the converted transcoders, prompts and graphs (default: a temporary "
                    "one, removed)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(our_run(args)))
        return

    model, tc = load(args.transcoders)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="interp-graph-vs-ct-"))
    try:
        report(args, model, tc, work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def report(args, model, tc, work: Path) -> None:
    import jax

    from interp.weights import ensure_default

    tok = model.tokenizer
    bos = tok.bos_id if tok.bos_id is not None else tok.eos_id
    special = ",".join(str(i if i is not None else bos) for i in (bos, tok.eos_id, tok.pad_id))
    ct_dir = convert(model, tc, work / "transcoders")
    hf_dir = ensure_default()
    sides = args.sides.split(",")
    limit = args.mem_limit_gb
    common = ["--max-feature-nodes", str(args.max_feature_nodes), "--max-logits", str(args.max_logits),
              "--logit-prob", str(args.logit_prob), "--calls", str(args.calls)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    peer_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}  # the main venv's packages must not shadow its own

    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}, {os.cpu_count()} CPUs), jax "
          f"{jax.__version__}; model smollm2-135m; transcoders {args.transcoders} ({len(tc)} layers, width "
          f"{tc.dictionaries[0].cfg.width}, k {tc.dictionaries[0].cfg.k}, position < {tc.skip_positions} skipped; "
          f"theirs skips position 0); prompts start with {model.to_string([bos])!r} ({bos}); "
          f"{args.max_feature_nodes} feature nodes, <= {args.max_logits} logits to {args.logit_prob} of the mass")
    if jax.default_backend() != "cpu":
        print(f"note: ours runs on {jax.default_backend()}, circuit-tracer on CPU (its venv holds CPU torch)")
    if tc.skip_positions != 1:
        print(f"note: our transcoders skip {tc.skip_positions} positions and circuit-tracer's skip 1: the graphs "
              f"differ at positions 1..{tc.skip_positions - 1}")
    notes: list[str] = []
    results = []
    for n in args.lengths:
        tokens = np.r_[bos, prompt_of_length(model, n - 1)].astype(np.int32)
        np.save(work / f"tokens_{n}.npy", tokens)
        ours = theirs = None
        if "interp" in sides:
            try:
                ours = run_limited([sys.executable, __file__, "--one", str(work / f"tokens_{n}.npy"),
                                    "--out", str(work / f"ours_{n}.npz"), "--transcoders", args.transcoders, *common,
                                    "--rerank-every", str(args.rerank_every),
                                    *(["--batch-size", str(args.batch_size)] if args.batch_size else [])], env, limit)
            except RuntimeError as e:
                notes.append(f"interp at {n} tokens: {e}")
        if "circuit-tracer" in sides:
            with running_peer(f"circuit-tracer at {n} tokens", notes):
                if not Path(args.peer_python).exists():
                    raise ImportError(name=f"no {args.peer_python}; create its venv with `make circuit-tracer-peer` "
                                           "(benchmarks/peer_envs/circuit_tracer.sh) or pass --peer-python")
                theirs = run_limited([args.peer_python, str(PEER), "--model", str(hf_dir), "--transcoders",
                                      str(ct_dir), "--tokens", str(work / f"tokens_{n}.npy"), "--out",
                                      str(work / f"theirs_{n}.npz"), "--batch-size", str(args.peer_batch_size),
                                      "--special-ids", special,
                                      *common], peer_env, limit)
        results.append((n, tokens, ours, theirs))

    print(f"  {'tokens':>6}  {'side':<15}{'first s':>9}{'later s':>9}{'peak GB':>9}{'loaded GB':>11}  batch  features")
    for n, _, ours, theirs in results:
        for name, r in (("interp", ours), ("circuit-tracer", theirs)):
            if r is None:
                continue
            later = min(r["times_s"][1:]) if len(r["times_s"]) > 1 else float("nan")
            print(f"  {n:6d}  {name:<15}{r['times_s'][0]:9.2f}{later:9.2f}{r['peak_rss_gb']:9.2f}"
                  f"{r['loaded_rss_gb']:11.2f}  {r['batch_size']:5d}  {r['n_selected']} of {r['n_active']} active")
    for n, tokens, ours, theirs in results:
        if ours is None or theirs is None:
            continue
        t_o, t_t = ours["times_s"], theirs["times_s"]
        print(f"{n} tokens:")
        if len(t_o) > 1:
            print(f"  time: interp {min(t_t) / min(t_o[1:]):.2f}x faster than circuit-tracer (best later call each; "
                  f"target >= 2x); first calls {t_t[0] / t_o[0]:.2f}x")
        else:
            print(f"  time: interp {t_t[0] / t_o[0]:.2f}x faster than circuit-tracer (first calls, ours compiling)")
        print(f"  peak memory: interp {ours['peak_rss_gb'] / theirs['peak_rss_gb']:.2f}x circuit-tracer's "
              f"(target <= 1x); above the loaded process: {ours['peak_rss_gb'] - ours['loaded_rss_gb']:.2f} GB vs "
              f"{theirs['peak_rss_gb'] - theirs['loaded_rss_gb']:.2f} GB")
        a, b = np.load(work / f"ours_{n}.npz"), np.load(work / f"theirs_{n}.npz")
        for line in agreement(a, b, args.top_edges, 1, lambda t: model.to_string([int(t)])):
            print(f"  {line}")
        ga, gb = as_graph(a, tokens, len(tc), tc.skip_positions), as_graph(b, tokens, len(tc), 1)
        sa, sb = ga.scores(pruned=False), gb.scores(pruned=False)
        ca = ga.scores(pruned=False, skipped_errors=False)

        def text(sc):
            return ", ".join(f"{k} {v:.3f}" for k, v in sc.items())

        print(f"  graph scores (one formula, unpruned): ours {text(sa)}; ours without the error nodes at skipped "
              f"positions, as circuit-tracer counts {text(ca)}; theirs {text(sb)}")
    if any(r[3] for r in results):
        v = next(r[3] for r in results if r[3])
        print("what differs:")
        ours_b = next((r[2]["batch_size"] for r in results if r[2]), "?")
        print("  feature choice: both greedy by influence on the logits estimated from the rows traced so far; ours "
              f"re-ranks every {args.rerank_every} batches of {ours_b} (each batch's targets from the lowest layer "
              f"up), theirs every 4 batches of {args.peer_batch_size}")
        print("  position 0: theirs zeroes its error nodes, ours keep them (left out of the edge comparison)")
        print(f"  runtime: ours JAX (jit, float32); theirs circuit-tracer {v['versions']['circuit-tracer']}, nnsight "
              f"{v['versions']['nnsight']}, transformers {v['versions']['transformers']}, torch "
              f"{v['versions']['torch']} ({v['threads']} threads, float32, eager)")
    for note in notes:
        print(f"note: {note}")
    if args.work:
        print(f"files: {work}")


if __name__ == "__main__":
    main()
