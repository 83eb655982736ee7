"""Capture, edit, gradients and compilation caching of hook points."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import interp
from interp import Hooks, edits
from tests.conftest import hf_logits_head_zeroed, random_tokens
from tests.numerics import assert_close, f32_bound, model_bound

DESIGN_VOCABULARY = [
    "hook_embed", "blocks.{l}.hook_resid_pre", "blocks.{l}.ln1.hook_normalized", "blocks.{l}.attn.hook_q",
    "blocks.{l}.attn.hook_k", "blocks.{l}.attn.hook_v", "blocks.{l}.attn.hook_attn_scores",
    "blocks.{l}.attn.hook_pattern", "blocks.{l}.attn.hook_z", "blocks.{l}.hook_attn_out",
    "blocks.{l}.hook_resid_mid", "blocks.{l}.ln2.hook_normalized", "blocks.{l}.mlp.hook_pre",
    "blocks.{l}.mlp.hook_pre_linear", "blocks.{l}.mlp.hook_post", "blocks.{l}.hook_mlp_out",
    "blocks.{l}.hook_resid_post", "ln_final.hook_normalized",
]


@pytest.fixture(scope="module")
def tiny(hf_checkpoints):
    hf, folder = hf_checkpoints("gqa")
    return interp.load(folder), hf


@pytest.fixture(scope="module")
def tokens(tiny):
    return random_tokens(tiny[0].d_vocab, (2, 7), seed=5)


def test_vocabulary_and_shapes(tiny):
    model, hf = tiny
    B, T, D, H, K, E, F = 2, 5, 32, 4, 2, 8, 48
    shapes = model.hook_shapes(batch=B, pos=T)
    for pattern in DESIGN_VOCABULARY:
        for l in range(model.n_layers):
            assert pattern.format(l=l) in shapes, pattern
    l = 1
    expect = {
        "hook_embed": (B, T, D), f"blocks.{l}.hook_resid_pre": (B, T, D), f"blocks.{l}.attn.hook_q": (B, T, H, E),
        f"blocks.{l}.attn.hook_k": (B, T, K, E), f"blocks.{l}.attn.hook_v": (B, T, K, E),
        f"blocks.{l}.attn.hook_attn_scores": (B, H, T, T), f"blocks.{l}.attn.hook_pattern": (B, H, T, T),
        f"blocks.{l}.attn.hook_z": (B, T, H, E), f"blocks.{l}.mlp.hook_pre": (B, T, F),
        f"blocks.{l}.mlp.hook_post": (B, T, F), f"blocks.{l}.ln1.hook_scale": (B, T, 1),
        "ln_final.hook_normalized": (B, T, D),
    }
    for name, shape in expect.items():
        assert shapes[name] == shape, name


def test_cache_holds_exactly_the_requested_names(tiny, tokens):
    model, _ = tiny
    names = ["blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern"]
    _, cache = model.run_with_cache(tokens, names=names)
    assert set(cache) == set(names)
    np.testing.assert_array_equal(cache["resid_post", 1], cache["blocks.1.hook_resid_post"])
    np.testing.assert_array_equal(cache["pattern", 0], cache["blocks.0.attn.hook_pattern"])
    assert ("resid_post", 0) not in cache
    with pytest.raises(KeyError, match="blocks.0.hook_resid_post"):
        cache["resid_post", 0]
    _, cache = model.run_with_cache(tokens, names=lambda n: n.endswith("hook_scale"))
    assert set(cache) == {"blocks.0.ln1.hook_scale", "blocks.0.ln2.hook_scale", "blocks.1.ln1.hook_scale",
                          "blocks.1.ln2.hook_scale", "ln_final.hook_scale"}
    assert cache["scale", 1, "ln2"].shape == (2, 7, 1)
    _, cache = model.run_with_cache(tokens, names=("resid_pre", 1))
    assert list(cache) == ["blocks.1.hook_resid_pre"]
    assert cache.stack("resid_pre").shape == (1, 2, 7, 32)


def test_capture_then_identity_edit_reproduces_logits_exactly(tiny, tokens):
    model, _ = tiny
    plain = np.asarray(model(tokens))
    logits, cache = model.run_with_cache(tokens)
    np.testing.assert_array_equal(np.asarray(logits), plain)
    identity = [(name, edits.replace, cache[name]) for name in model.hook_names]
    edited = np.asarray(model.run_with_hooks(tokens, identity))
    np.testing.assert_array_equal(edited, plain)


def test_edit_changes_downstream_and_capture_sees_edit(tiny, tokens):
    model, _ = tiny
    plain, clean = model.run_with_cache(tokens, names=["blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"])
    delta = jnp.ones(32) * 0.5
    out, cache = model.run_with_cache(tokens, names=["blocks.1.hook_resid_pre"],
                                      edits=[("blocks.1.hook_resid_pre", edits.add, delta)])
    r = clean["blocks.1.hook_resid_pre"]
    assert_close(cache["blocks.1.hook_resid_pre"], r + 0.5, f32_bound(r, 0.5, ulps=1), "edited resid_pre")
    assert np.abs(np.asarray(out) - np.asarray(plain)).max() > 1e-3


def test_stop_at_layer(tiny, tokens):
    model, _ = tiny
    _, cache = model.run_with_cache(tokens, names=["blocks.1.hook_resid_pre"])
    resid = model(tokens, stop_at_layer=1)
    np.testing.assert_array_equal(resid, cache["blocks.1.hook_resid_pre"])
    np.testing.assert_array_equal(model(tokens, stop_at_layer=-1), resid)
    out, early = model.run_with_cache(tokens, names=["blocks.0.hook_mlp_out"], return_logits=False)
    assert out is None
    _, full = model.run_with_cache(tokens, names=["blocks.0.hook_mlp_out"])
    np.testing.assert_array_equal(early["blocks.0.hook_mlp_out"], full["blocks.0.hook_mlp_out"])
    with pytest.raises(ValueError, match="stop_at_layer"):
        model.run_with_cache(tokens, names=["blocks.1.hook_mlp_out"], stop_at_layer=1)
    with pytest.raises(ValueError, match="outside"):
        model(tokens, stop_at_layer=5)


def test_zero_ablating_a_head_matches_transformers(tiny, tokens):
    model, hf = tiny
    layer, head = 1, 2
    mask = jnp.ones(4).at[head].set(0.0)
    ours = np.asarray(model.run_with_hooks(tokens, [(f"blocks.{layer}.attn.hook_z", edits.head_mask, mask)]))
    ref = hf_logits_head_zeroed(hf, tokens, layer, head)
    assert_close(ours, ref, model_bound(ref, n_layers=model.n_layers), "head-ablated logits")
    assert np.abs(ours - np.asarray(model(tokens))).max() > 1e-3  # the ablation did something


def test_new_values_do_not_recompile(tiny, tokens):
    model, _ = tiny
    name = "blocks.0.hook_resid_post"
    model.run_with_hooks(tokens, [(name, edits.add, jnp.zeros(32))])
    deltas = [jnp.full(32, v) for v in (0.1, 0.2, 0.3)]  # made before counting: compile_count sees eager work too
    before = interp.compile_count()
    outs = [np.asarray(model.run_with_hooks(tokens, [(name, edits.add, d)])) for d in deltas]
    outs.append(np.asarray(model.run_with_hooks(tokens, [(name, edits.scale, 2.0)])))
    assert interp.compile_count() - before == 1  # only the new function (scale) compiled
    model.run_with_hooks(tokens, [(name, edits.scale, 3.0)])  # python float: converted to a traced array
    assert interp.compile_count() - before == 1
    assert not np.allclose(outs[0], outs[1])
    # the same capture set again: no compile
    model.run_with_cache(tokens, names=["blocks.0.attn.hook_q"])
    n = interp.compile_count()
    model.run_with_cache(tokens, names=["blocks.0.attn.hook_q"])
    model.run_with_cache(tokens + 1, names=[("q", 0)])
    assert interp.compile_count() == n


def test_gradient_through_hook_matches_finite_differences(hf_checkpoints):
    _, folder = hf_checkpoints("gqa")
    with jax.enable_x64(True):
        model = interp.load(folder, dtype=jnp.float64)
        tokens = random_tokens(model.d_vocab, (1, 6), seed=6)
        name = "blocks.0.hook_resid_mid"

        def metric(delta):
            logits = model.run_with_hooks(tokens, [(name, edits.add, delta)])
            return jax.nn.log_softmax(logits[0, -1])[3]

        delta0 = jnp.zeros(32, jnp.float64)
        grad = np.asarray(jax.grad(metric)(delta0))
        eps = 1e-6
        fd = np.array([(metric(delta0.at[i].set(eps)) - metric(delta0.at[i].set(-eps))) / (2 * eps) for i in range(32)])
    assert np.abs(grad).max() > 1e-3
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-8)


def test_unknown_name_fails_before_compute_with_suggestion(tiny, tokens):
    model, _ = tiny
    before = interp.compile_count()
    with pytest.raises(ValueError,
                       match=r"unknown hook 'blocks\.1\.hook_resid'; did you mean .*'blocks\.1\.hook_resid_post'"):
        model.run_with_cache(tokens, names=["blocks.1.hook_resid"])
    with pytest.raises(ValueError, match="did you mean 'blocks.1.hook_resid_post'"):
        model.run_with_hooks(tokens, [("blocks.1.hook_resid_pots", edits.zero)])
    with pytest.raises(ValueError, match="unknown short hook name 'resid_psot'"):
        model.run_with_cache(tokens, names=[("resid_psot", 1)])
    assert interp.compile_count() == before


def test_edit_with_wrong_shape_is_named(tiny, tokens):
    model, _ = tiny
    with pytest.raises(ValueError, match="keep the activation's shape"):
        model.run_with_hooks(tokens, [("blocks.0.hook_resid_post", lambda x, n: x[..., :3])])


def test_pure_forward_under_user_jit_and_vmap(tiny, tokens):
    model, _ = tiny
    runner = interp.hooks.HookRunner(Hooks(capture=["blocks.0.hook_resid_post"]).resolve(model.hook_names))
    out = jax.jit(lambda m, t: m.forward(t))(model, jnp.asarray(tokens))
    assert_close(out, model(tokens), model_bound(out, n_layers=model.n_layers), "forward under jit")
    per_seq = jax.vmap(lambda t: model.forward(t[None])[0])(jnp.asarray(tokens))
    assert_close(per_seq, out, model_bound(out, n_layers=model.n_layers), "forward under vmap")
    model.forward(jnp.asarray(tokens), runner)
    assert set(runner.cache) == {"blocks.0.hook_resid_post"}


def test_bad_tokens_are_rejected_clearly(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="token id 97 is out of range .* 97"):
        model(np.array([[1, 2, 97]]))
    with pytest.raises(ValueError, match="token id -1"):
        model(np.array([[1, -1]]))
    with pytest.raises(ValueError, match=r"shape \[batch, pos\]"):
        model(np.zeros((2, 3, 4), np.int32))
    with pytest.raises(ValueError, match=r"shape \[batch, pos\]"):
        model(np.int32(3))
    with pytest.raises(ValueError, match="integer ids"):
        model(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(np.zeros((1, 3), np.int32), attention_mask=np.ones((1, 4)))
    with pytest.raises(ValueError, match="no tokenizer"):
        model("hello")
