"""Labelled texts and contrast pairs for probes, built from the package data under ``data/probes`` (the package
``interp.data``): true/false statements about capitals (from ``data/prompts/capitals.json``), sentiment sentences
from templates, and yes/no contrast pairs in the style of defection probes.

Every builder is deterministic for a ``seed`` and returns a :class:`Labelled` set (``texts``, ``labels``,
``family`` and ``groups`` per text) or :class:`ContrastPairs` (``positive[i]``/``negative[i]``, optional truth
``labels``, ``groups``).

Groups link near-duplicates, which cross-validation must keep on one side (``probes.sweep(acts, groups=...)``, or
``probes.collect(..., groups=data.groups)``): in the true/false statements, countries are paired (within the easy
and the hard countries) and each names the other's capital in its false statements, so a pair's true and false
statements in every template mention the same names and form one group; a probe that memorises a name ("Paris
means false") cannot profit from it on held-out groups. Sentiment sentences are grouped by noun, contrast pairs by
their statement's group or their question.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from interp._packaged import load_data_json
from interp.hooks import suggest
from interp.results import Result, Summary

__all__ = ["ContrastPairs", "Labelled", "load_json", "sentiment", "true_false", "true_false_pairs", "yes_no_pairs"]


@dataclasses.dataclass(frozen=True, eq=False)
class Labelled(Result):
    """Texts with 0/1 ``labels``, the template ``family`` each came from and its ``groups`` id (texts of one group
    are near-duplicates: keep them on one side of a split; None when unknown)."""

    name: str
    texts: tuple[str, ...]
    labels: np.ndarray
    family: tuple[str, ...]
    groups: tuple[str, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "labels", np.asarray(self.labels, np.int32))
        if not (len(self.texts) == len(self.labels) == len(self.family)):
            raise ValueError(f"{len(self.texts)} texts, {len(self.labels)} labels and {len(self.family)} families: "
                             "they must be equally many")
        if self.groups is not None:
            object.__setattr__(self, "groups", tuple(self.groups))
            if len(self.groups) != len(self.texts):
                raise ValueError(f"{len(self.texts)} texts but {len(self.groups)} group ids: give one per text")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, rows) -> Labelled:
        rows = np.atleast_1d(np.arange(len(self))[rows])
        return dataclasses.replace(self, texts=tuple(self.texts[int(r)] for r in rows), labels=self.labels[rows],
                                   family=tuple(self.family[int(r)] for r in rows),
                                   groups=None if self.groups is None else tuple(self.groups[int(r)] for r in rows))

    def where(self, family: str) -> Labelled:
        """The texts of one template family."""
        if family not in self.family:
            raise ValueError(f"no family {family!r} in {self.name}; families: {sorted(set(self.family))}")
        return self.subset(np.array([f == family for f in self.family]))

    def _summary(self) -> Summary:
        facts = {"class 1": int(self.labels.sum()), "families": ", ".join(sorted(set(self.family)))}
        if self.groups is not None:
            facts["groups"] = len(set(self.groups))
        return Summary(f"labelled texts {self.name!r}", {"text": len(self)}, facts,
                       [(t, int(y)) for t, y in zip(self.texts[:6], self.labels[:6])], "text: label")


@dataclasses.dataclass(frozen=True, eq=False)
class ContrastPairs(Result):
    """Pairs of texts that differ in one answer: ``positive[i]`` ("... Yes") and ``negative[i]`` ("... No");
    ``labels[i]`` (or None) says whether the positive half is the true one; ``groups[i]`` (or None) links pairs that
    are near-duplicates."""

    name: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]
    labels: np.ndarray | None = None
    groups: tuple[str, ...] | None = None

    def __post_init__(self):
        if len(self.positive) != len(self.negative):
            raise ValueError(f"{len(self.positive)} positive and {len(self.negative)} negative texts: pairs need "
                             "one of each")
        if self.groups is not None:
            object.__setattr__(self, "groups", tuple(self.groups))
            if len(self.groups) != len(self.positive):
                raise ValueError(f"{len(self.positive)} pairs but {len(self.groups)} group ids: give one per pair")
        if self.labels is not None:
            object.__setattr__(self, "labels", np.asarray(self.labels, np.int32))

    def __len__(self) -> int:
        return len(self.positive)

    def _summary(self) -> Summary:
        return Summary(f"contrast pairs {self.name!r}", {"pair": len(self)}, {"labelled": self.labels is not None},
                       [(p, n) for p, n in zip(self.positive[:4], self.negative[:4])], "positive: negative")


def load_json(name: str) -> dict:
    """The packaged probe data ``data/probes/{name}.json`` (``"true_false"``, ``"sentiment"``, ``"yes_no"``)."""
    return load_data_json("probes", name, "probe data")


def _families(data: dict, families) -> list[str]:
    known = list(data["templates"])
    if families is None:
        return known
    families = [families] if isinstance(families, str) else list(families)
    for f in families:
        if f not in known:
            raise ValueError(f"unknown template family {f!r}{suggest(f, known)}; families: {', '.join(known)}")
    return families


def _partners(countries: list[str], known: set, rng: np.random.Generator) -> dict[str, tuple[str, str]]:
    """For each country, (the country whose capital its false statements name, its group): countries are paired at
    random within the well-known ones and within the rest (an odd one out joins the last pair as a three-cycle),
    each naming its partner's capital, so every name occurs in its own group only."""
    out = {}
    for pool in ([c for c in countries if c in known], [c for c in countries if c not in known]):
        order = [pool[int(i)] for i in rng.permutation(len(pool))]
        n = len(order)
        k = n - 3 if n % 2 else n
        chunks = [order[i:i + 2] for i in range(0, k, 2)] + ([order[max(k, 0):]] if n % 2 else [])
        for chunk in chunks:
            if len(chunk) < 2:
                raise ValueError("true/false statements need at least two countries of each difficulty")
            group = "/".join(sorted(chunk))
            for j, c in enumerate(chunk):
                out[c] = (chunk[(j + 1) % len(chunk)], group)
    return out


