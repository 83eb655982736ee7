"""Automated interpretability on the default model: our explain/score pipeline against EleutherAI's delphi.

    python benchmarks/autointerp.py [--latents 100] [--local-latents 100] [--sae DIR] [--budget-minutes M] [--quick]
    PYTHONPATH=delphi-site python benchmarks/autointerp.py ...      # with the delphi peer (see below)

1. A TopK dictionary (width 2048, k 32) trained on the middle layer's residual stream of SmolLM2-135M-Instruct
   (150k tokens of the built-in corpus; cached under ``$INTERP_CACHE/benchmarks``, or ``--sae DIR``), a feature
   index over held-out contexts (512 x 64 tokens, read after the training text, position 0 skipped), and
   ``--latents`` latents (seeded) among those firing on 1e-4..0.05 of the indexed tokens.
2. Ours, through ``explain_latents`` with its shuffled control: (a) the ``Baseline`` explainer with the rule
   scorers (detection, fuzzing, simulation) on every latent; (b) ``LLMExplainer(LocalModel(model))`` with detection
   and fuzzing scored by the same local model's answer probabilities, on ``--local-latents`` latents. The explain
   and score phases are timed apart by calling ``explainer.explain`` and ``Scorer.score`` directly on the
   sampler's examples with every reply computed: the local model's response cache is never read there (it is
   written, so that ``explain_latents`` afterwards reuses those replies and computes only the control; the time
   spent writing it is printed). ``explain_latents`` is then run again on the filled cache (the rerun time).
   The first 5 local latents give an estimate of the whole run, printed; ``--budget-minutes`` cuts the local
   latents to fit it.
3. delphi (eai-delphi 0.1.3) on the SAME latents, the SAME held-out examples (its LatentRecord's ``test`` is our
   ``test_pos``, ``not_active`` our ``test_neg``, ``str_tokens`` our context's token strings, set here because
   delphi's own ``tokenizer.batch_decode`` of a 1-D tensor collapses to one string under transformers 5), the SAME
   explanations and controls, its ``DetectionScorer`` and ``FuzzingScorer`` (5 examples per prompt, its CLI's
   setting; our held-out sets have 20 items, so no last short batch is lost). Two clients: the same local model
   (delphi's chat prompt rendered by ``LocalModel.chat``; one prompt at a time, as delphi sends them, so the model
   runs with batch 1 for it), and a deterministic rule client that applies our token-pattern rules to the contexts
   it is shown (an exactness check of the scoring logic against our rule scorer on identical inputs). delphi's
   per-latent score is its balanced accuracy (``delphi.log.result_analysis``); unparseable replies are counted.
   delphi's fuzzing is built differently from ours (its negatives are the silent contexts with random tokens
   marked; ours mark silent tokens of the activating contexts, closer to its ``fuzz_type="active"``, also run
   with the rule client), so fuzzing agreement is not expected to be exact; detection's is.

delphi is optional. It pulls vllm (and with it another torch) when installed normally; install it beside the
environment without dependencies and put that folder on PYTHONPATH (``delphi.clients`` imports vllm, so it is
replaced here by a bare package holding only ``client.py``). ``random.seed(22)`` inside delphi's fuzzing resets
the global RNG; the state is restored around each delphi call.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import random
import re
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

DELPHI_SITE = "delphi-site"  # beside the environment, outside it (ignored by git)
DELPHI_INSTALL = (
    f".venv/bin/python -m pip install --no-deps --target {DELPHI_SITE} eai-delphi==0.1.3 aiofiles==25.1.0 "
    "asyncer==0.0.18 blobfile==3.3.0 faiss-cpu==1.15.1 lxml==6.1.3 orjson==3.13.0 pycryptodomex==3.24.2 "
    "scikit-learn==1.9.1 sentence-transformers==6.2.0 threadpoolctl==3.8.0 tiktoken==0.14.0; then run with "
    f"PYTHONPATH={DELPHI_SITE}")
BUFFER = 2**15  # training reads the text in chunks of this many tokens
TRAIN_CONTEXT = 128


# ---------------------------------------------------------------------------------------------- dictionary, index
@dataclasses.dataclass(frozen=True)
class Setup:
    sae_tokens: int = 150_000
    width: int = 2048
    k: int = 32
    contexts: int = 512
    context_size: int = 64
    seed: int = 0


def held_out_contexts(model, n: int, size: int, train_tokens: int) -> np.ndarray:
    """``n`` contexts of ``size`` tokens from the built-in corpus, after the text the dictionary was trained on."""
    from interp.sae.store import iter_contexts

    skip = (train_tokens // BUFFER + 2) * BUFFER // size
    it = iter_contexts(model.tokenizer, None, size)
    for _ in range(skip):
        next(it)
    return np.stack([next(it) for _ in range(n)])


def dictionary_and_index(model, setup: Setup, sae_dir: str | None, log=print):
    """The dictionary (trained and cached, or loaded from ``sae_dir``) and its feature index over held-out text
    (cached beside it)."""
    from interp import sae
    from interp.features import FeatureIndex, feature_index
    from interp.weights.default import cache_dir

    layer = model.n_layers // 2
    hook = f"blocks.{layer}.hook_resid_post"
    if sae_dir:
        folder = Path(sae_dir).expanduser()
        d = sae.load(folder)
        ident = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
        idx_dir = cache_dir() / "benchmarks" / f"autointerp-index-{ident}"
        log(f"dictionary: loaded from {folder} ({d.cfg.width} latents, hook {d.cfg.hook_name})")
    else:
        folder = cache_dir() / "benchmarks" / (f"autointerp-smollm2-135m-L{layer}-w{setup.width}-k{setup.k}-"
                                               f"t{setup.sae_tokens}-s{setup.seed}")
        idx_dir = folder.parent / (folder.name + "-index")
        if (folder / "cfg.json").exists():
            d = sae.load(folder)
            log(f"dictionary: cached at {folder}")
        else:
            t = time.perf_counter()
            tcfg = sae.TrainConfig(
                sae.TopKConfig(d_in=model.d_model, width=setup.width, k=setup.k, hook_name=hook),
                model="smollm2-135m", total_tokens=setup.sae_tokens, batch_size=1024, context_size=TRAIN_CONTEXT,
                lr=1e-3, eval_every=5, seed=setup.seed, buffer_tokens=BUFFER,
                lr_warmup_steps=min(10, max(1, setup.sae_tokens // 1024 // 8)))
            d = sae.train(tcfg, model=model, progress=False).dictionary
            sae.save(d, folder, metadata={"model_name": "smollm2-135m", "context_size": TRAIN_CONTEXT})
            log(f"dictionary: trained ({setup.sae_tokens:,} tokens on {hook}, width {setup.width}, k {setup.k}) in "
                f"{time.perf_counter() - t:.0f} s; cached at {folder}")
    key = f"n{setup.contexts}-t{setup.context_size}-after{setup.sae_tokens}"
    path = idx_dir / f"{key}.npz"
    if path.exists():
        z = np.load(path)
        index = FeatureIndex(z["tokens"], int(z["width"]), z["flat_pos"], z["latent"], z["value"], z["starts"],
                             int(z["skip_positions"]))
        log(f"feature index: cached at {path}")
    else:
        t = time.perf_counter()
        held = held_out_contexts(model, setup.contexts, setup.context_size, setup.sae_tokens)
        index = feature_index(model, d, held, skip_positions=1)
        idx_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, tokens=index.tokens, width=index.width, flat_pos=index.flat_pos, latent=index.latent,
                 value=index.value, starts=index.starts, skip_positions=index.skip_positions)
        os.replace(tmp, path)
        log(f"feature index: {setup.contexts} held-out contexts x {setup.context_size} tokens in "
            f"{time.perf_counter() - t:.0f} s; cached at {path}")
    return d, index


def choose_latents(index, n: int, seed: int, lo: float = 1e-4, hi: float = 0.05) -> list[int]:
    """``n`` latents (seeded, in a random order) among those firing on ``lo``..``hi`` of the indexed tokens."""
    dens = index.density()
    ok = np.flatnonzero((dens >= lo) & (dens <= hi))
    rng = np.random.default_rng([seed, 17])
    return [int(f) for f in rng.permutation(ok)[:n]]


# ---------------------------------------------------------------------------------------------- statistics
def mean_ci(v) -> tuple[float, float, float]:
    from interp.explain.scorers import bootstrap_ci

    v = np.asarray(v, np.float64)
    if not len(v):
        return float("nan"), float("nan"), float("nan")
    lo, hi = bootstrap_ci(lambda i: float(v[i].mean()), len(v), resamples=1000)
    return float(v.mean()), lo, hi


def fmt_ci(v) -> str:
    m, lo, hi = mean_ci(v)
    return f"{m:.3f} [{lo:.3f}, {hi:.3f}] (n={len(v)})"


def quantiles(v) -> str:
    if not len(v):
        return "-"
    q = np.percentile(np.asarray(v, np.float64), [0, 10, 25, 50, 75, 90, 100])
    return " ".join(f"{x:.2f}" for x in q)


def histogram(v, lo: float = 0.0, hi: float = 1.0, bins: int = 10) -> str:
    """Counts per bin of width (hi-lo)/bins, as a row of numbers."""
    counts, _ = np.histogram(np.clip(np.asarray(v, np.float64), lo, hi), bins=bins, range=(lo, hi))
    return " ".join(f"{c:3d}" for c in counts)


def agreement(a, b) -> tuple[int, float, float]:
    """(n, Pearson r, mean |a - b|) over the pairs where both are finite."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 2:
        return int(len(a)), float("nan"), float(np.abs(a - b).mean()) if len(a) else float("nan")
    r = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
    return int(len(a)), r, float(np.abs(a - b).mean())


