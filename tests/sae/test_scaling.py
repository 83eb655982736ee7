"""Width sweeps: the harvest serves the model's own activations, the power-law fit recovers known laws, and a sweep
on activations built from a known sparse dictionary reconstructs better as it widens."""

from __future__ import annotations

import numpy as np
import pytest

import interp
from interp.sae import scaling
from tests.tiny_chat import WORDS, tiny_chat_folder

HOOK = "blocks.1.hook_resid_post"


def test_harvest_serves_the_models_activations_on_its_contexts(tmp_path):
    model = interp.load(tiny_chat_folder(tmp_path / "toy"))
    rng = np.random.default_rng(0)
    corpus = [" ".join(rng.choice(WORDS, 12)) for _ in range(60)]
    acts = scaling.harvest(model, HOOK, corpus, 300, context_size=16, skip_positions=1, buffer_tokens=160,
                           model_batch=5, progress=False)
    assert acts.shape == (300, model.d_model) and acts.dtype == np.float32
    # the contexts the store reads: the corpus's tokens joined by end-of-text, cut in 16s; rows = positions 1..15
    from interp.sae.store import iter_contexts

    ctx = iter_contexts(model.tokenizer, corpus, 16)
    contexts = np.stack([next(ctx) for _ in range(30)])
    _, cache = model.run_with_cache(contexts, names=[HOOK])
    expected = np.asarray(cache[HOOK])[:, 1:].reshape(-1, model.d_model)
    # shuffled within each buffer of 10 contexts (150 rows): the first two buffers hold exactly their rows
    for b in range(2):
        got = acts[150 * b:150 * (b + 1)]
        want = expected[150 * b:150 * (b + 1)]
        order = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
        np.testing.assert_allclose(order(got), order(want), atol=1e-5)


def test_harvest_refuses_a_bad_count(tmp_path):
    model = interp.load(tiny_chat_folder(tmp_path / "toy"))
    with pytest.raises(ValueError, match="n_tokens"):
        scaling.harvest(model, HOOK, ["a b"], 0)


def test_power_law_fit_recovers_a_known_law():
    x = np.array([256, 512, 1024, 2048, 4096])
    fit = scaling.fit_power_law(x, 3.0 * x**-0.25)
    assert fit.exponent == pytest.approx(-0.25, abs=1e-9) and fit.prefactor == pytest.approx(3.0, rel=1e-9)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(fit(x), 3.0 * x**-0.25)
    noisy = 3.0 * x**-0.25 * np.exp(np.random.default_rng(0).normal(0, 0.05, len(x)))
    assert scaling.fit_power_law(x, noisy).r2 < 1.0
    # a curve that is not a power law fits worse
    assert scaling.fit_power_law(x, 1.0 / np.log(x) ** 4).r2 < scaling.fit_power_law(x, noisy).r2 + 0.05


@pytest.mark.parametrize("x, y, match", [([1, 2], [1, 2], "at least 3"), ([1, 2, 0], [1, 2, 3], "positive"),
                                         ([1, 2, 3], [1, -2, 3], "positive")])
def test_power_law_fit_refuses_bad_points(x, y, match):
    with pytest.raises(ValueError, match=match):
        scaling.fit_power_law(x, y)


def _sparse_data(n, rng, atoms):
    idx = rng.integers(0, len(atoms), (n, 4))
    coef = rng.exponential(1.0, (n, 4))
    return np.einsum("nk,nkd->nd", coef, atoms[idx]).astype(np.float32)


def test_a_width_sweep_reconstructs_better_as_it_widens():
    rng = np.random.default_rng(0)
    atoms = rng.normal(size=(256, 32))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    x, held = _sparse_data(16384, rng, atoms), _sparse_data(2048, rng, atoms)
    sweep = scaling.width_sweep(x, held, [32, 64, 128, 256], k=4, epochs=4, batch_size=256, lr=3e-3, progress=False)
    fvu = sweep.column("held_out_fvu")
    assert (np.diff(fvu) < 0).all(), fvu
    assert fvu[-1] < 0.7 * fvu[0]
    assert sweep.fit.exponent < 0 and sweep.fit.r2 > 0.8
    assert (sweep.column("l0") == 4).all()
    assert (sweep.column("dead_fraction") <= 0.1).all()
    # MSE and FVU agree: FVU is the MSE over the held-out activations' variance
    var = np.sum(np.var(held.astype(np.float64), axis=0))
    np.testing.assert_allclose(sweep.column("held_out_mse") / var, fvu, rtol=1e-4)
    assert set(sweep.dictionaries) == {32, 64, 128, 256}


def test_a_width_sweep_needs_three_widths_and_matching_activations():
    x = np.zeros((512, 8), np.float32)
    with pytest.raises(ValueError, match="3 distinct widths"):
        scaling.width_sweep(x, x, [16, 32], k=2)
    with pytest.raises(ValueError, match="same d"):
        scaling.width_sweep(x, np.zeros((10, 9), np.float32), [16, 32, 64], k=2)
    with pytest.raises(ValueError, match="not one batch"):
        scaling.width_sweep(x, x, [16, 32, 64], k=2, epochs=1, batch_size=1024)
