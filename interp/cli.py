"""The ``interp`` command line. ``interp demo`` runs the main job on the packaged defaults and writes a report;
``interp predict`` prints next-token predictions and a logit lens; ``interp train-sae`` and
``interp train-transcoders`` train dictionaries; ``interp search`` searches input tokens for an objective (GCG);
``interp explain`` explains and scores a dictionary's latents into a JSONL file; ``interp organism`` plants a
behaviour in a model by fine-tuning (a model organism) and ``interp audit`` audits a fine-tuned model against its
base for planted behaviour."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
import warnings
from pathlib import Path

from interp._args import MODEL_HELP, NONNEGATIVE, POSITIVE, RATE, SEED, DefaultsHelp, number
from interp._version import __version__
from interp.audit import cli as audit_cli
from interp.demo import DEFAULT_TRANSCODERS, DemoConfig
from interp.explain.spec import EXPLAINER_SPECS
from interp.organisms import cli as organism_cli

PREDICT_PROMPTS = (
    "The capital of France is",
    "The Eiffel Tower is located in the city of",
    "When Mary and John went to the store, John gave a drink to",
    "one, two, three, four,",
)


def predict(model_name: str = "smollm2-135m", prompts=PREDICT_PROMPTS, k: int = 5, out=sys.stdout) -> None:
    """Top next-token predictions and a per-layer logit lens for a few prompts."""
    import numpy as np

    import interp
    from interp.circuits.lens import logit_lens

    t0 = time.perf_counter()
    model = interp.load(model_name)
    print(f"loaded {model_name}: {model.n_layers} layers, d_model {model.d_model}, "
          f"vocab {model.d_vocab} ({time.perf_counter() - t0:.1f} s)", file=out)
    for prompt in prompts:
        print(f"\n=== {prompt!r}", file=out)
        for tok, p in model.top_next(prompt, k=k):
            print(f"  {p:6.3f}  {tok!r}", file=out)
        lens = logit_lens(model, prompt)
        probs = np.asarray(lens.probs()[:, 0, -1])
        final = int(probs[-1].argmax())
        print("  logit lens (what the residual stream predicts after each block; final answer "
              f"{model.to_string([final])!r}):", file=out)
        print(f"  {'row':>9}  {'top token':<16} {'p(top)':>7}  {'p(final)':>8}  {'rank(final)':>11}", file=out)
        for label, row in zip(lens.labels, probs):
            top = int(row.argmax())
            rank = int((row > row[final]).sum())
            print(f"  {label:>9}  {model.to_string([top])!r:<16} {row[top]:7.3f}  {row[final]:8.3f}  {rank:11d}",
                  file=out)
    print(f"\ndone in {time.perf_counter() - t0:.1f} s", file=out)


def add_train_sae_args(p: argparse.ArgumentParser) -> None:
    from interp.sae import REGISTRY

    p.add_argument("--model", default="smollm2-135m", help=MODEL_HELP)
    p.add_argument("--hook", required=True, help="hook point to read, e.g. blocks.15.hook_resid_post")
    p.add_argument("--hook-out", default=None, help="for a transcoder: the hook point to reconstruct (default: none, "
                                                    "an SAE)")
    p.add_argument("--arch", default="topk", help=f"architecture: {', '.join(REGISTRY)}")
    p.add_argument("--width", type=POSITIVE, default=4096, help="number of latents (d_sae)")
    add_architecture_args(p)
    p.add_argument("--skip", action="store_true", help="transcoder skip connection (default: off)")
    p.add_argument("--tokens", type=POSITIVE, default=2_000_000, help="training tokens (activations)")
    p.add_argument("--batch-size", type=POSITIVE, default=None,
                   help="activations per step (default: from --tokens: the largest power of two giving at least 200 "
                        "steps, between 64 and 4096; 4096 for 2,000,000 tokens)")
    p.add_argument("--context-size", type=POSITIVE, default=128, help="tokens per context")
    p.add_argument("--buffer-tokens", type=POSITIVE, default=2**16,
                   help="tokens whose activations are shuffled together (a multiple of --context-size)")
    p.add_argument("--lr", type=RATE, default=2e-4, help="peak learning rate (Adam)")
    p.add_argument("--lr-warmup-steps", type=NONNEGATIVE, default=None,
                   help="steps of linear learning-rate warm-up (default: an eighth of the steps, at most 50)")
    p.add_argument("--sparsity-warmup-steps", type=NONNEGATIVE, default=0,
                   help="steps over which the L1/L0 coefficient ramps up from 0")
    p.add_argument("--normalize", default="none", choices=["none", "expected_average_only_in"],
                   help="input scaling during training, folded into the saved weights")
    p.add_argument("--corpus", default=None, help="text file, folder, JSONL or Parquet (default: built-in text)")
    p.add_argument("--activation-cache", default=None,
                   help="read cached activations from this folder (default: run the model)")
    p.add_argument("--checkpoint-every", type=NONNEGATIVE, default=100,
                   help="steps between checkpoints (0: only at the end)")
    p.add_argument("--seed", type=SEED, default=0, help="seeds initialisation and shuffling")
    p.add_argument("--data-parallel", type=POSITIVE, default=1, help="devices over which the batch is split")
    p.add_argument("--latent-parallel", type=POSITIVE, default=1, help="devices over which the latents are split")
    p.add_argument("--distributed", action="store_true",
                   help="one of several processes (jax.distributed; the cluster's environment names the others): "
                        "the batch is split over every device of every process; reads --activation-cache")
    p.add_argument("--coordinator", default=None,
                   help="host:port of process 0; implies --distributed (default: none, a single process)")
    p.add_argument("--num-processes", type=POSITIVE, default=None,
                   help="processes in the run, with --coordinator (default: none, read from the cluster)")
    p.add_argument("--process-id", type=NONNEGATIVE, default=None,
                   help="this process's index, with --coordinator (default: none, read from the cluster)")
    p.add_argument("--out", required=True, help="output folder (checkpoints/, final/, history.json)")
    p.add_argument("--resume", action="store_true", help="continue the latest checkpoint in --out")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bars on stderr: loading, harvesting activations (tokens/s), training (steps/s)")


def architecture_options() -> dict[str, dict[str, tuple]]:
    """Config field -> {architecture: (its Option, its default)}, for the fields registered architectures let the
    command line set (``DictConfig.options``)."""
    from interp.sae import REGISTRY

    found: dict[str, dict[str, tuple]] = {}
    for arch, (config_cls, _) in REGISTRY.items():
        defaults = {f.name: f.default for f in dataclasses.fields(config_cls)}
        for field, option in config_cls.options.items():
            found.setdefault(field, {})[arch] = (option, defaults[field])
    return found


def add_architecture_args(p: argparse.ArgumentParser) -> None:
    """One option per config field that some architecture lets the command line set, its help naming those
    architectures and their default. Unset (None), the config's own default applies."""
    for field, by_arch in architecture_options().items():
        option = next(iter(by_arch.values()))[0]
        defaults = {default for _, default in by_arch.values()}
        default = f"default: {defaults.pop()}" if len(defaults) == 1 else "default: each architecture's own"
        names = list(by_arch)
        archs = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
        kind = number(int if option.integer else float, option.lo, lo_open=option.lo_open)
        p.add_argument(f"--{field.replace('_', '-')}", dest=field, type=kind, default=None,
                       help=f"{option.help}, for {archs} ({default})")


