"""The explain-and-score pipeline on a synthetic feature index with planted latents (no model): example sampling,
the baseline explainer, the rule scorers against independent computations, LLM explainers and scorers through a
scripted backend, and resumable JSONL runs with the shuffled control."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from interp.explain import (
    Baseline,
    ExampleSampler,
    Explanations,
    LLMExplainer,
    Reply,
    Rule,
    Scorer,
    auroc,
    balanced_accuracy,
    explain_latents,
    parse_pattern,
    pattern_text,
)
from interp.features import FeatureIndex

N, T, V = 120, 40, 60


def make_index(seed: int = 0) -> tuple[FeatureIndex, np.ndarray]:
    """Latent 0: token 7; latent 1: token 3 right after token 9; latent 2: dead; latent 3: token 11 or 12;
    latent 4: any token after token 20. Activations vary in size."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, V, (N, T))
    # plant enough bigrams for latent 1
    for r in range(0, N, 2):
        t = rng.integers(2, T - 1)
        tokens[r, t - 1], tokens[r, t] = 9, 3
    acts = np.zeros((N, T, 5), np.float32)
    mag = rng.uniform(1, 5, (N, T))
    acts[..., 0] = (tokens == 7) * mag
    prev = np.concatenate([np.full((N, 1), -1), tokens[:, :-1]], 1)
    acts[..., 1] = ((tokens == 3) & (prev == 9)) * mag
    acts[..., 3] = np.isin(tokens, [11, 12]) * mag
    acts[..., 4] = (prev == 20) * mag
    acts[:, 0] = 0.0  # skip_positions=1
    n, t, f = np.nonzero(acts)
    order = np.argsort(f, kind="stable")
    flat = (n * T + t)[order]
    starts = np.searchsorted(f[order], np.arange(6))
    return FeatureIndex(tokens, 5, flat, f[order].astype(np.int32), acts[n, t, f][order], starts, 1), acts


@pytest.fixture(scope="module")
def index():
    return make_index()


def windows(cs):
    return [(c.row, c.start) for c in cs]


def test_examples_are_held_out_and_drawn_as_described(index):
    idx, acts = index
    s = ExampleSampler(None, idx, window=16, n_top=8, n_test=10, seed=3)
    ex = s(0)
    assert not ex.dead and ex.n_active == int((acts[..., 0] > 0).sum())
    assert len(ex.train) >= 8 and len(ex.test_pos) == 10 and len(ex.test_neg) == 10
    # no held-out window overlaps a window the explainer sees
    seen = windows(ex.train + ex.train_neg)
    for r, st in windows(ex.test_pos + ex.test_neg):
        assert all(not (r == r2 and abs(st - s2) < 16) for r2, s2 in seen)
    # activations are the index's, positives fire, negatives are silent throughout
    for c in ex.train + ex.test_pos + ex.test_neg + ex.train_neg:
        np.testing.assert_allclose(c.acts, acts[c.row, c.start:c.start + 16, 0])
        assert c.ids == list(idx.tokens[c.row, c.start:c.start + 16])
        assert c.tokens == [f"#{i}" for i in c.ids]
    assert all(c.max_act > 0 for c in ex.train + ex.test_pos)
    assert all(c.max_act == 0 for c in ex.test_neg + ex.train_neg)
    # the top contexts hold the strongest activations
    top = sorted((c.max_act for c in ex.train if c.kind == "top"), reverse=True)
    assert top[0] == pytest.approx(acts[..., 0].max())
    # held-out positives span the activation range (quantile bins), not only the top
    vals = sorted(c.max_act for c in ex.test_pos)
    assert vals[0] < np.median(acts[..., 0][acts[..., 0] > 0]) < vals[-1]
    # deterministic for a seed
    again = s(0)
    assert windows(again.test_pos) == windows(ex.test_pos) and windows(again.test_neg) == windows(ex.test_neg)


def test_hard_negatives_hold_the_top_token_yet_stay_silent(index):
    idx, _ = index
    ex = ExampleSampler(None, idx, window=8, seed=0)(4)  # latent 4 fires after token 20, not on 20 itself
    top_token = ex.train[0].ids[int(np.argmax(ex.train[0].acts))]
    hard = [c for c in ex.test_neg if c.kind == "hard"]
    assert hard and all(top_token in c.ids and c.max_act == 0 for c in hard)


def test_dead_latent(index):
    idx, _ = index
    ex = ExampleSampler(None, idx)(2)
    assert ex.dead and not ex.train and not ex.test_pos


def test_pattern_text_round_trips():
    rules = [Rule(' "quoted" \\ token'), Rule("é", "ß"), Rule(None, "\n")]
    text = pattern_text(rules)
    assert parse_pattern(text) == rules
    assert parse_pattern("a free-text explanation") == []
    assert list(Rule("b", "a").matches(["a", "b", "b", "a", "b"])) == [False, True, False, False, True]


