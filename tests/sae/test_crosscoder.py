"""Crosscoders for model diffing: planted differences between two synthetic "models" are found, files round-trip,
bad input fails with its cause, and two real models' activations are harvested aligned."""

from __future__ import annotations

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interp.sae import (
    Crosscoder,
    CrosscoderConfig,
    crosscoder_acts,
    crosscoder_diff,
    evaluate_crosscoder,
    train_crosscoder,
)
from tests.conftest import numpy_checkpoint, random_tokens

D = 32
N_SHARED, N_PLANTED, N_BASE = 10, 3, 1
SECOND_SCALE = 3.0  # the second model's activations are larger: normalisation must even this out


def synthetic(n=12000, seed=0, p=0.08, noise=0.01):
    """Two models' activations of the same tokens, ``[n, 2, D]``: sparse nonnegative features on random unit
    directions; shared features appear in both, planted ones only in the second model (what fine-tuning added),
    base ones only in the first (what it removed)."""
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((N_SHARED + N_PLANTED + N_BASE, D))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    mag = rng.uniform(0.5, 1.5, (n, len(dirs))) * (rng.random((n, len(dirs))) < p)
    shared, planted, base = np.split(dirs, [N_SHARED, N_SHARED + N_PLANTED])
    m_s, m_p, m_b = np.split(mag, [N_SHARED, N_SHARED + N_PLANTED], axis=1)
    x0 = m_s @ shared + m_b @ base + noise * rng.standard_normal((n, D))
    x1 = SECOND_SCALE * (m_s @ shared + m_p @ planted + noise * rng.standard_normal((n, D)))
    return np.stack([x0, x1], 1).astype(np.float32), shared, planted, base


@pytest.fixture(scope="module")
def data():
    return synthetic()


@pytest.fixture(scope="module", params=["l1", "topk"])
def trained(request, data):
    acts = data[0]
    sparsity = {"l1_coeff": 1.0} if request.param == "l1" else {"k": 3}
    cc = train_crosscoder(acts, width=32, steps=1200, lr=3e-3, batch_size=256, seed=0, progress=False,
                          model_names=("base", "tuned"), hook_name="blocks.0.hook_resid_post", **sparsity)
    return request.param, cc


def unit(w):
    w = np.asarray(w, np.float64)
    return w / np.linalg.norm(w, axis=-1, keepdims=True)


def test_planted_directions_are_second_model_only_latents(data, trained):
    acts, shared, planted, base = data
    kind, cc = trained
    diff = crosscoder_diff(cc, acts=acts)
    W0, W1 = unit(cc.W_dec[0]), unit(cc.W_dec[1])
    # the strongest second-model-only latents are the planted directions, one each
    top = diff.second_only[:N_PLANTED]
    assert len(top) == N_PLANTED, diff
    cos = W1[top] @ planted.T  # [latent, planted direction]
    assert (cos.max(axis=0) > 0.9).all(), (kind, cos.round(2))
    assert sorted(cos.argmax(axis=1).tolist()) == list(range(N_PLANTED)), (kind, cos.round(2))
    assert (diff.relative_norm[top] > 0.9).all()
    # the feature only the base model has is a first-model-only latent
    assert (W0[diff.first_only] @ base.T).max() > 0.9, kind
    # every shared feature has a latent in both models (same direction) whose relative norm is near 0.5: exactly,
    # the ratio of the two models' normalised scales of one direction
    best = np.argmax(W0 @ shared.T, axis=0)
    assert ((W0[best] * shared).sum(1) > 0.9).all() and ((W1[best] * shared).sum(1) > 0.9).all(), kind
    s = np.asarray(cc.scale, np.float64)
    want = SECOND_SCALE * s[1] / (s[0] + SECOND_SCALE * s[1])
    r = diff.relative_norm[best]
    assert np.abs(r - 0.5).max() < 0.1 and np.abs(r - want).max() < 0.03, (kind, r.round(3), want)
    assert set(best.tolist()) <= set(diff.shared.tolist())
    assert not set(diff.second_only) & set(diff.shared) and not set(diff.first_only) & set(diff.shared)
    # lists are sorted by summed decoder norm
    total = diff.norms.sum(0)
    for ids in (diff.second_only, diff.first_only, diff.shared):
        assert (np.diff(total[ids]) <= 0).all()