def architecture_kwargs(args, config_cls) -> dict:
    """The config fields given on the command line for ``config_cls``; one its architecture does not take fails,
    naming the architectures that do."""
    kwargs = {}
    for field, by_arch in architecture_options().items():
        value = getattr(args, field, None)
        if value is None:
            continue
        if field not in config_cls.options:
            raise ValueError(f"--{field.replace('_', '-')} is an option of {', '.join(by_arch)}, not of "
                             f"--arch {args.arch}; leave it out or choose one of those architectures")
        kwargs[field] = value
    return kwargs


@contextlib.contextmanager
def plain_warnings(prog: str):
    """Warnings as ``prog: warning: message`` lines, without the source location a library user would want."""
    before = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"{prog}: warning: {message}\n"
    try:
        yield
    finally:
        warnings.formatwarning = before


def train_sae(args) -> None:
    import interp
    from interp import sae
    from interp.sae.checkpoints import prepare_out_dir

    distributed = args.distributed or args.coordinator
    if distributed:
        import interp.distributed

        interp.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    config_cls, _ = sae.architecture(args.arch)
    extra = architecture_kwargs(args, config_cls)
    # before the model loads: an output folder that cannot be written fails now. In a run over several processes the
    # first one alone writes there (as sae.train does): another's cleanup would remove this one's write probe
    if not distributed or interp.distributed.info()["process"] == 0:
        prepare_out_dir(Path(args.out))
    if args.progress and not args.activation_cache:
        print(f"interp train-sae: loading {args.model}", file=sys.stderr, flush=True)
    model = None if args.activation_cache else interp.load(args.model)
    hook_shapes = model.hook_shapes() if model is not None else None
    if hook_shapes is not None and args.hook not in hook_shapes:
        from interp.hooks import suggest

        raise SystemExit(f"interp train-sae: unknown hook '{args.hook}'{suggest(args.hook, hook_shapes)}")
    if model is not None:
        d_in = hook_shapes[args.hook][-1]
        d_out = hook_shapes[args.hook_out][-1] if args.hook_out else None
    else:
        from interp.sae.store import CachedActivationStore

        info = CachedActivationStore(args.activation_cache, batch_size=args.batch_size or 1).info
        d_in, d_out = info["d"][0], (info["d"][1] if len(info["d"]) > 1 else None)
    dcfg = config_cls(d_in=d_in, width=args.width, hook_name=args.hook, hook_name_out=args.hook_out, d_out=d_out,
                      skip=args.skip, **extra)
    cfg = sae.TrainConfig(
        dcfg, model=args.model, corpus=args.corpus, activation_cache=args.activation_cache, total_tokens=args.tokens,
        batch_size=args.batch_size, context_size=args.context_size, buffer_tokens=args.buffer_tokens, lr=args.lr,
        lr_warmup_steps=args.lr_warmup_steps, sparsity_warmup_steps=args.sparsity_warmup_steps,
        normalize=args.normalize, seed=args.seed, out_dir=args.out, checkpoint_every=args.checkpoint_every,
        data_parallel=args.data_parallel, latent_parallel=args.latent_parallel,
    )
    result = sae.train(cfg, model=model, resume=args.resume, progress=args.progress)
    last = result.history[-1] if result.history else {}
    print(f"saved {result.out_dir / 'final'}: fvu {last.get('fvu', float('nan')):.4f}, "
          f"L0 {last.get('l0', float('nan')):.1f}, dead {last.get('dead_fraction', float('nan')):.3f}")