def test_replies_are_cleaned_without_breaking_patterns():
    from interp.explain.explainers import clean_explanation

    assert clean_explanation('Explanation: "city names"\nmore') == "city names"
    assert clean_explanation('  \nthe token " the"') == 'the token " the"'
    assert parse_pattern(clean_explanation('Answer: the token " the"; the token "a"')) == [Rule(" the"), Rule("a")]
    assert clean_explanation(" \n ") is None
    assert clean_explanation("The neuron responds to:\n- city names\n- rivers") == "city names"
    assert clean_explanation("The neuron responds to the following short phrases:\n- tell()") == "tell()"
    assert clean_explanation("It fires on these:") == "It fires on these:"
    assert clean_explanation("1. words about cooking") == "words about cooking"


def test_baseline_names_the_planted_rules(index):
    idx, _ = index
    s = ExampleSampler(None, idx, seed=1)
    got = {e.latent: parse_pattern(e.text) for e in Baseline().explain([s(f) for f in (0, 1, 3, 4)])}
    assert got[0] == [Rule("#7")]
    assert got[1] == [Rule("#3", "#9")]
    assert set(got[3]) == {Rule("#11"), Rule("#12")}
    assert got[4] == [Rule(None, "#20")]
    dead = Baseline().explain([s(2)])[0]
    assert dead.text is None and "no activating" in dead.error


def test_metrics_against_independent_computations():
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.4
    p = rng.random(200) + 0.3 * y
    p[:20] = 0.5  # ties
    # AUROC as the probability that a random positive outranks a random negative, ties half
    pos, neg = p[y], p[~y]
    want = np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])
    assert auroc(y, p) == pytest.approx(want)
    pred = p > 0.6
    tpr, tnr = pred[y].mean(), (~pred[~y]).mean()
    assert balanced_accuracy(y, pred) == pytest.approx((tpr + tnr) / 2)


def test_rule_scorers_separate_right_from_wrong(index):
    idx, acts = index
    ex = ExampleSampler(None, idx, seed=2)(0)
    right, wrong = pattern_text([Rule("#7")]), pattern_text([Rule("#999")])  # #999 never occurs
    for task in ("detection", "fuzzing"):
        sc = Scorer(task)
        good, bad = sc.score([(ex, right), (ex, wrong)])
        assert good.value == 1.0 and good.ci == (1.0, 1.0) and good.n >= 10
        assert bad.value == pytest.approx(0.5)
    sim = Scorer("simulation").score([(ex, right)])[0]
    ctx = ex.test_pos + ex.test_neg
    truth = np.concatenate([c.acts for c in ctx])
    pred = np.concatenate([[10.0 * (t == "#7") for t in c.tokens] for c in ctx])
    assert sim.value == pytest.approx(np.corrcoef(truth, pred)[0, 1])
    assert sim.ci[0] <= sim.value <= sim.ci[1]
    assert Scorer("detection").score([(ex, None)])[0].error == "no explanation"
    with pytest.raises(ValueError, match="unknown scorer"):
        Scorer("vibes")


def test_run_writes_controls_and_resumes(index, tmp_path):
    idx, _ = index
    out = tmp_path / "explanations.jsonl"
    res = explain_latents(None, None, idx, [0, 1, 2, 3, 4], scorers=["detection", "fuzzing", "simulation"], out=out,
                          chunk=2, provenance={"model": "synthetic"})
    lines = out.read_text().splitlines()
    assert len(lines) == 5
    recs = {r["latent"]: r for r in map(json.loads, lines)}
    assert recs[2]["status"] == "dead" and recs[2]["scores"] == {}
    live = [0, 1, 3, 4]
    assert all(recs[f]["status"] == "ok" for f in live)
    # the control is another latent's explanation, each used once
    ctrl = [recs[f]["control_latent"] for f in live]
    assert sorted(ctrl) == live and all(c != f for c, f in zip(ctrl, live))
    for f in live:
        assert recs[f]["scores"]["detection"]["value"] >= 0.9
        assert recs[f]["control"]["detection"]["value"] <= 0.6
        assert recs[f]["control_explanation"] == recs[recs[f]["control_latent"]]["explanation"]
        assert recs[f]["provenance"]["model"] == "synthetic"
    table = res.summary_table()
    assert table["detection"]["mean"] >= 0.9 and table["detection"]["control_mean"] <= 0.6
    assert "control" in repr(res)
    assert set(res.labels(scores=False)) == set(live)
    # an existing file is refused without resume, and left as it was
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="resume"):
        explain_latents(None, None, idx, [0, 1], out=out)
    assert out.read_bytes() == before
    # an interrupted run: two whole lines and half of the third
    out.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
    res2 = explain_latents(None, None, idx, [0, 1, 2, 3, 4], scorers=["detection", "fuzzing", "simulation"],
                           out=out, resume=True, chunk=2)
    again = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["latent"] for r in again) == [0, 1, 2, 3, 4]
    assert {r["latent"]: r["explanation"] for r in again} == {f: recs[f]["explanation"] for f in recs}
    assert Explanations.load(out).by_latent.keys() == res2.by_latent.keys()
    with pytest.raises(ValueError, match="out of range"):
        explain_latents(None, None, idx, [7])


