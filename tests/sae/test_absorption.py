"""First-letter absorption: the word list, the probe, main-latent selection with feature splitting, and the
absorption rate on hand-built dictionaries whose answer is known."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import Array, Float

import interp
from interp.sae import absorption
from tests.tiny_chat import tiny_chat_folder

D = 40  # 26 letter directions, then word-specific ones


class HandDictionary(eqx.Module):
    """A dictionary given by its encoder and decoder: ``encode(x) = relu(x @ W_enc - 0.5)``."""

    W_enc: Float[Array, "D M"]
    W_dec: Float[Array, "M D"]

    def encode(self, x):
        return jnp.maximum(x @ self.W_enc - 0.5, 0.0)


def _data(n_per_letter=30, seed=0):
    """Activations ``e_letter + small noise`` for letters a-e; the first word of letter a also carries e_26 (one
    word the absorbing latent keys on, as a token-specific latent does)."""
    rng = np.random.default_rng(seed)
    xs, ys, family = [], [], []
    for c in range(5):
        for i in range(n_per_letter):
            x = np.zeros(D, np.float32)
            x[c] = 1.0
            fam = c == 0 and i == 0
            x[26] = 1.0 if fam else 0.0
            xs.append(x + rng.normal(0, 0.02, D).astype(np.float32))
            ys.append(c)
            family.append(fam)
    return np.array(xs), np.array(ys), np.array(family)


def _clean_dictionary():
    W = np.zeros((D, 5), np.float32)
    W[np.arange(5), np.arange(5)] = 1.0
    return HandDictionary(jnp.asarray(W), jnp.asarray(W.T))


def _absorbing_dictionary():
    """Letter latents 0-4, and latent 5 for the one word: it fires on e_a + e_26 and its decoder carries both; the
    letter-a latent is inhibited there (its encoder reads -e_26), so latent 5 absorbs the letter on that word."""
    W_enc = np.zeros((D, 6), np.float32)
    W_enc[np.arange(5), np.arange(5)] = 1.0
    W_enc[26, 0] = -1.0
    W_enc[0, 5], W_enc[26, 5] = 0.5, 0.5
    W_dec = np.zeros((6, D), np.float32)
    W_dec[np.arange(5), np.arange(5)] = 1.0
    W_dec[5, 0], W_dec[5, 26] = 1.0, 1.0
    return HandDictionary(jnp.asarray(W_enc), jnp.asarray(W_dec))


def test_absorption_counts_the_words_another_latent_takes_over():
    x, y, family = _data()
    probe = absorption.fit_letter_probe(x, y, l2=0.1)
    assert probe.accuracy == 1.0
    x_te, y_te, fam_te = _data(seed=1)
    clean = absorption.measure(_clean_dictionary(), probe, x, y, x_te, y_te)
    assert clean.rate == {c: 0.0 for c in "abcde"} and clean.mean_false_negative_rate == 0.0
    assert clean.main_latents["a"] == [0] and clean.probe_accuracy == 1.0
    absorbed = absorption.measure(_absorbing_dictionary(), probe, x, y, x_te, y_te)
    share = fam_te[y_te == 0].mean()  # the one word of the a-words
    assert share > 0
    assert absorbed.rate["a"] == pytest.approx(share) and absorbed.false_negative_rate["a"] == pytest.approx(share)
    assert all(absorbed.rate[c] == 0.0 for c in "bcde")
    assert absorbed.mean_rate == pytest.approx(share / 5)


def test_a_silent_main_latent_without_a_taker_is_a_false_negative_but_not_absorption():
    x, y, _ = _data()
    probe = absorption.fit_letter_probe(x, y, l2=0.1)
    d = _absorbing_dictionary()
    # the family latent now writes a direction orthogonal to every letter: nothing carries the letter instead
    W_dec = np.asarray(d.W_dec).copy()
    W_dec[5] = 0.0
    W_dec[5, 30] = 1.0
    x_te, y_te, fam_te = _data(seed=1)
    result = absorption.measure(HandDictionary(d.W_enc, jnp.asarray(W_dec)), probe, x, y, x_te, y_te)
    assert result.rate["a"] == 0.0
    assert result.false_negative_rate["a"] == pytest.approx(fam_te[y_te == 0].mean())


def test_main_latents_follow_a_feature_split():
    rng = np.random.default_rng(0)
    truth = rng.random(400) < 0.3
    fires = rng.random((400, 6)) < 0.05  # noise latents
    half = rng.random(400) < 0.5
    fires[:, 2] = truth & half  # the class, split over two latents
    fires[:, 4] = truth & ~half
    chosen, f1 = absorption.main_latents(fires, truth)
    assert sorted(chosen) == [2, 4] and f1 == pytest.approx(1.0)
    only, f1_one = absorption.main_latents(fires, truth, max_split=1)
    assert len(only) == 1 and f1_one < 0.8


def test_first_letter_words_are_single_tokens_with_a_space(tmp_path):
    model = interp.load(tiny_chat_folder(tmp_path / "toy"))
    words = absorption.first_letter_words(model.tokenizer, min_length=2)
    assert words and all(w.startswith(" ") and w[1:].isalpha() for w in words)
    assert all(len(model.tokenizer.encode(w, prepend_bos=False)) == 1 for w in words)
    x = absorption.word_activations(model, "blocks.0.hook_resid_post", words[:5], prefix="Words:")
    # the same as the activation at the last token of prefix + word, one at a time
    for w, row in zip(words[:5], x):
        _, cache = model.run_with_cache(model.tokenizer.encode("Words:") + model.tokenizer.encode(w, prepend_bos=False),
                                        names=["blocks.0.hook_resid_post"])
        np.testing.assert_allclose(row, np.asarray(cache["blocks.0.hook_resid_post"])[0, -1], atol=1e-5)
    with pytest.raises(ValueError, match="one-token words"):
        absorption.word_activations(model, "blocks.0.hook_resid_post", [" the cat"])
    with pytest.raises(ValueError, match="unknown hook"):
        absorption.word_activations(model, "blocks.0.hook_nothing", words[:1])
    np.testing.assert_array_equal(absorption.letters_of([" apple", " zoo"]), [0, 25])