def train_transcoders(args) -> None:
    import interp
    from interp.sae import train_transcoders as train
    from interp.sae.checkpoints import check_writable

    check_writable(Path(args.out))  # before the model loads and trains
    model = interp.load(args.model)
    common = dict(width=args.width, k=args.k, total_tokens=args.tokens, corpus=args.corpus,
                  context_size=args.context_size, model_batch=args.model_batch, lr=args.lr, seed=args.seed,
                  out_dir=args.out, checkpoint_every=args.checkpoint_every, resume=args.resume)
    if args.cross_layer:
        from interp.sae import train_clt

        tc, summary = train_clt(model, **common)
        loader = "interp.sae.CrossLayerTranscoder.load"
    else:
        tc, summary = train(model, skip=args.skip, **common)
        loader = "interp.sae.Transcoders.load"
    for row in summary:
        print(f"layer {row['layer']:2d}: fvu {row.get('fvu', float('nan')):.3f}, L0 {row.get('l0', float('nan')):.1f}")
    print(f"saved {len(tc)} layers to {args.out} (load with {loader})")


def add_search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help=MODEL_HELP)
    p.add_argument("--objective", default="logprob",
                   help="logprob (raise --target after the input), latent (raise --latent of --sae), or not-logprob / "
                        "not-latent to lower it")
    p.add_argument("--target", default=None, help="continuation whose log-probability the search raises (logprob)")
    p.add_argument("--sae", default=None, help="dictionary folder, SAELens layout (latent)")
    p.add_argument("--latent", type=NONNEGATIVE, default=None, help="latent index in --sae (latent)")
    p.add_argument("--position", type=int, default=-1, help="input position the latent is read at (-1: the last)")
    p.add_argument("--threshold", type=float, default=None,
                   help="a latent activation counted as success (default: none, run every step)")
    p.add_argument("--prompt", default="", help="text around the span; with --span slot:N it holds {span} once")
    p.add_argument("--span", default="suffix:20", help="where the searched tokens go and how many: suffix:N, "
                                                         "prefix:N or slot:N")
    p.add_argument("--steps", type=POSITIVE, default=200, help="steps per restart")
    p.add_argument("--topk", type=POSITIVE, default=256, help="replacements kept per position from the gradient")
    p.add_argument("--batch", type=POSITIVE, default=512, help="candidates evaluated per step")
    p.add_argument("--chunk", type=POSITIVE, default=None, help="candidates per forward pass (default: --batch)")
    p.add_argument("--restarts", type=POSITIVE, default=1, help="independent runs; the best is kept")
    p.add_argument("--fluency", type=number(float, 0), default=0.0,
                   help="weight of the span's own NLL under the model (readable text costs objective)")
    p.add_argument("--init", default=None, help="starting text of the span (default: random allowed tokens)")
    p.add_argument("--seed", type=SEED, default=0, help="seeds the initial span and the candidate sampling")
    p.add_argument("--out", default=None, help="JSON file for the result (written atomically; default: print only)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar on stderr")


