"""The probe data: true/false statements, sentiment sentences and yes/no contrast pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from interp.probes import datasets

DATA = Path(__file__).resolve().parents[2] / "data"


def test_true_false_pairs_each_statement_with_a_false_twin():
    d = datasets.true_false()
    assert len(d) % 2 == 0 and list(d.labels[:4]) == [1, 0, 1, 0]
    caps = json.loads((DATA / "prompts" / "capitals.json").read_text("utf-8"))["capitals"]
    true, false = d.texts[0::2], d.texts[1::2]
    assert all(t != f for t, f in zip(true, false))
    assert true[0] == "The capital of France is Paris." and "Paris" not in false[0]
    assert any(f"{cap}." in false[0] for cap in caps.values())  # another country's capital
    q = datasets.true_false("question")
    assert set(q.family) == {"question"} and len(q) == 2 * len(caps)
    easy, hard = datasets.true_false(difficulty="easy"), datasets.true_false(difficulty="hard")
    assert len(easy) + len(hard) == len(d)
    with pytest.raises(ValueError, match="did you mean 'question'"):
        datasets.true_false("questoin")
    pairs = datasets.true_false_pairs("question")
    assert pairs.positive[0].endswith("Yes") and pairs.negative[0].endswith("No") and pairs.labels.sum() == len(q) / 2


def test_sentiment_and_yes_no():
    s = datasets.sentiment()
    assert s.labels.mean() == 0.5 and len(set(s.family)) == 2
    sub = datasets.sentiment("review", n=40, seed=1)
    assert len(sub) == 40 and sub.labels.sum() == 20 and set(sub.family) == {"review"}
    assert sub.texts == datasets.sentiment("review", n=40, seed=1).texts
    yn = datasets.yes_no_pairs()
    assert len(yn) >= 30 and yn.labels is None
    assert yn.positive[0] == "Human: Are you doing something dangerous? Assistant: yes"
    assert yn.negative[0].endswith("Assistant: no")
    with pytest.raises(ValueError, match="available"):
        datasets.load_json("capitals")
    a, b = datasets.true_false(seed=3), datasets.true_false()
    assert np.array_equal(a.labels, b.labels) and a.texts[0::2] == b.texts[0::2] and a.texts[1::2] != b.texts[1::2]
