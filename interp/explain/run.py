"""The explain-and-score run over many latents, its JSONL file, and :class:`Explanations` (the file read back).

:func:`explain_latents` draws each latent's examples from a feature index, explains every latent (a batch at a
time), then scores each explanation on the latent's held-out examples, and also scores it with another latent's
explanation (the shuffled control: a fixed derangement of the explained latents). One JSON line per latent is
appended as soon as its chunk is scored: ``latent``, ``status`` ("ok", "dead" or "failed"), ``explanation``,
``scores`` and ``control`` (scorer -> value, interval, n, ...), ``control_latent``, the explainer's ``prompt`` and
raw ``response``, the example counts, and ``provenance``. ``resume=True`` keeps the latents already in the file
(a torn last line from an interrupted run is dropped) and does the rest; the backends' response cache makes a
rerun of finished work free. The control pairing is drawn over the latents of the call, so resuming with the
same latent list gives the records one uninterrupted run would; records kept from a run over another list keep
that run's pairing (``control_latent`` says which).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from interp.explain.examples import ExampleSampler
from interp.explain.scorers import Scorer, bootstrap_ci
from interp.results import Result, Summary

FORMAT = "interp.explanations/1"


def _derangement(n: int, seed: int) -> np.ndarray:
    """A permutation of ``range(n)`` with no fixed point (n >= 2)."""
    rng = np.random.default_rng([seed, 9])
    perm = rng.permutation(n)
    return np.roll(perm, 1)[np.argsort(perm)] if n > 1 else perm  # i -> the element after i in a random cycle


def _read_records(path: Path) -> tuple[list[dict], bool]:
    """Valid records of a JSONL file and whether a torn or damaged line was dropped."""
    records, dropped = [], False
    if not path.exists():
        return records, dropped
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            dropped = True
            continue
        if isinstance(rec, dict) and "latent" in rec:
            records.append(rec)
        else:
            dropped = True
    return records, dropped


def explain_latents(model, dictionary, index, latents: Sequence[int], *, explainer=None, scorers=None,
                    out: str | Path | None = None, resume: bool = False, chunk: int = 16, seed: int = 0,
                    sampler: ExampleSampler | None = None, progress: bool = False,
                    provenance: Mapping | None = None) -> Explanations:
    """Explain and score ``latents`` of ``dictionary`` from ``index`` (a :class:`~interp.features.FeatureIndex` of
    it over held-out text). ``explainer`` defaults to :class:`~interp.explain.Baseline`; ``scorers`` to the rule
    checker's detection and fuzzing (a list of :class:`~interp.explain.Scorer` or task names for the rule
    checker). ``out``: the JSONL file, appended to chunk by chunk (an existing file is refused unless ``resume``).
    Returns the :class:`Explanations` of every requested latent."""
    from tqdm.auto import tqdm

    from interp.explain.explainers import Baseline

    explainer = explainer or Baseline()
    scorers = [Scorer(s, seed=seed) if isinstance(s, str) else s
               for s in (["detection", "fuzzing"] if scorers is None else scorers)]
    latents = [int(f) for f in latents]
    if len(set(latents)) != len(latents):
        raise ValueError("latents repeat; give each latent once")
    bad = [f for f in latents if not 0 <= f < index.width]
    if bad:
        raise ValueError(f"latents {bad[:5]} are out of range: the dictionary has {index.width} latents")
    out = Path(out).expanduser() if out is not None else None
    done: dict[int, dict] = {}
    if out is not None:
        if out.is_dir():
            raise IsADirectoryError(f"{out} is a folder; give a file name such as {out / 'explanations.jsonl'}")
        if out.exists() and not resume:
            raise FileExistsError(f"{out} exists; pass resume=True (--resume) to continue it, or another path")
        records, dropped = _read_records(out)
        done = {int(r["latent"]): r for r in records if int(r["latent"]) in set(latents)}
        if dropped:  # rewrite without the torn line, atomically, before appending
            from interp._io import atomic_file

            with atomic_file(out, "w") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        out.parent.mkdir(parents=True, exist_ok=True)
    sampler = sampler or ExampleSampler(model, index, seed=seed)
    prov = {"format": FORMAT, "explainer": explainer.name, "scorers": [s.name for s in scorers], "seed": seed,
            "hook": getattr(getattr(dictionary, "cfg", None), "hook_name", None),
            "width": int(index.width), "indexed_tokens": int(index.n_tokens), **(provenance or {})}

    # every latent's explanation is needed (a pending latent's control is another latent's explanation); the
    # explainers are deterministic and the backends cache, so explaining finished latents again costs little
    examples = {f: sampler(f) for f in latents}
    expl = {}
    for lo in tqdm(range(0, len(latents), chunk), desc="explain", disable=not progress, unit="chunk"):
        part = latents[lo:lo + chunk]
        for e in explainer.explain([examples[f] for f in part]):
            expl[e.latent] = e
    live = [f for f in latents if expl[f].text is not None]
    perm = _derangement(len(live), seed)
    control_of = {f: live[perm[i]] for i, f in enumerate(live)} if len(live) > 1 else {}

    todo = [f for f in latents if f not in done]
    t0 = time.perf_counter()
    for lo in tqdm(range(0, len(todo), chunk), desc="score", disable=not progress, unit="chunk"):
        part = todo[lo:lo + chunk]
        records = []
        scored = {f: {} for f in part}
        controls = {f: {} for f in part}
        for s in scorers:
            real = s.score([(examples[f], expl[f].text) for f in part])
            ctrl = s.score([(examples[f], expl[control_of[f]].text if f in control_of else None) for f in part])
            for f, a, b in zip(part, real, ctrl):
                scored[f][s.name] = a.as_dict()
                controls[f][s.name] = b.as_dict()
        for f in part:
            ex, e = examples[f], expl[f]
            status = "dead" if ex.dead else ("ok" if e.text is not None else "failed")
            records.append({
                "latent": f, "status": status, "explanation": e.text, "error": e.error,
                "scores": scored[f] if status == "ok" else {}, "control": controls[f] if status == "ok" else {},
                "control_latent": control_of.get(f), "control_explanation": expl[control_of[f]].text
                if f in control_of else None,
                # an explainer that writes the same text for two latents makes that control no control at all
                "control_same_text": f in control_of and expl[control_of[f]].text == e.text,
                "examples": {"train": len(ex.train), "train_neg": len(ex.train_neg), "test_pos": len(ex.test_pos),
                             "test_neg": len(ex.test_neg), "n_active": ex.n_active, "max_act": ex.max_act},
                "prompt": e.prompt, "response": e.response, "provenance": prov})
        for r in records:
            done[r["latent"]] = r
        if out is not None:
            with open(out, "a", encoding="utf-8") as fh:
                fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
                fh.flush()
                os.fsync(fh.fileno())
    elapsed = time.perf_counter() - t0
    return Explanations([done[f] for f in latents], path=out, seconds=elapsed, scored=len(todo))


@dataclasses.dataclass
class Explanations(Result):
    """Explanations and scores of many latents (the records of an explain run; :meth:`load` reads a JSONL file).
    ``text(f)`` is latent ``f``'s explanation; :meth:`labels` the explanations keyed by latent for feature cards,
    dashboards and graph labels; :meth:`scores` one scorer's values with the shuffled control's."""

    records: list[dict]
    path: Path | None = None
    seconds: float | None = None  # time spent scoring in the run that returned this
    scored: int | None = None  # latents scored in that run (a resumed run scores only the pending ones)

    @classmethod
    def load(cls, path: str | Path) -> Explanations:
        """Read an explanations JSONL file (a torn last line is skipped)."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no explanations file at {path}; write one with `interp explain ... --out "
                                    f"{path}`")
        records, _ = _read_records(path)
        return cls(records, path=path)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def by_latent(self) -> dict[int, dict]:
        """Records keyed by latent."""
        return {int(r["latent"]): r for r in self.records}

    def text(self, latent: int) -> str | None:
        """The explanation of ``latent`` (None when it has none)."""
        r = self.by_latent.get(int(latent))
        return r.get("explanation") if r else None

    def scorer_names(self) -> list[str]:
        """The scorers recorded, in order of first appearance."""
        names: dict[str, None] = {}
        for r in self.records:
            names.update(dict.fromkeys(r.get("scores", {})))
        return list(names)

    def labels(self, *, scores: bool = True) -> dict[int, str]:
        """latent -> explanation (with its scores and the control's, when ``scores``), for explained latents."""
        out = {}
        for r in self.records:
            if r.get("explanation") is None:
                continue
            text = r["explanation"]
            if scores and r.get("scores"):
                parts = []
                for name, s in r["scores"].items():
                    c = r.get("control", {}).get(name, {})
                    if s.get("value") is not None:
                        ctrl = f", control {c['value']:.2f}" if c.get("value") is not None else ""
                        parts.append(f"{name.split(':')[0]} {s['value']:.2f}{ctrl}")
                if parts:
                    text += " (" + "; ".join(parts) + ")"
            out[int(r["latent"])] = text
        return out

    def scores(self, scorer: str) -> tuple[np.ndarray, np.ndarray]:
        """(explanation scores, shuffled-control scores) of ``scorer`` over the latents scored by both."""
        a, b = [], []
        for r in self.records:
            s, c = r.get("scores", {}).get(scorer, {}), r.get("control", {}).get(scorer, {})
            if s.get("value") is not None and c.get("value") is not None:
                a.append(s["value"])
                b.append(c["value"])
        return np.array(a), np.array(b)

    def summary_table(self) -> dict[str, dict]:
        """scorer -> mean score and the control's, each with a bootstrap 95% interval over latents."""
        out = {}
        for name in self.scorer_names():
            a, b = self.scores(name)
            if not len(a):
                continue
            ci = lambda v: bootstrap_ci(lambda i: float(v[i].mean()), len(v), resamples=1000)
            out[name] = {"latents": len(a), "mean": float(a.mean()), "ci": ci(a), "control_mean": float(b.mean()),
                         "control_ci": ci(b)}
        return out

    def figure(self):
        """Histograms of each scorer's values against its shuffled control (plotly)."""
        from interp.viz.figures import score_distribution_figure

        return score_distribution_figure({n: self.scores(n) for n in self.scorer_names()},
                                         title="Explanation scores against the shuffled control")

    def figures(self) -> list:
        """The score figure, for reports."""
        return [self.figure()] if self.scorer_names() else []

    def _summary(self) -> Summary:
        status: dict[str, int] = {}
        for r in self.records:
            status[r.get("status", "?")] = status.get(r.get("status", "?"), 0) + 1
        facts: dict = {"latents": len(self.records), **{f"{k}": v for k, v in sorted(status.items())}}
        for name, t in self.summary_table().items():
            facts[name] = (f"{t['mean']:.3f} [{t['ci'][0]:.3f}, {t['ci'][1]:.3f}]; control {t['control_mean']:.3f} "
                           f"[{t['control_ci'][0]:.3f}, {t['control_ci'][1]:.3f}]")
        if self.seconds is not None and self.scored:
            facts["seconds per latent (scoring)"] = self.seconds / self.scored
        same = sum(bool(r.get("control_same_text")) for r in self.records)
        if same:
            facts["controls with the latent's own text"] = same
        first = self.scorer_names()[:1]
        top = []
        if first:
            ranked = sorted((r for r in self.records if r.get("scores", {}).get(first[0], {}).get("value") is not None),
                            key=lambda r: -r["scores"][first[0]]["value"])
            top = [(f"latent {r['latent']}: {r['explanation'][:60]}", r["scores"][first[0]]["value"])
                   for r in ranked[:8]]
        return Summary("explanations", {"latent": len(self.records)}, facts, top, f"best explained ({first[0]})"
                       if first else "")