def test_reconstruction_sparsity_and_normalisation(data, trained):
    acts = data[0]
    kind, cc = trained
    ev = evaluate_crosscoder(cc, acts)
    assert ev["fvu"] < 0.05 and max(ev["fvu_per_model"]) < 0.05, (kind, ev["fvu"], ev["fvu_per_model"])
    if kind == "topk":
        assert 2.5 < ev["l0"] <= 3.0
    else:
        assert ev["l0"] < 4.0  # about 1.1 features are active per token
    # each model's scale makes its mean squared norm D
    ms = np.mean(np.sum(np.square(acts * np.asarray(cc.scale)[None, :, None]), -1), 0)
    np.testing.assert_allclose(ms, D, rtol=1e-3)
    # encode/decode work in the models' own units, on any leading axes
    x = jnp.asarray(acts[:6].reshape(2, 3, 2, D))
    f = cc.encode(x)
    assert f.shape == (2, 3, 32) and cc.decode(f).shape == (2, 3, 2, D)
    np.testing.assert_allclose(cc(x), cc.decode(f), rtol=1e-6)
    # by hand: normalise, encode jointly, decode per model, undo the scale
    xs = np.asarray(acts[:6], np.float64) * np.asarray(cc.scale)[None, :, None]
    pre = np.einsum("npd,pdm->nm", xs, np.asarray(cc.W_enc)) + np.asarray(cc.b_enc)
    f_hand = np.maximum(pre, 0)
    if kind == "topk":
        weight = f_hand * np.linalg.norm(np.asarray(cc.W_dec), axis=-1).sum(0)
        f_hand = np.where(weight >= np.sort(weight, axis=1)[:, -3:-2], f_hand, 0)
    np.testing.assert_allclose(np.asarray(cc.encode(acts[:6])), f_hand, atol=1e-4)
    y = (np.einsum("nm,pmd->npd", f_hand, np.asarray(cc.W_dec)) + np.asarray(cc.b_dec)) / np.asarray(cc.scale)[:, None]
    np.testing.assert_allclose(np.asarray(cc(acts[:6])), y, atol=1e-4)


def test_save_load_round_trip(tmp_path, trained):
    _, cc = trained
    cc.save(tmp_path / "cc")
    cc.save(tmp_path / "cc")  # overwriting a folder is fine
    back = Crosscoder.load(tmp_path / "cc")
    assert back.cfg == cc.cfg and back.cfg.model_names == ("base", "tuned")
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "scale"):
        np.testing.assert_array_equal(getattr(back, name), getattr(cc, name))
    assert sorted(p.name for p in (tmp_path / "cc").iterdir()) == ["cfg.json", "crosscoder_weights.safetensors"]


def test_same_seed_same_crosscoder(data):
    acts = data[0][:2000]
    run = [train_crosscoder(acts, width=16, k=2, steps=30, batch_size=64, seed=s, progress=False) for s in (1, 1, 2)]
    np.testing.assert_array_equal(run[0].W_dec, run[1].W_dec)
    np.testing.assert_array_equal(run[0].W_enc, run[1].W_enc)
    assert not np.array_equal(run[0].W_dec, run[2].W_dec)


def hand_made(norms0, norms1, D=4):
    """A crosscoder whose decoder vectors have the given norms per model (latent i along axis i % D)."""
    M = len(norms0)
    dirs = np.eye(D)[np.arange(M) % D]
    W_dec = np.stack([dirs * np.asarray(norms0)[:, None], dirs * np.asarray(norms1)[:, None]]).astype(np.float32)
    cfg = CrosscoderConfig(n_models=2, d_in=D, width=M, l1_coeff=1.0, model_names=("base", "chat"))
    return Crosscoder(W_enc=jnp.asarray(np.swapaxes(W_dec, 1, 2)), b_enc=jnp.zeros(M), W_dec=jnp.asarray(W_dec),
                      b_dec=jnp.zeros((2, D)), scale=jnp.ones(2), cfg=cfg)


