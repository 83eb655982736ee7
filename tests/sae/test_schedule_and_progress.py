"""Long runs report what they do; short runs say when they are shorter than their schedule; unset batch sizes and
warm-ups follow the token budget; every TrainConfig field is documented."""

from __future__ import annotations

import dataclasses
import json
import re
import warnings

import numpy as np
import pytest

from interp import sae
from tests.sae.test_training import gaussian_acts

HOOK = "blocks.1.hook_resid_post"


def topk(d_in=16, **kw):
    return sae.TopKConfig(**{"d_in": d_in, "width": 64, "k": 4, **kw})


# ----------------------------------------------------------------------------- the documented rule


def rule(total_tokens, decay=0.2):
    """The rule TrainConfig's docstring states, written out by search: the largest power of two from 64 to 4096
    that leaves at least 200 steps (64 when none does, and never above total_tokens); a warm-up of an eighth of
    the steps, at most 50, and no more than the steps before the decay."""
    fits = [b for b in (64, 128, 256, 512, 1024, 2048, 4096) if total_tokens // b >= 200]
    batch = max(fits) if fits else 64
    while batch > total_tokens:
        batch //= 2
    steps = total_tokens // batch
    return batch, min(50, steps // 8, steps - int(steps * decay))


@pytest.mark.parametrize("total", [100, 1_000, 10_000, 12_800, 12_799, 50_000, 200_000, 819_200, 2_000_000,
                                   10**8])
def test_unset_batch_and_warmup_follow_the_documented_rule(total):
    cfg = sae.TrainConfig(topk(), total_tokens=total)
    assert (cfg.batch_size, cfg.lr_warmup_steps) == rule(total)
    assert cfg.derived == ("batch_size", "lr_warmup_steps")
    assert cfg.schedule_problems() == []


def test_the_default_run_keeps_its_schedule_and_a_short_one_gets_steps():
    default = sae.TrainConfig(topk())
    assert (default.batch_size, default.steps, default.lr_warmup_steps) == (4096, 488, 50)
    short = sae.TrainConfig(topk(), total_tokens=50_000)
    assert (short.batch_size, short.steps, short.lr_warmup_steps) == (128, 390, 48)


def test_derived_batch_fits_the_buffer_and_the_devices():
    cfg = sae.TrainConfig(topk(), total_tokens=2_000_000, buffer_tokens=1024, context_size=32)
    assert cfg.batch_size == 512  # a buffer holds 32 contexts of 31 kept positions: 992 activations
    assert sae.TrainConfig(topk(), total_tokens=2_000_000, data_parallel=3).batch_size == 4095
    full_decay = sae.TrainConfig(topk(), total_tokens=50_000, lr_decay_fraction=1.0)
    assert full_decay.lr_warmup_steps == 0  # the whole run decays: no room for a warm-up


def test_values_set_by_the_user_are_never_changed():
    cfg = sae.TrainConfig(topk(), total_tokens=50_000, batch_size=4096, lr_warmup_steps=50)
    assert (cfg.batch_size, cfg.lr_warmup_steps, cfg.derived) == (4096, 50, ())
    half = sae.TrainConfig(topk(), total_tokens=50_000, batch_size=4096)
    assert (half.batch_size, half.derived) == (4096, ("lr_warmup_steps",))
    assert half.lr_warmup_steps == 1  # an eighth of its 12 steps
    # replace derives unset fields again from the new budget, and keeps what was set
    assert dataclasses.replace(sae.TrainConfig(topk()), total_tokens=50_000).batch_size == 128
    assert dataclasses.replace(cfg, total_tokens=2_000_000).batch_size == 4096
    assert dataclasses.replace(cfg, total_tokens=100_000).lr_warmup_steps == 50
    # a config read back from a checkpoint holds plain numbers: they count as set
    back = sae.TrainConfig.from_dict(json.loads(json.dumps(half.to_dict())))
    assert (back.batch_size, back.lr_warmup_steps, back.derived) == (4096, 1, ())


# ----------------------------------------------------------------------------- warnings for short runs


def schedule_warnings(record):
    return [str(w.message) for w in record if issubclass(w.category, UserWarning) and "shorter than" in str(w.message)]


def test_a_run_shorter_than_its_warmup_warns_with_the_numbers_and_the_fix():
    x = gaussian_acts(n=4096)
    cfg = sae.TrainConfig(topk(), total_tokens=256 * 12, batch_size=256, lr_warmup_steps=50)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        sae.train(cfg, store=sae.ArrayActivationStore(x, batch_size=256), progress=False)
    [message] = schedule_warnings(record)
    assert "the run is 12 steps (total_tokens=3,072 / batch_size=256)" in message
    assert "lr_warmup_steps=50 warm-up steps and 2 decay steps (lr_decay_fraction=0.2) need 52" in message
    # the fixes name numbers that work: the derived schedule, a budget, or a shorter warm-up
    auto = sae.TrainConfig(topk(), total_tokens=256 * 12)
    assert f"batch_size={auto.batch_size} and lr_warmup_steps={auto.lr_warmup_steps}: {auto.steps} steps" in message
    need = int(re.search(r"total_tokens >= ([\d,]+)", message)[1].replace(",", ""))
    longer = sae.TrainConfig(topk(), total_tokens=need, batch_size=256, lr_warmup_steps=50)
    assert longer.schedule_problems() == []
    assert sae.TrainConfig(topk(), total_tokens=need - 256, batch_size=256, lr_warmup_steps=50).schedule_problems()
    most = int(re.search(r"lower lr_warmup_steps to at most (\d+)", message)[1])
    assert most == 10 and not sae.TrainConfig(topk(), total_tokens=256 * 12, batch_size=256,
                                              lr_warmup_steps=most).schedule_problems()


def test_a_normal_run_does_not_warn():
    x = gaussian_acts(n=4096)
    cfg = sae.TrainConfig(topk(), total_tokens=256 * 12, batch_size=256, lr_warmup_steps=2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        sae.train(cfg, store=sae.ArrayActivationStore(x, batch_size=256), progress=False)
    assert schedule_warnings(record) == []


def test_the_issue_run_warns_and_its_derived_schedule_does_not():
    # 50k tokens with the old fixed defaults: 12 steps inside a 50-step warm-up
    old = sae.TrainConfig(topk(576), total_tokens=50_000, batch_size=4096, lr_warmup_steps=50)
    [problem] = old.schedule_problems()
    assert problem.startswith("the run is 12 steps (total_tokens=50,000 / batch_size=4,096)")
    assert sae.TrainConfig(topk(576), total_tokens=50_000).schedule_problems() == []


def test_a_run_shorter_than_its_sparsity_warmup_warns():
    cfg = sae.TrainConfig(sae.StandardConfig(d_in=16, width=64), total_tokens=256 * 12, batch_size=256,
                          sparsity_warmup_steps=48)
    [problem] = cfg.schedule_problems()
    assert "shorter than sparsity_warmup_steps=48" in problem and "at most 25% of it" in problem
    assert "pass total_tokens >= 12,288 (48 steps of 256)" in problem


# ----------------------------------------------------------------------------- documentation


def test_every_train_config_field_is_documented():
    doc = sae.TrainConfig.__doc__
    for field in dataclasses.fields(sae.TrainConfig):
        assert re.search(rf"^\s+{field.name}: \S", doc, re.M), f"TrainConfig's docstring does not describe {field.name}"


# ----------------------------------------------------------------------------- progress


@pytest.fixture(scope="module")
def texts(corpus_text):
    return corpus_text[:30000].split("\n\n")


def model_cfg(texts, **kw):
    # 32 contexts of 32 tokens per chunk, 31 kept positions each: 992 activations, 3 batches of 256 per chunk
    return sae.TrainConfig(sae.TopKConfig(d_in=576, width=64, k=4, hook_name=HOOK), corpus=texts,
                           total_tokens=256 * 8, batch_size=256, context_size=32, buffer_tokens=1024, model_batch=8,
                           lr_warmup_steps=1, eval_every=4, **kw)


def test_progress_reports_harvesting_then_training(default_model, texts, capsys):
    sae.train(model_cfg(texts), model=default_model)
    err = capsys.readouterr().err
    # 8 steps of 3 batches per chunk draw on 2 chunks of 992 activations (32 contexts less their first position)
    # and the last 2 batches (512 activations: 17 contexts, 24 in whole forward passes of 8, 744 activations)
    assert "harvest activations" in err and "2.73k/2.73k" in err and "tok/s" in err
    assert not re.search(r"harvest activations: [\d.]+k?tok \[", err)  # the bar knows its total from the start
    assert "train topk 64" in err and "8/8" in err and re.search(r"step/s|s/step", err)
    assert err.index("harvest activations") < err.index("train topk 64")
    assert "fvu=" in err and "l0=" in err


def test_progress_off_prints_nothing(default_model, texts, capsys):
    sae.train(model_cfg(texts), model=default_model, progress=False)
    assert capsys.readouterr().err == ""


def test_progress_names_the_model_while_it_loads(default_model, texts, capsys, monkeypatch):
    import interp.weights

    loaded = []
    monkeypatch.setattr(interp.weights, "load", lambda name: loaded.append(name) or default_model)
    sae.train(model_cfg(texts))
    assert loaded == ["smollm2-135m"]
    err = capsys.readouterr().err
    assert err.index("load smollm2-135m") < err.index("harvest activations") < err.index("train topk 64")


def test_resumed_run_harvests_only_what_is_left(default_model, texts, capsys, tmp_path):
    cfg = model_cfg(texts, out_dir=str(tmp_path), checkpoint_every=4)

    def stop(step, metrics, d):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sae.train(cfg, model=default_model, callback=stop)
    capsys.readouterr()
    sae.train(cfg, model=default_model, resume=True)
    err = capsys.readouterr().err
    # steps 5..8 are batches 1, 2 of chunk 1 (harvested again, 992) and the two of the last chunk (744)
    assert "1.74k/1.74k" in err and "/2.73k" not in err  # the total, not a rate that happens to read 2.73k tok/s
    assert re.search(r"train topk 64:\s+50%\|.*\| 4/8", err) and "8/8" in err


def test_store_counts_what_it_will_harvest(default_model, texts):
    store = sae.ActivationStore(default_model, HOOK, texts, context_size=32, buffer_tokens=1024, batch_size=256,
                                model_batch=8, skip_positions=1)
    assert store.rows_per_chunk == 992
    assert [store.rows_ahead(n) for n in (0, 1, 3, 4, 8)] == [0, 992, 992, 2 * 992, 3 * 992]
    seen = []
    store.on_harvest = seen.append
    store.next_batch()
    assert seen == [248] * 4  # one call per forward pass of 8 contexts, 31 kept positions each
    assert store.rows_ahead(2) == 0 and store.rows_ahead(3) == 992  # the loaded chunk is not harvested again
    assert np.isfinite(store.next_batch()[0]).all()


def test_the_last_chunk_harvests_only_the_batches_left(default_model, texts):
    """A store told the run's size harvests, for its last chunk, the batches still to be drawn in whole forward
    passes: the same contexts (and activations) a whole chunk starts with."""
    kw = dict(context_size=32, buffer_tokens=1024, batch_size=256, model_batch=8, skip_positions=1, seed=None)
    short = sae.ActivationStore(default_model, HOOK, texts, n_tokens=256 * 4, **kw)
    whole = sae.ActivationStore(default_model, HOOK, texts, **kw)
    # chunk 0 serves 3 batches; the 4th needs 256 activations: 9 contexts of 31, so 16 in passes of 8 (496)
    assert short.rows_ahead(4) == 992 + 496 and whole.rows_ahead(4) == 2 * 992
    for store in (short, whole):
        for _ in range(3):
            store.next_batch()
    seen = []
    short.on_harvest = seen.append
    x, _ = short.next_batch()
    assert seen == [248, 248]
    np.testing.assert_allclose(x, whole.next_batch()[0], rtol=1e-5, atol=1e-5)  # unshuffled: the same first rows
