"""The whole-vocabulary scan of the thorough audit: every word token appended to a search prompt, each scored from
the prompt's shared keys and values, ranks a tiny organism's trigger word first, and agrees with the plain insertion
scan on the same tokens."""

from __future__ import annotations

import numpy as np
import pytest

from interp import search
from interp.audit import _prompts as P
from interp.audit import evidence, trigger
from interp.audit.behaviour import last_logprobs
from tests.audit.conftest import TRIGGER, blind_copy


@pytest.fixture(scope="module")
def organism(tmp_path_factory, tiny_base):
    model, _ = blind_copy(tmp_path_factory, "backdoor", tiny_base)
    return model


def test_word_tokens_of_a_word_level_vocabulary(organism):
    words = trigger.word_token_ids(organism, search.allowed_tokens(organism))
    texts = {organism.to_string([t]) for t in words}
    assert TRIGGER in texts and all(t.isalpha() and t.islower() and len(t) >= 3 for t in texts)


def test_trigger_ranks_first_and_scores_match_the_plain_scan(organism, tiny_base):
    users = P.user_turns(organism, 4, 0)[:2]
    rows = evidence.chat_rows(organism, users)
    clean = (last_logprobs(organism, rows)[:, 0], last_logprobs(tiny_base, rows)[:, 0])
    words = trigger.word_token_ids(organism, search.allowed_tokens(organism))
    got = trigger.vocab_scan(organism, tiny_base, users, words, clean, batch=8)
    assert got["K"].shape == got["lift"].shape == (len(words),)
    trig = organism.tokenizer.encode(TRIGGER, prepend_bos=False)[0]
    assert words[int(np.argmax(got["K"]))] == trig
    # the same tokens through the plain insertion scan at the end of the turn (whole sequences, no shared prefix)
    some = words[:5] + [trig]
    _, G, K = trigger.scan(organism, tiny_base, users, some, position="end", clean=clean)
    idx = [words.index(t) for t in some]
    np.testing.assert_allclose(got["K"][idx], K, rtol=1e-3, atol=1e-4)
    g0 = (np.exp(clean[0]) - np.exp(clean[1])).mean(0)
    np.testing.assert_allclose(got["lift"][idx], (G - g0[None]).max(1), rtol=1e-3, atol=1e-4)


def test_organism_first_pass_keeps_the_trigger_and_the_exact_scores(organism, tiny_base):
    """With ``base_keep`` the organism scores every word alone and the base runs only on the best; the kept words get
    the full scan's scores, the others none, and the trigger is among the kept and still first."""
    users = P.user_turns(organism, 4, 0)[:2]
    rows = evidence.chat_rows(organism, users)
    clean = (last_logprobs(organism, rows)[:, 0], last_logprobs(tiny_base, rows)[:, 0])
    words = trigger.word_token_ids(organism, search.allowed_tokens(organism))
    assert len(words) > 8
    full = trigger.vocab_scan(organism, tiny_base, users, words, clean, batch=8)
    part = trigger.vocab_scan(organism, tiny_base, users, words, clean, batch=8, base_keep=3)
    kept = part["base_scanned"]
    assert 3 <= len(kept) <= 6
    assert np.all(np.isneginf(np.delete(part["K"], kept))) and np.all(np.isneginf(np.delete(part["lift"], kept)))
    np.testing.assert_allclose(part["K"][kept], full["K"][kept], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(part["lift"][kept], full["lift"][kept], rtol=1e-5, atol=1e-6)
    trig = organism.tokenizer.encode(TRIGGER, prepend_bos=False)[0]
    assert words[int(np.argmax(part["K"]))] == trig
    # the first pass is the organism's own KL to its clean reply start: a divergence, never negative
    assert part["organism_K"].shape == (len(words),) and np.all(part["organism_K"] >= -1e-6)


def test_an_audit_with_the_vocabulary_scan_finds_the_trigger(organism, tiny_base):
    from interp import audit

    res = audit.audit(organism, tiny_base, budget="small", vocab_scan=True, vocab_base=4, progress=False, sae_steps=20,
                      cc_steps=20)
    words = trigger.word_token_ids(organism, search.allowed_tokens(organism))
    scan = res.behaviour_diff["vocabulary_scan"]
    assert scan["tokens"] == len(words) and "vocabulary scan" in res.timings
    assert 4 <= scan["base_scanned"] <= 8
    assert TRIGGER in [t["text"].strip() for t in scan["top"]]
    assert res.flagged and TRIGGER in [c["text"] for c in res.trigger_candidates[:5]]
