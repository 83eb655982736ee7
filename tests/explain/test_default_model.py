"""The explain pipeline on the default model: planted token detectors at hook_embed have known right answers,
which the baseline must name and the scorers must tell from a shuffled control; the local-model backend replies
through the model's own chat template, gives answer probabilities and caches them."""

from __future__ import annotations

import numpy as np
import pytest

from interp.explain import (
    ExampleSampler,
    LLMExplainer,
    LocalModel,
    ResponseCache,
    Scorer,
    explain_latents,
    parse_pattern,
    planted_detectors,
    separable_groups,
)
from interp.features import feature_card, feature_index


@pytest.fixture(scope="module")
def planted(default_model, corpus_text):
    from interp.sae.store import iter_contexts

    it = iter_contexts(default_model.tokenizer, iter([corpus_text]), 64, cycle=False)
    tokens = np.stack([c for _, c in zip(range(160), it)])
    groups = separable_groups(default_model, tokens, singles=30, pairs=10)
    d = planted_detectors(default_model, groups)
    index = feature_index(default_model, d, tokens, skip_positions=1)
    return tokens, groups, d, index


def test_planted_detectors_fire_exactly_on_their_tokens(default_model, planted):
    tokens, groups, d, index = planted
    assert len(groups) == 40 and sum(len(g) == 2 for g in groups) == 10
    for f, g in enumerate(groups):
        fires = index.activations(f) > 0
        want = np.isin(tokens, g)
        want[:, 0] = False
        np.testing.assert_array_equal(fires, want)


def test_baseline_names_the_planted_tokens_and_scores_beat_the_control(default_model, planted, tmp_path):
    tokens, groups, d, index = planted
    res = explain_latents(default_model, d, index, range(len(groups)), scorers=["detection", "fuzzing"],
                          out=tmp_path / "explanations.jsonl")
    right = 0
    for f, g in enumerate(groups):
        rules = parse_pattern(res.text(f))
        right += ({r.token for r in rules} == {default_model.to_string([t]) for t in g}
                  and all(r.after is None for r in rules))
    assert right >= 0.95 * len(groups)
    table = res.summary_table()
    for name in ("detection", "fuzzing"):
        real, control = res.scores(name)
        assert len(real) == len(groups)
        assert table[name]["mean"] >= 0.9 and np.mean(real >= 0.9) >= 0.95
        assert table[name]["control_mean"] <= 0.6
    # the explanations reach the feature cards
    card = feature_card(default_model, d, index, 0, explanations=res)
    assert card.explanation.startswith(res.text(0)) and "detection 1.00" in card.explanation


def test_local_model_chats_scores_with_probabilities_and_caches(default_model, planted, tmp_path):
    tokens, groups, d, index = planted
    cache = ResponseCache(tmp_path / "cache")
    backend = LocalModel(default_model, cache=cache, batch_size=4)
    assert backend.name.startswith("local:") and "#" in backend.name
    replies = backend.chat([[{"role": "user", "content": "Say hello."}]], max_tokens=8)
    assert replies[0].text and not replies[0].cached
    again = backend.chat([[{"role": "user", "content": "Say hello."}]], max_tokens=8)
    assert again[0].cached and again[0].text == replies[0].text
    # answer probabilities equal a direct forward pass through the chat template
    conv = [{"role": "user", "content": "Is Paris in France? Answer Yes or No."}]
    p = backend.choice_probs([conv], ["Yes", "No"])[0]
    ids = default_model.tokenizer.encode(default_model.tokenizer.apply_chat_template(conv), prepend_bos=False)
    logits = np.asarray(default_model(np.array([ids]))[0, -1], np.float64)
    yes, no = (default_model.tokenizer.encode(w, prepend_bos=False)[0] for w in ("Yes", "No"))
    want = np.exp(logits[[yes, no]] - logits[[yes, no]].max())
    np.testing.assert_allclose(p, want / want.sum(), atol=2e-3)
    # prompts that share a long prefix run it once; each one's logits equal its own full forward pass
    system = {"role": "system", "content": "You check explanations of a neuron in a language model: decide whether "
                                           "the neuron fires anywhere in a text."}
    seqs = [backend._ids([system, {"role": "user", "content": f"Explanation: the word Paris\n\nText: {t}"}])
            for t in ("I went to Paris", "a cat sat on the mat today", "x")]
    shared = np.asarray(backend._next_logits(seqs))
    for row, ids in zip(shared, seqs):
        np.testing.assert_allclose(row, np.asarray(default_model(np.array([ids]))[0, -1]), atol=2e-3)
    # an explainer and a probability scorer on two planted latents (few, short examples: this is about the wiring)
    sampler = ExampleSampler(default_model, index, window=12, n_top=4, n_quantile_train=0, n_train_neg=0, n_test=4)
    run = lambda: explain_latents(default_model, d, index, [0, 1], explainer=LLMExplainer(backend, max_tokens=12),
                                  scorers=[Scorer("detection", backend)], sampler=sampler)
    res = run()
    for r in res.records:
        assert r["status"] in ("ok", "failed")
        assert r["prompt"][0]["role"] == "system" and "<<" in r["prompt"][-1]["content"]
        if r["status"] == "ok":
            s = r["scores"]["detection:" + backend.name]
            assert 0.0 <= s["value"] <= 1.0 and s["auroc"] == s["value"] and s["n"] == 8
    n = len(list((tmp_path / "cache").rglob("*.json")))
    assert run().records == res.records
    assert len(list((tmp_path / "cache").rglob("*.json"))) == n  # the rerun was served from the cache
    sims = backend.expected_numbers([conv], [["Paris", " is", " nice"]])
    assert sims[0].shape == (3,) and ((0 <= sims[0]) & (sims[0] <= 9)).all()