def fmt_agree(a, b) -> str:
    n, r, mad = agreement(a, b)
    return f"r {r:.3f}, mean |diff| {mad:.3f} (n={n})"


def faster(ours: float, theirs: float) -> str:
    """Which side is faster, and by how much (``ours`` and ``theirs`` in seconds)."""
    if not (np.isfinite(ours) and np.isfinite(theirs)) or ours <= 0 or theirs <= 0:
        return "no ratio"
    return f"ours {theirs / ours:.2f}x faster" if ours <= theirs else f"delphi {ours / theirs:.2f}x faster"


def print_distribution(name: str, real, control, lo: float = 0.0, hi: float = 1.0):
    print(f"  {name}: explanation {fmt_ci(real)}; shuffled control {fmt_ci(control)}")
    print(f"    quantiles 0/10/25/50/75/90/100%: explanation {quantiles(real)} | control {quantiles(control)}")
    head = f"    histogram {lo:g}..{hi:g} in 10 bins: "
    print(f"{head}explanation {histogram(real, lo, hi)}")
    print(f"{'':{len(head)}}control     {histogram(control, lo, hi)}")


# ---------------------------------------------------------------------------------------------- delphi
def delphi_not_available() -> str | None:
    """None when delphi imports (with ``delphi.clients`` replaced by a bare package: its ``__init__`` imports
    vllm), else why not."""
    try:
        spec = importlib.util.find_spec("delphi")
        if spec is None:
            return "no module named 'delphi' on sys.path"
        import delphi

        if "delphi.clients" not in sys.modules:
            shim = types.ModuleType("delphi.clients")
            shim.__path__ = [os.path.join(os.path.dirname(spec.origin), "clients")]
            sys.modules["delphi.clients"] = shim
        import delphi.clients.client  # noqa: F401
        import delphi.latents  # noqa: F401
        import delphi.log.result_analysis  # noqa: F401
        import delphi.scorers  # noqa: F401

        delphi.logger.setLevel(logging.CRITICAL)  # a failed parse is counted here, not logged per prompt
        return None
    except ImportError as e:
        return f"cannot import {e.name or e}"
    except Exception as e:  # noqa: BLE001 - report why the peer cannot run, keep our figures
        return f"{type(e).__name__}: {str(e)[:160]}"


