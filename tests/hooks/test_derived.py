"""Cache entries computed when read: the attention pattern from its scores and the residual stream as sums. Each must
be bit for bit what the forward pass used, whatever else is captured or edited."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import interp
from interp.hooks import Computed, Pending, any_length
from tests.conftest import numpy_checkpoint, random_tokens

DERIVED = ("attn.hook_pattern", "hook_resid_mid", "hook_resid_post")


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def model(request, tmp_path_factory):
    folder = numpy_checkpoint(tmp_path_factory.mktemp("derived"), seed=11, num_hidden_layers=3,
                              num_key_value_heads=2)
    return interp.load(folder, dtype=request.param)


@any_length
def _unchanged(x, name):
    return x


def _written(model, tokens, name, edits=(), names=None):
    """``name`` as the same run writes it out: an edit at a name (here one that changes nothing) keeps it from being
    derived, and the program is otherwise the same."""
    _, cache = model.run_with_cache(tokens, names=names, edits=[*edits, (name, _unchanged)])
    entry = cache.entries()[name]
    assert not isinstance(entry, Computed) and not isinstance(getattr(entry, "inner", None), Computed)
    return np.asarray(cache[name].astype(jnp.float32))


def _same(a, b, name=""):
    """Equal bit for bit; a float32 pattern within a few units in the last place (see interp.hooks.HookRunner: the
    forward's fused softmax may recompute its scores with other rounding than the stored ones)."""
    dtype = jnp.asarray(a).dtype
    a, b = np.asarray(jnp.asarray(a).astype(jnp.float32)), np.asarray(jnp.asarray(b).astype(jnp.float32))
    assert a.shape == b.shape
    if name.endswith("hook_pattern") and dtype == jnp.float32:
        np.testing.assert_array_max_ulp(a, b, maxulp=4)
    else:
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("short", [0, 3])  # a length bucket filled exactly, and a prompt padded to its bucket
def test_every_derived_entry_equals_its_value_captured_alone(model, short):
    T = model.bucket_length(9) - short
    tokens = random_tokens(model.d_vocab, (2, T), seed=T)
    logits, cache = model.run_with_cache(tokens)
    _same(logits, model(tokens))
    names = [f"blocks.{l}.{n}" for l in range(model.n_layers) for n in DERIVED]
    computed = [n for n in names + ["blocks.2.hook_resid_pre"] if isinstance(cache.entries()[n], Pending)]
    assert len(computed) == len(names) + 1  # none of them was written out by the program
    _same(cache["blocks.2.hook_resid_pre"], _written(model, tokens, "blocks.1.hook_resid_post"))
    for name in names:
        _same(cache[name], _written(model, tokens, name), name)
        _, alone = model.run_with_cache(tokens, names=[name])  # captured by itself, its inputs not captured
        assert not isinstance(alone.entries()[name], Computed)
        _same(cache[name], alone[name], name)


def test_entries_are_computed_only_when_read(model):
    tokens = random_tokens(model.d_vocab, (1, model.bucket_length(9)), seed=1)  # not padded: nothing to cut
    _, cache = model.run_with_cache(tokens)
    entries = cache.entries()
    assert isinstance(entries["blocks.1.attn.hook_pattern"], Computed)
    assert isinstance(entries["blocks.1.attn.hook_attn_scores"], jax.Array)
    # a block's resid_post is the next block's resid_pre: one entry for both names
    assert entries["blocks.0.hook_resid_post"] is entries["blocks.1.hook_resid_pre"]
    pattern = cache["blocks.1.attn.hook_pattern"]
    assert cache.entries()["blocks.1.attn.hook_pattern"] is pattern  # kept once read
    np.testing.assert_allclose(np.asarray(pattern.astype(jnp.float32)).sum(-1), 1.0, rtol=1e-2)
    leaves = jax.tree.leaves(cache)  # a pytree holds arrays only
    assert all(isinstance(x, jax.Array) for x in leaves) and len(leaves) == len(cache)


@pytest.mark.parametrize("short", [0, 3])
def test_a_cache_read_whole_equals_its_entries_read_one_by_one(model, short):
    """Reading every entry at once computes the derived ones in one program; each equals, bit for bit, what reading
    it alone gives. An entry read before (here a middle block's resid_mid) is an input like the written ones."""
    T = model.bucket_length(9) - short
    tokens = random_tokens(model.d_vocab, (2, T), seed=20 + T)
    _, whole = model.run_with_cache(tokens)
    early = whole["blocks.1.hook_resid_mid"]
    read = dict(whole.items())
    _, alone = model.run_with_cache(tokens)
    names = [f"blocks.{l}.{n}" for l in range(model.n_layers) for n in DERIVED]
    for name in names:
        assert isinstance(alone.entries()[name], Pending), name
        _same(read[name], alone[name])  # bit for bit, the pattern too: the same steps in both
    assert read["blocks.1.hook_resid_mid"] is early
    assert all(isinstance(v, jax.Array) for v in whole.entries().values())


def _add(x, name, v):
    return x + v


def test_edits_reach_the_derived_entries(model):
    tokens = random_tokens(model.d_vocab, (2, 8), seed=2)
    T = tokens.shape[1]
    cases = [
        # an edit before a derived entry: it is computed from the edited input, as the forward's value is
        ("blocks.1.attn.hook_attn_scores", jnp.full((T,), 0.5).at[0].set(3.0)),
        ("blocks.1.hook_attn_out", jnp.ones(model.cfg.d_model)),
        ("blocks.0.hook_mlp_out", -jnp.ones(model.cfg.d_model)),
        # an edit at a derived name: captured as edited, and what is derived after it starts from the edit
        ("blocks.1.hook_resid_mid", 2 * jnp.ones(model.cfg.d_model)),
        ("blocks.1.attn.hook_pattern", jnp.full((T,), 0.01)),
    ]
    for where, v in cases:
        edit = [(where, _add, v.astype(model.cfg.dtype))]
        logits, cache = model.run_with_cache(tokens, edits=edit)
        _same(logits, model.run_with_hooks(tokens, edits=edit))
        for name in ["blocks.1.attn.hook_pattern", "blocks.1.hook_resid_mid", "blocks.1.hook_resid_post"]:
            _same(cache[name], _written(model, tokens, name, edits=edit), name)
    _, cache = model.run_with_cache(tokens, edits=[("blocks.1.hook_resid_mid", _add, jnp.ones((), model.cfg.dtype))])
    assert not isinstance(cache.entries()["blocks.1.hook_resid_mid"], Pending)


def test_under_a_trace_entries_are_arrays(model):
    tokens = random_tokens(model.d_vocab, (2, 8), seed=4)
    hooks = interp.Hooks(capture=["blocks.1.attn.hook_attn_scores", "blocks.1.attn.hook_pattern"])

    @jax.jit
    def run(toks):
        _, cache = model.run(toks, hooks)
        return cache["blocks.1.attn.hook_pattern"]

    _same(run(tokens), _written(model, tokens, "blocks.1.attn.hook_pattern", names=hooks.capture),
          "hook_pattern")

    def loss(m):  # gradients flow through a derived entry as through the forward's value
        _, cache = m.run(tokens, hooks)
        return cache["blocks.1.attn.hook_pattern"].astype(jnp.float32)[..., -1, 0].sum()

    def loss_alone(m):
        _, cache = m.run(tokens, interp.Hooks(capture=["blocks.1.attn.hook_pattern"]))
        return cache["blocks.1.attn.hook_pattern"].astype(jnp.float32)[..., -1, 0].sum()

    g, g_alone = (jax.grad(f)(model).blocks[1].attn.W_Q for f in (loss, loss_alone))
    np.testing.assert_allclose(np.asarray(g.astype(jnp.float32)), np.asarray(g_alone.astype(jnp.float32)),
                               rtol=1e-5, atol=1e-6)
