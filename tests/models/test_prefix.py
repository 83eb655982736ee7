"""Runs after a shared prefix: the prefix's cached keys and values serve every suffix, and the logits and activations
equal those of running each whole sequence."""

from __future__ import annotations

import numpy as np
import pytest

from interp.models.prefix import shared_prefix_activations, shared_prefix_logits
from tests.tiny_chat import tiny_chat_model


@pytest.fixture(scope="module")
def model():
    return tiny_chat_model(seed=3, n_layers=2, d_model=32)


def test_logits_equal_the_whole_sequences(model):
    rng = np.random.default_rng(0)
    prefix = [int(t) for t in rng.integers(10, model.d_vocab, 37)]  # not a multiple of the prefix padding
    suffixes = [[int(t) for t in rng.integers(10, model.d_vocab, n)] for n in (1, 3, 7, 2, 18, 5, 1)]
    got = shared_prefix_logits(model, prefix, suffixes, batch=4)  # two calls, the second one padded
    assert got.shape == (len(suffixes), model.d_vocab) and got.dtype == np.float32
    for s, row in zip(suffixes, got):
        want = np.asarray(model(np.array([prefix + s], np.int32)), np.float32)[0, -1]
        np.testing.assert_allclose(row, want, atol=2e-4, rtol=2e-4)


def test_bad_input_is_refused(model):
    with pytest.raises(ValueError, match="prefix of at least one token"):
        shared_prefix_logits(model, [], [[1]])
    with pytest.raises(ValueError, match="every suffix needs at least one token"):
        shared_prefix_logits(model, [1, 2], [[3], []])
    assert shared_prefix_logits(model, [1, 2], []).shape == (0, model.d_vocab)


@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z", "blocks.1.mlp.hook_post"])
def test_activations_equal_the_whole_sequences(model, hook):
    rng = np.random.default_rng(1)
    prefix = [int(t) for t in rng.integers(10, model.d_vocab, 21)]
    suffixes = [[int(t) for t in rng.integers(10, model.d_vocab, n)] for n in (1, 1, 4, 2, 1)]
    got = shared_prefix_activations(model, prefix, suffixes, hook, batch=2)
    for s, row in zip(suffixes, got):
        _, cache = model.run_with_cache(np.array([prefix + s], np.int32), names=[hook])
        want = np.asarray(cache[hook], np.float32)[0, -1]
        assert row.shape == want.shape
        np.testing.assert_allclose(row, want, atol=2e-4, rtol=2e-4)


def test_activations_refuse_bad_hooks(model):
    with pytest.raises(ValueError, match="unknown hook"):
        shared_prefix_activations(model, [1, 2], [[3]], "blocks.0.hook_resid_pots")
    with pytest.raises(ValueError, match="run_with_cache on the whole sequences"):
        shared_prefix_activations(model, [1, 2], [[3]], "blocks.0.attn.hook_pattern")
    assert shared_prefix_activations(model, [1, 2], [], "blocks.0.hook_resid_post").shape == (0, model.d_model)
