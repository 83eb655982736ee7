"""GCG on tiny models: the gradient against finite differences, one step against exhaustive search, objective values
against a direct forward, determinism, allowed tokens, compiled programs reused, and bad input refused."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interp import sae, search
from interp.hooks import compile_count

PROMPT = [3, 14, 15, 9, 26]
TARGET = [5]


def embed_loss(model, tokens, pos, emb):
    """The logprob loss with the embedding at ``pos`` replaced by ``emb`` (a direct forward, no search code)."""

    def hk(name, x):
        return x.at[:, pos].set(emb) if name == "hook_embed" else x

    logits = model.forward(jnp.asarray(tokens)[None], hk)[0, -2].astype(jnp.float32)
    return -jax.nn.log_softmax(logits)[tokens[-1]]


def test_token_gradient_matches_finite_differences(tiny3):
    obj = search.logprob(tiny3, TARGET)
    lay = search.layout(tiny3, obj, PROMPT, "suffix:3")
    span = np.array([40, 41, 42], np.int32)
    tokens = lay.tokens(span)
    grad = np.asarray(search.token_gradient(tiny3, obj, tokens, start=lay.start, n=3))
    assert grad.shape == (3, tiny3.d_vocab)
    W_E = tiny3.W_E
    eps = 1e-2
    for i, v in [(0, 7), (1, 60), (2, 93), (2, 11)]:
        pos, cur = lay.start + i, int(span[i])
        d = W_E[v] - W_E[cur]
        up = embed_loss(tiny3, tokens[0], pos, W_E[cur] + eps * d)
        down = embed_loss(tiny3, tokens[0], pos, W_E[cur] - eps * d)
        fd = float(up - down) / (2 * eps)
        assert grad[i, v] - grad[i, cur] == pytest.approx(fd, rel=2e-2, abs=2e-3)


def test_one_step_with_every_candidate_finds_the_exhaustive_best_swap(tiny3):
    obj = search.logprob(tiny3, TARGET)
    lay = search.layout(tiny3, obj, PROMPT, "suffix:3")
    span = np.array([40, 41, 42], np.int32)
    V, n = tiny3.d_vocab, 3
    swaps = np.repeat(span[None], n * V, axis=0)
    for i in range(n):
        swaps[i * V:(i + 1) * V, i] = np.arange(V)
    exhaustive = search.losses(tiny3, obj, lay.tokens(swaps), start=lay.start, n=n)["total"]
    best = swaps[int(np.argmin(exhaustive))]
    # topk = V keeps every token at every position; 4000 samples cover all 291 swaps (for this seed)
    res = search.gcg(tiny3, obj, PROMPT, span="suffix:3", steps=1, topk=V, batch=4000, chunk=1000, init=span,
                     stop_on_success=False, progress=False)
    assert res.tokens.tolist() == best.tolist()
    assert res.history[0][0] == pytest.approx(float(exhaustive.min()), abs=1e-5)


def test_objective_values_equal_a_direct_forward(tiny3):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, tiny3.d_vocab, (4, 9)).astype(np.int32)
    tokens[:, 7:] = tokens[0, 7:]  # one two-token target for every row; the span is positions 3..5
    logits = np.asarray(tiny3(tokens), np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    rows = np.arange(4)
    obj = search.logprob(tiny3, tokens[0, 7:].tolist())
    out = search.losses(tiny3, obj, tokens, start=3, n=3, fluency=0.5)
    target_nll = -(logp[rows, 6, tokens[:, 7]] + logp[rows, 7, tokens[:, 8]]) / 2
    np.testing.assert_allclose(out["objective"], target_nll, atol=1e-4)
    span_nll = -np.mean([logp[rows, p - 1, tokens[:, p]] for p in (3, 4, 5)], axis=0)
    np.testing.assert_allclose(out["fluency"], span_nll, atol=1e-4)
    np.testing.assert_allclose(out["total"], out["objective"] + 0.5 * out["fluency"], atol=1e-5)
    np.testing.assert_array_equal(out["success"], np.all(logits[:, 6:8].argmax(-1) == tokens[:, 7:], axis=-1))

    d = sae.create(sae.TopKConfig(d_in=tiny3.d_model, width=16, k=4, hook_name="blocks.1.hook_resid_post"),
                   jax.random.key(0))
    lat = search.latent(tiny3, d, 3, position=-2, threshold=0.0)
    _, cache = tiny3.run_with_cache(tokens, ["blocks.1.hook_resid_post"])
    z = np.asarray(d.encode(cache["blocks.1.hook_resid_post"][:, -2]))[:, 3]
    out = search.losses(tiny3, lat, tokens, start=3, n=3)
    np.testing.assert_allclose(out["objective"], -z, atol=1e-5)
    np.testing.assert_array_equal(out["success"], z > 0)
    neg = search.losses(tiny3, search.negate(lat), tokens, start=3, n=3)
    np.testing.assert_allclose(neg["objective"], z, atol=1e-5)

    sc = search.score(tiny3, lambda a: a[:, -1].sum(-1), "blocks.0.hook_mlp_out")
    _, cache = tiny3.run_with_cache(tokens, ["blocks.0.hook_mlp_out"])
    out = search.losses(tiny3, sc, tokens, start=3, n=3)
    np.testing.assert_allclose(out["objective"], -np.asarray(cache["blocks.0.hook_mlp_out"][:, -1].sum(-1)),
                               rtol=1e-5, atol=1e-5)


def test_same_seed_same_search_and_programs_reused(tiny3):
    obj = search.logprob(tiny3, TARGET)
    kw = dict(span="suffix:4", steps=6, topk=8, batch=32, restarts=2, stop_on_success=False, progress=False)
    a = search.gcg(tiny3, obj, PROMPT, seed=1, **kw)
    before = compile_count()
    b = search.gcg(tiny3, obj, PROMPT, seed=1, **kw)
    c = search.gcg(tiny3, search.logprob(tiny3, [9]), PROMPT, seed=2, **kw)  # new target and seed: same programs
    assert compile_count() == before
    assert a.tokens.tolist() == b.tokens.tolist() and a.history == b.history
    assert a.history != c.history
    assert len(a.history) == 2 and all(len(h) == 6 for h in a.history)
    assert a.loss == pytest.approx(min(min(h) for h in a.history), abs=1e-5)


def test_allowed_tokens_are_respected(tiny3, char_model):
    obj = search.logprob(tiny3, TARGET)
    allowed = np.arange(10, 30)
    res = search.gcg(tiny3, obj, PROMPT, span="suffix:4", steps=5, topk=8, batch=32, restarts=2, allowed=allowed,
                     stop_on_success=False, progress=False)
    assert set(res.tokens.tolist()) <= set(allowed.tolist())

    mask = search.allowed_tokens(char_model)
    tok = char_model.tokenizer
    assert not mask[0]  # the special token
    assert not mask[tok.encode("\n")[0]]  # not printable
    assert mask[tok.encode("a")[0]] and mask[tok.encode(" ")[0]]
    assert mask.sum() == 95
    res = search.gcg(char_model, search.logprob(char_model, "!"), "hi", span="suffix:3", steps=4, topk=8, batch=16,
                     stop_on_success=False, progress=False)
    assert mask[res.tokens].all()
    assert tok.encode(res.text, prepend_bos=False) == res.tokens.tolist()  # the text means the ids
    assert res.input_text == "hi" + res.text


def test_spans_in_text(char_model):
    obj = search.logprob(char_model, "!")
    lay = search.layout(char_model, obj, "ab{span}cd", "slot:2")
    tok = char_model.tokenizer
    assert lay.start == 2 and lay.n == 2 and lay.after.tolist() == tok.encode("cd")
    assert lay.appended.tolist() == tok.encode("!")
    lay = search.layout(char_model, obj, "ab", "prefix:3")
    assert lay.start == 0 and lay.after.tolist() == tok.encode("ab")
    res = search.gcg(char_model, obj, "ab{span}cd", span="slot:2", steps=2, topk=4, batch=8, progress=False)
    assert res.input_text == "ab" + res.text + "cd"


def test_fluency_term_trades_objective_for_likely_text(tiny3):
    obj = search.logprob(tiny3, TARGET)
    kw = dict(span="suffix:4", steps=15, topk=16, batch=64, stop_on_success=False, progress=False, seed=3)
    plain = search.gcg(tiny3, obj, PROMPT, **kw)
    fluent = search.gcg(tiny3, obj, PROMPT, fluency=5.0, **kw)
    assert fluent.fluency < plain.fluency
    assert fluent.fluency_weight == 5.0 and fluent.loss == pytest.approx(fluent.objective + 5 * fluent.fluency, 1e-4)


def test_bad_input_is_refused_with_cause_and_fix(tiny3, char_model):
    with pytest.raises(ValueError, match="tokenizes to no tokens"):
        search.logprob(char_model, "")
    obj = search.logprob(tiny3, TARGET)
    with pytest.raises(ValueError, match="more than this model's context of 64; shorten the span to at most 58"):
        search.gcg(tiny3, obj, PROMPT, span="suffix:100", progress=False)
    with pytest.raises(ValueError, match="allowed-token set is empty"):
        search.gcg(tiny3, obj, PROMPT, span="suffix:3", allowed=np.zeros(tiny3.d_vocab, bool), progress=False)
    with pytest.raises(ValueError, match="allowed-token set is empty"):
        search.gcg(tiny3, obj, PROMPT, span="suffix:3", allowed=[], progress=False)
    with pytest.raises(ValueError, match=r"unknown objective 'logprobs'; did you mean 'logprob'"):
        search.objective("logprobs", tiny3, TARGET)
    with pytest.raises(ValueError, match="write KIND:N"):
        search.gcg(tiny3, obj, PROMPT, span="middle:3", progress=False)
    with pytest.raises(ValueError, match=r"hold \{span\} exactly once"):
        search.gcg(char_model, search.logprob(char_model, "!"), "no slot", span="slot:3", progress=False)
    with pytest.raises(ValueError, match="outside this dictionary's 16 latents"):
        d = sae.create(sae.TopKConfig(d_in=tiny3.d_model, width=16, k=4, hook_name="blocks.1.hook_resid_post"),
                       jax.random.key(0))
        search.latent(tiny3, d, 16)
    with pytest.raises(ValueError, match="did you mean 'blocks.1.hook_resid_post'"):
        search.score(tiny3, lambda a: a.sum(), "blocks.1.hook_resid_pos")
    with pytest.raises(ValueError, match="init has 2 tokens but the span has 3"):
        search.gcg(tiny3, obj, PROMPT, span="suffix:3", init=[1, 2], progress=False)
    with pytest.raises(ValueError, match="steps=0 must be"):
        search.gcg(tiny3, obj, PROMPT, steps=0, progress=False)
    with pytest.raises(ValueError, match="target id 500 is outside"):
        search.logprob(tiny3, [500])