def test_diff_of_known_norms():
    #          0    1    2    3    4    5    6    7
    n0 = [1.0, 0.0, 2.0, 0.05, 1.0, 0.5, 0.0, 3.0]
    n1 = [1.0, 2.0, 0.0, 1.00, 1.1, 4.0, 0.0, 2.0]
    cc = hand_made(n0, n1)
    d = crosscoder_diff(cc)
    r = d.relative_norm
    np.testing.assert_allclose(r[[0, 1, 2, 3, 5, 7]], [0.5, 1.0, 0.0, 1 / 1.05, 4 / 4.5, 0.4], rtol=1e-6)
    assert np.isnan(r[6])  # no decoder in either model
    assert d.second_only.tolist() == [1, 3]  # r > 0.9, largest summed norm first (2.0 > 1.05); r(5)=0.889 is not
    assert d.first_only.tolist() == [2]
    assert d.shared.tolist() == [7, 4, 0]  # |r - 0.5| <= 0.2, by summed norm: 5.0, 2.1, 2.0
    np.testing.assert_allclose(d.norms, [n0, n1], rtol=1e-6)
    assert d.model_names == ("base", "chat") and "chat only 2" in repr(d) and "latent 1 (chat only)" in repr(d)
    assert "<table" in d._repr_html_()
    j = json.loads(json.dumps(d.to_dict()))
    assert j["second_only"] == [1, 3] and j["relative_norm"][6] is None and j["norms"][1][5] == 4.0
    # the other way round: the first model's only latents
    back = crosscoder_diff(cc, models=(1, 0))
    assert back.second_only.tolist() == [2] and back.first_only.tolist() == [1, 3]
    # latents that never fire on the given activations leave the lists
    x = np.zeros((3, 2, 4), np.float32)
    x[:, 1, 1] = 1.0  # only latents along axis 1 (1 and 5) get input
    live = crosscoder_diff(cc, acts=x)
    assert live.fired.tolist() == [False, True, False, False, False, True, False, False]
    assert live.second_only.tolist() == [1] and live.shared.tolist() == [] and "dead 6" in repr(live)
    with pytest.raises(ValueError, match="two different model indices"):
        crosscoder_diff(cc, models=(0, 2))
    with pytest.raises(ValueError, match="threshold"):
        crosscoder_diff(cc, threshold=0.4)


def test_bad_input_fails_with_its_cause(data):
    acts = data[0][:500]
    kw = dict(width=16, steps=2, batch_size=64, progress=False)
    with pytest.raises(ValueError, match=r"\[N, n_models, d_in\]"):
        train_crosscoder(acts[:, 0], k=2, **kw)
    with pytest.raises(ValueError, match="at least 2"):
        train_crosscoder(acts[:, :1], k=2, **kw)
    bad = acts.copy()
    bad[123, 1, 5] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite values \(first at row 123, model 1\)"):
        train_crosscoder(bad, k=2, **kw)
    with pytest.raises(ValueError, match="exactly one of k"):
        train_crosscoder(acts, **kw)
    with pytest.raises(ValueError, match="exactly one of k"):
        train_crosscoder(acts, k=2, l1_coeff=1.0, **kw)
    with pytest.raises(ValueError, match="k=16"):
        train_crosscoder(acts, k=16, **kw)
    with pytest.raises(ValueError, match="larger than the 500 activations"):
        train_crosscoder(acts, k=2, **{**kw, "batch_size": 501})
    with pytest.raises(ValueError, match="all zero"):
        train_crosscoder(np.concatenate([acts[:, :1], 0 * acts[:, :1]], 1), k=2, **kw)
    cc = hand_made([1.0] * 4, [1.0] * 4)
    with pytest.raises(ValueError, match=r"n_models=2, d_in=4"):
        cc.encode(jnp.zeros((5, 3, 4)))
    with pytest.raises(ValueError, match=r"n_models=2, d_in=4"):
        cc.encode(jnp.zeros((5, 2, 5)))
    with pytest.raises(ValueError, match="width=4"):
        cc.decode(jnp.zeros((5, 3)))
    with pytest.raises(ValueError, match="model_names"):
        CrosscoderConfig(n_models=2, d_in=4, width=4, k=1, model_names=("a",))


