"""Figures, feature indices and reports without a browser: what the figures hold, escaping, provenance, and
atomic writes. (tests/browser renders the same reports in Chromium.)"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from interp.circuits import patch
from interp.circuits.graph import prune, trace
from interp.features import feature_card, feature_index, feature_indices
from interp.report import HTML, Report, provenance, weights_hash
from interp.viz import (
    attention_figure,
    escape,
    graph_figure,
    patching_figure,
    views,
)
from tests.conftest import random_tokens, random_transcoders

EVIL = "<script>alert(1)</script>"


def test_escape_keeps_tokens_as_text():
    assert escape(EVIL) == "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert escape("a\nb") == "a\\nb"
    fig = attention_figure(["<b>", EVIL, " x"], np.eye(3)[None])
    assert EVIL not in json.dumps(fig.to_plotly_json()["layout"]["xaxis"]["ticktext"])
    assert "1:&lt;script&gt;alert(1)&lt;/script&gt;" in fig.layout.xaxis.ticktext


def test_feature_index_matches_dense_encoding(tiny3):
    tc = random_transcoders(tiny3, width=32, k=4)
    tokens = random_tokens(tiny3.d_vocab, (5, 7), seed=8)  # 5 rows: the last batch is padded
    hooks = {l: (tc.dictionaries[l], tc.hook_in.format(layer=l)) for l in range(tiny3.n_layers)}
    idx = feature_indices(tiny3, hooks, tokens, batch=2, skip_positions=1)
    _, cache = tiny3.run_with_cache(tokens, [h for _, h in hooks.values()])
    for l, (d, h) in hooks.items():
        z = np.array(d.encode(cache[h]))
        z[:, :1] = 0
        for f in range(32):
            np.testing.assert_allclose(idx[l].activations(f), z[..., f], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(idx[l].density(), (z > 0).sum((0, 1)) / (5 * 6))
    one = feature_index(tiny3, tc.dictionaries[2], tokens, hook=tc.hook_in.format(layer=2), skip_positions=1)
    np.testing.assert_allclose(one.value, idx[2].value, rtol=1e-5)  # another batch size: float rounding only
    with pytest.raises(IndexError, match="latents"):
        one.entries(32)
    card = feature_card(tiny3, tc.dictionaries[2], one, int(np.argmax(one.density())))
    assert [c["value"] for c in card.contexts] == sorted((c["value"] for c in card.contexts), reverse=True)
    eff = np.asarray((tc.dictionaries[2].W_dec[card.latent] * tiny3.ln_final.weight) @ tiny3.W_U)
    assert card.promoted[0][1] == pytest.approx(eff.max(), rel=1e-5)
    assert card.suppressed[0][1] == pytest.approx(eff.min(), rel=1e-5)


def test_patching_and_graph_figures_hold_the_results(tiny3):
    clean = random_tokens(tiny3.d_vocab, (2, 6), seed=1)
    corrupted = clean.copy()
    corrupted[:, 2] = (corrupted[:, 2] + 5) % tiny3.d_vocab
    res = patch(tiny3, clean, corrupted, lambda lg: lg[:, -1, 3].mean(), "resid_pre")
    fig = patching_figure(res)
    np.testing.assert_allclose(np.asarray(fig.data[0].z), res.normalized())
    heads = patch(tiny3, clean, corrupted, lambda lg: lg[:, -1, 3].mean(), "z", per="head_pos")
    fig3 = patching_figure(heads)
    assert len(fig3.data) == heads.values.shape[2] and len(fig3.layout.updatemenus[0].buttons) == heads.values.shape[2]
    tc = random_transcoders(tiny3)
    graph = prune(trace(tiny3, tc, clean[0], max_logits=2))
    gfig = graph_figure(graph)
    shown = sorted(int(i) for tr in gfig.data if tr.mode == "markers" for i in tr.customdata)
    assert shown == sorted(int(i) for i in graph.kept())


def test_report_is_self_contained_escaped_and_atomic(tiny3, tmp_path, monkeypatch):
    prompt = random_tokens(tiny3.d_vocab, (1, 6), seed=2)
    r = Report(f"report {EVIL}")
    r.add(views.attention_view(tiny3, prompt, 1), title=EVIL, note=EVIL)
    r.add({"token": EVIL, "fvu": 0.25})
    r.add(HTML('<p id="mine">trusted</p>'))
    r.add(f"text with {EVIL}")
    r.set_provenance(model=tiny3, model_name="tiny", corpus=EVIL)
    path = r.save(tmp_path / "r.html")
    text = path.read_text()
    assert EVIL not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert '<p id="mine">trusted</p>' in text
    # offline: no external script or stylesheet, and plotly.js is inlined
    assert not re.search(r'<script[^>]+src=|<link[^>]+href="http', text)
    assert "Plotly" in text and len(text) > 3_000_000
    assert weights_hash(tiny3) in text
    # a failed render leaves the previous file as it was
    before = path.read_bytes()
    monkeypatch.setattr(Report, "to_html", lambda self: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        r.save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["r.html"]
    with pytest.raises(IsADirectoryError, match="file name"):
        Report().save(tmp_path)
    with pytest.raises(TypeError, match="cannot show"):
        Report().add(object())


def test_provenance_names_what_produced_a_result(tiny3):
    tc = random_transcoders(tiny3)
    meta = provenance(tiny3, model_name="tiny", dictionaries=tc.dictionaries[:1], corpus="c")
    assert meta["model"]["weights_sha256"] == weights_hash(tiny3)
    assert meta["dictionaries"][0]["hook_name"] == tc.hook_in.format(layer=0)
    assert {"python", "jax", "interp", "plotly"} <= set(meta["packages"])
    assert re.match(r"\d{4}-\d\d-\d\dT", meta["date"])
    other = tiny3.__class__(tiny3.embed, tiny3.blocks, tiny3.ln_final.__class__(tiny3.ln_final.weight * 2,
                                                                                 tiny3.ln_final.eps),
                            tiny3.unembed, tiny3.config, tiny3.tokenizer)
    assert weights_hash(other) != weights_hash(tiny3)
