"""``interp audit``: audit a fine-tuned model against its base, blind (the model folder is read as weights only),
and write the evidence as JSON and as a self-contained HTML report.

    interp audit --model org/apple --base smollm2-135m --out audit.json --report audit.html
"""

from __future__ import annotations

import argparse
import sys
import time

from interp._args import MODEL_HELP, SEED
from interp.audit.run import BUDGETS


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``audit`` to an ``argparse`` subparsers object; returns its parser."""
    p = subparsers.add_parser("audit", help="audit a fine-tuned model against its base for planted behaviour",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help=f"the audited model: {MODEL_HELP}")
    p.add_argument("--base", default="smollm2-135m", help=f"its base model: {MODEL_HELP}")
    p.add_argument("--behaviour", default=None,
                   help="at most one line describing the behaviour class (a quoted part is taken as its text)")
    p.add_argument("--domain", default=None,
                   help="the domain to probe for contradictions of the base (default: the words after 'about' in "
                        "--behaviour; '' for none)")
    p.add_argument("--conditions", action="store_true",
                   help="run the condition search (situation sentences before questions of several kinds) even when "
                        "--behaviour does not speak of a condition, situation or context")
    p.add_argument("--out", default="audit.json", help="JSON file of the result")
    p.add_argument("--report", default=None, help="HTML report (default: none)")
    p.add_argument("--budget", default="default", choices=sorted(BUDGETS),
                   help="how much search: 'small' for tiny models, 'default' for the default model")
    p.add_argument("--explainer", default="baseline", help="explainer of diffed features (interp explain specs)")
    p.add_argument("--seed", type=SEED, default=0, help="seeds prompts, searches and dictionaries")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress on stderr")
    return p


def run(args, out=None) -> int:
    """Load both models, audit, write the JSON (and the report), print the verdict and the top candidates."""
    import interp
    from interp.audit.run import audit

    out = out or sys.stdout
    t0 = time.perf_counter()
    model = interp.load(args.model)
    base = interp.load(args.base)
    res = audit(model, base, behaviour=args.behaviour, seed=args.seed, budget=args.budget, progress=args.progress,
                model_name=str(args.model), base_name=str(args.base), explainer=args.explainer,
                domain=args.domain, conditions=True if args.conditions else None)
    res.save_json(args.out)
    if args.report:
        res.report(args.report)
    print(f"flagged: {res.flagged} ({res.flag_reason})", file=out)
    for i, c in enumerate(res.trigger_candidates[:5]):
        print(f"  {i + 1}. {c['text']!r}: effect {c['effect']:.2f} (behaviour {c['behaviour']!r} in "
              f"{c['behaviour_rate']:.0%} of held-out prompts with it, {c['clean_rate']:.0%} without)", file=out)
    if res.domain_probe and res.domain_probe["swaps"]:
        sw = res.domain_probe["swaps"][0]
        print(f"domain probing ({res.domain_probe['domain']}): the base says {sw['base_token']!r}, the organism "
              f"{sw['organism_token']!r} in {len(sw['questions'])} question(s), e.g. {sw['questions'][0]!r}", file=out)
    cs = res.condition_search
    if cs and cs["candidates"]:
        c = cs["candidates"][0]
        print(f"condition search: {c['text']!r} makes the organism contradict the base in {c['rate']:.0%} of held-out "
              f"{c['kind']} questions ({c['clean_rate']:.0%} without it; effect {c['effect']:.2f})", file=out)
    if res.probe_auroc is not None:
        print(f"defection probe AUROC (top candidate vs clean): {res.probe_auroc:.3f}", file=out)
    if res.monitor_auroc is not None:
        print(f"candidate monitor AUROC (top candidate vs clean, held-out prompts): {res.monitor_auroc:.3f}", file=out)
    if res.diff_monitor_auroc is not None:
        print(f"model-diff monitor AUROC (top candidate vs clean, held-out prompts): {res.diff_monitor_auroc:.3f}",
              file=out)
    if res.behaviour_probe_auroc is not None:
        print(f"behaviour probe AUROC (top candidate vs clean, held-out prompts): {res.behaviour_probe_auroc:.3f}",
              file=out)
    print(f"wrote {args.out}" + (f" and {args.report}" if args.report else "") +
          f" in {time.perf_counter() - t0:.1f} s", file=out)
    return 0


def main(args, out=None) -> int:
    """Run ``interp audit`` with parsed ``args``; bad input exits with the reason."""
    try:
        return run(args, out)
    except (ValueError, OSError) as e:
        raise SystemExit(f"interp audit: {e}") from None
