"""Length buckets, edit keys, compile counting and the persistent compilation cache.

A prompt runs padded to its length bucket: outputs and captured activations equal the run at the exact length (to
float32 rounding: a longer row changes XLA's reduction blocking), a prompt of a new length inside a bucket compiles
nothing, equivalent edit functions share a program, and a second process loads programs from disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import interp
from interp import edits
from interp.circuits import metrics, patch
from interp.models import bucket_length, set_length_buckets
from tests.conftest import random_tokens
from tests.models.test_gpt2_neox_parity import make_hf
from tests.numerics import assert_close, model_bound


@pytest.fixture(scope="module")
def tiny(hf_checkpoints):
    return interp.load(hf_checkpoints("gqa")[1])


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """Learned positions: padding must never index past the position table."""
    folder = tmp_path_factory.mktemp("gpt2-buckets")
    make_hf("gpt2").save_pretrained(folder, safe_serialization=True)
    return interp.load(folder)


class exact_lengths:
    """Runs inside the block use no buckets."""

    def __enter__(self):
        self.previous = set_length_buckets(None)

    def __exit__(self, *exc):
        set_length_buckets(self.previous)


def test_bucket_lengths_and_settings():
    assert [bucket_length(n) for n in (1, 16, 17, 33, 49, 100)] == [16, 16, 32, 48, 64, 128]
    assert bucket_length(17, limit=20) == 20 and bucket_length(20, limit=12) == 20
    previous = set_length_buckets([8, 24])
    try:
        assert [bucket_length(n) for n in (3, 9, 24, 25)] == [8, 24, 24, 25]
        with pytest.raises(ValueError, match="increasing positive integers"):
            set_length_buckets([24, 8])
        with pytest.raises(ValueError, match="pass None to turn bucketing off"):
            set_length_buckets([0, 8])
    finally:
        set_length_buckets(previous)
    assert interp.length_buckets() == previous


@pytest.mark.parametrize("which", ["tiny", "gpt2"])
def test_bucketed_run_equals_exact_run(which, request):
    model = request.getfixturevalue(which)
    tokens = random_tokens(model.d_vocab, (2, 11), seed=1)
    mask = np.ones((2, 11), np.int32)
    mask[1, :4] = 0  # a left-padded row as well
    logits, cache = model.run_with_cache(tokens, attention_mask=mask)
    padded, _ = model.run(tokens, interp.Hooks(), attention_mask=mask, keep_padding=True)
    assert padded.shape[1] == 16  # it did run padded
    with exact_lengths():
        ref_logits, ref_cache = model.run_with_cache(tokens, attention_mask=mask)
    assert logits.shape == ref_logits.shape
    live = mask.astype(bool)
    assert_close(np.asarray(logits)[live], np.asarray(ref_logits)[live],
                 model_bound(ref_logits, n_layers=model.n_layers), "logits")
    assert list(cache) == list(ref_cache)
    axes = model.position_axes()
    for name in ref_cache:
        a, b = np.asarray(cache[name]), np.asarray(ref_cache[name])
        assert a.shape == b.shape, name
        bound = model_bound(b[0], n_layers=model.n_layers)
        assert_close(a[0], b[0], bound, name)
        # the padding queries of the left-padded row see no key at all, and their values are arbitrary
        if axes[name] == (1,):
            assert_close(a[1, 4:], b[1, 4:], bound, name)


def test_a_padded_cache_is_cut_when_read(tiny):
    """A cache of a padded run holds its entries padded until each is read: the shapes are the prompt's at once, an
    entry read is cut (and kept), and whole-cache operations (pytree maps, remove_batch_dim) see cut arrays."""
    from interp.hooks._cache import Pending

    tokens = random_tokens(tiny.d_vocab, (1, 11), seed=4)
    _, cache = tiny.run_with_cache(tokens)
    with exact_lengths():
        _, ref = tiny.run_with_cache(tokens)
    name = "blocks.0.attn.hook_pattern"
    assert all(isinstance(v, Pending) for v in cache._data.values())  # nothing cut yet
    assert f"{name}: (1, 4, 11, 11)" in repr(cache)  # shapes without the work
    assert all(isinstance(v, Pending) for v in cache._data.values())
    first = cache[name]
    assert first.shape == ref[name].shape and cache[name] is first  # cut once, then kept
    assert not isinstance(cache._data[name], Pending)
    assert_close(np.asarray(first), np.asarray(ref[name]), 1e-5, name)
    host = jax.tree.map(np.asarray, cache)  # every entry cut, in one batch
    assert list(host) == list(ref)
    for k in ref:
        a, b = host[k], np.asarray(ref[k])
        assert a.shape == b.shape and (np.isfinite(a) == np.isfinite(b)).all(), k  # masked scores are -inf in both
        assert_close(a[np.isfinite(b)], b[np.isfinite(b)], model_bound(b[np.isfinite(b)], n_layers=2), k)
    _, again = tiny.run_with_cache(tokens)
    squeezed = again.remove_batch_dim()
    assert squeezed["blocks.1.hook_resid_post"].shape == (11, 32)


def test_a_value_captured_under_two_names_leaves_the_run_once(tiny):
    """A block's resid_post is the next block's resid_pre: the run returns that value once and both names share the
    array (a second output would be a copy), unless an edit between them makes them differ."""
    tokens = random_tokens(tiny.d_vocab, (2, 9), seed=5)
    with exact_lengths():
        _, cache = tiny.run_with_cache(tokens)
        post, pre = cache["blocks.0.hook_resid_post"], cache["blocks.1.hook_resid_pre"]
        assert post is pre
        assert cache["blocks.0.hook_resid_mid"] is not post and cache["blocks.1.hook_resid_mid"] is not post
        _, alone = tiny.run_with_cache(tokens, names=["blocks.1.hook_resid_pre"])
        np.testing.assert_array_equal(np.asarray(pre), np.asarray(alone["blocks.1.hook_resid_pre"]))
        shift = jnp.full(32, 0.5)
        _, edited = tiny.run_with_cache(tokens, edits=[("blocks.1.hook_resid_pre", edits.add, shift)])
        np.testing.assert_allclose(np.asarray(edited["blocks.1.hook_resid_pre"]),
                                   np.asarray(edited["blocks.0.hook_resid_post"]) + 0.5, rtol=1e-6)
    # padded and cut when read: the two names share one cut, whichever is read first and however it is read
    _, padded = tiny.run_with_cache(tokens)
    assert padded["blocks.1.hook_resid_pre"] is padded["blocks.0.hook_resid_post"]
    assert_close(np.asarray(padded["blocks.1.hook_resid_pre"]), np.asarray(pre), 1e-5, "resid_pre")
    _, whole = tiny.run_with_cache(tokens)
    whole = jax.block_until_ready(whole)  # resolves every entry in one batch
    assert whole["blocks.0.hook_resid_post"] is whole["blocks.1.hook_resid_pre"]
    assert whole["blocks.0.hook_resid_post"].shape == (2, 9, 32)


def test_new_lengths_in_a_bucket_compile_nothing(tiny):
    name = "blocks.1.hook_resid_pre"
    calls = [
        lambda t: tiny(t),
        lambda t: tiny.run_with_cache(t, names=["blocks.0.attn.hook_pattern", name]),
        lambda t: tiny.run_with_hooks(t, [(name, edits.add, jnp.full(32, 0.5))]),
        # a position-shaped parameter is padded along with the activation
        lambda t: tiny.run_with_hooks(t, [(name, edits.replace, np.zeros((1, t.shape[1], 32), np.float32))]),
        lambda t: tiny.generate(t, 5, stop_tokens=[]),
        lambda t: tiny.generate(t, 9, temperature=0.7, top_k=5, seed=t.shape[1], stop_tokens=[]),
    ]
    for call in calls:
        call(random_tokens(tiny.d_vocab, (1, 5)))
    before = interp.compile_count()
    for n in (3, 7, 12, 16):
        for call in calls:
            call(random_tokens(tiny.d_vocab, (1, n), seed=n))
    assert interp.compile_count() == before
    call(random_tokens(tiny.d_vocab, (1, 20)))  # the next bucket: new programs
    assert interp.compile_count() > before


def test_a_position_shaped_edit_parameter_acts_on_the_prompt_only(tiny):
    tokens = random_tokens(tiny.d_vocab, (1, 6), seed=2)
    name = "blocks.0.hook_resid_post"
    value = np.random.default_rng(0).normal(size=(1, 6, 32)).astype(np.float32)
    out, cache = tiny.run_with_cache(tokens, [name], edits=[(name, edits.replace, value)])
    np.testing.assert_array_equal(np.asarray(cache[name]), value)
    with exact_lengths():
        ref = tiny.run_with_hooks(tokens, [(name, edits.replace, value)])
    assert_close(out, ref, model_bound(ref, n_layers=tiny.n_layers), "patched logits")


def test_an_unmarked_edit_sees_the_exact_length(tiny):
    seen = []

    def last_position(x, name):
        seen.append(x.shape[1])  # a static shape, recorded while tracing
        return x.at[:, -1].set(0.0)

    tokens = random_tokens(tiny.d_vocab, (1, 7), seed=3)
    name = "blocks.1.hook_resid_pre"
    out = tiny.run_with_hooks(tokens, [(name, last_position)])
    assert seen == [7]  # x[:, -1] is the prompt's last token, not padding
    with exact_lengths():
        ref = tiny.run_with_hooks(tokens, [(name, edits.patch_positions, jnp.zeros(32),
                                            jnp.arange(7)[None] == 6)])
    assert_close(out, ref, model_bound(ref, n_layers=tiny.n_layers), "last position zeroed")
    marked = interp.any_length(lambda x, name: x * 2.0)
    tiny.run_with_hooks(tokens, [(name, marked)])
    assert tiny.bucket_length(7, interp.Hooks(edits=[(name, marked)])) == 16
    assert tiny.bucket_length(7, interp.Hooks(edits=[(name, last_position)])) == 7


def test_equivalent_edit_functions_share_a_program(tiny):
    tokens = random_tokens(tiny.d_vocab, (1, 5), seed=4)
    name = "blocks.0.hook_mlp_out"

    def halve(factor=0.5):
        return lambda x, n: x * factor  # a new closure on every call

    first = tiny.run_with_hooks(tokens, [(name, halve())])
    before = interp.compile_count()
    again = tiny.run_with_hooks(tokens, [(name, halve())])
    assert interp.compile_count() == before  # same code, same captured number: same program
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    other = tiny.run_with_hooks(tokens, [(name, halve(0.25))])  # another captured number: another program
    assert interp.compile_count() > before
    assert not np.allclose(np.asarray(other), np.asarray(first))
    # captured arrays compare by identity: a new array is never mistaken for an old one
    a, b = jnp.full(32, 1.0), jnp.full(32, -1.0)
    out_a = tiny.run_with_hooks(tokens, [(name, lambda x, n: x + a)])
    out_b = tiny.run_with_hooks(tokens, [(name, lambda x, n: x + b)])
    ref_b = tiny.run_with_hooks(tokens, [(name, edits.add, b)])
    assert not np.allclose(np.asarray(out_a), np.asarray(out_b))
    assert_close(out_b, ref_b, model_bound(ref_b, n_layers=tiny.n_layers), "closure over b")


def test_bucketed_generation_equals_exact_generation(tiny):
    toks = random_tokens(tiny.d_vocab, (2, 6), seed=5)
    mask = np.ones((2, 6), np.int32)
    mask[0, :2] = 0
    toks[0, :2] = 0
    out = tiny.generate(toks, 7, attention_mask=mask, stop_tokens=[], return_logits=True)
    sampled = tiny.generate(toks, 7, attention_mask=mask, temperature=0.9, top_k=7, seed=3, stop_tokens=[])
    with exact_lengths():
        ref = tiny.generate(toks, 7, attention_mask=mask, stop_tokens=[], return_logits=True)
        ref_sampled = tiny.generate(toks, 7, attention_mask=mask, temperature=0.9, top_k=7, seed=3, stop_tokens=[])
    np.testing.assert_array_equal(out.new_tokens, ref.new_tokens)
    np.testing.assert_array_equal(sampled.new_tokens, ref_sampled.new_tokens)
    assert out.tokens.shape == ref.tokens.shape == (2, 13)
    assert_close(out.logits, ref.logits, model_bound(ref.logits, n_layers=tiny.n_layers), "step logits")


def test_generation_stops_early_when_every_row_stopped(tiny):
    toks = random_tokens(tiny.d_vocab, (1, 4), seed=6)
    first = int(tiny.generate(toks, 1, stop_tokens=[]).new_tokens[0, 0])
    out = tiny.generate(toks, 30, stop_tokens=[first])
    assert out.lengths.tolist() == [1]
    assert (out.new_tokens[0, 1:] == out.new_tokens[0, 1]).all()  # padded after the stop
    assert out.new_tokens.shape == (1, 30)


def test_patching_sweeps_reuse_their_program_across_lengths(tiny3):
    def pair(n, seed):
        clean = random_tokens(tiny3.d_vocab, (1, n), seed=seed)
        corrupted = clean.copy()
        corrupted[0, 1] = (corrupted[0, 1] + 1) % tiny3.d_vocab
        return clean, corrupted

    metric = metrics.logit_diff(3, 4)
    patch(tiny3, *pair(5, 0), metric, "resid_pre")
    before = interp.compile_count()
    results = {n: patch(tiny3, *pair(n, n), metric, "resid_pre") for n in (6, 9)}
    assert interp.compile_count() == before
    with exact_lengths():
        for n, got in results.items():
            ref = patch(tiny3, *pair(n, n), metric, "resid_pre")
            assert got.values.shape == ref.values.shape == (3, n)
            assert got.labels == ref.labels
            assert_close(got.values, ref.values, model_bound(ref.values, n_layers=tiny3.n_layers), f"sweep {n}")


def test_compile_count_sees_generation_and_eager_work(tiny):
    before = interp.hooks.compile_stats()
    tiny.generate(random_tokens(tiny.d_vocab, (3, 40)), 3, stop_tokens=[])  # a new batch and bucket
    after = interp.hooks.compile_stats()
    assert after.programs > before.programs
    assert after.seconds > before.seconds
    assert after.compiled + after.loaded == after.programs


def test_a_second_process_loads_compiled_programs_from_disk(tmp_path, hf_checkpoints):
    folder = hf_checkpoints("gqa")[1]
    script = textwrap.dedent(f"""
        import json, interp
        model = interp.load({str(folder)!r})
        model.run_with_cache([[1, 2, 3, 4, 5]])
        model.generate([[1, 2, 3]], 4, stop_tokens=[])
        s = interp.compile_stats()
        print(json.dumps({{"dir": str(interp.compilation_cache_dir()), "compiled": s.compiled, "loaded": s.loaded}}))
    """)
    env = {**os.environ, "INTERP_COMPILATION_CACHE": str(tmp_path / "programs")}
    runs = [json.loads(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                      check=True, timeout=600).stdout.strip().splitlines()[-1]) for _ in range(2)]
    assert runs[0]["dir"] == str(tmp_path / "programs")
    assert runs[0]["loaded"] == 0 and runs[0]["compiled"] >= 2
    assert runs[1]["loaded"] >= 2  # the forward and the generation program came from disk
    assert runs[1]["compiled"] < runs[0]["compiled"]
    # the hook vocabulary is kept beside the programs, so the second process did not trace it again
    assert list((tmp_path / "programs" / "interp-hook-shapes").glob("*.json"))
    off = subprocess.run([sys.executable, "-c", "import interp; print(interp.compilation_cache_dir())"],
                         env={**env, "INTERP_COMPILATION_CACHE": "0"}, capture_output=True, text=True, check=True)
    assert off.stdout.strip() == "None"