def search(args, out=None) -> None:
    import json

    import interp
    from interp import search as S
    from interp._io import atomic_file

    out = out or sys.stdout
    base = args.objective.removeprefix("not-")
    if base not in ("logprob", "latent"):
        if base not in S.REGISTRY:
            S.objective(args.objective, None)  # raises the unknown-objective error with the choices
        raise ValueError(f"--objective {args.objective} is a Python-only objective; use logprob or latent here")
    if base == "logprob" and args.target is None:
        raise ValueError("--objective logprob needs --target, the continuation to make likely (e.g. ' London')")
    if base == "latent" and (args.sae is None or args.latent is None):
        raise ValueError("--objective latent needs --sae DIR (a saved dictionary) and --latent N")
    if args.out is not None:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        if Path(args.out).is_dir():
            raise IsADirectoryError(f"--out {args.out} is a folder; give a file name such as result.json")
    model = interp.load(args.model)
    if base == "logprob":
        obj = S.objective(args.objective, model, args.target)
    else:
        from interp import sae

        obj = S.objective(args.objective, model, sae.load(args.sae), args.latent, position=args.position,
                          threshold=args.threshold)
    res = S.gcg(model, obj, args.prompt, span=args.span, steps=args.steps, topk=args.topk, batch=args.batch,
                chunk=args.chunk, restarts=args.restarts, fluency=args.fluency, init=args.init, seed=args.seed,
                progress=args.progress)
    print(repr(res), file=out)
    if args.out is not None:
        asked = {k: getattr(args, k) for k in ("model", "objective", "target", "sae", "latent", "position", "prompt",
                                              "span", "steps", "topk", "batch", "restarts", "fluency", "init", "seed")}
        record = {"search": asked, **res.to_dict()}
        with atomic_file(Path(args.out), "w") as fh:
            json.dump(record, fh, indent=1)
        print(f"wrote {args.out}", file=out)


