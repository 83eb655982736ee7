"""Activation patching sweeps equal a brute-force loop of single patches; attribution patching is their
first-order estimate."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import interp
import interp.circuits.patching as patching
from interp.circuits import attribute, metrics, patch
from tests.conftest import random_tokens
from tests.numerics import assert_close, assert_model_close, model_bound


def _set_pos(x, name, src, p):
    return x.at[:, p].set(src[:, p])


def _set_head(x, name, src, h):  # [B T H E]
    return x.at[:, :, h].set(src[:, :, h])


def _set_head_pos(x, name, src, p, h):
    return x.at[:, p, h].set(src[:, p, h])


def _set_pattern_head(x, name, src, h):  # [B H T S]
    return x.at[:, h].set(src[:, h])


def _set_all(x, name, src):
    return src


def brute_force(model, base, source, metric, short, per):
    """One ``run_with_hooks`` per target, patching the source run's activation by hand."""
    L = model.n_layers
    _, cache = model.run_with_cache(source, [interp.act_name(short, l) for l in range(L)])
    rows = []
    for l in range(L):
        name = interp.act_name(short, l)
        src = cache[name]
        if per == "pos":
            cases = [(_set_pos, (p,)) for p in range(src.shape[1])]
        elif per == "layer":
            cases = [(_set_all, ())]
        elif per == "head" and short == "pattern":
            cases = [(_set_pattern_head, (h,)) for h in range(src.shape[1])]
        elif per == "head":
            cases = [(_set_head, (h,)) for h in range(src.shape[2])]
        else:
            cases = [(_set_head_pos, (p, h)) for p in range(src.shape[1]) for h in range(src.shape[2])]
        vals = [float(metric(model.run_with_hooks(base, [(name, fn, src, *map(jnp.int32, a))]))) for fn, a in cases]
        rows.append(vals)
    return np.array(rows)


CASES = [("resid_pre", "pos"), ("attn_out", "pos"), ("mlp_out", "pos"), ("resid_mid", "layer"), ("z", "head"),
         ("z", "head_pos"), ("v", "head"), ("q", "head"), ("pattern", "head")]


@pytest.mark.parametrize("short,per", CASES)
def test_sweep_equals_brute_force_loop(tiny3, pair, answers, short, per):
    clean, corrupted = pair
    metric = metrics.logit_diff(*answers)
    res = patch(tiny3, clean, corrupted, metric, short, per=per)
    expect = brute_force(tiny3, corrupted, clean, metric, short, per)
    # the metric is a difference of logits: rounding follows the logits' magnitude
    bound = model_bound(tiny3(clean), tiny3(corrupted), n_layers=tiny3.n_layers)
    assert_close(res.values.reshape(expect.shape), expect, bound, "sweep vs loop")
    # not trivially the base run: some targets move the metric
    assert np.abs(expect - res.base).max() > 1e-3
    assert_close(res.base, float(metric(tiny3(corrupted))), bound, "base")
    assert_close(res.source, float(metric(tiny3(clean))), bound, "source")


def test_full_patch_of_resid_restores_the_source_run(tiny3, pair, answers):
    """Patching every position of resid_pre at layer 0 is the clean run itself; at the corrupted-only
    positions' complement it changes nothing."""
    clean, corrupted = pair
    metric = metrics.logit_diff(*answers)
    res = patch(tiny3, clean, corrupted, metric, "resid_pre", per="layer")
    bound = model_bound(tiny3(clean), tiny3(corrupted), n_layers=tiny3.n_layers) / abs(res.source - res.base)
    assert_close(res.normalized()[0], np.ones_like(res.normalized()[0]), bound, "normalized effect")
    by_pos = patch(tiny3, clean, corrupted, metric, "resid_pre")
    # at layer 0 only the positions where the tokens differ carry any effect
    unchanged = [p for p in range(clean.shape[1]) if p not in (1, 3)]
    assert_close(by_pos.values[0, unchanged], np.full(len(unchanged), res.base), bound * abs(res.source - res.base),
                 "unchanged positions")


def test_noising_direction_and_metrics(tiny3, pair, answers):
    clean, corrupted = pair
    for metric in (metrics.prob(answers[0]), metrics.kl_to(tiny3(clean)), metrics.log_prob(answers[0], pos=4)):
        res = patch(tiny3, clean, corrupted, metric, "attn_out", direction="noise")
        expect = brute_force(tiny3, clean, corrupted, metric, "attn_out", "pos")
        # probabilities and KL move with the logits' rounding (times at most 1 and 2)
        assert_close(res.values, expect, 2 * model_bound(tiny3(clean), tiny3(corrupted), n_layers=tiny3.n_layers),
                     f"noising {metric}")


def test_custom_metric_layers_and_batch_size(tiny3, pair, answers):
    clean, corrupted = pair

    def top_logit(logits):
        return jnp.mean(jnp.max(logits[:, -1], axis=-1))

    full = patch(tiny3, clean, corrupted, top_logit, "resid_pre")
    part = patch(tiny3, clean, corrupted, top_logit, "resid_pre", layers=[2, 1], batch_size=2)
    assert_model_close(part.values, full.values[[2, 1]], tiny3, "layer subset")
    assert part.labels[0] == ("2", "1")


def test_new_answers_do_not_recompile(tiny3, pair, answers):
    clean, corrupted = pair
    patch(tiny3, clean, corrupted, metrics.logit_diff(*answers), "z")
    before = interp.compile_count()
    patch(tiny3, clean, corrupted, metrics.logit_diff(answers[1], answers[0]), "z")
    assert interp.compile_count() == before


