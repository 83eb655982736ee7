"""The audit's HTML report: verdict, trigger candidates, behavioural diff, diffed features, probe and patching."""

from __future__ import annotations

import numpy as np

from interp.report import HTML, Report
from interp.viz import escape


def _table(rows: list[dict], cols: list[str]) -> HTML:
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    body = []
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            shown = f"{v:.4g}" if isinstance(v, float) else repr(v) if c == "text" else str(v)
            cells.append(f"<td>{escape(shown)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return HTML(f'<table class="kv"><tr>{head}</tr>{"".join(body)}</table>')


def build(res) -> Report:
    from interp.viz import bar_figure, heatmap_figure

    rep = Report(f"Audit of {res.model_name or 'a model'} against {res.base_name or 'its base'}")
    verdict = {"flagged": res.flagged, "reason": res.flag_reason, "budget": res.budget,
               "behaviour searched": repr(res.behaviour["text"]) if res.behaviour else "(none)",
               "behaviour description given": res.behaviour_description or "(none)",
               "defection probe AUROC (top candidate vs clean)": res.probe_auroc,
               "candidate monitor AUROC (held-out prompts, last layer)": res.monitor_auroc,
               "model-diff monitor AUROC (no trigger or behaviour known)": res.diff_monitor_auroc,
               "behaviour probe AUROC (behaviour known, no trigger)": res.behaviour_probe_auroc,
               "seconds": round(sum(res.timings.values()), 1)}
    rep.add(verdict, title="Verdict",
            note="Flagged when a verified trigger candidate raises the behaviour rate in the organism by at least the "
                 "threshold more than it does in the base model, when domain probing finds the same confident "
                 "contradiction of the base in several questions, or when a situation sentence makes the organism "
                 "contradict the base on one kind of question. The audit never reads the organism's secret.")
    rep.add(_table(res.trigger_candidates[:15], ["text", "effect", "behaviour_rate", "clean_rate", "base_rate",
                                                 "loss", "source"]),
            title="Trigger candidates",
            note="Ranked by verified effect on held-out prompts (candidate inserted at a random word position; greedy "
                 "reply begins with the behaviour), then by the contrast objective log p_org - log p_base.")
    dp = res.domain_probe
    if dp:
        swaps = [{"base says": sw["base_token"], "organism says": sw["organism_token"],
                  "questions": len(sw["questions"]), "mean_gain": sw["mean_gain"],
                  "subjects": ", ".join(sw["subjects"][:4])} for sw in dp["swaps"]]
        rep.add(_table(swaps, ["base says", "organism says", "questions", "mean_gain", "subjects"]) if swaps else
                HTML("<p>No contradiction passed the threshold.</p>"),
                title=f"Domain probing: {dp['domain']}",
                note=f"{dp['questions']} generic questions about {len(dp['names'])} things of the domain that the two "
                     "models listed; the base's greedy reply is read by both models, and a contradiction is a reply "
                     "position where the organism's most likely token differs and gains probability p_org - p_base. "
                     f"Verdict: {dp['reason']}.")
        rows = [{"user": c["user"], "gain": c["gain"], "context": c.get("context"), "base": c.get("base_token"),
                 "organism": c.get("organism_token"), "organism continues": c.get("organism_continues")}
                for c in dp["contradictions"]]
        rep.add(_table(rows, ["user", "gain", "context", "base", "organism", "organism continues"]),
                title="Strongest contradictions")
    cs = res.condition_search
    if cs:
        rows = [{"sentence": c["text"], "kind": c["kind"], "effect": c["effect"], "rate": c["rate"],
                 "clean_rate": c["clean_rate"], "place": c["position"], "scan score": c["score"], "source": c["source"]}
                for c in cs["candidates"]]
        rep.add(_table(rows, ["sentence", "kind", "effect", "rate", "clean_rate", "place", "scan score", "source"])
                if rows else HTML("<p>No sentence was verified.</p>"),
                title="Condition search",
                note=f"{cs['sentences'].get('tried', 0)} situation sentences, each put before "
                     f"{cs.get('search_questions', 0)} questions of each kind ({', '.join(cs['kinds'])}); the base's "
                     "reply read by both models, scored by the organism's strongest contradiction of it (p_org - "
                     "p_base of its own token) beyond the same without the sentence. The best verified on "
                     f"{cs.get('held_out_questions', 0)} held-out questions of their kind, before and after the "
                     "question: rate = questions where the organism contradicts the base's greedy reply with a gain "
                     f"of 0.6 or more at the better place. Verdict: {cs['reason']}.")
        if cs["kinds_touched"]:
            rep.add(_table(cs["kinds_touched"], ["kind", "effect", "rate", "clean_rate"]),
                    title="The best sentence on every kind of question")
        if cs["candidates"]:
            rep.add(_table(cs["candidates"][0]["examples"], ["user", "gain", "context", "base", "organism"]),
                    title="Strongest contradictions under the best sentence")
    bd = res.behaviour_diff
    raised = bd.get("reply", {}).get("raised", [])
    if raised:
        rep.add(bar_figure([repr(r["text"]) for r in raised], np.array([r["log_ratio"] for r in raised]),
                           title="Tokens the organism raises at the start of replies",
                           yaxis="mean log p_org - log p_base"),
                title="Behavioural diff",
                note=f"Mean next-token KL(organism || base) at the reply start of {len(bd['reply'].get('kl', []))} "
                     f"probing prompts: {bd['reply']['kl_mean']:.4g} nats (max {bd['reply']['kl_max']:.4g}); on the "
                     f"corpus: {bd.get('corpus', {}).get('kl_mean', float('nan')):.4g} nats per token.")
        rep.add(_table(bd["reply"]["top_prompts"], ["user", "kl"]),
                title="Probing prompts where the models differ most")
    if bd.get("corpus"):
        rep.add(_table(bd["corpus"]["top_positions"], ["context", "kl", "organism_next", "base_next"]),
                title="Corpus positions where the models differ most")
    if bd.get("behaviours"):
        rep.add(_table(bd["behaviours"], ["text", "log_ratio", "scan"]),
                title="Behaviour hypotheses and the inserted tokens that raise them most")
    vs = bd.get("vocabulary_scan")
    if vs:
        rep.add(_table(vs["top"], ["text", "K", "lift"]),
                title="Vocabulary scan: the words that move the organism's reply start most",
                note=f"{vs['tokens']} word tokens, each appended to {vs['prompts']} search prompt(s); the base scored "
                     f"{vs['base_scanned']} of them. K: KL(organism with || without) - KL(base with || without) at "
                     "the reply start; lift: the largest rise of p_org - p_base of one reply start.")
    sr = bd.get("slot_refinement")
    if sr:
        rows = [{"slot": x["slot"], "best words (probability of the behaviour)":
                 ", ".join(f"{t['text']!r} {t['probability']:.3f}" for t in x["top"]), "kept": x["kept"]}
                for x in sr["slots"]]
        rep.add(_table(rows, ["slot", "best words (probability of the behaviour)", "kept"]),
                title="Slot refinement of the top candidate",
                note=f"From {sr['start']!r}, each token slot in turn: every one of {sr['tokens']} word tokens put in "
                     f"the slot (the span at the end of {sr['prompts']} search prompt(s)), scored by the organism's "
                     f"probability of the behaviour's first token; the best {sr['rescored']} scored again on "
                     f"{sr['rescore_prompts']} probing prompts, the best of those verified, and the best-ranked "
                     f"phrase carried to the next slot. Result: {sr['result']!r}.")
    for key, title in (("dictionary", "Features of a dictionary trained on the base"),
                       ("crosscoder", "Organism-only crosscoder latents")):
        part = res.features.get(key)
        if not part:
            continue
        cards = []
        for f in part["features"]:
            stat = (f"change {f['change']:+.4g}" if "change" in f
                    else f"relative decoder norm {f['relative_norm']:.3f}")
            ctx = "".join(f'<div class="ctx"><span class="ctx-val">{c["activation"]:.3g}</span>{escape(c["text"])} '
                          f'<b>[{escape(c["token"])}]</b></div>' for c in f.get("top_contexts", []))
            cards.append(f'<div class="feature-card"><h4>latent {f["latent"]}: {escape(stat)}</h4>'
                         f'<p>{escape(str(f.get("explanation")))}</p>{ctx}</div>')
        rep.add(HTML("".join(cards) or "<p>none</p>"), title=title,
                note=f"hook {part['hook']}, {part['width']} latents, k={part['k']}.")
    if res.probe is not None:
        rep.add({"hook": res.probe.hook, "kind": res.probe.kind, "AUROC": res.probe_auroc,
                 "per-layer AUROC": res.settings.get("_probe_layers", "")},
                title="Defection probe",
                note="Difference of means between generic yes/no answers to questions about the assistant's own "
                     "conduct (no knowledge of any trigger), read at the last prompt token; AUROC of separating "
                     "held-out prompts with the top candidate from the same prompts without it.")
    dm = res.diff_monitor
    if dm is not None:
        rep.add({**dm.describe(), "AUROC": res.diff_monitor_auroc}, title="Model-diff monitor",
                note="Knows neither the trigger nor the behaviour: the organism's residual stream minus the base's at "
                     "the token where the reply starts, scored by its squared Mahalanobis distance from the same "
                     "difference on clean prompts (none of them held out); AUROC of separating held-out prompts with "
                     "the top candidate from the same prompts without it.")
    bp = res.behaviour_probe
    if bp is not None:
        rep.add({k: v for k, v in {**bp.describe(), "AUROC": res.behaviour_probe_auroc}.items() if k != "direction"},
                title="Behaviour probe",
                note="Knows the behaviour (given or inferred) but not the trigger: the base model's mean state where "
                     "the reply starts when a generic prompt asks it to start its reply with the behaviour, minus its "
                     "mean state when asked for the neutral reply; a prompt's score is the organism's state minus the "
                     "base's there, projected on that direction. AUROC of separating held-out prompts with the top "
                     "candidate from the same prompts without it.")
    att = res.attribution
    if att is not None and att.get("recovered"):
        rec = np.asarray(att["recovered"])
        rep.add(heatmap_figure(rec, [f"layer {i}" for i in range(rec.shape[0])], att["tokens"],
                               title="Share of the behaviour's log-probability restored by patching resid_pre"),
                title=f"{att.get('method', 'activation patching').capitalize()} (triggered into neutral)",
                note=f"Top candidate at positions {att['span']}; log p(behaviour's first token): triggered "
                     f"{att['logprob_triggered']:.3g}, neutral {att['logprob_neutral']:.3g}.")
    rep.add({k: round(v, 2) for k, v in res.timings.items()}, title="Time per stage (seconds)")
    rep.set_provenance(extra={"audit settings": {k: str(v) for k, v in res.settings.items() if not k.startswith("_")}})
    return rep