# ---------------------------------------------------------------------------------------------- interp explain
EXPLAINER_FORMS = EXPLAINER_SPECS


@dataclasses.dataclass(frozen=True)
class LatentSpec:
    """``--latents`` as given: ints and ``(start, stop, step)`` ranges, ``None`` for an open end; resolved against
    the dictionary's width once it is known."""

    text: str
    parts: tuple

    def resolve(self, width: int) -> list[int]:
        """The latents, in the order given, each once; a latent past the width raises ValueError naming it."""
        out: dict[int, None] = {}
        for part in self.parts:
            if isinstance(part, int):
                if part >= width:
                    raise ValueError(f"--latents {self.text}: latent {part} is out of range; the dictionary has "
                                     f"{width} latents (0..{width - 1})")
                out[part] = None
                continue
            start, stop, step = part
            start = 0 if start is None else start
            stop = width if stop is None else stop
            if stop > width:
                raise ValueError(f"--latents {self.text}: {start}:{stop} reaches past the dictionary's {width} latents "
                                 f"(0..{width - 1}); use {start}:{width} or {start}: for the rest")
            if start >= stop:
                raise ValueError(f"--latents {self.text}: the range {start}:{stop} is empty (the dictionary has "
                                 f"{width} latents)")
            out.update(dict.fromkeys(range(start, stop, step)))
        return list(out)


def latent_spec(text: str) -> LatentSpec:
    """An argparse type for ``--latents``: ``A:B`` (B excluded, either end optional, an optional ``:STEP``), a
    comma list ``3,17,40``, or both mixed (``0:10,42``). Latents are numbers from 0."""
    forms = "give A:B (B excluded; A or B may be left out), a list such as 3,17,40, or both, such as 0:10,42"

    def index(s: str, what: str) -> int:
        s = s.strip()
        if not s.isdigit():
            raise argparse.ArgumentTypeError(f"{text!r}: {what} {s!r} is not a latent number (0, 1, ...); {forms}")
        return int(s)

    parts = []
    for piece in text.split(","):
        if not piece.strip():
            raise argparse.ArgumentTypeError(f"{text!r} has an empty item; {forms}")
        if ":" not in piece:
            parts.append(index(piece, "latent"))
            continue
        bits = piece.split(":")
        if len(bits) > 3:
            raise argparse.ArgumentTypeError(f"{text!r}: {piece!r} has more than two ':'; {forms}")
        start = index(bits[0], "start") if bits[0].strip() else None
        stop = index(bits[1], "stop") if bits[1].strip() else None
        step = index(bits[2], "step") if len(bits) == 3 and bits[2].strip() else 1
        if step < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: the step of {piece!r} must be at least 1")
        if start is not None and stop is not None and start >= stop:
            raise argparse.ArgumentTypeError(f"{text!r}: the range {piece.strip()} is empty (its stop is excluded); "
                                             f"{forms}")
        parts.append((start, stop, step))
    return LatentSpec(text, tuple(parts))