def split_examples(body: str) -> list[str]:
    """The texts of delphi's ``Example i: text`` lines (texts may hold newlines)."""
    texts, i = [], 0
    start = body.find(f"Example {i}: ")
    while start >= 0:
        begin = start + len(f"Example {i}: ")
        nxt = body.find(f"\nExample {i + 1}: ", begin)
        texts.append(body[begin:] if nxt < 0 else body[begin:nxt])
        start, i = (-1 if nxt < 0 else nxt + 1), i + 1
    if texts:
        texts[-1] = texts[-1].removesuffix("\n")
    return texts


def _unmarked(text: str) -> str:
    return text.replace("<<", "").replace(">>", "")


def align_marks(text: str, tokens: list[str]) -> list[bool] | None:
    """Which of ``tokens`` sit inside ``<<...>>`` in ``text`` (their concatenation with marks), or None."""
    import functools

    @functools.cache
    def walk(p: int, i: int, inside: bool):
        if i == len(tokens):
            return () if text[p:] == (">>" if inside else "") else None
        if text.startswith(tokens[i], p):
            rest = walk(p + len(tokens[i]), i + 1, inside)
            if rest is not None:
                return (inside,) + rest
        mark = ">>" if inside else "<<"
        if text.startswith(mark, p):
            return walk(p + 2, i, not inside)
        return None

    got = walk(0, 0, False)
    return None if got is None else list(got)


