"""Transfer and weak-to-strong experiments: PGR arithmetic and the numbers each step reports."""

from __future__ import annotations

import numpy as np
import pytest

from interp import probes


def test_pgr_arithmetic():
    assert probes.pgr(0.6, 0.8, 1.0) == pytest.approx(0.5)
    assert probes.pgr(0.7, 0.7, 0.9) == 0.0
    assert probes.pgr(0.6, 0.95, 0.9) == pytest.approx(7 / 6)  # a student may beat its ceiling
    assert np.isnan(probes.pgr(0.8, 0.9, 0.8))


def data(n=600, d=8, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    v = np.eye(d)[0]
    y = rng.integers(0, 2, n)
    strong = rng.standard_normal((n, d)) + np.outer(2 * y - 1, v) * 1.5 + shift
    weak = rng.standard_normal((n, d)) * 3 + np.outer(2 * y - 1, v) * 1.5
    acts = probes.Activations({"blocks.0.hook_resid_post": weak.astype(np.float32),
                               "blocks.5.hook_resid_post": strong.astype(np.float32)}, y, "last")
    return acts


def test_transfer_numbers_equal_separate_fits():
    src, tgt = data(seed=1), data(seed=2, shift=0.3)
    res = probes.transfer(src, tgt, kind="diffmeans", folds=3, names=("a", "b"))
    for i, h in enumerate(src.hooks):
        p = probes.fit(src, hook=h, kind="diffmeans")
        s = np.asarray(p.score(tgt[h]))
        assert res.auroc[i] == pytest.approx(probes.auroc(s, tgt.labels), abs=1e-6)
        assert res.accuracy[i] == pytest.approx(probes.accuracy(s, tgt.labels))
        assert res.target_auroc[i] == pytest.approx(
            probes.sweep(tgt, hooks=[h], kind="diffmeans", folds=3).auroc[0], abs=1e-6)
        assert res.source_auroc[i] == pytest.approx(
            probes.sweep(src, hooks=[h], kind="diffmeans", folds=3).auroc[0], abs=1e-6)
    assert res.best == 1 and "a -> b" in repr(res)


def test_weak_to_strong_reports_each_step():
    acts = data(n=900)
    r = probes.weak_to_strong(acts, "blocks.0.hook_resid_post", "blocks.5.hook_resid_post", task="toy",
                              kind="diffmeans")
    assert r.weak < r.ceiling  # the late layer is the better representation
    assert r.pgr == pytest.approx((r.strong_on_weak - r.weak) / (r.ceiling - r.weak))
    assert r.pgr > 0  # a student on a clean representation generalises past its supervisor's errors
    assert r.n_test == pytest.approx(0.3 * 900, abs=2)
    table = probes.W2STable((r, r))
    assert table.text().count("toy") == 2 and "PGR" in repr(table)
    with pytest.raises(ValueError, match="did you mean 'blocks.5.hook_resid_post'"):
        probes.weak_to_strong(acts, "blocks.0.hook_resid_post", "blocks.5.hook_resid_pots")
    with pytest.raises(ValueError, match="three positive fractions"):
        probes.weak_to_strong(acts, "blocks.0.hook_resid_post", "blocks.5.hook_resid_post", split=(0.5, 0.5))