def test_bad_arguments(tiny3, pair, answers):
    clean, corrupted = pair
    metric = metrics.logit_diff(*answers)
    with pytest.raises(ValueError, match="per='head'"):
        patch(tiny3, clean, corrupted, metric, "resid_pre", per="head")
    with pytest.raises(ValueError, match="cannot sweep"):
        patch(tiny3, clean, corrupted, metric, "embed")
    with pytest.raises(ValueError, match="direction"):
        patch(tiny3, clean, corrupted, metric, direction="backwards")
    with pytest.raises(ValueError, match="outside"):
        patch(tiny3, clean, corrupted, metric, layers=[7])
    with pytest.raises(ValueError, match="equal length"):
        patch(tiny3, clean[:, :5], corrupted, metric)


def test_attribution_is_first_order_exact(tiny3, pair, answers):
    """With a source run a tiny step away from the base run, attribution patching and exact patching agree
    to first order; with a real corruption they still correlate."""
    clean, corrupted = pair
    metric = metrics.logit_diff(*answers)
    rng = np.random.default_rng(0)
    step = jnp.asarray(1e-3 * rng.standard_normal((tiny3.d_model,)), jnp.float32)
    names = [interp.act_name(s, l) for s in ("resid_pre", "attn_out", "mlp_out", "z") for l in range(3)]
    _, near = tiny3.run_with_cache(corrupted, names, edits=[("hook_embed", interp.edits.add, step)])
    for short in ("resid_pre", "attn_out", "mlp_out", "z"):
        exact = patch(tiny3, near, corrupted, metric, short)
        approx = attribute(tiny3, near, corrupted, metric, short)
        scale = np.abs(exact.effect).max()
        assert scale > 1e-5
        np.testing.assert_allclose(approx.effect, exact.effect, atol=0.05 * scale)
    both = attribute(tiny3, clean, corrupted, metric, ["resid_pre", "z"])
    exact = patch(tiny3, clean, corrupted, metric, "resid_pre")
    r = np.corrcoef(both["resid_pre"].effect.ravel(), exact.effect.ravel())[0, 1]
    assert r > 0.5, r


def test_a_sweep_reports_progress_by_layer(tiny3, pair, answers, monkeypatch):
    import interp.circuits.patching as patching

    bars = []

    class Bar:
        def __init__(self, **kw):
            self.kw, self.n = kw, 0
            bars.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            self.n += n

    monkeypatch.setattr(patching, "tqdm", Bar)
    clean, corrupted = pair
    metric = metrics.logit_diff(*answers)
    patch(tiny3, clean, corrupted, metric, "resid_pre", layers=[0, 2])
    patch(tiny3, clean, corrupted, metric, "z", progress=False)
    assert [(b.kw["total"], b.n, b.kw["disable"], b.kw["unit"]) for b in bars] == [(2, 2, False, "layer"),
                                                                                    (3, 3, True, "layer")]
    assert bars[0].kw["delay"] > 0  # a quick sweep shows nothing


@pytest.mark.parametrize("T", [40, 37])  # 40: four ranges of positions; 37: the sweep runs padded to its bucket, 48
def test_sweeps_that_skip_earlier_positions_equal_a_brute_force_loop(tiny3, T, monkeypatch):
    """A position sweep runs each range of positions from the range's start with the base run's keys and values
    before it: its values are those of whole-sequence runs, in every range, padded or not, with padding rows."""
    monkeypatch.setattr(patching, "SKIP_PREFIX_FROM", 16)  # tiny models: short prompts take the same path
    clean = random_tokens(tiny3.d_vocab, (2, T), seed=21)
    corrupted = clean.copy()
    for p, shift in ((3, 7), (T - 8, 13), (T - 1, 5)):
        corrupted[:, p] = (clean[:, p] + shift) % tiny3.d_vocab
    order = np.argsort(-np.asarray(tiny3(clean))[:, -1], axis=-1)
    metric = metrics.logit_diff(order[:, 0].astype(np.int32), order[:, 1].astype(np.int32))
    bound = model_bound(tiny3(clean), tiny3(corrupted), n_layers=tiny3.n_layers)
    res = patch(tiny3, clean, corrupted, metric, "resid_pre", progress=False)
    expect = brute_force(tiny3, corrupted, clean, metric, "resid_pre", "pos")
    assert_close(res.values, expect, bound, "resid_pre sweep vs loop")
    # the patches that matter lie in the first and the last range
    assert np.abs(expect[:, 3] - res.base).max() > 1e-3 and np.abs(expect[:, T - 8] - res.base).max() > 1e-3
    before = interp.compile_count()
    swapped = patch(tiny3, clean, corrupted, metrics.logit_diff(order[:, 1].astype(np.int32),
                                                                order[:, 0].astype(np.int32)), "resid_pre",
                    progress=False)
    assert interp.compile_count() == before  # the ranges' programs are reused
    assert_close(swapped.values, -res.values, bound, "swapped answers")
    if T == 37:  # another length of the bucket (no real position in the last range) reuses them too
        patch(tiny3, clean[:, :33], corrupted[:, :33], metric, "resid_pre", progress=False)
        assert interp.compile_count() == before
    mask = np.ones((2, T), np.int32)
    mask[1, :5] = 0  # a left-padded row
    for short, per, kw in (("z", "head_pos", {}), ("k", "head_pos", {}), ("mlp_out", "pos", {}),
                           ("resid_mid", "pos", {"attention_mask": mask})):
        whole = patch(tiny3, clean, corrupted, metric, short, per=per, progress=False, skip_prefix=False, **kw)
        ranges = patch(tiny3, clean, corrupted, metric, short, per=per, progress=False, **kw)
        assert_close(ranges.values, whole.values, bound, f"{short} per {per} {kw and 'padded'}")
        assert np.abs(whole.values - whole.base).max() > 1e-3