class Scripted:
    """A chat backend that answers from a function of the conversation, counting calls."""

    name = "scripted"

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def chat(self, conversations, *, max_tokens=256, temperature=0.0):
        self.calls.append(list(conversations))
        return [self.answer(c) for c in conversations]


def test_llm_explainer_sees_marked_examples_and_survives_bad_replies(index):
    idx, _ = index
    s = ExampleSampler(None, idx, seed=0)
    replies = iter([Reply("Explanation: the token 7\n(more text)"), Reply(None, "HTTP 500"), Reply("   \n")])
    backend = Scripted(lambda c: next(replies))
    got = LLMExplainer(backend).explain([s(0), s(2), s(1), s(3)])
    prompt = backend.calls[0][0][-1]["content"]
    assert "<<#7>>" in prompt and "Activations:" in prompt
    assert len(backend.calls[0]) == 3  # the dead latent is not sent
    assert got[0].text == "the token 7" and got[0].response.startswith("Explanation")
    assert got[1].text is None and got[1].error == "no activating examples"
    assert got[2].text is None and "HTTP 500" in got[2].error
    assert got[3].text is None and "no explanation" in got[3].error


def test_llm_scorers_parse_batched_answers(index):
    idx, _ = index
    ex = ExampleSampler(None, idx, seed=0)(0)

    def oracle(conv):  # answers each numbered text by whether token 7 appears (is all that is marked, for fuzzing)
        user = conv[-1]["content"]
        texts = [line.split(": ", 1)[1] for line in user.splitlines() if line.startswith("Text ")]
        if "marked" in conv[0]["content"]:
            return Reply(str([int(all(re.fullmatch(r"(#7)+", m) for m in re.findall(r"<<(.*?)>>", t)))
                              for t in texts]))
        return Reply(str([int(bool(re.search(r"#7(?!\d)", t))) for t in texts]))

    backend = Scripted(oracle)
    for task in ("detection", "fuzzing"):
        sc = Scorer(task, backend, batch_size=4)
        assert sc.score([(ex, "token 7")])[0].value == 1.0
    nonsense = Scorer("detection", Scripted(lambda c: Reply("I think so")), batch_size=4).score([(ex, "x")])[0]
    assert nonsense.value is None and "not a list" in nonsense.error
    failed = Scorer("detection", Scripted(lambda c: Reply(None, "timed out")), batch_size=4).score([(ex, "x")])[0]
    assert failed.value is None and "timed out" in failed.error


def test_a_failing_backend_is_recorded_and_the_run_goes_on(index, tmp_path):
    idx, _ = index
    backend = Scripted(lambda c: Reply(None, "HTTP 503 after 5 attempts"))
    res = explain_latents(None, None, idx, [0, 1, 2], explainer=LLMExplainer(backend), out=tmp_path / "e.jsonl")
    st = {r["latent"]: (r["status"], r["error"]) for r in res.records}
    assert st[0][0] == "failed" and "503" in st[0][1]
    assert st[2] == ("dead", "no activating examples")


def test_bootstrap_intervals_equal_resampling_one_by_one():
    from interp.explain.examples import Context
    from interp.explain.scorers import _resamples, classify_score, simulation_score

    rng = np.random.default_rng(1)
    y = rng.random(30) < 0.5
    p = rng.random(30) + 0.4 * y
    idx = _resamples(30, 200, seed=5)
    for prob in (True, False):
        s = classify_score("detection", y, p, prob, seed=5)
        f = (lambda i: auroc(y[i], p[i])) if prob else (lambda i: balanced_accuracy(y[i], p[i] > 0.5))
        vals = np.array([f(i) for i in idx])
        vals = vals[np.isfinite(vals)]
        assert s.ci == pytest.approx((np.percentile(vals, 2.5), np.percentile(vals, 97.5)))
    ctx = [Context([0] * 6, ["x"] * 6, list(rng.random(6) * (rng.random(6) < 0.3)), 0, 0, "top") for _ in range(12)]
    pred = [np.asarray(c.acts) + rng.random(6) for c in ctx]
    sim = simulation_score(ctx, pred, seed=5)
    cat = lambda xs, i: np.concatenate([xs[k] for k in i])
    assert sim.value == pytest.approx(np.corrcoef(cat([c.acts for c in ctx], range(12)), cat(pred, range(12)))[0, 1])
    vals = [np.corrcoef(cat([c.acts for c in ctx], i), cat(pred, i))[0, 1] for i in _resamples(12, 200, seed=5)]
    assert sim.ci == pytest.approx((np.percentile(vals, 2.5), np.percentile(vals, 97.5)))
