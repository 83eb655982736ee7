"""Logit lens and direct logit attribution sum back to the logits; head detectors and ablation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import interp
from interp.circuits import (
    ablate_heads,
    decompose_resid,
    direct_logit_attribution,
    head_scores,
    logit_lens,
    per_token_loss,
    prompts,
)
from tests.numerics import assert_model_close


def test_decomposition_sums_to_final_residual(tiny3, pair):
    tokens = pair[0]
    _, cache = tiny3.run_with_cache(tokens, ["blocks.2.hook_resid_post"])
    for per in ("layer", "head"):
        dec = decompose_resid(tiny3, tokens, per=per)
        assert_model_close(dec.components.sum(0), cache["resid_post", 2], tiny3, f"components per {per}",
                           terms=dec.components.shape[0])
    assert len(dec.labels) == dec.components.shape[0] == 1 + 3 * (4 + 1)
    assert dec.labels[:3] == ("embed", "L0H0", "L0H1")


@pytest.mark.parametrize("per", ["layer", "head"])
def test_dla_sums_to_logits(tiny3, pair, answers, per):
    tokens = pair[0]
    targets = np.stack(answers, axis=1)
    res = direct_logit_attribution(tiny3, tokens, targets, per=per, pos=np.array([5, 3, 4]))
    logits = np.asarray(tiny3(tokens))
    expect = logits[np.arange(3), [5, 3, 4]][np.arange(3)[:, None], targets]
    assert_model_close(res.values.sum(0), expect, tiny3, "DLA sum", terms=res.values.shape[0])
    assert_model_close(res.logits, expect, tiny3, "DLA logits")
    assert res.logit_diff().shape == (len(res.labels), 3)
    # each component's contribution is its own unembedded share, not an even split
    assert np.ptp(res.values[:, 0, 0]) > 1e-3


def test_logit_lens_rows(tiny3, pair):
    tokens = pair[0]
    logits = np.asarray(tiny3(tokens))
    own = logit_lens(tiny3, tokens)
    assert_model_close(own.logits[-1], logits, tiny3, "own-scale lens, last row")
    final = logit_lens(tiny3, tokens, scale="final")
    assert_model_close(final.logits[-1], logits, tiny3, "final-scale lens, last row")
    # with the final scale, consecutive rows differ by exactly what that block writes
    dec = direct_logit_attribution(tiny3, tokens, np.arange(5)[None].repeat(3, 0), pos=-1)
    per_block = dec.values[1:-1:2] + dec.values[2:-1:2]  # attn l + mlp l
    step = np.diff(np.asarray(final.logits[:, :, -1, :5]), axis=0)
    assert_model_close(per_block, step, tiny3, "lens steps", terms=2)
    with pytest.raises(ValueError, match="scale"):
        logit_lens(tiny3, tokens, scale="mine")




def test_head_detectors_on_planted_patterns(tiny3):
    """Patterns are replaced by planted previous-token, duplicate and induction patterns on chosen heads;
    the detectors find exactly those heads."""
    toks = prompts.induction(tiny3.d_vocab, n=2, length=5, seed=1)
    T, half = toks.shape[1], 5
    prev = np.eye(T, k=-1)
    prev[0, 0] = 1.0
    dup = np.eye(T)
    dup[half:, :half] = np.eye(half)
    dup[half:, half:] = 0
    ind = np.eye(T)
    ind[half:, :] = 0
    ind[half:, 1:half + 1] = np.eye(half)
    planted = {(0, 1): prev, (1, 2): dup, (2, 3): ind}

    def plant(x, name):
        layer = interp.hooks.layer_of(name)
        for (l, h), p in planted.items():
            if l == layer:
                x = x.at[:, h].set(jnp.asarray(p, x.dtype))
        return x

    edits = [(f"blocks.{l}.attn.hook_pattern", plant) for l in range(3)]
    model = _PatternEdited(tiny3, edits)
    scores = head_scores(model, toks)
    assert scores.top("previous_token", 1)[0][:2] == (0, 1)
    assert scores.top("duplicate_token", 1)[0][:2] == (1, 2)
    assert scores.top("induction", 1)[0][:2] == (2, 3)
    assert scores["induction"][2, 3] == pytest.approx(1.0)
    assert scores["previous_token"][0, 1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="repeat"):
        head_scores(tiny3, np.arange(10)[None])


class _PatternEdited:
    """A model whose run_with_cache applies fixed edits first (to plant attention patterns)."""

    def __init__(self, model, edits):
        self.model, self.edits = model, edits
        self.n_layers = model.n_layers

    def check_inputs(self, *a):
        return self.model.check_inputs(*a)

    def run_with_cache(self, tokens, names):
        return self.model.run_with_cache(tokens, names, edits=self.edits)


def test_ablating_heads_matches_zeroed_outputs(tiny3, pair):
    tokens = pair[0]
    loss = per_token_loss(tiny3, tokens)
    assert loss.shape == (3, 5)
    logits = jax.nn.log_softmax(np.asarray(tiny3(tokens))[:, :-1], axis=-1)
    assert_model_close(loss, -np.take_along_axis(np.asarray(logits), tokens[:, 1:, None], -1)[..., 0], tiny3, "loss")
    heads = [(1, 2), (2, 0), (2, 3)]
    ablated = per_token_loss(tiny3, tokens, edits_=ablate_heads(tiny3, heads))

    def zero_z(x, name, hs):
        return x.at[:, :, hs].set(0.0)

    by_hand = [("blocks.1.attn.hook_z", zero_z, jnp.array([2])), ("blocks.2.attn.hook_z", zero_z, jnp.array([0, 3]))]
    assert_model_close(ablated, per_token_loss(tiny3, tokens, edits_=by_hand), tiny3, "ablated loss")
    assert np.abs(ablated - loss).max() > 1e-4
    _, cache = tiny3.run_with_cache(tokens, "blocks.1.attn.hook_z")
    means = {1: cache["z", 1].mean((0, 1))}
    mean_abl = per_token_loss(tiny3, tokens, edits_=ablate_heads(tiny3, [(1, 2)], how="mean", means=means))
    assert np.isfinite(mean_abl).all()
    with pytest.raises(ValueError, match="does not exist"):
        ablate_heads(tiny3, [(5, 0)])
