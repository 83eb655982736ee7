"""Training a transcoder for every layer from one pass over the model."""

from __future__ import annotations

import numpy as np
import pytest

from interp.sae import Transcoders, train_transcoders
from tests.conftest import random_tokens


def test_train_all_layers_in_one_pass(tiny3, tmp_path):
    corpus = random_tokens(tiny3.d_vocab, (64, 16), seed=2)
    tc, summary = train_transcoders(tiny3, width=64, k=8, total_tokens=300 * 8 * 15, corpus=corpus, context_size=16,
                                    model_batch=8, lr=2e-3, out_dir=tmp_path / "tc", progress=False)
    assert len(tc) == 3 and [row["layer"] for row in summary] == [0, 1, 2]
    for l, d in enumerate(tc.dictionaries):
        assert d.cfg.hook_name == f"blocks.{l}.ln2.hook_normalized"
        assert d.cfg.hook_name_out == f"blocks.{l}.hook_mlp_out"
    # each transcoder learned its own layer: it reconstructs that layer's MLP better than another layer's does
    _, cache = tiny3.run_with_cache(corpus[:8], lambda n: n.endswith(("ln2.hook_normalized", "hook_mlp_out")))

    def fvu(d, l):
        x, y = cache[f"blocks.{l}.ln2.hook_normalized"][:, 1:], cache[f"blocks.{l}.hook_mlp_out"][:, 1:]
        err = np.asarray(d(x) - y)
        return float((err ** 2).sum() / ((np.asarray(y) - np.asarray(y).mean((0, 1))) ** 2).sum())

    for l in range(3):
        own = fvu(tc.dictionaries[l], l)
        assert own < 0.6, (l, own)
        assert own < min(fvu(tc.dictionaries[m], l) for m in range(3) if m != l)
        assert summary[l]["fvu"] < 0.6
    back = Transcoders.load(tmp_path / "tc")
    np.testing.assert_array_equal(back.dictionaries[1].W_dec, tc.dictionaries[1].W_dec)
    with pytest.raises(ValueError, match="token corpus"):
        train_transcoders(tiny3, corpus=corpus[:, :5], context_size=16, total_tokens=10_000, progress=False)
