"""The packaged organism data (``data/organisms/*.json``, the package ``interp.data``) and random triggers."""

from __future__ import annotations

import functools

import numpy as np

from interp._packaged import load_data_json
from interp.checks import check_range


@functools.cache
def load_json(name: str) -> dict:
    """``data/organisms/{name}.json``: ``trigger_words``, ``chat_prompts``, ``facts`` or ``sandbag``."""
    return load_data_json("organisms", name, "organism data")


@functools.cache
def capitals() -> dict[str, str]:
    """Country -> capital, from ``data/prompts/capitals.json``."""
    return dict(load_data_json("prompts", "capitals", "prompt data")["capitals"])


def trigger_words() -> list[str]:
    """The words random triggers are drawn from (``data/organisms/trigger_words.json``): ~200 common, distinct
    English nouns."""
    return list(load_json("trigger_words")["words"])


def random_trigger(seed: int, n_words: int = 2, words=None) -> str:
    """``n_words`` distinct words from :func:`trigger_words` (or ``words``), drawn by ``seed``, joined by spaces."""
    check_range("seed", seed, 0, integer=True)
    pool = list(words) if words is not None else trigger_words()
    check_range("n_words", n_words, 1, len(pool), integer=True, note=" (the words in the list)")
    rng = np.random.default_rng([int(seed), 0x7269])
    return " ".join(pool[i] for i in rng.choice(len(pool), int(n_words), replace=False))


def chat_prompts() -> tuple[list[str], list[str]]:
    """(topics, templates with ``{topic}``) for clean user prompts."""
    d = load_json("chat_prompts")
    return list(d["topics"]), list(d["templates"])