def explainer_spec(text: str) -> tuple[str, str | None, str | None]:
    """An argparse type for ``--explainer`` (:func:`interp.explain.parse_explainer`)."""
    from interp.explain.spec import parse_explainer

    try:
        return parse_explainer(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def scorer_list(text: str) -> list[str]:
    """An argparse type for ``--scorers``: a comma list of the scorers in ``interp.explain.SCORERS``."""
    from interp.explain.scorers import SCORERS

    names = [s.strip() for s in text.split(",")]
    bad = [s for s in names if s not in SCORERS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown scorer {bad[0]!r}; scorers: {', '.join(SCORERS)} (a comma list, "
                                         "such as detection,fuzzing)")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r} names a scorer twice; give each once")
    return names


def add_explain_args(p: argparse.ArgumentParser) -> None:
    from interp.explain.scorers import SCORERS

    p.add_argument("--model", default="smollm2-135m", help=f"the model the dictionary reads ({MODEL_HELP})")
    p.add_argument("--sae", required=True, help="dictionary folder (SAELens layout, as train-sae writes)")
    p.add_argument("--latents", type=latent_spec, default=None,
                   help="latents to explain: A:B (B excluded, either end optional), a list 3,17,40, or both, "
                        "0:10,42 (default: all)")
    p.add_argument("--explainer", type=explainer_spec, default="baseline",
                   help="baseline (token patterns, no language model), local (the --model as chat "
                        "model), local:NAME (another local instruct model), or openai:MODEL@URL (an OpenAI-compatible "
                        "server, such as openai:gpt-4o-mini@https://api.openai.com/v1)")
    p.add_argument("--api-key-env", default=None,
                   help="environment variable holding the API key of an openai: explainer (default: none, a server "
                        "without authentication); the key is never written anywhere")
    p.add_argument("--scorers", type=scorer_list, default="detection,fuzzing",
                   help=f"comma list of scorers: {', '.join(SCORERS)}")
    p.add_argument("--scorer-backend", choices=["rule", "explainer"], default=None,
                   help="rule: the rule checker of token patterns; explainer: the explainer's chat model (default: "
                        "rule for baseline, explainer for local and openai)")
    p.add_argument("--out", default=None, help="JSONL file of explanations and scores (default: explanations.jsonl "
                                               "in the --sae folder)")
    p.add_argument("--resume", action="store_true", help="continue --out: keep its latents, do the rest")
    p.add_argument("--corpus", default=None, help="text file, folder, JSONL or Parquet the examples come from "
                                                  "(default: built-in text)")
    p.add_argument("--contexts", type=POSITIVE, default=256, help="contexts indexed for examples")
    p.add_argument("--context-size", type=number(int, 2), default=64, help="tokens per context")
    p.add_argument("--seed", type=SEED, default=0, help="seeds the examples, fuzzing marks and the shuffled control")
    p.add_argument("--chunk", type=POSITIVE, default=16, help="latents explained and scored together (the file "
                                                              "grows a chunk at a time)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bars on stderr: indexing, explaining, scoring")


def explain(args, out=None) -> None:
    import numpy as np

    import interp
    from interp import sae
    from interp.explain import Baseline, LLMExplainer, Scorer, backend_from_spec, explain_latents
    from interp.features import feature_index
    from interp.sae.store import iter_contexts

    out = out or sys.stdout
    kind, name, url = args.explainer
    if args.api_key_env is not None and kind != "openai":
        raise ValueError(f"--api-key-env is for an openai:MODEL@URL explainer, not --explainer {kind}; leave it out")
    scorer_backend = args.scorer_backend or ("rule" if kind == "baseline" else "explainer")
    if kind == "baseline" and scorer_backend == "explainer":
        raise ValueError("--scorer-backend explainer needs a chat model, and the baseline explainer has none; use "
                         "--scorer-backend rule, or --explainer local or openai:MODEL@URL")
    # a missing API key or a bad URL fails here, before anything loads
    backend = backend_from_spec(args.explainer, api_key_env=args.api_key_env) if kind != "local" else None
    sae_dir = Path(args.sae).expanduser()
    path = Path(args.out).expanduser() if args.out else sae_dir / "explanations.jsonl"
    if path.is_dir():
        raise IsADirectoryError(f"--out {path} is a folder; give a file name such as {path / 'explanations.jsonl'}")
    if path.exists() and not args.resume:
        raise FileExistsError(f"{path} exists; pass --resume to continue it, or --out another file")
    dictionary = sae.load(sae_dir)
    try:
        latents = (args.latents or latent_spec(":")).resolve(int(dictionary.cfg.width))
    except ValueError as e:
        args.usage_error(str(e))
    if args.progress:
        print(f"interp explain: loading {args.model}", file=sys.stderr, flush=True)
    model = interp.load(args.model)
    hook_shapes = model.hook_shapes()
    hook = dictionary.cfg.hook_name
    if hook not in hook_shapes:
        from interp.hooks import suggest

        raise ValueError(f"the dictionary reads hook '{hook}', which {args.model} does not have"
                         f"{suggest(hook, hook_shapes)}; is --model the model it was trained on?")
    if hook_shapes[hook][-1] != dictionary.cfg.d_in:
        raise ValueError(f"the dictionary reads {dictionary.cfg.d_in} numbers at '{hook}', but {args.model} has "
                         f"{hook_shapes[hook][-1]} there; is --model the model it was trained on?")
    if kind == "local":
        backend = backend_from_spec(args.explainer, model=model, model_name=args.model)
    explainer = Baseline() if backend is None else LLMExplainer(backend)
    scorers = [Scorer(s, backend if scorer_backend == "explainer" else None, seed=args.seed) for s in args.scorers]

    contexts = iter_contexts(model.tokenizer, args.corpus, args.context_size, n_contexts=args.contexts)
    tokens = np.stack([next(contexts) for _ in range(args.contexts)])
    index = feature_index(model, dictionary, tokens, skip_positions=1, progress=args.progress)
    corpus = args.corpus or "built-in text (Python's documentation topics and standard-library sources)"
    provenance = {"model": args.model, "sae": str(sae_dir), "corpus": corpus, "contexts": args.contexts,
                  "context_size": args.context_size}
    result = explain_latents(model, dictionary, index, latents, explainer=explainer, scorers=scorers, out=path,
                             resume=args.resume, chunk=args.chunk, seed=args.seed, progress=args.progress,
                             provenance=provenance)
    print(repr(result), file=out)
    print(f"wrote {path}", file=out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interp", description=__doc__)
    parser.add_argument("--version", action="version", version=f"interp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="the main job: model, circuits, an SAE and its features, in report.html",
                       formatter_class=DefaultsHelp)
    d.add_argument("--model", default="smollm2-135m", help=MODEL_HELP)
    d.add_argument("--out", default="report.html", help="where to write the report")
    d.add_argument("--corpus", default=None, help="text file, folder, JSONL or Parquet (default: built-in text)")
    d.add_argument("--sae-tokens", type=POSITIVE, default=DemoConfig.sae_tokens,
                   help="activations harvested for the SAE")
    d.add_argument("--sae-epochs", type=POSITIVE, default=DemoConfig.sae_epochs,
                   help="passes the SAE's training makes over them")
    d.add_argument("--sae-layer", type=NONNEGATIVE, default=None,
                   help="layer whose residual stream the SAE reads (default: the middle layer)")
    d.add_argument("--transcoders", default=None,
                   help=f"transcoder set for the attribution graph (default: {DEFAULT_TRANSCODERS} when present)")
    d.add_argument("--explainer", type=explainer_spec, default="baseline",
                   help=f"who explains the SAE's latents: {EXPLAINER_FORMS}")
    d.add_argument("--api-key-env", default=None,
                   help="environment variable holding the API key of an openai: explainer")
    p = sub.add_parser("predict", help="next-token predictions and a logit lens for a few prompts",
                       formatter_class=DefaultsHelp)
    p.add_argument("--model", default="smollm2-135m", help=MODEL_HELP)
    p.add_argument("--prompt", action="append", help="a prompt (repeatable; default: a built-in set)")
    t = sub.add_parser("train-sae", help="train a sparse dictionary (SAE or transcoder) on a hook point",
                       formatter_class=DefaultsHelp)
    add_train_sae_args(t)
    tt = sub.add_parser("train-transcoders", help="train one TopK transcoder per layer, or a cross-layer transcoder "
                        "(for attribution graphs)",
                        formatter_class=DefaultsHelp)
    tt.add_argument("--model", default="smollm2-135m", help=MODEL_HELP)
    tt.add_argument("--width", type=POSITIVE, default=2048, help="latents per transcoder")
    tt.add_argument("--k", type=POSITIVE, default=16, help="active latents per token")
    tt.add_argument("--tokens", type=POSITIVE, default=200_000,
                    help="training tokens (per layer; one model pass serves all)")
    tt.add_argument("--context-size", type=POSITIVE, default=64, help="tokens per context")
    tt.add_argument("--model-batch", type=POSITIVE, default=16, help="contexts per step")
    tt.add_argument("--lr", type=RATE, default=2e-3, help="peak learning rate (Adam)")
    tt.add_argument("--seed", type=SEED, default=0, help="seeds initialisation and the order of contexts")
    tt.add_argument("--corpus", default=None, help="text file, folder, JSONL or Parquet (default: built-in text)")
    kind = tt.add_mutually_exclusive_group()
    kind.add_argument("--skip", action="store_true", help="skip transcoders: each adds an affine skip term x W_skip")
    kind.add_argument("--cross-layer", action="store_true",
                    help="one cross-layer transcoder: each layer's features write to every later MLP output "
                         "(BatchTopK, k per layer on average; circuit-tracer's file layout)")
    tt.add_argument("--out", required=True, help="output folder (layer_{l}/ in SAELens layout + transcoders.json; "
                                                 "with --cross-layer W_enc_{l}/W_dec_{l}.safetensors + clt.json)")
    tt.add_argument("--checkpoint-every", type=NONNEGATIVE, default=100,
                    help="steps between checkpoints under --out/checkpoints (0: none); the finished set replaces them")
    tt.add_argument("--resume", action="store_true", help="continue the latest checkpoint in --out")
    se = sub.add_parser("search", help="search input tokens (GCG) that raise a target's log-probability or a latent",
                        formatter_class=DefaultsHelp)
    add_search_args(se)
    ex = sub.add_parser("explain", help="explain what each latent of a dictionary responds to, and score the "
                                        "explanations (JSONL)", formatter_class=DefaultsHelp)
    add_explain_args(ex)
    ex.set_defaults(usage_error=ex.error)  # --latents is checked against the dictionary's width once it is loaded
    organism_cli.add_parser(sub)
    audit_cli.add_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train-transcoders":
        try:
            train_transcoders(args)
        except (ValueError, OSError) as e:
            raise SystemExit(f"interp train-transcoders: {e}") from None
    elif args.command == "demo":
        from interp.demo import run

        cfg = DemoConfig(model=args.model, out=args.out, corpus=args.corpus, sae_tokens=args.sae_tokens,
                         sae_epochs=args.sae_epochs, sae_layer=args.sae_layer, transcoders=args.transcoders,
                         explainer=args.explainer, api_key_env=args.api_key_env)
        try:
            run(cfg)
        except (ValueError, FileNotFoundError, IsADirectoryError) as e:
            raise SystemExit(f"interp demo: {e}") from None
    elif args.command == "predict":
        predict(args.model, tuple(args.prompt) if args.prompt else PREDICT_PROMPTS)
    elif args.command == "train-sae":
        try:
            with plain_warnings("interp train-sae"):
                train_sae(args)
        except (ValueError, OSError) as e:
            raise SystemExit(f"interp train-sae: {e}") from None
    elif args.command == "search":
        try:
            search(args)
        except (ValueError, OSError) as e:
            raise SystemExit(f"interp search: {e}") from None
    elif args.command == "organism":
        return organism_cli.main(args)
    elif args.command == "audit":
        return audit_cli.main(args)
    elif args.command == "explain":
        try:
            with plain_warnings("interp explain"):
                explain(args)
        except (ValueError, OSError) as e:
            raise SystemExit(f"interp explain: {e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
