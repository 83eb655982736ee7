"""Toy models from scratch (interp.toys): the attention-only block, the training loop, and the analysis functions of
the induction-head and grokking reproductions, each checked against values computed independently here."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interp import toys
from interp.toys import induction, modular


def _tiny(**kw):
    cfg = dict(vocab_size=20, d_model=16, n_layers=2, n_heads=2, n_ctx=12)
    cfg.update(kw)
    return toys.transformer(toys.ToyConfig(**cfg), seed=0)


# ---------------------------------------------------------------------------------------------- models
def test_attention_only_model_has_no_mlp_and_the_residual_is_the_sum_of_its_parts():
    model = _tiny()
    assert model.cfg.attn_only and model.cfg.d_mlp is None
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 20, (3, 12)), jnp.int32)
    logits, cache = model.run_with_cache(tokens)
    assert logits.shape == (3, 12, 20)
    assert not [n for n in cache if "mlp" in n or "resid_mid" in n]
    for layer in range(2):
        np.testing.assert_allclose(cache[f"blocks.{layer}.hook_resid_post"],
                                   cache[f"blocks.{layer}.hook_resid_pre"] + cache[f"blocks.{layer}.hook_attn_out"],
                                   atol=1e-6)


def test_generation_with_a_kv_cache_matches_the_full_forward():
    model = _tiny(n_ctx=16)
    prompt = jnp.asarray([[1, 2, 3, 4]], jnp.int32)
    out = np.asarray(model.generate(prompt, 6).tokens)
    seq = list(np.asarray(prompt[0]))
    for _ in range(6):  # greedy, one full forward per token
        seq.append(int(jnp.argmax(model.forward(jnp.asarray([seq]))[0, -1])))
    assert out[0].tolist()[-10:] == seq


def test_model_with_mlp_builds_prenorm_blocks():
    model = _tiny(d_mlp=32)
    assert not model.cfg.attn_only and model.cfg.d_mlp == 32
    _, cache = model.run_with_cache(jnp.zeros((1, 5), jnp.int32), ["blocks.0.mlp.hook_post"])
    assert cache["blocks.0.mlp.hook_post"].shape == (1, 5, 32)


def test_a_model_without_norms_is_the_plain_sum_of_its_parts():
    model = _tiny(d_mlp=32, n_layers=1, layer_norm=False)
    assert model.cfg.normalization_type is None
    tokens = np.random.default_rng(1).integers(0, 20, (2, 7))
    logits, cache = model.run_with_cache(jnp.asarray(tokens, jnp.int32))
    # an independent forward in numpy: no norm anywhere
    f = lambda a: np.asarray(a, np.float64)  # noqa: E731
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    x = f(model.embed.W_E)[tokens] + f(model.embed.W_pos)[:7]
    q = np.einsum("btd,dhe->bthe", x, f(attn.W_Q)) + f(attn.b_Q)
    k = np.einsum("btd,dhe->bthe", x, f(attn.W_K)) + f(attn.b_K)
    v = np.einsum("btd,dhe->bthe", x, f(attn.W_V)) + f(attn.b_V)
    scores = np.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(np.tril(np.ones((7, 7), bool)), scores, -np.inf)
    pattern = np.exp(scores - scores.max(-1, keepdims=True))
    pattern /= pattern.sum(-1, keepdims=True)
    z = np.einsum("bhqk,bkhe->bqhe", pattern, v)
    x = x + np.einsum("bqhe,hed->bqd", z, f(attn.W_O)) + f(attn.b_O)
    x = x + np.maximum(x @ f(mlp.W_in) + f(mlp.b_in), 0) @ f(mlp.W_out) + f(mlp.b_out)
    np.testing.assert_allclose(logits, x @ f(model.W_U), atol=2e-5)
    np.testing.assert_allclose(cache["blocks.0.ln1.hook_normalized"], cache["blocks.0.hook_resid_pre"])
    np.testing.assert_array_equal(cache["ln_final.hook_scale"], np.ones((2, 7, 1)))
    # logit attribution reads the missing norm as one of unit weight: the components add up to the logits
    stack, _ = cache.decompose_resid(return_labels=True)
    attrs = cache.logit_attrs(stack, jnp.asarray(tokens))
    np.testing.assert_allclose(attrs.sum(0), np.take_along_axis(np.asarray(logits), tokens[..., None], -1)[..., 0],
                               atol=1e-4)


@pytest.mark.parametrize("kw, match", [({"d_model": 15}, "divisible"), ({"n_layers": 0}, "positive int"),
                                       ({"d_mlp": 0}, "d_mlp"), ({"act": "tanh"}, "activation"),
                                       ({"bos_token_id": 20}, "outside the vocabulary")])
def test_bad_configs_are_refused(kw, match):
    cfg = dict(vocab_size=20, d_model=16, n_layers=2, n_heads=2, n_ctx=12)
    cfg.update(kw)
    with pytest.raises(ValueError, match=match):
        toys.ToyConfig(**cfg)


# ---------------------------------------------------------------------------------------------- training
def test_training_learns_a_fixed_sequence_and_records_metrics():
    model = _tiny()
    data = np.tile(np.arange(12, dtype=np.int32), (4, 1))
    calls = []
    trained, hist = toys.train(model, data, steps=60, lr=3e-2, eval_every=20,
                               metrics={"loss_now": lambda m: float(toys.next_token_loss(m, jnp.asarray(data))),
                                        "w": lambda m: calls.append(1) or np.ones(3)})
    assert list(hist.steps) == [0, 20, 40, 60] and len(calls) == 4
    assert hist["w"].shape == (4, 3)
    assert hist.loss.shape == (60,) and hist.loss[-1] < 0.1 < hist.loss[0]
    # the last measurement is of the returned model
    assert hist["loss_now"][-1] == pytest.approx(float(toys.next_token_loss(trained, jnp.asarray(data))), rel=1e-5)
    rows = hist.rows()
    assert rows[0] == {"step": 0, "loss_now": hist["loss_now"][0]} and rows[1]["loss"] == pytest.approx(hist.loss[19])
    with pytest.raises(KeyError, match="recorded"):
        hist["nope"]


def test_batches_from_a_function_of_the_step_make_a_run_reproducible():
    words = induction.tokenize("the cat sat on the mat . " * 40, vocab_size=8)
    batches = induction.text_batches(words, batch=4, length=20, seed=3)
    a = toys.train(_tiny(n_ctx=20), batches, steps=5)[1].loss
    b = toys.train(_tiny(n_ctx=20), batches, steps=5)[1].loss
    np.testing.assert_array_equal(a, b)


def test_a_diverging_run_stops_with_a_clear_error():
    data = np.tile(np.arange(12, dtype=np.int32), (2, 1))

    def nan_loss(model, batch):
        return toys.next_token_loss(model, batch) * jnp.nan

    with pytest.raises(FloatingPointError, match="lower lr"):
        toys.train(_tiny(), data, steps=3, loss=nan_loss, eval_every=1)
    with pytest.raises(ValueError, match="steps"):
        toys.train(_tiny(), data, steps=0)


# ---------------------------------------------------------------------------------------------- induction data
def test_word_tokenizer_keeps_the_commonest_words():
    w = induction.tokenize("A a b a c, b!", vocab_size=5)  # a 3, b 2, then c , ! once each (first seen first)
    assert w.vocab == ("a", "b", "c") and w.unk == 3 and w.bos == 4 and w.vocab_size == 5
    assert w.tokens.tolist() == [0, 0, 1, 0, 2, 3, 1, 3]
    assert w.decode([4, 0, 3]) == "<bos> a <unk>"
    with pytest.raises(ValueError, match="vocab_size"):
        induction.tokenize("a b", vocab_size=2)


def test_text_batches_repeat_one_passage_at_a_varying_offset():
    words = induction.Words(np.arange(5000, dtype=np.int32) % 4000, tuple(str(i) for i in range(4000)))
    rows = induction.text_batches(words, batch=16, length=64, repeat=1.0, seed=0)(7)
    assert rows.shape == (16, 64) and (rows[:, 0] == words.bos).all()
    np.testing.assert_array_equal(rows, induction.text_batches(words, batch=16, length=64, seed=0)(7))
    offsets = set()
    for r in rows[:, 1:]:  # the text never repeats within a window, so every repeat was planted
        first, repeats = {}, []
        for i, t in enumerate(r.tolist()):
            if t in first:
                repeats.append(i - first[t])
            else:
                first[t] = i
        assert len(repeats) >= 8 and len(set(repeats)) == 1  # one passage, copied at one offset
        offsets |= set(repeats)
    assert len(offsets) > 4
    plain = induction.text_batches(words, batch=16, length=64, repeat=0.0, seed=0)(7)
    assert all(len(set(r[1:].tolist())) == 63 for r in plain)


def test_repeated_sequences_repeat_their_first_half():
    words = induction.tokenize(" ".join(f"w{i % 50}" for i in range(1000)), vocab_size=40)
    rows = induction.repeated_sequences(words, n=5, half=10, alphabet=30, seed=0)
    assert rows.shape == (5, 21) and (rows[:, 0] == words.bos).all()
    np.testing.assert_array_equal(rows[:, 1:11], rows[:, 11:])
    assert rows[:, 1:].max() < 30


def test_phase_change_times_the_main_move_of_a_curve():
    steps = np.arange(0, 1001, 10)
    # a plateau that first rises (as the loss on random sequences does), then a logistic fall centred on 600
    rise = np.minimum(steps / 200, 1.0)
    fall = 1 / (1 + np.exp((steps - 600) / 20))
    values = 2 + rise + 6 * fall
    pc = induction.phase_change(steps, values)
    # the logistic makes 10% / 90% of its fall at 600 -+ 20 ln 9 (the small rise before is outside the window)
    assert abs(pc.start - (600 - 20 * np.log(9))) <= 10 and abs(pc.end - (600 + 20 * np.log(9))) <= 10
    assert pc.width == pytest.approx((pc.end - pc.start) / 1000)
    up = induction.phase_change(steps, 1 - fall)
    assert up.overlaps(pc) and up.after > up.before
    with pytest.raises(ValueError, match="does not move"):
        induction.phase_change(steps, np.zeros_like(steps, dtype=float))


# ---------------------------------------------------------------------------------------------- modular addition
def test_modular_dataset_holds_every_pair_once():
    d = modular.dataset(11, 0.3, seed=0)
    a, b, eq, c = d.all.T
    assert (c == (a + b) % 11).all() and (eq == 11).all() and len(d.all) == 121
    assert len(d.train) == round(0.3 * 121) and not set(d.train) & set(d.test)
    assert sorted(np.r_[d.train, d.test]) == list(range(121))
    with pytest.raises(ValueError, match="prime"):
        modular.dataset(12)
    with pytest.raises(ValueError, match="frac"):
        modular.dataset(11, 1.0)


def test_fourier_basis_is_orthonormal_and_names_its_rows():
    basis, names = modular.fourier_basis(13)
    np.testing.assert_allclose(basis @ basis.T, np.eye(13), atol=1e-12)
    assert names[:3] == ["const", "cos 1", "sin 1"] and names[-1] == "sin 6"


def test_frequency_norms_find_the_frequencies_an_embedding_is_made_of():
    p = 17
    model = toys.transformer(toys.ToyConfig(vocab_size=p + 1, d_model=8, n_layers=1, n_heads=2, n_ctx=3, d_mlp=8))
    x = np.arange(p)[:, None]
    W = np.zeros((p + 1, 8), np.float32)
    W[:p, 0] = 3 * np.cos(2 * np.pi * 5 * x[:, 0] / p)
    W[:p, 1] = np.sin(2 * np.pi * 2 * x[:, 0] / p)
    W[:p, 2] = 7.0  # a constant: not a frequency
    import equinox as eqx

    model = eqx.tree_at(lambda m: m.embed.W_E, model, jnp.asarray(W))
    norms = modular.frequency_norms(model)
    assert norms.shape == (8,) and norms.sum() == pytest.approx(1.0)
    assert norms[4] == pytest.approx(9 / 10, abs=1e-6) and norms[1] == pytest.approx(1 / 10, abs=1e-6)
    assert modular.key_frequencies(model, 2) == [5, 2]


def test_restricted_and_excluded_losses_split_the_logits_by_frequency():
    p = 13
    d = modular.dataset(p, 0.5, seed=1)
    a, b, _, _ = d.all.T
    c = np.arange(p)
    # logits made of two key frequencies of a + b - c, plus a part that does not depend on a + b at all
    key = sum(np.cos(2 * np.pi * k * ((a + b)[:, None] - c[None]) / p) for k in (3, 5)) * 4.0
    other = np.cos(2 * np.pi * 1 * (a[:, None] - c[None]) / p) * 2.0  # depends on a alone
    lg = key + other

    def ce(logits, rows):
        logits = logits - logits.max(axis=1, keepdims=True)
        lp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return -lp[np.arange(len(rows)), d.all[rows, 3]].mean()

    # keeping frequencies 3 and 5 keeps exactly the key part (its mean over the pairs is zero)
    assert modular.restricted_loss(lg, d, [3, 5]) == pytest.approx(ce(key[d.test], d.test), rel=1e-5)
    # removing them leaves the other part
    assert modular.excluded_loss(lg, d, [3, 5]) == pytest.approx(ce(other[d.train], d.train), rel=1e-5)
    # a frequency that is not there changes nothing when removed
    assert modular.excluded_loss(lg, d, [4]) == pytest.approx(ce(lg[d.train], d.train), rel=1e-5)
    with pytest.raises(ValueError, match="every pair"):
        modular.restricted_loss(lg[:10], d, [3])


def test_modular_loss_reads_the_equals_position():
    p = 7
    model = toys.transformer(toys.ToyConfig(vocab_size=p + 1, d_model=8, n_layers=1, n_heads=2, n_ctx=3, d_mlp=8))
    d = modular.dataset(p, 0.5)
    lg = np.asarray(model.forward(jnp.asarray(d.all[:, :3]))[:, -1, :p])
    lp = jax.nn.log_softmax(lg, axis=-1)
    expect = -np.mean(np.asarray(lp)[np.arange(len(d.all)), d.all[:, 3]])
    assert float(modular.loss(model, d.all)) == pytest.approx(expect, rel=1e-5)
    assert modular.evaluate_loss(model, d.all) == pytest.approx(expect, rel=1e-5)
    assert modular.accuracy(model, d.all) == pytest.approx(np.mean(lg.argmax(1) == d.all[:, 3]))
    np.testing.assert_allclose(modular.all_logits(model, d), lg, rtol=1e-5, atol=1e-6)
