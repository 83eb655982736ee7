"""Attribution graphs stay exact on LayerNorm families: GPT-2 (learned positions) and GPT-NeoX, parallel and
sequential residual. The replacement model reproduces the logits and every target's edges plus constants
equal its value."""

from __future__ import annotations

import pytest

import interp
from interp.circuits import graph as G
from tests.circuits.test_graph import _targets
from tests.conftest import random_tokens, random_transcoders, saved_checkpoints
from tests.models.test_gpt2_neox_parity import make_hf
from tests.numerics import assert_model_close


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return saved_checkpoints(make_hf, tmp_path_factory)


@pytest.mark.parametrize("variant", ["gpt2", "neox_parallel", "neox_sequential"])
def test_graph_is_exact(variant, checkpoints):
    model = interp.load(checkpoints(variant)[1])
    tc = random_transcoders(model)
    tokens = random_tokens(model.d_vocab, (1, 6), seed=11)
    for mode in ("frozen", "real"):
        res = G.intervene(model, tc, tokens, [], mode=mode)
        assert_model_close(res.after, res.before, model, f"{mode} replacement")
    g = G.trace(model, tc, tokens[0], max_feature_nodes=10_000, max_logits=3, batch_size=8)
    assert g.n_features > 0
    full, const = _targets(model, tc, tokens, g, False), _targets(model, tc, tokens, g, True)
    s = g.slices()
    n = g.adjacency.shape[1]
    assert_model_close(g.adjacency[s["feature"]].sum(1) + const[0], full[0], model, "feature inputs", terms=n)
    assert_model_close(g.adjacency[s["logit"]].sum(1) + const[1], full[1], model, "logit inputs", terms=n)
