"""The main job: the whole pipeline on the packaged defaults, written to one self-contained report.

    interp demo [--out report.html] [--sae-tokens 200000] [--sae-epochs 3] [--corpus PATH] [--transcoders DIR]

1. load the default model (SmolLM2-135M-Instruct) and read a prompt with the logit lens and direct logit
   attribution;
2. find induction heads on repeated random tokens and show their attention;
3. study indirect object identification (IOI): residual-stream and head patching, direct logit attribution
   per head, and the circuit traced by edge attribution patching (EAP) over every edge;
4. train a small TopK SAE on a middle layer's residual stream from the default corpus (live curves in the
   report), evaluate it, build feature dashboards, and explain its latents automatically (``--explainer``: the
   baseline token patterns by default; a local instruct model or an OpenAI-compatible server), each explanation
   scored by detection and fuzzing on held-out text against a shuffled control;
5. with transcoders for every layer (``--transcoders``, or the ones cached by ``interp train-transcoders``
   at the path printed), trace an attribution graph whose feature nodes open their dashboards on click;
6. write ``report.html`` (plotly.js inlined, renders offline) with provenance.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_TRANSCODERS = "$INTERP_CACHE/transcoders/smollm2-135m-w2048-k16 (INTERP_CACHE defaults to ~/.cache/interp)"


def default_transcoders() -> Path:
    """Where the demo looks for a transcoder set when none is given."""
    from interp.weights.default import cache_dir

    return cache_dir() / "transcoders" / "smollm2-135m-w2048-k16"
LENS_PROMPT = "The capital of France is"
GRAPH_PROMPT = "The capital of France is"
BUFFER = 2**15  # activations shuffled together while training the SAE


@dataclasses.dataclass
class DemoConfig:
    model: str = "smollm2-135m"
    out: str = "report.html"
    corpus: str | None = None  # None: the built-in text (Python's own documentation and sources)
    sae_layer: int | None = None  # default: the middle layer
    sae_width: int = 2048
    sae_k: int = 32
    sae_tokens: int = 200_000  # activations harvested once from the model
    sae_epochs: int = 3  # passes over them: three reach a held-out FVU under 0.2 for little more than one's time
    sae_batch: int = 256
    sae_lr: float = 2e-3
    context_size: int = 128
    dashboard_contexts: int = 96
    n_dashboards: int = 12
    explainer: str | tuple = "baseline"  # interp.explain.EXPLAINER_SPECS (or parse_explainer's tuple)
    explain_latents: int = 64  # latents explained and scored (the dashboards' first)
    api_key_env: str | None = None  # for an openai: explainer
    ioi_prompts: int = 8
    eap_edges: int = 40
    transcoders: str | None = None  # folder of a Transcoders set; default: DEFAULT_TRANSCODERS when present
    graph: bool | None = None  # trace an attribution graph; None: when transcoders are found
    seed: int = 0


class _Steps:
    """Numbered progress lines with timings."""

    def __init__(self, n: int, out):
        self.n, self.i, self.out = n, 0, out
        self.t0 = self.t = time.perf_counter()

    def __call__(self, what: str) -> None:
        now = time.perf_counter()
        if self.i:
            print(f"      done in {now - self.t:.1f} s", file=self.out, flush=True)
        self.i += 1
        self.t = now
        print(f"[{self.i}/{self.n}] {what}", file=self.out, flush=True)

    def end(self) -> float:
        now = time.perf_counter()
        print(f"      done in {now - self.t:.1f} s", file=self.out, flush=True)
        return now - self.t0


def _contexts(model, corpus, n: int, size: int, skip: int = 0) -> np.ndarray:
    from interp.sae.store import iter_contexts

    it = iter_contexts(model.tokenizer, corpus, size)
    for _ in range(skip):
        next(it)
    # as in training: contexts cut from the token stream, first position left out of the statistics
    return np.stack([next(it) for _ in range(n)])


def _pick_features(index, n: int) -> list[int]:
    """Latents worth a dashboard: firing on 0.05%..5% of tokens, largest peak activation first, one per
    distinct strongest context."""
    dens = index.density()
    ok = np.flatnonzero((dens >= 5e-4) & (dens <= 0.05))
    if ok.size < n:
        ok = np.flatnonzero(dens > 0)
    peak = np.array([index.entries(int(f))[1].max() for f in ok]) if ok.size else np.zeros(0)
    chosen, seen = [], set()
    for f in ok[np.argsort(-peak)]:
        pos, val = index.entries(int(f))
        where = int(pos[np.argmax(val)])
        if where in seen:
            continue
        seen.add(where)
        chosen.append(int(f))
        if len(chosen) == n:
            break
    return chosen


def run(cfg: DemoConfig | None = None, out=sys.stdout) -> Path:
    """Run the whole demo and write the report; returns its path."""
    cfg = cfg or DemoConfig()
    import interp
    from interp import sae
    from interp.circuits import (
        direct_logit_attribution,
        edge_attribution,
        head_scores,
        metrics,
        patch,
        prompts,
    )
    from interp.explain import (
        Baseline,
        LLMExplainer,
        Scorer,
        backend_from_spec,
        explain_latents,
        label_graph,
        parse_explainer,
    )
    from interp.features import feature_cards, feature_index
    from interp.report import HTML, Report
    from interp.viz import figures as F
    from interp.viz import views

    tc_dir = Path(cfg.transcoders).expanduser() if cfg.transcoders else default_transcoders()
    with_graph = (tc_dir / "transcoders.json").exists() and cfg.graph is not False
    if (cfg.transcoders or cfg.graph) and not (tc_dir / "transcoders.json").exists():
        raise FileNotFoundError(f"no transcoders at {tc_dir} (transcoders.json is missing); train them with "
                                f"`interp train-transcoders --out {tc_dir}` or leave --transcoders out")
    out_path = Path(cfg.out).expanduser()
    if out_path.is_dir():
        raise IsADirectoryError(f"--out {out_path} is a folder; give a file name such as {out_path / 'report.html'}")
    step = _Steps(6 if with_graph else 5, out)
    spec = parse_explainer(cfg.explainer) if isinstance(cfg.explainer, str) else tuple(cfg.explainer)
    # a server's backend is built first, so that a missing API key fails before any work
    remote = backend_from_spec(spec, api_key_env=cfg.api_key_env) if spec[0] == "openai" else None
    report = Report(f"interp: a tour of {cfg.model}")
    corpus_name = cfg.corpus or "built-in text (Python's documentation topics and standard-library sources)"

    # 1 ------------------------------------------------------------------ model, lens, DLA
    step(f"load {cfg.model}; logit lens and direct logit attribution of {LENS_PROMPT!r}")
    model = interp.load(cfg.model)
    print(f"      {model.n_layers} layers, d_model {model.d_model}, vocab {model.d_vocab}", file=out)
    top = model.top_next(LENS_PROMPT, k=8)
    print("      next token: " + ", ".join(f"{t!r} {p:.3f}" for t, p in top[:4]), file=out)
    report.add_text(
        "Everything on this page was computed by `interp demo` on this machine: a hooked JAX reimplementation of "
        f"{cfg.model}, patching and attribution over its components, a sparse autoencoder trained from its "
        "activations, and feature dashboards. Hover over any figure for values; menus switch heads or slices.",
        title="About this report")
    report.add({f"{t!r}": round(p, 4) for t, p in top}, title=f"Next-token probabilities after {LENS_PROMPT!r}")
    report.add(views.lens_view(model, LENS_PROMPT, per="head"), title="Logit lens and direct logit attribution",
               note="Top: the token each layer's residual stream would predict (colour: its probability). Bottom: "
                    "each head's and MLP's direct contribution to the final answer's logit.")

    # 2 ------------------------------------------------------------------ induction heads
    step("induction heads on repeated random tokens")
    half = 16
    bos = model.tokenizer.bos_id
    rep = prompts.induction(model.d_vocab, n=8, length=half, seed=cfg.seed, bos=bos, exclude=range(17))
    offset = rep.shape[1] - 2 * half
    scores = head_scores(model, rep, offset=offset)
    ind = scores["induction"]
    best = scores.top("induction", 4)
    print("      top induction heads: " + ", ".join(f"L{l}H{h} {s:.2f}" for l, h, s in best), file=out)
    fig = F.heatmap_figure(ind, [f"L{l}" for l in range(model.n_layers)], [f"H{h}" for h in range(ind.shape[1])],
                           title="Induction score (attention from a repeated token to the token after its first "
                                 "occurrence)", zlabel="score", diverging=False)
    report.add(fig, title="Induction heads")
    l0, h0, _ = best[0]
    report.add(views.attention_view(model, rep[:1], l0, heads=[h for l, h, _ in best if l == l0] or [h0]),
               note=f"Attention of layer {l0} on one repeated sequence: the induction stripe sits one token after "
                    "the diagonal of the repeat.")

    # 3 ------------------------------------------------------------------ IOI circuit
    step(f"indirect object identification: patching, DLA and the EAP circuit ({cfg.ioi_prompts} prompts)")
    ps = prompts.ioi(model, n=cfg.ioi_prompts, seed=cfg.seed, corruption="abc")
    metric = metrics.logit_diff(ps.answer, ps.wrong)
    resid = patch(model, ps.clean, ps.corrupted, metric, "resid_pre")
    heads = patch(model, ps.clean, ps.corrupted, metric, "z", per="head")
    dla = direct_logit_attribution(model, ps.clean, np.stack([ps.answer, ps.wrong], 1), per="head")
    eap = edge_attribution(model, ps.clean, ps.corrupted, metric, method="eap")
    print(f"      logit diff clean {resid.source:.2f}, corrupted {resid.base:.2f}; top heads "
          + ", ".join(f"L{lab[0]}{lab[1]} {e / (resid.source - resid.base):+.2f}" for lab, e in heads.top(3)), file=out)
    report.add_text(
        f"Example: {ps.clean_text[0]!r} → {model.to_string([int(ps.answer[0])])!r}; corrupted (ABC): "
        f"{ps.corrupted_text[0]!r}. Metric: logit difference between the indirect object and the subject, "
        f"{resid.source:.2f} on clean prompts and {resid.base:.2f} on corrupted ones. Patching copies a clean "
        "activation into the corrupted run; 1 means the clean behaviour is fully restored.",
        title="Indirect object identification")
    report.add(resid, title="Residual stream patching (layer x position)")
    report.add(heads, title="Head output patching (layer x head)")
    ld = dla.logit_diff().mean(1)
    report.add(F.bar_figure(dla.labels, ld, title="Direct logit attribution to the logit difference (clean runs)",
                            xaxis="contribution", horizontal=True, top=25), title="Direct logit attribution per head")
    report.add(F.edge_circuit_figure(eap, model.n_layers, model.blocks[0].attn.n_heads, top=cfg.eap_edges),
               title="The circuit traced by edge attribution patching",
               note=f"The {cfg.eap_edges} strongest of {int(np.isfinite(eap.scores).sum())} edges (EAP, one "
                    "forward and one backward pass): each edge's estimated effect on the logit difference of "
                    "patching that edge alone.")
    report.add({f"{s} → {r}": round(v, 4) for s, r, v in eap.top(15)}, title="Strongest edges")

    # 4 ------------------------------------------------------------------ SAE and dashboards
    layer = cfg.sae_layer if cfg.sae_layer is not None else model.n_layers // 2
    hook = f"blocks.{layer}.hook_resid_post"
    step(f"train a TopK SAE ({cfg.sae_width} latents, k={cfg.sae_k}) on {hook}: {cfg.sae_tokens:,} tokens, "
         f"{cfg.sae_epochs} passes; "
         "feature dashboards")
    # one shuffle buffer of at most BUFFER tokens, and no more than a short run needs (twice its tokens)
    buffer = min(BUFFER, -(-2 * cfg.sae_tokens // cfg.context_size) * cfg.context_size)
    tcfg = sae.TrainConfig(
        sae.TopKConfig(d_in=model.d_model, width=cfg.sae_width, k=cfg.sae_k, hook_name=hook), model=cfg.model,
        corpus=cfg.corpus, total_tokens=cfg.sae_tokens, batch_size=cfg.sae_batch, context_size=cfg.context_size,
        lr=cfg.sae_lr, eval_every=5, seed=cfg.seed, buffer_tokens=buffer)
    from tqdm.auto import tqdm

    from interp.sae.trainer import make_store

    # Harvesting is most of the cost, so the activations are harvested once (the model stops after the SAE's
    # layer) and trained on for several passes, each in a fresh order.
    live = make_store(tcfg, model)
    n_batches = cfg.sae_tokens // cfg.sae_batch
    acts = np.concatenate([live.next_batch()[0] for _ in tqdm(range(n_batches), desc="harvest", unit="batch")])
    store = sae.ArrayActivationStore(acts, batch_size=cfg.sae_batch, seed=cfg.seed)
    steps = cfg.sae_epochs * n_batches
    tcfg = dataclasses.replace(tcfg, total_tokens=steps * cfg.sae_batch,
                               # 10 warm-up steps, or an eighth of a short run (small settings)
                               lr_warmup_steps=min(10, max(1, steps // 8)))
    result = sae.train(tcfg, model=model, store=store, progress=True)
    d = result.dictionary
    # held-out text: contexts after the ones used for training
    per_chunk = buffer // cfg.context_size  # training reads whole chunks of contexts
    skip = (cfg.sae_tokens // buffer + 2) * per_chunk
    held = _contexts(model, cfg.corpus, cfg.dashboard_contexts, cfg.context_size, skip=skip)
    ev = sae.evaluate(model, d, held[:16], skip_positions=1)
    index = feature_index(model, d, held, skip_positions=1, progress=True)
    chosen = _pick_features(index, cfg.n_dashboards)
    print(f"      FVU {ev.fvu:.3f}, L0 {ev.l0:.1f}, CE loss recovered {ev.ce_loss_recovered:.3f}; "
          f"{len(chosen)} dashboards", file=out)
    backend = remote or backend_from_spec(spec, model=model, model_name=cfg.model)
    explainer = LLMExplainer(backend) if backend is not None else Baseline()
    scorers = ["detection", "fuzzing"] if backend is None else [Scorer(t, backend) for t in ("detection", "fuzzing")]
    extra = [f for f in _pick_features(index, cfg.explain_latents) if f not in chosen]
    to_explain = (chosen + extra)[:max(cfg.explain_latents, len(chosen))]
    t_expl = time.perf_counter()
    expl = explain_latents(model, d, index, to_explain, explainer=explainer, scorers=scorers, seed=cfg.seed)
    table = expl.summary_table()
    print(f"      {len(to_explain)} latents explained ({explainer.name}) in {time.perf_counter() - t_expl:.1f} s: "
          + ", ".join(f"{n.split(':')[0]} {t['mean']:.2f} (control {t['control_mean']:.2f})"
                      for n, t in table.items()), file=out)
    report.add(views.training_view(result.history), title=f"SAE training on {hook}")
    report.add({k: (round(v, 4) if isinstance(v, float) else v) for k, v in ev.as_dict().items()},
               title="SAE evaluation on held-out text",
               note=f"{len(held[:16]) * (cfg.context_size - 1):,} held-out tokens; CE loss recovered compares "
                    "the model with the SAE spliced in against zero-ablating the layer's residual output.")
    density = index.density()
    report.add(F.histogram_figure(*np.histogram(np.log10(density[density > 0]), bins=40),
                                  xaxis="log10 fraction of tokens", title="Latent density"),
               note=f"{int((density == 0).sum())} of {d.cfg.width} latents never fired on "
                    f"{index.n_tokens:,} held-out tokens.")
    report.add(feature_cards(model, d, index, chosen, explanations=expl), title="Feature dashboards",
               note="Top-activating held-out contexts (orange: activation on each token; hover for values), "
                    "activation histogram, and the tokens each latent's decoder direction promotes and suppresses; "
                    "above them, the latent's automated explanation with its scores.")
    report.add(expl, title="Automated explanations",
               note=f"Explainer: {explainer.name}. Each explanation is scored on held-out contexts it was not "
                    "written from: detection (does a context make the latent fire?) and fuzzing (are the marked "
                    "tokens the activating ones?), balanced, with 95% bootstrap intervals; the control scores each "
                    "latent with another latent's explanation.")

    dictionaries = [d]
    # 5 ------------------------------------------------------------------ attribution graph
    if with_graph:
        from interp.circuits.graph import auto_supernodes, prune, trace
        from interp.sae.transcoders import Transcoders

        step(f"attribution graph of {GRAPH_PROMPT!r} over the transcoders in {tc_dir}")
        tc = Transcoders.load(tc_dir)
        graph = prune(trace(model, tc, GRAPH_PROMPT, max_feature_nodes=256))
        groups = auto_supernodes(graph, tc.dictionaries)
        for name, members in groups.items():
            graph.group(name, members)
        sc = graph.scores()
        print(f"      {len([i for i in graph.kept() if graph.kind(int(i)) == 'feature'])} features kept; "
              f"replacement {sc['replacement']:.2f}, completeness {sc['completeness']:.2f}", file=out)
        from interp.features import feature_indices

        graph_tokens = held[:48, :64]
        s_feat = graph.slices()["feature"]
        kept = [int(i) for i in graph.kept() if graph.kind(int(i)) == "feature"]
        by_layer: dict[int, set] = {}
        for i in kept:
            by_layer.setdefault(int(graph.feature_layer[i - s_feat.start]), set()).add(
                int(graph.feature_id[i - s_feat.start]))
        tc_indices = feature_indices(model, {l: (tc.dictionaries[l], tc.hook_in.format(layer=l)) for l in by_layer},
                                     graph_tokens, skip_positions=tc.skip_positions)
        tc_expl = {l: explain_latents(model, tc.dictionaries[l], tc_indices[l], sorted(fs), scorers=[],
                                      seed=cfg.seed) for l, fs in by_layer.items()}
        label_graph(graph, tc_expl)
        report.add(views.graph_explorer_view(model, tc, graph, graph_tokens, explanations=tc_expl, indices=tc_indices),
                   title="Attribution graph",
                   note="Nodes: token embeddings (bottom), transcoder features and error nodes by layer and "
                        "position, and the top logits (top). Click a feature to read its dashboard.")
        dictionaries += list(tc.dictionaries[:1])
    else:
        report.add(HTML(f'<p class="note">No transcoders at {F.escape(str(tc_dir))}, so no attribution graph. '
                        "Train them with <code>interp train-transcoders --out "
                        f"{F.escape(str(tc_dir))}</code> (about 16 minutes on 2 CPU cores) and run the demo "
                        "again.</p>"), title="Attribution graph")

    # 6 ------------------------------------------------------------------ report
    step(f"write {out_path}")
    report.set_provenance(model=model, model_name=cfg.model, dictionaries=dictionaries, corpus=corpus_name,
                          extra={"demo settings": {k: v for k, v in dataclasses.asdict(cfg).items() if v is not None}})
    report.save(out_path)
    total = step.end()
    size = out_path.stat().st_size
    print(f"\nreport: {out_path.resolve()} ({size / 1e6:.1f} MB, renders offline); whole demo {total:.0f} s",
          file=out)
    return out_path