def _statements(families, difficulty: str | None, seed: int):
    if difficulty not in (None, "easy", "hard"):
        raise ValueError(f"difficulty must be None, 'easy' (well-known countries) or 'hard' (the rest); "
                         f"got {difficulty!r}")
    data = load_json("true_false")
    caps = load_data_json("prompts", "capitals", "prompt data")
    caps = caps["capitals"]
    countries = list(caps)
    known = set(data["well_known"])
    partner = _partners(countries, known, np.random.default_rng(seed))
    out = []  # (true text, false text, family, group)
    for fam in _families(data, families):
        for template in data["templates"][fam]:
            for c in countries:
                if difficulty == "easy" and c not in known or difficulty == "hard" and c in known:
                    continue
                fill = template.replace("[COUNTRY]", c)
                other, group = partner[c]
                out.append((fill.replace("[CAPITAL]", caps[c]), fill.replace("[CAPITAL]", caps[other]), fam, group))
    return data, out


def true_false(families=None, *, difficulty: str | None = None, seed: int = 0) -> Labelled:
    """True statements about capitals (label 1) and false twins naming another country's capital (label 0), for
    the template ``families`` (default: all; ``"declarative"``, ``"descriptive"``, ``"question"``) and countries
    by ``difficulty`` (``"easy"``: well known, ``"hard"``: the rest, None: all). The false twin names the capital
    of the country's partner (pairs drawn with ``seed``); ``groups`` holds the pair (``"France/Spain"``), which
    all statements naming either country or either capital share."""
    _, rows = _statements(families, difficulty, seed)
    texts, labels, fams, groups = [], [], [], []
    for t, f, fam, group in rows:
        texts += [t, f]
        labels += [1, 0]
        fams += [fam, fam]
        groups += [group, group]
    return Labelled("true_false", tuple(texts), np.array(labels), tuple(fams), tuple(groups))


def true_false_pairs(families=None, *, difficulty: str | None = None, seed: int = 0) -> ContrastPairs:
    """Contrast pairs for CCS: each statement (true or false) followed by "Is this true? Yes" and "... No";
    ``labels`` mark the pairs whose statement is true (so "Yes" is right)."""
    data, rows = _statements(families, difficulty, seed)
    yes, no = data["pair_answers"]
    pos, neg, labels, groups = [], [], [], []
    for t, f, _, group in rows:
        for text, truth in ((t, 1), (f, 0)):
            base = data["pair_template"].replace("[STATEMENT]", text)
            pos.append(base.replace("[ANSWER]", yes))
            neg.append(base.replace("[ANSWER]", no))
            labels.append(truth)
            groups.append(group)
    return ContrastPairs("true_false", tuple(pos), tuple(neg), np.array(labels), tuple(groups))


def sentiment(families=None, *, n: int | None = None, seed: int = 0) -> Labelled:
    """Sentences of positive (label 1) or negative (label 0) sentiment: every template of ``families`` (default:
    all; ``"review"``, ``"story"``) filled with each noun and a positive and a negative adjective (drawn with
    ``seed``); ``n`` keeps a balanced random subset of that many. ``groups`` holds the noun: the sentences about one
    noun, in every template and of both labels, are near-duplicates."""
    data = load_json("sentiment")
    rng = np.random.default_rng(seed)
    texts, labels, fams, groups = [], [], [], []
    for fam in _families(data, families):
        for template in data["templates"][fam]:
            for noun in data["nouns"]:
                for label, words in ((1, data["positive"]), (0, data["negative"])):
                    adj = words[int(rng.integers(len(words)))]
                    texts.append(template.replace("[NOUN]", noun).replace("[ADJ]", adj))
                    labels.append(label)
                    fams.append(fam)
                    groups.append(noun)
    out = Labelled("sentiment", tuple(texts), np.array(labels), tuple(fams), tuple(groups))
    if n is None:
        return out
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 2 <= n <= len(out):
        raise ValueError(f"n must be an int in 2..{len(out)}, got {n!r}")
    ones, zeros = np.flatnonzero(out.labels == 1), np.flatnonzero(out.labels == 0)
    keep = np.concatenate([rng.choice(ones, n // 2, replace=False), rng.choice(zeros, n - n // 2, replace=False)])
    return out.subset(np.sort(keep))


def yes_no_pairs() -> ContrastPairs:
    """Defection-probe style contrast pairs: "Human: <question> Assistant: yes" / "... no" for a few dozen
    questions about the assistant's own conduct (no truth labels); ``groups`` holds each pair's question."""
    data = load_json("yes_no")
    yes, no = data["answers"]
    base = [data["template"].replace("[QUESTION]", q) for q in data["questions"]]
    return ContrastPairs("yes_no", tuple(b.replace("[ANSWER]", yes) for b in base),
                         tuple(b.replace("[ANSWER]", no) for b in base), groups=tuple(data["questions"]))
