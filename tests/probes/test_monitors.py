"""Monitors during generation: the scores computed inside the compiled generation equal those of a separate full
forward over the generated text (prompt and new tokens, padding NaN); calibration hits its false-positive rate on
held-out clean text; a stopping monitor ends only its own row; refusals of other models' probes and bad input."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interp import sae
from interp.probes import Monitor
from interp.probes.monitor import calibrated_threshold
from interp.weights import weights_hash
from tests.conftest import left_padded, random_tokens
from tests.numerics import assert_close, model_bound

HOOK = "blocks.1.hook_resid_post"


class StandIn(eqx.Module):
    """A probe as monitors see one: a hook, a pure ``score`` and the hash of the model it belongs to."""

    w: jax.Array
    b: jax.Array
    hook: str = eqx.field(static=True)
    model_hash: str | None = eqx.field(static=True, default=None)

    def score(self, acts):
        return acts @ self.w + self.b


def stand_in(model, seed=0, hook=HOOK, model_hash=None):
    w = np.random.default_rng(seed).normal(size=model.d_model).astype(np.float32) / np.sqrt(model.d_model)
    return StandIn(jnp.asarray(w), jnp.float32(0.5), hook, model_hash)


def check_against_full(model, out, monitors):
    """Every score from inside the generation equals the monitor's score from one full forward over the generated
    tokens; padding and slots after a row stopped are NaN in both."""
    for mon in monitors:
        got = out.monitor_scores[mon.name]
        full = mon.score_tokens(model, out.tokens, out.attention_mask)
        assert got.shape == out.tokens.shape
        np.testing.assert_array_equal(np.isnan(got), out.attention_mask == 0)
        live = out.attention_mask == 1
        assert_close(got[live], full[live], model_bound(full[live], n_layers=model.n_layers), mon.name)


def test_scores_inside_generation_equal_a_full_forward(tiny3):
    probe = stand_in(tiny3)
    d = sae.create(sae.TopKConfig(d_in=tiny3.d_model, width=24, k=4, hook_name="blocks.0.hook_resid_post"),
                   jax.random.key(0))
    fired = int(np.argmax(np.asarray(d.encode(jnp.ones(tiny3.d_model)))))
    monitors = [Monitor(probe, name="probe"), Monitor.latent(d, fired),
                Monitor(lambda x: jnp.linalg.norm(x, axis=-1), hook="blocks.2.mlp.hook_post", name="norm")]
    toks, mask = left_padded(tiny3.d_vocab, [3, 7, 5], seed=1)
    out = tiny3.generate(toks, 9, attention_mask=mask, stop_tokens=[], monitors=monitors)
    assert set(out.monitor_scores) == {"probe", "latent " + str(fired), "norm"}
    assert (out.lengths == 9).all() and out.stopped_by == [None] * 3
    check_against_full(tiny3, out, monitors)
    # the monitors read the model without changing it: the same tokens as a generation without them
    plain = tiny3.generate(toks, 9, attention_mask=mask, stop_tokens=[])
    np.testing.assert_array_equal(out.new_tokens, plain.new_tokens)
    # a row that stops on a stop token has NaN scores after it, the stop token itself scored
    stop = int(out.new_tokens[0, 2])
    stopped = tiny3.generate(toks, 9, attention_mask=mask, stop_tokens=[stop], monitors=monitors[:1])
    n = int(stopped.lengths[0])
    P = stopped.prompt_length
    row = stopped.monitor_scores["probe"][0]
    assert np.isfinite(row[P + n - 1]) and np.isnan(row[P + n:]).all()
    check_against_full(tiny3, stopped, monitors[:1])


def test_monitors_see_edited_activations(tiny3):
    from interp import edits

    vec = np.random.default_rng(0).normal(size=tiny3.d_model).astype(np.float32) * 3
    edit = [("blocks.1.hook_resid_pre", edits.add, vec)]
    mon = Monitor(stand_in(tiny3), name="p")
    toks = random_tokens(tiny3.d_vocab, (2, 5), seed=2)
    out = tiny3.generate(toks, 6, stop_tokens=[], edits=edit, monitors=[mon])
    with tiny3.hooks(edits=edit):
        full = mon.score_tokens(tiny3, out.tokens, out.attention_mask)
    assert_close(out.monitor_scores["p"], full, model_bound(full, n_layers=tiny3.n_layers))


def test_stopping_monitor_ends_only_its_row(tiny3):
    toks = random_tokens(tiny3.d_vocab, (3, 6), seed=4)
    probe = stand_in(tiny3, seed=1)
    plain = tiny3.generate(toks, 12, stop_tokens=[], monitors=[Monitor(probe, name="p")])
    P = plain.prompt_length
    new_scores = plain.monitor_scores["p"][:, P:]
    # a threshold that row 0's new tokens pass at step 4 first (rows with an earlier crossing stop there)
    threshold = float(np.nextafter(np.float32(new_scores[0, 4]), np.float32(-np.inf)))
    if (new_scores[0, :4] > threshold).any():
        threshold = float(new_scores[0, :5].max()) - 1e-6
    mon = Monitor(probe, name="p", threshold=threshold, stop=True)
    out = tiny3.generate(toks, 12, stop_tokens=[], monitors=[mon])
    for b in range(3):
        over = np.flatnonzero(new_scores[b] > np.float32(threshold))
        expect = int(over[0]) + 1 if over.size else 12
        assert out.lengths[b] == expect, b
        assert out.stopped_by[b] == ("p" if over.size else None)
        np.testing.assert_array_equal(out.new_tokens[b, :expect], plain.new_tokens[b, :expect])
    assert out.stopped_by[0] == "p" and out.lengths[0] == int(np.flatnonzero(new_scores[0] > threshold)[0]) + 1
    assert any(s is None for s in out.stopped_by) or len(set(out.lengths)) > 1
    check_against_full(tiny3, out, [mon])
    # flags and spans mark the tokens over the threshold
    flags = out.flags("p")
    np.testing.assert_array_equal(flags, np.nan_to_num(out.monitor_scores["p"], nan=-np.inf) > np.float32(threshold))
    np.testing.assert_array_equal(mon.flags(out), flags)
    for row, spans in zip(flags, out.spans("p")):
        marked = np.zeros_like(row)
        for a, e in spans:
            marked[a:e] = True
            assert row[a:e].all()
        np.testing.assert_array_equal(marked, row)


def test_calibrated_fpr_on_synthetic_scores():
    rng = np.random.default_rng(0)
    for fpr in (0.01, 0.05, 0.2):
        clean, held_out = rng.standard_t(4, size=20_000), rng.standard_t(4, size=20_000)
        threshold = calibrated_threshold(clean, fpr)
        assert (clean > threshold).mean() <= fpr
        assert abs((held_out > threshold).mean() - fpr) <= 0.01


def test_calibrate_on_tokens_and_held_out_fpr(tiny3):
    mon = Monitor(stand_in(tiny3), name="p")
    clean = random_tokens(tiny3.d_vocab, (96, 64), seed=7)
    held = random_tokens(tiny3.d_vocab, (96, 64), seed=8)
    cal = mon.calibrate(tiny3, clean, fpr=0.05, window=64)
    assert mon.threshold is None and cal.threshold is not None and cal.n_calibration == clean.size
    assert cal.fpr == 0.05 and "fpr 0.05" in repr(cal)
    scores = mon.score_tokens(tiny3, held)
    assert abs(cal.flags(scores).mean() - 0.05) <= 0.01
    # windows of another length read the same tokens
    assert cal.threshold == mon.calibrate(tiny3, list(clean), fpr=0.05, window=64, batch_size=7).threshold


def test_a_probe_of_another_model_is_refused(tiny3):
    other = "0" * 64
    mon = Monitor(stand_in(tiny3, model_hash=other))
    toks = random_tokens(tiny3.d_vocab, (1, 4), seed=0)
    with pytest.raises(ValueError) as e:
        tiny3.generate(toks, 2, monitors=[mon])
    assert other in str(e.value) and weights_hash(tiny3) in str(e.value) and "train" in str(e.value)
    with pytest.raises(ValueError, match="weights hash"):
        mon.calibrate(tiny3, toks)
    # its own model's hash passes
    own = Monitor(stand_in(tiny3, model_hash=weights_hash(tiny3)))
    assert tiny3.generate(toks, 2, monitors=[own]).monitor_scores[own.name].shape == (1, 6)


def test_bad_input_is_refused(tiny3):
    toks = random_tokens(tiny3.d_vocab, (1, 4), seed=0)
    with pytest.raises(ValueError, match=r"lacks; did you mean 'blocks\.1\.hook_resid_post'"):
        tiny3.generate(toks, 2, monitors=[Monitor(lambda x: x.sum(-1), hook="blocks.1.hook_resid_pst")])
    with pytest.raises(ValueError, match=r"one score per token, shape \(1, 4\)"):
        tiny3.generate(toks, 2, monitors=[Monitor(lambda x: x, hook=HOOK)])
    with pytest.raises(ValueError, match="positions lie along"):
        tiny3.generate(toks, 2, monitors=[Monitor(lambda x: x.sum((1, 3)), hook="blocks.0.attn.hook_pattern")])
    with pytest.raises(ValueError, match="needs the hook point"):
        Monitor(lambda x: x.sum(-1))
    with pytest.raises(ValueError, match="names must differ"):
        tiny3.generate(toks, 2, monitors=[Monitor(stand_in(tiny3)), Monitor(stand_in(tiny3, seed=1))])
    mon = Monitor(stand_in(tiny3))
    for fpr in (0.0, 1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="fpr"):
            mon.calibrate(tiny3, toks, fpr=fpr)
    for empty in ([], [""], np.zeros((0, 5), np.int32)):
        with pytest.raises(ValueError, match="empty"):
            mon.calibrate(tiny3, empty)
    with pytest.raises(ValueError, match="at least 1000 clean tokens"):
        mon.calibrate(tiny3, toks)
    with pytest.raises(ValueError, match="no threshold"):
        mon.flags(np.zeros(3))
    with pytest.raises(ValueError, match="latent"):
        Monitor.latent(sae.create(sae.TopKConfig(d_in=tiny3.d_model, width=8, k=2, hook_name=HOOK),
                                  jax.random.key(0)), 8)


def test_compiled_generation_is_reused_for_new_probe_values(tiny3):
    from interp.hooks import compile_count

    toks = random_tokens(tiny3.d_vocab, (2, 5), seed=3)
    tiny3.generate(toks, 4, monitors=[Monitor(stand_in(tiny3, seed=0), name="p", threshold=0.1)])
    before = compile_count()
    out = tiny3.generate(toks, 4, monitors=[Monitor(stand_in(tiny3, seed=1), name="p", threshold=0.2, stop=True)])
    assert compile_count() == before
    assert out.monitor_thresholds == {"p": 0.2}


def test_generation_report_view(tiny3):
    from interp.report import Report
    from interp.viz import views

    mon = Monitor(stand_in(tiny3), name="<b>probe</b>", threshold=0.0)
    out = tiny3.generate(random_tokens(tiny3.d_vocab, (2, 4), seed=0), 5, monitors=[mon])
    parts = views.result_view(out)
    html = "".join(getattr(p, "html", "") for p in parts)
    assert "&lt;b&gt;probe&lt;/b&gt;" in html and "<b>probe</b>" not in html
    n_flagged = int(out.flags(mon.name)[0].sum())
    assert html.count('class="flag"') >= n_flagged
    assert "interp-monitor" in Report().add(out).to_html()
    assert dataclasses.is_dataclass(out) and "monitor" in repr(out)


def test_monitor_view_streams_in_chunks(tiny3):
    pytest.importorskip("ipywidgets")
    from interp.widgets import MonitorView

    prompt = random_tokens(tiny3.d_vocab, (1, 5), seed=6)
    mon = Monitor(stand_in(tiny3), name="p", threshold=0.0)
    whole = tiny3.generate(prompt, 10, stop_tokens=[], monitors=[mon])
    frames = []
    view = MonitorView(tiny3, prompt, [mon], 10, chunk=4, background=False, stop_tokens=[])
    view.text.observe(lambda change: frames.append(change["new"]), "value")
    view.run()
    assert len(frames) == 3  # chunks of 4, 4 and 2 tokens, drawn as each arrived
    g = view.generation
    np.testing.assert_array_equal(g.tokens, whole.tokens)  # greedy: chunks continue exactly as one call does
    assert_close(g.monitor_scores["p"], whole.monitor_scores["p"], model_bound(whole.monitor_scores["p"],
                                                                               n_layers=tiny3.n_layers))
    assert view.text.value.count('class="flag"') == int(g.flags("p").sum()) and "done: 10" in view.status.value
    background = MonitorView(tiny3, prompt, [mon], 10, chunk=4, stop_tokens=[])
    np.testing.assert_array_equal(background.join(60).tokens, whole.tokens)
    assert any("interp-monitor" in getattr(p, "html", "") for p in background.static())


def test_a_real_probe_monitors_generation(tiny3):
    from interp.probes import Probe

    rng = np.random.default_rng(9)
    D = tiny3.d_model
    arrays = [rng.normal(size=D) / np.sqrt(D), np.float32(-0.2), rng.normal(size=D) * 0.1, 1 + rng.random(D)]
    probe = Probe(*(jnp.asarray(a, jnp.float32) for a in arrays), hook="blocks.2.hook_resid_mid", kind="logistic",
                  model_hash=weights_hash(tiny3))
    mon = Monitor(probe, name="probe")
    toks, mask = left_padded(tiny3.d_vocab, [4, 6], seed=10)
    out = tiny3.generate(toks, 7, attention_mask=mask, stop_tokens=[], monitors=[mon])
    check_against_full(tiny3, out, [mon])
    other = Monitor(dataclasses.replace(probe, model_hash="f" * 64))
    with pytest.raises(ValueError, match="f{64}"):
        tiny3.generate(toks, 2, attention_mask=mask, monitors=[other])


def test_default_model_scores_equal_a_full_forward(default_model):
    m = default_model
    v = np.random.default_rng(0).normal(size=m.d_model).astype(np.float32) / np.sqrt(m.d_model)
    w = jnp.asarray(v)
    monitors = [Monitor(lambda x: x @ w, hook="blocks.6.hook_resid_post", name="direction"),
                Monitor(lambda x: jnp.linalg.norm(x, axis=-1), hook="blocks.20.hook_mlp_out", name="norm")]
    out = m.generate(["The capital of France is", "Once upon a time, in a small village"], 16, monitors=monitors)
    assert out.str_tokens[1][-len(out.new_tokens[1]):][0] == m.to_string([int(out.new_tokens[1, 0])])
    check_against_full(m, out, monitors)


def test_default_model_calibrated_fpr_on_held_out_text(default_model, corpus_text):
    """Calibrated on about 8k tokens of WikiText-2 at 1%, a probe-like direction flags 1% +- 1 point of another
    8k tokens."""
    m = default_model
    lines = [ln for ln in corpus_text.splitlines() if len(ln.split()) > 20]
    v = np.random.default_rng(1).normal(size=m.d_model).astype(np.float32) / np.sqrt(m.d_model)
    w = jnp.asarray(v)
    mon = Monitor(lambda x: x @ w, hook="blocks.4.hook_resid_post", name="direction")
    clean = m.to_tokens(" ".join(lines[:120]))[0, :8192]
    held = m.to_tokens(" ".join(lines[200:320]))[0, :8192]
    assert clean.shape[0] == held.shape[0] == 8192
    cal = mon.calibrate(m, np.asarray(clean), fpr=0.01, window=256, batch_size=8)
    assert cal.n_calibration == 8192
    rows = np.asarray(held).reshape(32, 256)
    flagged = np.concatenate([cal.flags(cal.score_tokens(m, rows[i:i + 8])).reshape(-1) for i in range(0, 32, 8)])
    assert abs(flagged.mean() - 0.01) <= 0.01, flagged.mean()
