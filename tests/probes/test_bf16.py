"""Probes on a bfloat16 model: collected activations come back float32 (every value a bfloat16 number), close to
the float32 model's, and probes fit on them, or on bfloat16 arrays directly, in float32."""

from __future__ import annotations

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import interp
from interp import probes
from tests.tiny_chat import WORDS, tiny_chat_folder

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tiny_chat_folder(tmp_path_factory.mktemp("toy"))
    return interp.load(folder, dtype=jnp.bfloat16), interp.load(folder)


def texts_and_labels(n=64, seed=0):
    """Texts whose label is whether they end in one of two marked words: linearly readable at the last token."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    ends = np.array(["yes", "no"])
    texts = [" ".join([*rng.choice(WORDS, 6), ends[y]]) for y in labels]
    return texts, labels


@pytest.mark.parametrize("reduce", ["last", "mean"])
def test_bfloat16_activations_collect_and_fit_in_float32(models, reduce):
    m16, m32 = models
    texts, labels = texts_and_labels()
    a16 = probes.collect(m16, texts, HOOKS, labels, reduce=reduce, batch_size=16)
    a32 = probes.collect(m32, texts, HOOKS, labels, reduce=reduce, batch_size=16)
    eps = float(jnp.finfo(jnp.bfloat16).eps)
    for h, layers in zip(HOOKS, (1, 2)):
        x16, x32 = a16[h], a32[h]
        assert x16.dtype == np.float32
        if reduce == "last":  # a row of the bfloat16 stream, upcast exactly
            np.testing.assert_array_equal(x16.astype(ml_dtypes.bfloat16).astype(np.float32), x16)
        # bfloat16 rounding through the blocks up to the hook: 4 ulps per block (plus the embedding) of the
        # activations' magnitude, as in tests/models/test_low_precision.py
        assert float(np.abs(x16 - x32).max()) <= 4 * (layers + 1) * eps * float(np.abs(x32).max())

    hook = HOOKS[-1]
    p16, p32 = probes.fit(a16, hook=hook), probes.fit(a32, hook=hook)
    assert p16.weight.dtype == jnp.float32
    s16, s32 = np.asarray(p16.score(a16[hook])), np.asarray(p32.score(a32[hook]))
    assert probes.auroc(s16, labels) >= 0.9
    assert abs(probes.auroc(s16, labels) - probes.auroc(s32, labels)) <= 0.05

    # a bfloat16 array straight from a cache fits as its float32 upcast does
    raw = jnp.asarray(a16[hook], jnp.bfloat16)
    direct = probes.fit(raw, labels)
    upcast = probes.fit(np.asarray(raw, np.float32), labels)
    np.testing.assert_array_equal(np.asarray(direct.weight), np.asarray(upcast.weight))
    # and scores raw bfloat16 rows as their float32 upcast (under the strict promotion these tests run with)
    np.testing.assert_array_equal(np.asarray(direct.score(raw)), np.asarray(direct.score(np.asarray(raw, np.float32))))
    assert direct.score(raw).dtype == jnp.float32
