"""A contrast objective (an objective on the model minus the same on a baseline with the same vocabulary): its value
and token gradient equal the differences of the two single-model ones, the search uses it, and mismatched baselines
are refused."""

from __future__ import annotations

import numpy as np
import pytest

from interp import search
from tests.conftest import numpy_checkpoint

PROMPT = [3, 14, 15, 9, 26]
TARGET = [5, 17]


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny3):
    import interp

    other = interp.load(numpy_checkpoint(tmp_path_factory.mktemp("tiny-gqa3-other"), seed=11, num_hidden_layers=3,
                                         num_key_value_heads=2))
    return tiny3, other


def test_contrast_value_and_gradient_are_the_differences(pair):
    model, base = pair
    obj = search.logprob(model, TARGET)
    con = search.contrast(obj, base, model=model)
    lay = search.layout(model, con, PROMPT, "suffix:3")
    rng = np.random.default_rng(0)
    tokens = lay.tokens(rng.integers(0, model.d_vocab, (6, 3)))
    got = search.losses(model, con, tokens, start=lay.start, n=3, fluency=0.3)
    one = search.losses(model, obj, tokens, start=lay.start, n=3, fluency=0.3)
    two = search.losses(base, obj, tokens, start=lay.start, n=3)
    np.testing.assert_allclose(got["objective"], one["objective"] - two["objective"], atol=1e-5)
    np.testing.assert_allclose(got["fluency"], one["fluency"], atol=1e-6)  # the span NLL is the model's own
    np.testing.assert_allclose(got["total"], got["objective"] + 0.3 * got["fluency"], atol=1e-5)
    np.testing.assert_array_equal(got["success"], one["success"])
    assert np.abs(two["objective"]).min() > 0.1  # the baseline term is not negligible
    g = np.asarray(search.token_gradient(model, con, tokens[:1], start=lay.start, n=3))
    g1 = np.asarray(search.token_gradient(model, obj, tokens[:1], start=lay.start, n=3))
    g2 = np.asarray(search.token_gradient(base, obj, tokens[:1], start=lay.start, n=3))
    np.testing.assert_allclose(g, g1 - g2, atol=1e-5)
    half = search.contrast(obj, base, weight=0.5)
    h = search.losses(model, half, tokens, start=lay.start, n=3)
    np.testing.assert_allclose(h["objective"], one["objective"] - 0.5 * two["objective"], atol=1e-5)


def test_negated_contrast_and_search(pair):
    model, base = pair
    obj = search.logprob(model, TARGET)
    con = search.contrast(obj, base)
    neg = search.negate(con)
    assert isinstance(neg, search.Contrast)
    lay = search.layout(model, con, PROMPT, "suffix:2")
    tokens = lay.tokens(np.array([[7, 8], [40, 41]]))
    a = search.losses(model, con, tokens, start=lay.start, n=2)["objective"]
    b = search.losses(model, neg, tokens, start=lay.start, n=2)["objective"]
    np.testing.assert_allclose(a, -b, atol=1e-5)
    res = search.gcg(model, con, PROMPT, span="suffix:2", steps=4, topk=16, batch=32, seed=1, progress=False,
                     stop_on_success=False)
    assert res.objective <= res.history[0][0] + 1e-6
    direct = search.losses(model, obj, lay.tokens(res.tokens), start=lay.start, n=2)["objective"][0] - \
        search.losses(base, obj, lay.tokens(res.tokens), start=lay.start, n=2)["objective"][0]
    assert res.objective == pytest.approx(float(direct), abs=1e-5)
    assert "baseline" in res.description


def test_mismatched_baseline_refused(pair, char_model):
    model, base = pair
    obj = search.logprob(model, TARGET)
    with pytest.raises(ValueError, match="tokenizer|vocabulary"):
        search.contrast(obj, char_model, model=model)
    with pytest.raises(ValueError, match="tokenizer|vocabulary"):
        search.gcg(model, search.contrast(obj, char_model), PROMPT, span="suffix:2", steps=1, progress=False)
    with pytest.raises(TypeError, match="single-model"):
        search.contrast(search.contrast(obj, base), base)
    with pytest.raises(TypeError, match="evaluated by the search"):
        search.contrast(obj, base).evaluate(model, None, None, None)