class RuleClient:
    """A delphi client that applies our token-pattern rules (the baseline's explanations) to the contexts it is
    shown, as our rule scorer does: detection answers 1 when a rule holds anywhere in the text, fuzzing when it
    holds on every marked token. The contexts' token strings are looked up by their text."""

    def __init__(self, response_cls, contexts, fuzzing: bool):
        self.response_cls, self.fuzzing = response_cls, fuzzing
        self.tokens = {_unmarked("".join(c.tokens)): list(c.tokens) for c in contexts}
        self.unmatched = 0

    async def generate(self, prompt, **kwargs):
        from interp.explain.explainers import parse_pattern, pattern_matches

        last = prompt[-1]["content"]
        m = re.match(r"Latent explanation: (.*?)\n\nText examples:\n\n", last, re.S)
        rules = parse_pattern(m.group(1) if m else "")
        answers = []
        for text in split_examples(last[m.end():] if m else ""):
            toks = self.tokens.get(_unmarked(text))
            marks = align_marks(text, toks) if toks is not None and self.fuzzing else None
            if toks is None or (self.fuzzing and marks is None):
                self.unmatched += 1
                answers.append(0)
                continue
            hit = pattern_matches(rules, toks)
            answers.append(int(hit[np.array(marks, bool)].all() and any(marks)) if self.fuzzing else int(hit.any()))
        return self.response_cls(text="[" + ",".join(map(str, answers)) + "]")


class LocalClient:
    """A delphi client on our ``LocalModel``: delphi's chat prompt rendered by ``LocalModel.chat`` (greedy), the
    reply returned as delphi's ``Response``; the replies are kept to show unparseable ones."""

    def __init__(self, response_cls, backend, max_tokens: int = 32):
        self.response_cls, self.backend, self.max_tokens = response_cls, backend, max_tokens
        self.replies: list[str] = []

    async def generate(self, prompt, **kwargs):
        [reply] = self.backend.chat([prompt], max_tokens=self.max_tokens)
        if reply.text is None:
            raise RuntimeError(reply.error)
        self.replies.append(reply.text)
        return self.response_cls(text=reply.text)


class Delphi:
    """delphi's records, scorers and aggregation, on our examples."""

    def __init__(self):
        import delphi.clients.client as client
        import delphi.latents as latents
        import delphi.log.result_analysis as analysis
        import delphi.scorers as scorers

        self.latents, self.scorers, self.analysis = latents, scorers, analysis
        self.Response = client.Response
        self.version = importlib.metadata.version("eai-delphi")

    def record(self, ex, explanation: str):
        """A LatentRecord whose ``test`` is our ``test_pos`` and ``not_active`` our ``test_neg``."""
        import torch

        L = self.latents
        test = []
        for c in ex.test_pos:
            a = torch.tensor(c.acts, dtype=torch.float32)
            test.append(L.ActivatingExample(
                tokens=torch.tensor(c.ids, dtype=torch.long), activations=a,
                normalized_activations=torch.ceil(a * 10 / max(ex.max_act, 1e-12)).clamp(0, 10),
                str_tokens=list(c.tokens), quantile=0))
        neg = [L.NonActivatingExample(tokens=torch.tensor(c.ids, dtype=torch.long),
                                      activations=torch.zeros(len(c.ids), dtype=torch.float32),
                                      str_tokens=list(c.tokens), distance=-1.0) for c in ex.test_neg]
        return L.LatentRecord(L.Latent("resid", ex.latent), examples=test, test=test, not_active=neg,
                              explanation=explanation)

    def scorer(self, task: str, client, n_shown: int, fuzz_type: str = "default"):
        if task == "detection":
            return self.scorers.DetectionScorer(client, n_examples_shown=n_shown)
        return self.scorers.FuzzingScorer(client, n_examples_shown=n_shown, fuzz_type=fuzz_type)

    def score(self, scorer, ex, explanation: str) -> tuple[float, int, int, float]:
        """(balanced accuracy, predictions missing, items, seconds) of ``scorer`` on ``ex``."""
        import pandas as pd

        rec = self.record(ex, explanation)
        state = random.getstate()  # delphi's fuzzing calls random.seed(22)
        t = time.perf_counter()
        try:
            out = asyncio.run(scorer(rec)).score
        finally:
            seconds = time.perf_counter() - t
            random.setstate(state)
        df = pd.DataFrame([o.__dict__ for o in out])
        missing = int(df.prediction.isna().sum())
        if missing == len(df):
            return float("nan"), missing, len(df), seconds
        m = self.analysis.compute_classification_metrics(self.analysis.compute_confusion(df))
        return float(m["accuracy"]), missing, len(df), seconds


# ---------------------------------------------------------------------------------------------- our side
def full(ex, n_test: int) -> bool:
    return len(ex.test_pos) == n_test and len(ex.test_neg) == n_test