def test_corrupt_or_mismatched_files_fail(tmp_path):
    from safetensors.numpy import load_file, save_file

    cc = hand_made([1.0] * 4, [0.5] * 4)
    folder = cc.save(tmp_path / "cc")
    with pytest.raises(FileNotFoundError, match="not a crosscoder folder"):
        Crosscoder.load(tmp_path / "missing")
    (tmp_path / "sae").mkdir()
    (tmp_path / "sae" / "sae_weights.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="interp.sae.load"):
        Crosscoder.load(tmp_path / "sae")
    w_path, cfg_path = folder / "crosscoder_weights.safetensors", folder / "cfg.json"
    good_w, good_cfg = w_path.read_bytes(), cfg_path.read_text()

    def expect(match):
        with pytest.raises(ValueError, match=match):
            Crosscoder.load(folder)
        w_path.write_bytes(good_w)
        cfg_path.write_text(good_cfg)

    w_path.write_bytes(good_w[: len(good_w) // 2])
    expect("truncated or corrupt")
    cfg_path.write_text(good_cfg[:-5])
    expect("not valid JSON")
    cfg_path.write_text(json.dumps({**json.loads(good_cfg), "architecture": "topk"}))
    expect("does not describe a crosscoder")
    raw = json.loads(good_cfg)
    cfg_path.write_text(json.dumps({**raw, "interp": {**raw["interp"], "width": 5}}))
    expect(r"W_enc has shape \(2, 4, 4\), but cfg.json implies \(2, 4, 5\)")
    cfg_path.write_text(json.dumps({**raw, "interp": {**raw["interp"], "k": 2}}))
    expect("exactly one of k")
    w = load_file(str(w_path))
    for name, value in (("W_dec", np.nan), ("scale", -1.0)):
        save_file({**w, name: np.full_like(w[name], value)}, str(w_path))
        expect(f"{name} holds")
    save_file({k: v for k, v in w.items() if k != "b_dec"}, str(w_path))
    expect("lacks 'b_dec'")
    assert Crosscoder.load(folder).cfg == cc.cfg  # the folder is intact after all that


@pytest.fixture(scope="module")
def tiny_pair(tiny3, tmp_path_factory):
    """Two tiny models of the same shape and vocabulary (a base and a "fine-tuned" one)."""
    import interp

    other = numpy_checkpoint(tmp_path_factory.mktemp("tiny-gqa3-b"), seed=4, num_hidden_layers=3,
                             num_key_value_heads=2)
    return tiny3, interp.load(other)


def test_harvest_aligned_activations(tiny_pair):
    a, b = tiny_pair
    hook = "blocks.1.hook_resid_post"
    lengths = [7, 3, 12, 1, 9]
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, a.d_vocab, n).astype(np.int32) for n in lengths]
    acts = crosscoder_acts(a, b, seqs, hook, batch_size=2)  # ragged: padded, masked, padding dropped
    assert acts.shape == (sum(n - 1 for n in lengths), 2, a.d_model) and acts.dtype == np.float32
    want = []
    for s in seqs:  # each sequence alone, unpadded, its first position left out
        rows = [np.asarray(m.run_with_cache(s[None], names=[hook], return_logits=False)[1][hook])[0, 1:]
                for m in (a, b)]
        want.append(np.stack(rows, 1))
    want = np.concatenate(want)
    np.testing.assert_allclose(acts, want, atol=1e-4 * np.abs(want).max())
    assert not np.allclose(acts[:, 0], acts[:, 1])  # two different models, model_a first
    # a rectangular array keeps every position with skip_positions=0
    toks = random_tokens(a.d_vocab, (3, 5), seed=1)
    full = crosscoder_acts(a, b, toks, hook, skip_positions=0)
    ref = np.asarray(b.run_with_cache(toks, names=[hook], return_logits=False)[1][hook]).reshape(-1, a.d_model)
    np.testing.assert_allclose(full[:, 1], ref, atol=1e-5 * np.abs(ref).max())
    # the harvested activations train a crosscoder directly
    cc = train_crosscoder(full, width=8, k=2, steps=3, batch_size=8, progress=False, hook_name=hook)
    assert cc.encode(full).shape == (15, 8)


def test_harvest_errors(tiny_pair, tmp_path):
    import interp

    a, b = tiny_pair
    toks = random_tokens(a.d_vocab, (2, 4))
    with pytest.raises(ValueError, match="did you mean"):
        crosscoder_acts(a, b, toks, "blocks.1.hook_resid")
    wide = interp.load(numpy_checkpoint(tmp_path / "wide", seed=5, num_hidden_layers=3, hidden_size=48))
    with pytest.raises(ValueError, match="size 32 in model_a and 48 in model_b"):
        crosscoder_acts(a, wide, toks, "blocks.1.hook_resid_post")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        crosscoder_acts(a, b, toks + a.d_vocab, "blocks.1.hook_resid_post")
    with pytest.raises(ValueError, match="no positions left"):
        crosscoder_acts(a, b, toks[:, :1], "blocks.1.hook_resid_post")


def test_harvest_from_texts():
    from tests.tiny_chat import WORDS, tiny_chat_model

    a, b = tiny_chat_model(seed=0), tiny_chat_model(seed=1)
    texts = [" ".join(WORDS[i:i + n]) for i, n in ((0, 6), (10, 2), (40, 9))]
    hook = "blocks.0.hook_resid_post"
    acts = crosscoder_acts(a, b, texts, hook)
    ids = [np.asarray(a.to_tokens(t)).reshape(-1) for t in texts]
    assert acts.shape == (sum(len(i) - 1 for i in ids), 2, a.d_model)
    np.testing.assert_allclose(acts, crosscoder_acts(a, b, ids, hook), rtol=1e-6, atol=1e-6)


# one compiled program per call signature instead of an eager run of every operation
jit_loss = eqx.filter_jit(lambda cc, x, *args, **kw: cc.loss(x, *args, **kw))


def test_loss_weights_latents_by_summed_decoder_norms():
    """The L1 variant's penalty is sum_i f_i (|d_0,i| + |d_1,i|) (the paper's), not f_i times a joint norm."""
    rng = np.random.default_rng(0)
    cc = hand_made([1.0, 2.0, 0.5, 3.0], [0.0, 2.0, 1.5, 4.0])
    cc = Crosscoder(W_enc=cc.W_enc, b_enc=jnp.asarray([0.1, -0.2, 0.3, 0.0], jnp.float32),
                    W_dec=cc.W_dec, b_dec=jnp.asarray(rng.standard_normal((2, 4)), jnp.float32), scale=cc.scale,
                    cfg=CrosscoderConfig(n_models=2, d_in=4, width=4, l1_coeff=0.3))
    x = rng.standard_normal((16, 2, 4)).astype(np.float32)
    W_enc, W_dec = np.asarray(cc.W_enc, np.float64), np.asarray(cc.W_dec, np.float64)
    f = np.maximum(np.einsum("npd,pdm->nm", x, W_enc) + np.asarray(cc.b_enc), 0)
    x_hat = np.einsum("nm,pmd->npd", f, W_dec) + np.asarray(cc.b_dec)
    mse = np.mean(np.sum((x - x_hat) ** 2, axis=(1, 2)))
    penalty = np.mean(f @ np.array([1.0, 4.0, 2.0, 7.0]))
    loss, m = jit_loss(cc, jnp.asarray(x), 0.5)
    np.testing.assert_allclose([float(m["mse"]), float(m["l1"]), float(loss)],
                               [mse, penalty, mse + 0.5 * 0.3 * penalty], rtol=1e-5)


def test_auxk_fits_the_error_with_dead_latents():
    """TopK's auxiliary loss: the error, held fixed, reconstructed from the largest pre-activations of dead latents
    (here all latents but 0; d_in=4 gives k_aux=2), normalised like FVU; only dead latents get its gradient."""
    rng = np.random.default_rng(1)
    base = hand_made([1.0, 2.0, 0.5, 3.0, 1.0, 1.0], [0.5, 2.0, 1.5, 4.0, 1.0, 2.0])
    cc = Crosscoder(W_enc=jnp.asarray(rng.standard_normal((2, 4, 6)), jnp.float32), b_enc=jnp.zeros(6),
                    W_dec=base.W_dec, b_dec=base.b_dec, scale=base.scale,
                    cfg=CrosscoderConfig(n_models=2, d_in=4, width=6, k=1))
    x = rng.standard_normal((8, 2, 4)).astype(np.float32)
    dead = np.array([False, True, True, True, True, True])
    _, plain = jit_loss(cc, jnp.asarray(x))
    loss, m = jit_loss(cc, jnp.asarray(x), dead=jnp.asarray(dead), aux_coeff=0.25)
    W_enc, W_dec = np.asarray(cc.W_enc, np.float64), np.asarray(cc.W_dec, np.float64)
    pre = np.einsum("npd,pdm->nm", x, W_enc)
    relu = np.maximum(pre, 0)
    keep = np.argmax(relu * np.linalg.norm(W_dec, axis=-1).sum(0), axis=1)  # k=1
    f = np.zeros_like(pre)
    f[np.arange(len(x)), keep] = relu[np.arange(len(x)), keep]
    err = x - (np.einsum("nm,pmd->npd", f, W_dec) + np.asarray(cc.b_dec))
    f_aux = np.zeros_like(pre)
    for n in range(len(x)):
        top = np.argsort(-np.where(dead, pre[n], -np.inf))[:2]
        f_aux[n, top] = np.maximum(pre[n, top], 0)
    e_hat = np.einsum("nm,pmd->npd", f_aux, W_dec)
    var = np.mean(np.sum((x - x.mean(0)) ** 2, axis=(1, 2)))
    want = np.mean(np.sum((e_hat - err) ** 2, axis=(1, 2))) / var
    np.testing.assert_allclose(float(m["auxk"]), want, rtol=1e-4)
    np.testing.assert_allclose(float(loss), float(plain["mse"]) + 0.25 * want, rtol=1e-4)
    # gradient of the auxiliary term alone reaches only dead latents' encoder columns
    def aux_only(c):
        return c.loss(jnp.asarray(x), dead=jnp.asarray(dead), aux_coeff=1.0)[1]["auxk"]

    g = eqx.filter_jit(eqx.filter_grad(aux_only))(cc)
    assert np.abs(np.asarray(g.W_enc)[..., 0]).max() == 0 and np.abs(np.asarray(g.W_enc)[..., 1:]).max() > 0
    assert np.isfinite(jax.tree.leaves(eqx.filter(g, eqx.is_array))[0]).all()
    # no dead latent: no auxiliary loss
    assert float(jit_loss(cc, jnp.asarray(x), dead=jnp.zeros(6, bool), aux_coeff=1.0)[1]["auxk"]) == 0


def test_report_shows_the_relative_norm_histogram():
    from interp.viz import result_view

    cc = hand_made([1.0, 0.0, 2.0, 0.05, 1.0, 0.5, 0.0, 3.0], [1.0, 2.0, 0.0, 1.00, 1.1, 4.0, 0.0, 2.0])
    parts = result_view(crosscoder_diff(cc))
    fig = parts[1]
    bar = fig.data[0]
    # 7 latents with a decoder somewhere (latent 6 has none): 0.0 in the first bin, 0.4 / 0.5 / 0.5 in the middle,
    # 4/4.5, 1/1.05 and 1.0 in the last two
    counts = np.asarray(bar.y)
    assert counts.sum() == 7 and counts[0] == 1 and counts[-1] == 2 and counts[-3] == 1
    assert "latents" in bar.hovertemplate and "chat only" in fig.layout.xaxis.title.text
