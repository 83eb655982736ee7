"""Circuit findings that must hold on the real default model (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import numpy as np
import pytest

from interp.circuits import (
    ablate_heads,
    attribute,
    head_scores,
    metrics,
    patch,
    per_token_loss,
    prompts,
)
from tests.numerics import assert_close, model_bound


@pytest.fixture(scope="module")
def repeated(default_model):
    return prompts.induction(default_model.d_vocab, n=8, length=24, seed=0, exclude=range(17))


def test_induction_heads_are_found_and_needed(default_model, repeated):
    """The detector's top induction heads attend strongly to the token after the earlier occurrence; the
    model predicts the repeated half far better than the first; zero-ablating those heads costs much more
    repeated-half loss than ablating as many other heads of the same layers."""
    model, toks, half = default_model, repeated, 24
    scores = head_scores(model, toks)
    top = scores.top("induction", 4)
    assert top[0][2] > 0.5, top
    loss = per_token_loss(model, toks)
    first, second = loss[:, : half - 1].mean(), loss[:, half:].mean()
    assert first - second > 3.0, (first, second)
    heads = [(l, h) for l, h, _ in top]
    ablated = per_token_loss(model, toks, edits_=ablate_heads(model, heads))[:, half:].mean()
    others = [(l, (h + 1 + i) % 9) for i, (l, h) in enumerate(heads)]
    others = [(l, h) if (l, h) not in heads else (l, (h + 3) % 9) for l, h in others]
    control = per_token_loss(model, toks, edits_=ablate_heads(model, others))[:, half:].mean()
    assert ablated - second > 3 * max(control - second, 0.05), (second, ablated, control)


def test_ioi_patching_and_attribution(default_model):
    """Patching the clean residual stream restores the answer at the name positions in early layers and at
    the final position in late layers; attribution patching correlates with the exact sweep. The sweep covers
    early, middle and late layers (every layer would cost three times as much and show nothing more)."""
    model = default_model
    ps = prompts.ioi(model, n=4, seed=0, corruption="abc")
    metric = metrics.logit_diff(ps.answer, ps.wrong)
    layers = [0, 1, 2, 8, 15, 20, 23, 26, 29]
    exact = patch(model, ps.clean, ps.corrupted, metric, "resid_pre", layers=layers)
    assert exact.values.shape[0] == len(layers)
    assert exact.source - exact.base > 2.0
    norm = exact.normalized()
    changed = np.flatnonzero((ps.clean != ps.corrupted).any(0))
    # early on the answer lives at a name position, late in the stream at the final position
    assert norm[1, changed].max() > 0.9 and abs(norm[1, -1]) < 0.1
    # before the first changed token nothing differs: the patched runs give the base metric, up to the rounding of
    # a sweep that restarts the forward pass at each layer
    before = exact.values[:, : changed.min()]
    assert_close(before, np.full_like(before, exact.base), model_bound(before, n_layers=model.n_layers), "unchanged")
    assert np.abs(norm[1, np.setdiff1d(np.arange(norm.shape[1]), changed)]).max() < 0.05
    late = norm[layers.index(20):, -1]
    assert late.max() > 0.9, late
    approx = attribute(model, ps.clean, ps.corrupted, metric, "resid_pre")
    r = np.corrcoef(approx.effect[layers].ravel(), exact.effect.ravel())[0, 1]
    assert r > 0.6, r
