"""Feature cards: each card's contexts, histogram and direct logit effects against values computed here with
numpy from the dictionary's own activations and the model's weights; many cards at once equal one at a time."""

from __future__ import annotations

import numpy as np
import pytest

from interp.features import cards as C
from interp.features import feature_card, feature_cards, feature_index, logit_effects
from interp.results import token_strings
from tests.conftest import random_tokens, random_transcoders


@pytest.fixture(scope="module")
def setup(tiny3):
    tc = random_transcoders(tiny3, width=32, k=6)
    d, hook = tc.dictionaries[1], tc.hook_in.format(layer=1)
    tokens = random_tokens(tiny3.d_vocab, (5, 9), seed=4)
    index = feature_index(tiny3, d, tokens, hook=hook, skip_positions=1)
    _, cache = tiny3.run_with_cache(tokens, names=[hook])
    z = np.asarray(d.encode(cache[hook]), np.float64)  # [N T M]
    z[:, :1] = 0.0
    return tiny3, d, index, tokens, z


def _effects(model, d, f):
    w = np.asarray(model.ln_final.weight, np.float64)
    W_U = np.asarray(model.W_U, np.float64)
    return (np.asarray(d.W_dec[f], np.float64) * w) @ W_U


def test_a_card_matches_numpy(setup):
    model, d, index, tokens, z = setup
    firing = [f for f in range(z.shape[-1]) if (z[..., f] > 0).sum() >= 3]
    assert firing, "the random dictionary should fire"
    f = firing[0]
    card = feature_card(model, d, index, f, n_contexts=4, before=2, after=1, n_logits=5, bins=7)
    act = z[..., f]
    assert card.n_active == int((act > 0).sum())
    assert card.density == pytest.approx(card.n_active / (tokens.shape[0] * (tokens.shape[1] - 1)))
    assert card.max_act == pytest.approx(act.max(), rel=1e-5)
    np.testing.assert_array_equal(card.hist_counts, np.histogram(act[act > 0], bins=7)[0])
    # contexts: the strongest activations first, with the activations of their neighbours
    best = np.sort(act[act > 0])[::-1][:4]
    np.testing.assert_allclose([c["value"] for c in card.contexts], best, rtol=1e-5)
    for c in card.contexts:
        r, t = c["row"], c["pos"]
        lo, hi = max(0, t - 2), min(tokens.shape[1], t + 2)
        np.testing.assert_allclose(c["acts"], act[r, lo:hi], rtol=1e-5, atol=1e-7)
        assert c["tokens"] == list(token_strings(model, tokens[r, lo:hi]))
    # direct logit effects: the five most promoted and suppressed tokens with their effects
    eff = _effects(model, d, f)
    top, bottom = np.argsort(-eff)[:5], np.argsort(eff)[:5]
    assert [t for t, _ in card.promoted] == list(token_strings(model, top))
    assert [t for t, _ in card.suppressed] == list(token_strings(model, bottom))
    np.testing.assert_allclose([v for _, v in card.promoted], eff[top], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose([v for _, v in card.suppressed], eff[bottom], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(logit_effects(model, d.W_dec[f]), eff, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(logit_effects(model, d.W_dec[:3]), np.stack([_effects(model, d, g) for g in range(3)]),
                               rtol=1e-4, atol=1e-6)


def test_many_cards_equal_one_at_a_time(setup, monkeypatch):
    model, d, index, _, _ = setup
    latents = [5, 0, 31, 5, 17]  # out of order, one twice
    one = [feature_card(model, d, index, f, n_contexts=3, n_logits=4) for f in latents]
    monkeypatch.setattr(C, "LOGIT_CHUNK", 2)  # several chunks, the last one padded
    many = feature_cards(model, d, index, latents, n_contexts=3, n_logits=4, labels=["a", "b", "c", "d", "e"])
    assert [c.label for c in many] == ["a", "b", "c", "d", "e"]
    for a, b in zip(one, many):
        assert a.latent == b.latent and a.contexts == b.contexts and a.n_active == b.n_active
        assert [t for t, _ in a.promoted] == [t for t, _ in b.promoted]
        np.testing.assert_allclose([v for _, v in a.suppressed], [v for _, v in b.suppressed], rtol=1e-6)
    assert feature_cards(model, d, index, [2], labels={2: "two"})[0].label == "two"
    assert feature_cards(model, d, index, []) == []


def test_bad_latents_and_labels_are_refused(setup):
    model, d, index, _, _ = setup
    with pytest.raises(IndexError, match="32 latents"):
        feature_cards(model, d, index, [3, 32])
    with pytest.raises(ValueError, match="2 labels for 3 latents"):
        feature_cards(model, d, index, [0, 1, 2], labels=["a", "b"])


def test_the_index_holds_every_nonzero_activation(setup):
    """A TopK dictionary hands the index its k codes per token; the index equals the dense activations' nonzeros."""
    _, d, index, tokens, z = setup
    assert hasattr(d, "encode_sparse")
    b, t, f = np.nonzero(z > 0)
    order = np.lexsort((t, b, f))  # by latent, then row, then position
    np.testing.assert_array_equal(index.latent, f[order])
    np.testing.assert_array_equal(index.flat_pos, (b * tokens.shape[1] + t)[order])
    np.testing.assert_allclose(index.value, z[b, t, f][order], rtol=1e-5)
    np.testing.assert_array_equal(index.starts, np.searchsorted(f[order], np.arange(d.cfg.width + 1)))


def test_figures_carry_plotly_white_cut_to_2d_charts():
    """Each figure holds plotly_white's layout and bar/heatmap/scatter defaults; nothing of the other chart kinds."""
    import plotly.io as pio

    from interp.viz import figures as F

    full = pio.templates["plotly_white"].to_plotly_json()
    fig = F.histogram_figure(np.array([1, 2]), np.array([0.0, 1.0, 2.0]), title="h")
    got = fig.layout.template.to_plotly_json()
    for key in ("plot_bgcolor", "paper_bgcolor", "xaxis", "yaxis", "colorway", "font", "colorscale", "hovermode"):
        assert got["layout"][key] == full["layout"][key], key
    assert set(got["data"]) == {"bar", "heatmap", "scatter"}
    assert all(got["data"][k] == full["data"][k] for k in got["data"])
    assert not {"geo", "polar", "scene", "ternary"} & set(got["layout"])


def test_card_specs_are_valid_figures_and_fill_a_report(setup, tmp_path):
    """A report draws cards from plain data built without plotly's validation: that data passes the validation
    unchanged (the validated figure holds the same traces and layout), a FigureWidget takes it in place, and the
    saved report holds each figure."""
    import json

    import plotly.graph_objects as go

    from interp.report import Report
    from interp.viz import FigureSpec

    model, d, index, tokens, z = setup
    f = int(np.argmax((z > 0).sum(axis=(0, 1))))
    card = feature_card(model, d, index, f, n_contexts=3, bins=6)
    specs = card.figure_specs()
    assert len(specs) == 2 and all(isinstance(s, FigureSpec) for s in specs)
    for spec, fig in zip(specs, card.figures()):
        plain = json.loads(go.Figure(spec).to_json())  # validates every property
        assert plain == json.loads(fig.to_json())
        widget = go.FigureWidget()
        assert json.loads(spec.figure(widget).to_json())["layout"] == plain["layout"]
        assert len(widget.data) == 1
        np.testing.assert_array_equal(widget.data[0].x, fig.data[0].x)
    html = Report("cards").add(card).save(tmp_path / "r.html").read_text()
    assert html.count('class="plotly-graph-div"') == 2 and card.label in html
    bad = FigureSpec([{"type": "bar", "x": [1], "colour": "red"}], {})
    with pytest.raises(ValueError, match="colour"):
        bad.figure()
