"""Probe fits recover planted directions; logistic regression equals an independent Newton solve; the sweep's CV
numbers equal a numpy computation; probe files round-trip and refuse another model."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from interp import probes
from interp.probes import Probe


def planted(n=2000, d=12, sep=3.0, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(d)
    v /= np.linalg.norm(v)
    y = (np.arange(n) % 2).astype(np.int64)
    rng.shuffle(y)
    X = rng.standard_normal((n, d)) + np.outer(2 * y - 1, v) * sep / 2 + rng.standard_normal(d) * 5
    return X.astype(np.float32), y, v


@pytest.mark.parametrize("kind", probes.KINDS)
def test_fits_recover_a_planted_direction(kind):
    X, y, v = planted()
    p = probes.fit(X, y, kind, l2=1e-4) if kind == "logistic" else probes.fit(X, y, kind)
    assert float(np.dot(np.asarray(p.direction), v)) >= 0.99  # and it points towards class 1
    assert probes.accuracy(np.asarray(p.score(X)), y) > 0.9
    assert np.array_equal(np.asarray(p.predict(X)), np.asarray(p.score(X)) > 0)


def numpy_logistic(X, y, l2, iters=50):
    """Independent reference: undamped Newton in float64 on the same objective (standardised inputs, mean
    log-loss, l2/2 |w|^2 on the weights only)."""
    X = X.astype(np.float64)
    mu, sd = X.mean(0), X.std(0)
    Z = np.hstack([(X - mu) / sd, np.ones((len(X), 1))])
    pen = np.r_[np.full(X.shape[1], l2), 0.0]
    th = np.zeros(Z.shape[1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-Z @ th))
        g = Z.T @ (p - y) / len(y) + pen * th
        H = (Z.T * (p * (1 - p))) @ Z / len(y) + np.diag(pen)
        th -= np.linalg.solve(H, g)
    return th[:-1], th[-1], mu, sd


def test_logistic_equals_an_independent_newton_solve():
    X, y, _ = planted(n=400, d=8, sep=1.0, seed=1)
    w, b, mu, sd = numpy_logistic(X, y, l2=0.05)
    p = probes.fit(X, y, "logistic", l2=0.05)
    np.testing.assert_allclose(np.asarray(p.mean), mu, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(p.scale), sd, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(p.weight), w, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(float(p.bias), b, rtol=2e-4, atol=2e-5)


def test_lda_shrinkage_is_ledoit_wolf():
    from interp.probes import _fit

    rng = np.random.default_rng(2)
    Xc = rng.standard_normal((50, 6)) @ rng.standard_normal((6, 6))
    Xc -= Xc.mean(0)
    n, p = Xc.shape
    S = Xc.T @ Xc / n  # scikit-learn's formula, written out
    mu = np.trace(S) / p
    delta = ((S - mu * np.eye(p)) ** 2).sum() / p
    beta = min((((Xc**2).sum(1) ** 2).sum() / n - (S**2).sum()) / (p * n), delta)
    _, shrink = _fit.ledoit_wolf(Xc, np.ones(n))
    assert float(shrink) == pytest.approx(beta / delta, rel=1e-4)


def test_ccs_finds_a_planted_contrast_direction_unsupervised():
    rng = np.random.default_rng(3)
    n, d = 2000, 10
    v = rng.standard_normal(d)
    v /= np.linalg.norm(v)
    truth = rng.integers(0, 2, n)
    base = rng.standard_normal((n, d))
    signal = np.outer(2 * truth - 1, v) * 2.0
    yes, no = rng.standard_normal(d) * 4, rng.standard_normal(d) * 4  # each side's own offset ("Yes"/"No" tokens)
    Xp, Xn = base + signal + yes, base - signal + no
    p = probes.fit_ccs(Xp, Xn, seed=0)
    assert abs(float(np.dot(np.asarray(p.direction), v))) >= 0.99
    cred = np.asarray(probes.contrast_credence(p, Xp, Xn))
    acc = ((cred > 0.5) == truth).mean()
    assert max(acc, 1 - acc) > 0.95  # the sign of truth is not identified without labels
    again = probes.fit_ccs(Xp, Xn, seed=0)
    assert np.array_equal(np.asarray(again.weight), np.asarray(p.weight))  # deterministic for a seed


def brute_auroc(s, y):
    pos, neg = s[y == 1], s[y == 0]
    return ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))


def test_auroc_and_kfold():
    rng = np.random.default_rng(4)
    s = rng.integers(0, 5, 60).astype(float)  # many ties
    y = rng.integers(0, 2, 60)
    assert probes.auroc(s, y) == pytest.approx(brute_auroc(s, y))
    fold = probes.kfold(y, 5, seed=1)
    assert sorted(set(fold)) == list(range(5))
    for k in range(5):  # stratified: each fold's class counts differ by at most one from the others
        assert abs((y[fold == k] == 1).sum() - (y == 1).sum() / 5) < 1
    assert np.array_equal(fold, probes.kfold(y, 5, seed=1))


def test_sweep_equals_numpy_cross_validation():
    rng = np.random.default_rng(5)
    n, d = 120, 6
    y = np.tile([0, 1], n // 2)
    X = {f"blocks.{i}.hook_resid_post": (rng.standard_normal((n, d)) + 0.4 * i * np.outer(y, np.ones(d))).astype(
        np.float32) for i in range(3)}
    res = probes.sweep(X, y, kind="diffmeans", folds=4, seed=7)
    fold = probes.kfold(y, 4, seed=7)
    for i, A in enumerate(X.values()):
        accs, aucs = [], []
        for k in range(4):
            tr, te = fold != k, fold == k
            m1, m0 = A[tr & (y == 1)].mean(0), A[tr & (y == 0)].mean(0)
            s = (A[te] - (m0 + m1) / 2) @ (m1 - m0)
            accs.append(((s > 0) == y[te]).mean())
            aucs.append(brute_auroc(s, y[te]))
        assert res.accuracy[i] == pytest.approx(np.mean(accs), abs=1e-9)
        assert res.auroc[i] == pytest.approx(np.mean(aucs), abs=1e-6)
        assert res.auroc_std[i] == pytest.approx(np.std(aucs), abs=1e-6)
    assert res.best_hook == "blocks.2.hook_resid_post" and res.labels == ["L0", "L1", "L2"]
    assert "L2" in repr(res)
    full = probes.fit(X[res.best_hook], y, "diffmeans")
    np.testing.assert_allclose(np.asarray(res.best_probe.weight), np.asarray(full.weight), rtol=1e-5)


def test_sweep_figure_and_report_view():
    from interp.viz.figures import probe_sweep_figure
    from interp.viz.views import result_view

    X, y, _ = planted(n=200, d=4)
    res = probes.sweep({"blocks.0.hook_resid_post": X, "blocks.1.hook_resid_post": X * 0 + np.arange(4)}, y,
                       kind="diffmeans")
    fig = probe_sweep_figure(res)
    assert list(fig.data[0].y) == pytest.approx(list(res.auroc))
    parts = result_view(res)
    assert len(parts) == 2 and parts[1].data[0].name == "AUROC"


def test_probe_score_is_pure_under_jit():
    X, y, _ = planted(n=200, d=4)
    p = probes.fit(X, y, "logistic")
    f = jax.jit(lambda probe, x: probe.score(x))
    np.testing.assert_allclose(np.asarray(f(p, X[None, :5])), np.asarray(p.score(X[:5]))[None], rtol=1e-5)


def test_save_load_round_trip_and_hash_refusal(tmp_path, tiny3):
    from interp.weights import weights_hash

    X, y, _ = planted(n=200, d=tiny3.d_model)
    p = probes.fit(X, y, "lda", hook="blocks.1.hook_resid_post", model_hash=weights_hash(tiny3))
    p.save(tmp_path / "p")
    q = Probe.load(tmp_path / "p", model=tiny3)
    assert (q.hook, q.kind, q.model_hash) == (p.hook, p.kind, p.model_hash)
    for k in ("weight", "bias", "mean", "scale"):
        np.testing.assert_array_equal(np.asarray(getattr(q, k)), np.asarray(getattr(p, k)))
    other = probes.fit(X, y, "lda", hook="blocks.1.hook_resid_post", model_hash="0" * 64)
    other.save(tmp_path / "o")
    with pytest.raises(ValueError, match="weights hash 0000.*train a new probe"):
        Probe.load(tmp_path / "o", model=tiny3)
    assert Probe.load(tmp_path / "o").model_hash == "0" * 64  # without a model there is nothing to compare
    wrong_hook = probes.fit(X, y, "lda", hook="blocks.1.hook_resid_pots", model_hash=weights_hash(tiny3))
    wrong_hook.save(tmp_path / "w")
    with pytest.raises(ValueError, match="did you mean 'blocks.1.hook_resid_post'"):
        Probe.load(tmp_path / "w", model=tiny3)
    with pytest.raises(FileNotFoundError, match="not a saved probe"):
        Probe.load(tmp_path / "missing")


def test_bad_inputs_are_refused_with_the_fix():
    X, y, _ = planted(n=40, d=3)
    with pytest.raises(ValueError, match="one class only.*add examples of the other class"):
        probes.fit(X, np.ones(40))
    with pytest.raises(ValueError, match="empty"):
        probes.fit(np.zeros((0, 3)), np.zeros(0))
    with pytest.raises(ValueError, match="40 examples but 39 labels"):
        probes.fit(X, y[:39])
    bad = X.copy()
    bad[7, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite values in 1 of 40 rows \\(first: row 7\\)"):
        probes.fit(bad, y)
    with pytest.raises(ValueError, match="0/1"):
        probes.fit(X, y + 1)
    with pytest.raises(ValueError, match="did you mean 'lda'"):
        probes.fit(X, y, "lad")
    with pytest.raises(TypeError, match="options"):
        probes.fit(X, y, "diffmeans", l2=1.0)
    with pytest.raises(ValueError, match="needs at least 25 examples of each class"):
        probes.sweep(X, y, folds=25)
    with pytest.raises(ValueError, match="one negative per positive"):
        probes.fit_ccs(X, X[:-1])
