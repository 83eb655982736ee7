"""Grouped cross-validation: folds and splits never divide a group, and where row folds leak (twins with flipped
labels that share a nuisance feature) they score below chance while grouped folds score about chance."""

from __future__ import annotations

import numpy as np
import pytest

from interp import probes
from interp.probes import datasets


def test_grouped_folds_keep_groups_whole_and_stay_stratified():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 7, 80)
    groups = np.repeat([f"g{i}" for i in range(len(sizes))], sizes)
    y = rng.integers(0, 2, len(groups))
    fold = probes.kfold(y, 5, seed=3, groups=groups)
    assert sorted(set(fold)) == list(range(5))
    for g in set(groups):
        assert len(set(fold[groups == g])) == 1
    for k in range(5):  # near the stratified share of each class
        assert abs((y[fold == k] == 1).sum() - (y == 1).sum() / 5) <= 6
        assert abs((y[fold == k] == 0).sum() - (y == 0).sum() / 5) <= 6
    assert np.array_equal(fold, probes.kfold(y, 5, seed=3, groups=list(groups)))
    assert not np.array_equal(fold, probes.kfold(y, 5, seed=4, groups=groups))
    assert np.array_equal(probes.kfold(y, 5, seed=3), probes.kfold(y, 5, seed=3, groups=None))  # rows as before


def test_grouped_folds_refuse_bad_groups():
    y = np.tile([0, 1], 10)
    with pytest.raises(ValueError, match="20 examples but 19 groups"):
        probes.kfold(y, 4, groups=np.arange(19))
    with pytest.raises(ValueError, match="needs at least 4 groups; got 3"):
        probes.kfold(y, 4, groups=np.arange(20) % 3)
    with pytest.raises(ValueError, match="at least 4 groups holding class 1"):
        probes.kfold(y, 4, groups=np.where(y == 1, np.arange(20) % 2, 10 + np.arange(20)))
    X = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="20 examples but 5 groups"):
        probes.sweep(X, y, kind="diffmeans", folds=4, groups=np.arange(5))
    with pytest.raises(ValueError, match="rows but groups"):
        probes.Activations({"h": X}, y, "last", groups=np.arange(5))


def twins(n_pairs=120, d=400, seed=0):
    """Each pair: two rows with the same random nuisance vector (plus a little noise), one of each label; nothing
    in the features says which is which."""
    rng = np.random.default_rng(seed)
    z = np.repeat(rng.standard_normal((n_pairs, d)), 2, axis=0)
    X = (z + 0.1 * rng.standard_normal(z.shape)).astype(np.float32)
    y = np.tile([1, 0], n_pairs)
    return X, y, np.repeat(np.arange(n_pairs), 2)


@pytest.mark.parametrize("kind", ["diffmeans", "logistic"])
def test_row_folds_leak_twins_and_grouped_folds_do_not(kind):
    X, y, groups = twins()
    by_row = probes.sweep(X, y, kind=kind, folds=5)
    by_group = probes.sweep(X, y, kind=kind, folds=5, groups=groups)
    assert by_row.auroc[0] < 0.3, by_row.auroc  # a held-out row's twin taught the opposite label
    assert abs(by_group.auroc[0] - 0.5) < 0.12, by_group.auroc
    assert by_row.groups is None and by_group.groups == 120 and "by group (120 groups)" in repr(by_group)
    acts = probes.Activations({"blocks.0.hook_resid_post": X}, y, "last", groups=groups)
    assert probes.sweep(acts, kind=kind, folds=5).auroc[0] == pytest.approx(by_group.auroc[0])  # acts.groups
    assert np.array_equal(acts.subset(slice(0, 10)).groups, groups[:10])


def test_weak_to_strong_and_transfer_split_by_group():
    X, y, groups = twins(n_pairs=150, d=8, seed=1)
    strong = X + np.outer(2 * y - 1, np.eye(8)[0]).astype(np.float32) * 2
    acts = probes.Activations({"blocks.0.hook_resid_post": X, "blocks.5.hook_resid_post": strong}, y, "last",
                              groups=groups)
    from interp.probes.transfer import _split

    part = _split(y.astype(np.float32), np.array([0.3, 0.4, 0.3]), 0, groups)
    for g in range(150):
        assert len(set(part[groups == g])) == 1
    assert [int((part == p).sum()) for p in range(3)] == pytest.approx([90, 120, 90], abs=4)
    r = probes.weak_to_strong(acts, "blocks.0.hook_resid_post", "blocks.5.hook_resid_post", kind="diffmeans")
    assert r.n_test == int((part == 2).sum()) and r.ceiling > 0.9
    with pytest.raises(ValueError, match="300 examples but 3 groups"):
        probes.weak_to_strong(acts, "blocks.0.hook_resid_post", "blocks.5.hook_resid_post", groups=[0, 1, 2])
    res = probes.transfer(acts, acts, kind="diffmeans", folds=3)
    grouped = probes.sweep(acts, kind="diffmeans", folds=3)
    np.testing.assert_allclose(res.source_auroc, grouped.auroc, atol=1e-6)


def test_datasets_group_near_duplicates():
    d = datasets.true_false()
    assert d.groups is not None and len(d.groups) == len(d)
    for g in set(d.groups):
        rows = np.array([x == g for x in d.groups])
        assert d.labels[rows].mean() == 0.5
    named = {}  # each capital: once true, once false, both in one group (and so in every template)
    for text, label, g in zip(d.texts, d.labels, d.groups):
        if text.startswith("The capital of "):
            named.setdefault(text.rsplit(" is ", 1)[1], []).append((int(label), g))
    assert len(named) == len(d) // 10
    assert all(sorted(lab for lab, _ in v) == [0, 1] and v[0][1] == v[1][1] for v in named.values())
    easy = datasets.true_false(difficulty="easy")
    assert set(easy.groups) <= set(d.groups) and not set(easy.groups) & set(datasets.true_false(
        difficulty="hard").groups)
    assert d.subset([0, 1]).groups == d.groups[:2]
    pairs = datasets.true_false_pairs("question")
    assert len(pairs.groups) == len(pairs) and set(pairs.groups) == set(d.groups)
    s = datasets.sentiment(n=60, seed=2)
    assert all(f" {g}" in t for t, g in zip(s.texts, s.groups))  # grouped by noun
    yn = datasets.yes_no_pairs()
    assert yn.groups[0] in yn.positive[0]
    fold = probes.kfold(d.labels, 5, groups=d.groups)
    for g in set(d.groups):
        assert len(set(fold[np.array([x == g for x in d.groups])])) == 1


def test_collect_keeps_groups(tiny3):
    rng = np.random.default_rng(0)
    ss = [list(rng.integers(3, tiny3.d_vocab, n)) for n in (5, 9, 3, 7)]
    acts = probes.collect(tiny3, ss, ["blocks.0.hook_resid_post"], [0, 1, 0, 1], groups=["a", "a", "b", "b"],
                          batch_size=2)
    assert list(acts.groups) == ["a", "a", "b", "b"] and "groups 2" in repr(acts)
    per_token = probes.collect(tiny3, ss, ["blocks.0.hook_resid_post"], [0, 1, 0, 1], groups=[0, 0, 1, 1],
                               reduce="all")
    assert list(per_token.groups) == [0] * 14 + [1] * 10
    with pytest.raises(ValueError, match="4 texts but groups of shape \\(3,\\)"):
        probes.collect(tiny3, ss, ["blocks.0.hook_resid_post"], [0, 1, 0, 1], groups=[0, 0, 1])
