"""Prompt sets for circuit analysis: clean/corrupted pairs of equal token length for activation patching.

Three families, built from the data files under ``data/prompts`` (the package ``interp.data``):

* :func:`ioi` — indirect object identification ("When Mary and John went to the store, John gave a drink to"
  -> " Mary"), corrupted either with three fresh names (``"abc"``) or by making the other name the repeated
  one (``"swap"``, which flips the answer);
* :func:`capitals` — factual recall ("The capital of France is" -> " Paris"), corrupted with another country;
* :func:`induction` — random token sequences repeated once, for induction heads.

Every :class:`PromptSet` row has the same length ``T``, and a clean prompt differs from its corrupted partner only
at the token positions of the words the corruption changes, so activations can be patched position by position.
Only numpy and the tokenizer are needed here.

    >>> ps = ioi(model, n=16)
    >>> logits = model(ps.clean)[:, -1]
    >>> logit_diff = logits[jnp.arange(len(ps)), ps.answer] - logits[jnp.arange(len(ps)), ps.wrong]
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from interp._packaged import load_data_json
from interp.results import Result, Summary, token_texts

__all__ = ["PromptSet", "capitals", "induction", "ioi", "load_json"]

_NAME_SLOTS = ("[A]", "[B]")
_IOI_CORRUPTIONS = ("abc", "swap")


@dataclasses.dataclass(frozen=True, eq=False)
class PromptSet(Result):
    """``N`` clean prompts and their corrupted partners, all ``T`` tokens long.

    ``answer[i]`` is the correct next token after ``clean[i]``; ``wrong[i]`` the foil the metric compares it
    with (IOI: the repeated subject name; capitals: the corrupted prompt's answer). The usual metric is the
    logit difference ``logits[i, -1, answer[i]] - logits[i, -1, wrong[i]]``.
    """

    name: str
    clean: np.ndarray  # [N, T] int32
    corrupted: np.ndarray  # [N, T] int32
    answer: np.ndarray  # [N] int32
    wrong: np.ndarray  # [N] int32
    clean_text: tuple[str, ...]
    corrupted_text: tuple[str, ...]
    tokenizer: Any = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        for field in ("clean", "corrupted", "answer", "wrong"):
            object.__setattr__(self, field, np.asarray(getattr(self, field), dtype=np.int32))
        object.__setattr__(self, "clean_text", tuple(self.clean_text))
        object.__setattr__(self, "corrupted_text", tuple(self.corrupted_text))
        if self.clean.ndim != 2:
            raise ValueError(f"clean must be [N, T] token ids, got shape {self.clean.shape}")
        if self.corrupted.shape != self.clean.shape:
            raise ValueError(
                f"clean {self.clean.shape} and corrupted {self.corrupted.shape} must have the same shape "
                "(patching pairs positions one to one)"
            )
        n = self.clean.shape[0]
        for field in ("answer", "wrong"):
            if getattr(self, field).shape != (n,):
                raise ValueError(f"{field} must have shape ({n},), got {getattr(self, field).shape}")
        for field in ("clean_text", "corrupted_text"):
            if len(getattr(self, field)) != n:
                raise ValueError(f"{field} must hold {n} strings, got {len(getattr(self, field))}")

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    def __repr__(self) -> str:
        n, t = self.clean.shape
        example = f", e.g. {self.clean_text[0]!r}" if n else ""
        return f"PromptSet({self.name!r}, n={n}, T={t}{example})"

    def _summary(self) -> Summary:
        n, t = self.clean.shape
        answers, wrongs = token_texts(self.tokenizer, self.answer[:6]), token_texts(self.tokenizer, self.wrong[:6])
        top = [(f"{c!r} / {k!r}", f"{a} vs {w}")
               for c, k, a, w in zip(self.clean_text, self.corrupted_text, answers, wrongs)]
        return Summary(f"prompt set {self.name!r}", {"prompt": n, "pos": t}, top=top,
                       top_title="clean / corrupted prompt: answer vs wrong")

    def str_tokens(self, i: int = 0) -> list[str]:
        """Token strings of clean prompt ``i`` (axis labels for position-wise plots)."""
        if self.tokenizer is None:
            raise ValueError("this prompt set has no tokenizer; build it with ioi()/capitals() or pass tokenizer=")
        return list(self.tokenizer.to_str_tokens(self.clean[i]))

    def subset(self, idx) -> PromptSet:
        """The rows ``idx`` (an int, slice, index array or boolean mask), as a new set."""
        rows = np.arange(len(self))[idx]
        rows = np.atleast_1d(rows)
        return dataclasses.replace(
            self,
            clean=self.clean[rows],
            corrupted=self.corrupted[rows],
            answer=self.answer[rows],
            wrong=self.wrong[rows],
            clean_text=tuple(self.clean_text[int(r)] for r in rows),
            corrupted_text=tuple(self.corrupted_text[int(r)] for r in rows),
        )

    def swapped(self) -> PromptSet:
        """Clean and corrupted exchanged, and ``answer`` with ``wrong``: the set for the opposite patching
        direction. For capitals and IOI ``"swap"`` the result is again a proper set (each answer is the
        swapped clean prompt's next token); for IOI ``"abc"`` the swapped clean prompts name neither token,
        so read the swapped metric as the original one with its sign flipped."""
        suffix = " (swapped)"
        name = self.name[: -len(suffix)] if self.name.endswith(suffix) else self.name + suffix
        return dataclasses.replace(
            self,
            name=name,
            clean=self.corrupted,
            corrupted=self.clean,
            answer=self.wrong,
            wrong=self.answer,
            clean_text=self.corrupted_text,
            corrupted_text=self.clean_text,
        )


# ---------------------------------------------------------------------------------------------- data files
def load_json(name: str) -> dict:
    """The packaged prompt data ``data/prompts/{name}.json`` of the package ``interp.data`` (``"ioi"``,
    ``"capitals"``, ...)."""
    return load_data_json("prompts", name, "prompt data")


# ---------------------------------------------------------------------------------------------- helpers
def _tokenizer(tokenizer):
    """An ``interp.Tokenizer`` from a tokenizer or a model that carries one."""
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    if tok is None:
        raise ValueError("this model has no tokenizer (its checkpoint had none); pass an interp.Tokenizer instead")
    for method in ("encode", "to_str_tokens"):
        if not callable(getattr(tok, method, None)):
            raise TypeError(
                f"expected an interp.Tokenizer or an interp.Model, got {type(tokenizer).__name__} (no .{method}); "
                "pass model or model.tokenizer"
            )
    return tok


def _single_tokens(tok, words: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The words that encode (with a leading space) to exactly one token, and those token ids."""
    kept, ids = [], []
    for w in words:
        enc = tok.encode(" " + w, prepend_bos=False)
        if len(enc) == 1:
            kept.append(w)
            ids.append(enc[0])
    return kept, np.asarray(ids, dtype=np.int32)


def _commonest_length(tok, words: Sequence[str]) -> list[str]:
    """The words whose token count (with a leading space) is the most common one among ``words``."""
    counts = [len(tok.encode(" " + w, prepend_bos=False)) for w in words]
    if not counts:
        return []
    mode = Counter(counts).most_common(1)[0][0]
    return [w for w, c in zip(words, counts) if c == mode]


def _check_n(n, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{what} must be a positive int, got {n!r}")
    return int(n)


def _fill(template: str, **slots: str) -> str:
    for key, value in slots.items():
        template = template.replace(f"[{key}]", value)
    return template


def _fill_names(template: str, a: str, b1: str, b2: str, **slots: str) -> str:
    """``template`` with [A] -> a, the first [B] -> b1, the second [B] -> b2, and the other slots filled."""
    head, mid, tail = template.split("[B]")
    return _fill(head + b1 + mid + b2 + tail, A=a, **slots)


def _resolve_ioi_template(template, templates: Sequence[str], rng: np.random.Generator) -> tuple[int | None, str]:
    if template is None:
        k = int(rng.integers(len(templates)))
        return k, templates[k]
    if isinstance(template, (int, np.integer)) and not isinstance(template, bool):
        if not 0 <= template < len(templates):
            raise ValueError(
                f"unknown IOI template {template!r}: ioi.json has {len(templates)} templates, "
                f"indices 0..{len(templates) - 1}; pass an index, a template string, or None"
            )
        return int(template), templates[int(template)]
    if isinstance(template, str):
        if template in templates:
            return templates.index(template), template
        problems = []
        if template.count("[A]") != 1:
            problems.append(f"[A] (the answer name) must appear once, found {template.count('[A]')}")
        if template.count("[B]") != 2:
            problems.append(f"[B] (the repeated subject) must appear twice, found {template.count('[B]')}")
        for slot in _NAME_SLOTS:
            if re.search(r"(^|[^ ])" + re.escape(slot), template):
                problems.append(f"every {slot} must follow a space (names are single tokens with a leading space)")
        unknown = sorted(set(re.findall(r"\[[A-Z]+\]", template)) - {"[A]", "[B]", "[PLACE]", "[OBJECT]"})
        if unknown:
            problems.append(f"unknown placeholders {unknown}; use [A], [B], [PLACE], [OBJECT]")
        if template.endswith(" "):
            problems.append("the template must not end with a space (the answer token carries it)")
        if problems:
            raise ValueError(f"unknown IOI template {template!r}: " + "; ".join(problems))
        return None, template
    raise TypeError(
        f"template must be None, an index into ioi.json's templates, or a template string; got {template!r}"
    )


def _encode_rows(tok, texts: Sequence[str]) -> list[list[int]]:
    return [tok.encode(t) for t in texts]


# ---------------------------------------------------------------------------------------------- IOI
def ioi(tokenizer, n: int = 16, *, seed: int = 0, template=None, corruption: str = "abc") -> PromptSet:
    """Indirect object identification prompts with clean/corrupted pairs.

    Clean prompts follow ``"When [A] and [B] went to the [PLACE], [B] gave a [OBJECT] to"``: ``answer`` is
    " A" (the indirect object), ``wrong`` is " B" (the repeated subject).

    ``template``: None picks one of the packaged templates from ``seed`` (so every row shares one template and
    name positions line up across the set); an int picks that template; a string with ``[A]`` once, ``[B]`` twice
    and optionally ``[PLACE]``/``[OBJECT]`` is used as given.

    ``corruption``:

    * ``"abc"`` — the three name slots get three other names, all distinct ("When C and D went..., E gave a
      drink to"): the corrupted prompt carries no information about A or B;
    * ``"swap"`` — the first clause is kept and the other name is repeated ("When A and B went..., A gave a
      drink to"), so subject and indirect object trade places in the first clause and the answer flips to B.

    Only names that are one token with a leading space are used; places and objects keep their most common
    token count, so all rows have one length ``T``. Raises ValueError when fewer than ``n`` distinct prompts
    can be built.
    """
    tok = _tokenizer(tokenizer)
    n = _check_n(n, "n")
    if corruption not in _IOI_CORRUPTIONS:
        raise ValueError(f"unknown IOI corruption {corruption!r}; use one of {', '.join(map(repr, _IOI_CORRUPTIONS))}")
    data = load_json("ioi")
    rng = np.random.default_rng(seed)
    k, text = _resolve_ioi_template(template, data["templates"], rng)

    names, name_ids = _single_tokens(tok, data["names"])
    need = 5 if corruption == "abc" else 2
    if len(names) < need:
        raise ValueError(
            f"only {len(names)} of ioi.json's {len(data['names'])} names are single tokens with a leading space for "
            f"this tokenizer; corruption={corruption!r} needs at least {need}"
        )
    places = _commonest_length(tok, data["places"]) if "[PLACE]" in text else [""]
    objects = _commonest_length(tok, data["objects"]) if "[OBJECT]" in text else [""]

    n_names = len(names)
    shape = (n_names, n_names - 1, len(places), len(objects))
    capacity = int(np.prod(shape))
    if n > capacity:
        raise ValueError(
            f"asked for n={n} IOI prompts but this template admits only {capacity} distinct ones "
            f"({n_names} single-token names, {len(places)} places, {len(objects)} objects); lower n"
        )
    # Oversample a little so that rows whose length differs from the rest (rare) can be dropped.
    draw = min(capacity, n + max(8, n // 4))
    flat = rng.choice(capacity, size=draw, replace=False)
    a, b, p, o = np.unravel_index(flat, shape)
    b = b + (b >= a)  # the second name is any name but the first

    rows = []
    for ai, bi, pi, oi in zip(a.tolist(), b.tolist(), p.tolist(), o.tolist()):
        fill = {"PLACE": places[pi], "OBJECT": objects[oi]}
        clean_text = _fill_names(text, names[ai], names[bi], names[bi], **fill)
        if corruption == "abc":
            others = [j for j in range(n_names) if j not in (ai, bi)]
            c, d, e = (names[others[j]] for j in rng.choice(len(others), size=3, replace=False))
            corrupted_text = _fill_names(text, c, d, e, **fill)
        else:
            corrupted_text = _fill_names(text, names[ai], names[bi], names[ai], **fill)
        rows.append((clean_text, corrupted_text, int(name_ids[ai]), int(name_ids[bi])))

    label = f"ioi-{corruption}" + (f" t{k}" if k is not None else "")
    return _assemble(tok, label, rows, n, what=f"IOI prompts from template {text!r}")


def _assemble(tok, name: str, rows, n: int, *, what: str) -> PromptSet:
    """Encode ``(clean_text, corrupted_text, answer, wrong)`` rows, keep the first ``n`` whose clean and corrupted
    prompts both have the most common length, and build the set."""
    clean_ids = _encode_rows(tok, [r[0] for r in rows])
    corr_ids = _encode_rows(tok, [r[1] for r in rows])
    lengths = [len(c) if len(c) == len(d) else -1 for c, d in zip(clean_ids, corr_ids)]
    valid = [L for L in lengths if L > 0]
    T = Counter(valid).most_common(1)[0][0] if valid else 0
    keep = [i for i, L in enumerate(lengths) if L == T][:n]
    if len(keep) < n:
        raise ValueError(
            f"only {len(keep)} {what} have one common token length (T={T}) with this tokenizer, fewer than n={n}; "
            "lower n or pass another template"
        )
    return PromptSet(
        name=name,
        clean=np.asarray([clean_ids[i] for i in keep], dtype=np.int32),
        corrupted=np.asarray([corr_ids[i] for i in keep], dtype=np.int32),
        answer=np.asarray([rows[i][2] for i in keep], dtype=np.int32),
        wrong=np.asarray([rows[i][3] for i in keep], dtype=np.int32),
        clean_text=tuple(rows[i][0] for i in keep),
        corrupted_text=tuple(rows[i][1] for i in keep),
        tokenizer=tok,
    )


# ---------------------------------------------------------------------------------------------- capitals
def capitals(tokenizer, n: int | None = None, *, seed: int = 0) -> PromptSet:
    """Factual recall: "The capital of France is" -> " Paris".

    The corrupted prompt names another country of the set (so its answer, ``wrong``, is another capital).
    Only countries whose capital is one token with a leading space, and whose prompt has the most common
    length, are used. ``n`` None takes all of them; rows are shuffled by ``seed``.
    """
    tok = _tokenizer(tokenizer)
    data = load_json("capitals")
    template, answer = data["template"], data["answer"]
    pairs = list(data["capitals"].items())
    countries = []
    for country, capital in pairs:
        ids = tok.encode(_fill(answer, CAPITAL=capital), prepend_bos=False)
        if len(ids) == 1:
            countries.append((country, capital, ids[0], len(tok.encode(_fill(template, COUNTRY=country)))))
    if countries:
        T = Counter(c[3] for c in countries).most_common(1)[0][0]
        countries = [c for c in countries if c[3] == T]
    m = len(countries)
    if m < 2:
        raise ValueError(
            f"only {m} of capitals.json's {len(pairs)} countries have a single-token capital and a common prompt "
            "length with this tokenizer; corrupted prompts need at least 2"
        )
    n = m if n is None else _check_n(n, "n")
    if n > m:
        raise ValueError(
            f"asked for n={n} capital prompts but only {m} of capitals.json's {len(pairs)} countries have a "
            "single-token capital and the common prompt length with this tokenizer; lower n (or pass n=None for all)"
        )
    order = np.random.default_rng(seed).permutation(m)
    rows = []
    for j in range(n):
        country, _, cap_id, _ = countries[order[j]]
        other, _, other_id, _ = countries[order[(j + 1) % m]]  # a cyclic shift: never the same country
        rows.append((_fill(template, COUNTRY=country), _fill(template, COUNTRY=other), int(cap_id), int(other_id)))
    return _assemble(tok, "capitals", rows, n, what="capital prompts")


# ---------------------------------------------------------------------------------------------- induction
def induction(vocab_size: int, n: int = 8, length: int = 32, *, seed: int = 0, bos: int | None = None,
              exclude: Sequence[int] = ()) -> np.ndarray:
    """Random token sequences repeated once: ``[n, 2 * length]`` int32 (``[n, 1 + 2 * length]`` with ``bos``
    prepended). Within one half no token repeats, so every second-half token has exactly one earlier
    occurrence to copy from. Tokens in ``exclude`` (e.g. special tokens) and ``bos`` are never drawn."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int (e.g. model.d_vocab), got {vocab_size!r}")
    n = _check_n(n, "n")
    length = _check_n(length, "length")
    banned = {int(t) for t in exclude}
    if bos is not None:
        if not 0 <= int(bos) < vocab_size:
            raise ValueError(f"bos={bos} is outside the vocabulary [0, {vocab_size})")
        banned.add(int(bos))
    allowed = np.setdiff1d(np.arange(vocab_size, dtype=np.int64), np.asarray(sorted(banned), dtype=np.int64))
    if length > allowed.size:
        raise ValueError(
            f"length={length} distinct tokens per half are needed but only {allowed.size} ids are allowed "
            f"(vocab_size={vocab_size}, {vocab_size - allowed.size} excluded); lower length"
        )
    rng = np.random.default_rng(seed)
    half = np.stack([allowed[rng.choice(allowed.size, size=length, replace=False)] for _ in range(n)])
    out = np.concatenate([half, half], axis=1)
    if bos is not None:
        out = np.concatenate([np.full((n, 1), int(bos), dtype=out.dtype), out], axis=1)
    return out.astype(np.int32)
