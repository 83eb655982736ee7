"""collect on a tiny model equals the activations read from run_with_cache by hand, for every reduction."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from interp import probes
from interp.hooks import Splice

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.mlp.hook_post"]


def seqs(vocab):
    rng = np.random.default_rng(0)
    out = [list(rng.integers(3, vocab, n)) for n in (5, 9, 3, 7, 6)]
    out[0][2] = out[1][4] = out[1][7] = out[2][0] = out[3][6] = out[4][1] = 1  # marker token 1, last one counts
    return out


def by_hand(model, seq, hook):
    _, cache = model.run_with_cache(np.array([seq], np.int32), [hook], return_logits=False)
    return np.asarray(cache[hook][0])


@pytest.mark.parametrize("reduce", probes.REDUCTIONS)
def test_collect_equals_run_with_cache(tiny3, reduce):
    ss = seqs(tiny3.d_vocab)
    labels = [0, 1, 0, 1, 1]
    kw = {"marker": 1} if reduce == "marker" else {}
    acts = probes.collect(tiny3, ss, HOOKS, labels, reduce=reduce, batch_size=2, **kw)
    assert acts.hooks == tuple(HOOKS)
    for h in HOOKS:
        full = [by_hand(tiny3, s, h) for s in ss]
        if reduce == "last":
            want = np.stack([a[-1] for a in full])
        elif reduce == "mean":
            want = np.stack([a.mean(0) for a in full])
        elif reduce == "marker":
            want = np.stack([a[max(i for i, t in enumerate(s) if t == 1)] for a, s in zip(full, ss)])
        else:
            want = np.concatenate(full)
        np.testing.assert_allclose(acts[h], want, rtol=1e-5, atol=1e-5)
    if reduce == "all":
        assert acts.index.shape == (sum(map(len, ss)), 2) and list(acts.index[5]) == [1, 0]
        assert list(acts.labels[:6]) == [0] * 5 + [1]
    else:
        assert list(acts.labels) == labels


def test_collect_bare_short_name_and_spliced_latents(tiny3):
    from interp import sae

    ss = seqs(tiny3.d_vocab)
    acts = probes.collect(tiny3, ss, "resid_post", batch_size=8)
    assert acts.hooks == tuple(f"blocks.{i}.hook_resid_post" for i in range(3))
    d = sae.create(sae.TopKConfig(d_in=tiny3.d_model, width=24, k=4, hook_name="blocks.1.hook_resid_post"),
                   jax.random.PRNGKey(0))
    sp = Splice(d, "blocks.1.hook_resid_post")
    name = "blocks.1.hook_resid_post.sae.hook_latents"
    lat = probes.collect(tiny3, ss, [name], reduce="mean", splices=[sp])
    _, cache = tiny3.run_with_cache(np.array([ss[3]], np.int32), [name], splices=[sp], return_logits=False)
    np.testing.assert_allclose(lat[name][3], np.asarray(cache[name][0]).mean(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="spliced in: pass splices"):
        probes.collect(tiny3, ss, [name])


def test_collect_refuses_bad_input(tiny3):
    ss = seqs(tiny3.d_vocab)
    with pytest.raises(ValueError, match="no hook 'blocks.1.hook_resid_pots'; did you mean 'blocks.1.hook_resid_post'"):
        probes.collect(tiny3, ss, ["blocks.1.hook_resid_pots"])
    with pytest.raises(ValueError, match="no texts"):
        probes.collect(tiny3, [], HOOKS)
    with pytest.raises(ValueError, match="5 texts but 4 labels"):
        probes.collect(tiny3, ss, HOOKS, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="lack the marker"):
        probes.collect(tiny3, ss, HOOKS, reduce="marker", marker=2)
    with pytest.raises(ValueError, match="did you mean 'mean'"):
        probes.collect(tiny3, ss, HOOKS, reduce="maen")
    with pytest.raises(ValueError, match="no tokenizer"):
        probes.collect(tiny3, ["some text"], HOOKS)
    with pytest.raises(ValueError, match="has 5 tokens but 2 token labels"):
        probes.collect(tiny3, ss, HOOKS, [[0, 1]] + [0] * 4, reduce="all")