def records_values(expls, scorer: str, field: str = "value", control: bool = False) -> dict[int, float]:
    """latent -> a field of one scorer's Score (or the control's) in an explain run's records."""
    out = {}
    for r in expls.records:
        s = r.get("control" if control else "scores", {}).get(scorer, {})
        if s.get(field) is not None:
            out[int(r["latent"])] = float(s[field])
    return out


def make_write_only_cache(folder: str):
    from interp.explain import ResponseCache

    class WriteOnlyCache(ResponseCache):
        """Never answers, so every request is computed (timings as with no cache); stores the replies (for the
        explain run that follows) and counts the seconds spent storing them."""

        seconds = 0.0

        def get(self, key):
            return None

        def put(self, key, text):
            t = time.perf_counter()
            super().put(key, text)
            self.seconds += time.perf_counter() - t

    return WriteOnlyCache(folder)


# ---------------------------------------------------------------------------------------------- main
def main() -> None:  # noqa: C901 - one benchmark, read top to bottom
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latents", type=int, default=100, help="latents for the baseline and rule scorers")
    ap.add_argument("--local-latents", type=int, default=100,
                    help="latents (of those) explained and scored with the local model (slow on a CPU)")
    ap.add_argument("--budget-minutes", type=float, default=None,
                    help="cut --local-latents so the local-model part fits (estimated from its first 5 latents)")
    ap.add_argument("--sae", default=None, help="a dictionary folder (SAELens layout) instead of training one")
    ap.add_argument("--sae-tokens", type=int, default=None)
    ap.add_argument("--contexts", type=int, default=None, help="held-out contexts indexed (64 tokens each)")
    ap.add_argument("--delphi-shown", type=int, default=5, help="examples per delphi prompt (its CLI's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="10 latents, 2 local ones, a tiny dictionary: a smoke run")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    t_start = time.perf_counter()
    if args.quick:
        setup = Setup(sae_tokens=args.sae_tokens or 20_000, contexts=args.contexts or 96, seed=args.seed)
        args.latents, args.local_latents = min(args.latents, 10), min(args.local_latents, 2)
    else:
        setup = Setup(sae_tokens=args.sae_tokens or 150_000, contexts=args.contexts or 512, seed=args.seed)

    import interp
    from interp.explain import (
        Baseline,
        ExampleSampler,
        LLMExplainer,
        LocalModel,
        ResponseCache,
        Scorer,
        explain_latents,
    )

    summary: list[str] = []
    model = interp.load("smollm2-135m")
    print(f"== setup: {model.config.name if hasattr(model.config, 'name') else 'smollm2-135m'}, "
          f"{model.n_layers} layers; CPU threads {os.cpu_count()}")
    d, index = dictionary_and_index(model, setup, args.sae)
    latents = choose_latents(index, args.latents, args.seed)
    dens = index.density()
    n_ok = int(((dens >= 1e-4) & (dens <= 0.05)).sum())
    print(f"latents: {len(latents)} chosen (seed {args.seed}) of {n_ok} firing on 1e-4..0.05 of "
          f"{index.n_tokens:,} held-out tokens; {int((dens == 0).sum())} of {index.width} never fire there")
    sampler = ExampleSampler(model, index, seed=args.seed)
    examples = {f: sampler(f) for f in latents}
    n_test = sampler.n_test
    n_full = sum(full(examples[f], n_test) for f in latents)
    print(f"examples: window {sampler.window} tokens; held out per latent {n_test} activating + {n_test} silent "
          f"(half hard); {n_full} of {len(latents)} latents have full held-out sets, "
          f"{sum(not examples[f].test_pos for f in latents)} have no held-out activating context (too rare)")
    reason = delphi_not_available()
    D = None
    if reason is None:
        D = Delphi()
        print(f"delphi: eai-delphi {D.version} imported (delphi.clients replaced by a bare package: no vllm)")
    else:
        print(f"delphi: not available ({reason}); install with: {DELPHI_INSTALL}")
        summary.append(f"delphi: not available ({reason})")

    # ------------------------------------------------------------------ (a) baseline + rule scorers
    print(f"\n== (a) Baseline explainer, rule scorers, {len(latents)} latents")
    base = Baseline()
    rule = {t: Scorer(t, seed=args.seed) for t in ("detection", "fuzzing", "simulation")}
    t = time.perf_counter()
    bexpl = {e.latent: e for e in base.explain([examples[f] for f in latents])}
    t_bexp = (time.perf_counter() - t) / len(latents)
    t_brule, brule_direct = {}, {}
    for name, s in rule.items():
        t = time.perf_counter()
        got = s.score([(examples[f], bexpl[f].text) for f in latents])
        t_brule[name] = (time.perf_counter() - t) / len(latents)
        brule_direct[name] = dict(zip(latents, got))
    t = time.perf_counter()
    bres = explain_latents(model, d, index, latents, explainer=base, scorers=list(rule.values()), sampler=sampler,
                           seed=args.seed)
    t_brun = time.perf_counter() - t
    n_expl = sum(bexpl[f].text is not None for f in latents)
    print(f"explained {n_expl} of {len(latents)}; seconds per latent: explain {t_bexp * 1e3:.2f} ms, score "
          + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in t_brule.items())
          + f"; explain_latents (with the control) {t_brun:.2f} s in all")
    for name in rule:
        real, ctrl = bres.scores(name)
        lo = -1.0 if name == "simulation" else 0.0
        print_distribution(f"{name} ({'correlation' if name == 'simulation' else 'balanced accuracy'})", real, ctrl,
                           lo, 1.0)
        summary.append(f"baseline {name}: {fmt_ci(real)} vs control {fmt_ci(ctrl)}")
    summary.append(f"baseline time per latent: explain {t_bexp * 1e3:.2f} ms; rule scoring "
                   + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in t_brule.items()))
    for f, e in list(bexpl.items())[:3]:
        print(f"    e.g. latent {f}: {e.text}")

    # ------------------------------------------------------------------ delphi with a rule client
    if D is not None:
        print(f"\n== delphi {D.version} with a rule client vs our rule scorer (Baseline explanations and controls, "
              "identical held-out examples; 1 example per prompt, delphi's default)")
        ctx = [c for f in latents for c in examples[f].test_pos + examples[f].test_neg]
        runs = [("detection", "default"), ("fuzzing", "default"), ("fuzzing", "active")]
        by_rec = bres.by_latent
        for task, ftype in runs:
            client = RuleClient(D.Response, ctx, fuzzing=task == "fuzzing")
            sc = D.scorer(task, client, 1, ftype)
            dv, dc, secs = {}, {}, []
            for f in latents:
                r = by_rec[f]
                ex = examples[f]
                if r["explanation"] is None or not ex.test_pos or not ex.test_neg:
                    continue
                dv[f], _, _, s = D.score(sc, ex, r["explanation"])
                secs.append(s)
                if r.get("control_explanation"):
                    dc[f] = D.score(sc, ex, r["control_explanation"])[0]
            ours = records_values(bres, task, "accuracy")
            ours_c = records_values(bres, task, "accuracy", control=True)
            keys = [f for f in dv if f in ours]
            keys_c = [f for f in dc if f in ours_c]
            same = sum(abs(dv[f] - ours[f]) < 1e-12 for f in keys)
            same_c = sum(abs(dc[f] - ours_c[f]) < 1e-12 for f in keys_c)
            label = f"{task}" + (f" (delphi fuzz_type={ftype})" if task == "fuzzing" else "")
            ratio = faster(t_brule[task], float(np.mean(secs)) if secs else float("nan"))
            print(f"  {label}: delphi {fmt_ci([dv[f] for f in keys])}, ours {fmt_ci([ours[f] for f in keys])}")
            print(f"    per latent: identical on {same} of {len(keys)} ({same_c} of {len(keys_c)} controls); "
                  f"{fmt_agree([ours[f] for f in keys], [dv[f] for f in keys])}; control "
                  f"{fmt_agree([ours_c[f] for f in keys_c], [dc[f] for f in keys_c])}; texts not matched by the "
                  f"client: {client.unmatched}")
            print(f"    time per latent: delphi {np.mean(secs) * 1e3:.2f} ms, ours {t_brule[task] * 1e3:.2f} ms "
                  f"({ratio})")
            summary.append(f"rule check {label}: identical on {same}/{len(keys)} latents (+{same_c}/{len(keys_c)} "
                           f"controls), {fmt_agree([ours[f] for f in keys], [dv[f] for f in keys])}; time per latent "
                           f"ours {t_brule[task] * 1e3:.2f} ms vs delphi {np.mean(secs) * 1e3:.2f} ms "
                           f"({ratio})")

    # ------------------------------------------------------------------ (b) local model
    local = [f for f in latents if full(examples[f], n_test)][: args.local_latents]
    print(f"\n== (b) LLMExplainer(LocalModel) + detection/fuzzing by its answer probabilities, up to {len(local)} "
          f"latents (those with full held-out sets)")
    folder = tempfile.mkdtemp(prefix="autointerp-replies-")
    wcache = make_write_only_cache(folder)
    lm_timed = LocalModel(model, cache=wcache)
    lm_off = LocalModel(model, cache=False, batch_size=1)  # delphi sends one prompt at a time
    explainer = LLMExplainer(lm_timed)
    ours_llm = {t: Scorer(t, lm_timed, seed=args.seed) for t in ("detection", "fuzzing")}
    dl = {}
    if D is not None:
        dclient = LocalClient(D.Response, lm_off)
        dl = {t: D.scorer(t, dclient, args.delphi_shown) for t in ("detection", "fuzzing")}
    t_exp, t_sc, t_dl = 0.0, {t: 0.0 for t in ours_llm}, {t: 0.0 for t in dl}
    lexpl, lscore, dscore = {}, {t: {} for t in ours_llm}, {t: {} for t in dl}
    dmiss = {t: [0, 0] for t in dl}
    done: list[int] = []
    t_llm0 = time.perf_counter()
    queue = list(local)
    first = True
    while queue:
        part, queue = (queue[:5], queue[5:]) if first else (queue[:8], queue[8:])
        t = time.perf_counter()
        for e in explainer.explain([examples[f] for f in part]):
            lexpl[e.latent] = e
        t_exp += time.perf_counter() - t
        for name, s in ours_llm.items():
            t = time.perf_counter()
            for f, sc in zip(part, s.score([(examples[f], lexpl[f].text) for f in part])):
                lscore[name][f] = sc
            t_sc[name] += time.perf_counter() - t
        for name, s in dl.items():
            for f in part:
                if lexpl[f].text is None:
                    continue
                acc, miss, n, secs = D.score(s, examples[f], lexpl[f].text)
                dscore[name][f] = acc
                dmiss[name][0] += miss
                dmiss[name][1] += n
                t_dl[name] += secs
        done += part
        if first:
            first = False
            e_, o_ = t_exp / len(done), sum(t_sc.values()) / len(done)
            d_ = sum(t_dl.values()) / len(done)
            per = e_ + 2 * o_ + 2 * d_
            rest = (len(local) - len(done)) * (e_ + o_ + d_) + len(local) * (o_ + d_)
            print(f"estimate from {len(done)} latents: per latent explain {e_:.1f} s, our scoring {o_:.1f} s, delphi "
                  f"{d_:.1f} s (each again for the control): {rest / 60:.1f} more minutes for {len(local)} latents")
            if args.budget_minutes is not None:
                left = args.budget_minutes * 60 - (time.perf_counter() - t_llm0)
                fit = max(len(done), min(len(local), int((left + len(done) * (e_ + o_ + d_)) / per)))
                if fit < len(local):
                    print(f"  --budget-minutes {args.budget_minutes:g}: {fit} local latents instead of {len(local)}")
                    local = local[:fit]
                    queue = [f for f in local if f not in done]
    n = len(local)
    # a text-only explainer error makes a latent unscorable for both sides; it counts in the time per latent
    t_exp_l, t_sc_l = t_exp / n, {k: v / n for k, v in t_sc.items()}
    t_dl_l = {k: v / max(len(dscore[k]), 1) for k, v in t_dl.items()}
    print(f"seconds per latent, every reply computed (no cache read; {wcache.seconds:.2f} s in all spent writing "
          f"replies to the cache): explain {t_exp_l:.2f}, score "
          + ", ".join(f"{k} {v:.2f}" for k, v in t_sc_l.items()))
    for f in local[:3]:
        print(f"    e.g. latent {f}: {lexpl[f].text!r} (baseline: {bexpl[f].text})")
    n_fail = sum(lexpl[f].text is None for f in local)
    lm_cached = LocalModel(model, cache=ResponseCache(folder))
    lrun, walls = {}, []
    for label in ("first run (explanations and scores from the cache, the control computed)", "rerun (all cached)"):
        t = time.perf_counter()
        lrun[label] = explain_latents(
            model, d, index, local, explainer=LLMExplainer(lm_cached), sampler=sampler, seed=args.seed, chunk=8,
            scorers=[Scorer(k, lm_cached, seed=args.seed) for k in ("detection", "fuzzing")])
        walls.append(time.perf_counter() - t)
    lres = lrun[next(iter(lrun))]
    print(f"explain_latents on {n} latents: {walls[0]:.1f} s {list(lrun)[0]}; {walls[1]:.2f} s {list(lrun)[1]} "
          f"({walls[1] / n:.3f} s per latent)")
    same = sum(abs(lres.by_latent[f]["scores"].get(f"detection:{lm_cached.name}", {}).get("value", -9)
                   - (lscore["detection"][f].value if lscore["detection"][f].value is not None else -9)) < 1e-9
               for f in local)
    print(f"explanations failed: {n_fail} of {n}; explain_latents reproduced the timed detection scores on {same} "
          f"of {n} latents")
    for k in ("detection", "fuzzing"):
        name = f"{k}:{lm_cached.name}"
        real, ctrl = lres.scores(name)
        print_distribution(f"{k} (AUROC of the answer probabilities)", real, ctrl)
        acc = records_values(lres, name, "accuracy")
        acc_c = records_values(lres, name, "accuracy", control=True)
        print(f"    balanced accuracy at p=0.5: explanation {fmt_ci(list(acc.values()))}; control "
              f"{fmt_ci(list(acc_c.values()))}")
        summary.append(f"local {k} AUROC: {fmt_ci(real)} vs control {fmt_ci(ctrl)}; balanced accuracy "
                       f"{fmt_ci(list(acc.values()))} vs control {fmt_ci(list(acc_c.values()))}")
    summary.append(f"local time per latent ({n} latents, every reply computed): explain {t_exp_l:.2f} s, score "
                   + ", ".join(f"{k} {v:.2f} s" for k, v in t_sc_l.items())
                   + f"; explain_latents rerun from the cache {walls[1] / n:.3f} s per latent (first run with the "
                   f"control {walls[0] / n:.2f} s)")

    # ------------------------------------------------------------------ delphi with the local model
    if D is not None:
        print(f"\n== delphi {D.version} DetectionScorer/FuzzingScorer with the same local model as its client "
              f"({args.delphi_shown} examples per prompt, text answers), same latents, examples, explanations")
        dctrl = {t: {} for t in dl}
        for name, s in dl.items():
            for f in local:
                r = lres.by_latent[f]
                if r.get("control_explanation"):
                    acc, miss, nn, secs = D.score(s, examples[f], r["control_explanation"])
                    dctrl[name][f] = acc
                    dmiss[name][0] += miss
                    dmiss[name][1] += nn
        for k in ("detection", "fuzzing"):
            name = f"{k}:{lm_cached.name}"
            real = dscore[k]
            ctrl = dctrl[k]
            print_distribution(f"delphi {k} (balanced accuracy)", [v for v in real.values() if np.isfinite(v)],
                               [v for v in ctrl.values() if np.isfinite(v)])
            miss, tot = dmiss[k]
            print(f"    answers missing (reply not a list of {args.delphi_shown} 0/1, or failed): {miss} of {tot} "
                  f"({miss / max(tot, 1):.1%}); latents with no usable answer: "
                  f"{sum(not np.isfinite(v) for v in real.values())} of {len(real)}")
            acc = records_values(lres, name, "accuracy")
            roc = records_values(lres, name, "value")
            acc_c = records_values(lres, name, "accuracy", control=True)
            keys = [f for f in real if f in acc]
            keys_c = [f for f in ctrl if f in acc_c]
            a1 = fmt_agree([acc[f] for f in keys], [real[f] for f in keys])
            a2 = fmt_agree([roc[f] for f in keys], [real[f] for f in keys])
            a3 = fmt_agree([acc_c[f] for f in keys_c], [ctrl[f] for f in keys_c])
            print(f"    agreement with ours per latent: our balanced accuracy {a1}; our AUROC {a2}; control {a3}")
            ratio = faster(t_sc_l[k], t_dl_l[k])
            print(f"    time per latent: delphi {t_dl_l[k]:.2f} s, ours {t_sc_l[k]:.2f} s ({ratio})")
            summary.append(f"delphi local {k}: {fmt_ci([v for v in real.values() if np.isfinite(v)])} vs control "
                           f"{fmt_ci([v for v in ctrl.values() if np.isfinite(v)])}; missing answers {miss}/{tot} "
                           f"({miss / max(tot, 1):.1%}); vs ours {a1} (control {a3}); time per latent ours "
                           f"{t_sc_l[k]:.2f} s vs delphi {t_dl_l[k]:.2f} s ({ratio})")
        bad = [r for r in dclient.replies if not re.search(r"\[.*?\]", r)]
        print(f"    replies without a bracketed list: {len(bad)} of {len(dclient.replies)}"
              + (f"; e.g. {bad[0][:80]!r}" if bad else "")
              + (f"; a reply: {dclient.replies[0][:80]!r}" if dclient.replies else ""))
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    print("\n== summary")
    for line in summary:
        print("  " + line)
    print(f"  total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
