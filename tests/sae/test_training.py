"""Training: AuxK revival, exact resume, errors, NaN handling, sharding, the real activation store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interp import sae


def gaussian_acts(n=4096, d=16, seed=0):
    r = np.random.default_rng(seed)
    basis = r.normal(size=(64, d)).astype(np.float32)
    codes = r.exponential(size=(n, 64)).astype(np.float32) * (r.random((n, 64)) < 0.1)
    return codes @ basis + 0.01 * r.normal(size=(n, d)).astype(np.float32)


def test_auxk_revives_latents_dead_by_construction():
    x = gaussian_acts()
    fired_last = {}
    for coeff in (0.0, 1.0):
        cfg = sae.TrainConfig(sae.TopKConfig(d_in=16, width=64, k=4, aux_coeff=coeff, aux_k=8), total_tokens=256 * 60,
                              batch_size=256, lr=3e-3, dead_after_tokens=512, lr_warmup_steps=1, eval_every=10)
        store = sae.ArrayActivationStore(x, batch_size=256)

        # latents 0..15 are dead by construction: encoder columns shrunk so they never reach the top k
        def shrink(state):
            return eqx.tree_at(lambda s: s.dictionary.W_enc, state,
                               state.dictionary.W_enc.at[:, :16].multiply(1e-3))

        fired = np.zeros(64, bool)

        def watch(step, metrics, d, fired=fired):
            if step > 50:
                z = np.asarray(d.encode(jnp.asarray(x[:2048])))
                fired[:] |= (z > 0).any(0)

        import interp.sae.trainer as tr

        orig = tr.init_state
        tr.init_state = lambda *a, orig=orig, **k: shrink(orig(*a, **k))
        try:
            result = sae.train(cfg, store=store, progress=False, callback=watch)
        finally:
            tr.init_state = orig
        fired_last[coeff] = fired[:16].mean()
        if coeff:
            assert result.history[-1]["auxk"] >= 0.0
    assert fired_last[0.0] == 0.0  # without AuxK they stay dead
    assert fired_last[1.0] >= 0.5  # AuxK brings most of them back


def small_cfg(out_dir=None, **kw):
    base = dict(total_tokens=256 * 12, batch_size=256, lr=1e-3, lr_warmup_steps=2, eval_every=2, seed=3,
                out_dir=str(out_dir) if out_dir else None, checkpoint_every=4, dead_after_tokens=1024)
    base.update(kw)
    return sae.TrainConfig(sae.TopKConfig(d_in=16, width=64, k=4), **base)


def test_kill_and_resume_is_bit_identical(tmp_path):
    x = gaussian_acts(seed=1)
    full = sae.train(small_cfg(tmp_path / "full"), store=sae.ArrayActivationStore(x, batch_size=256, chunk_size=1024),
                     progress=False)

    def killer(step, metrics, d):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sae.train(small_cfg(tmp_path / "part"), store=sae.ArrayActivationStore(x, batch_size=256, chunk_size=1024),
                  progress=False, callback=killer)
    assert sorted(p.name for p in (tmp_path / "part" / "checkpoints").iterdir()) == ["step-00000004"]
    resumed = sae.train(small_cfg(tmp_path / "part"),
                        store=sae.ArrayActivationStore(x, batch_size=256, chunk_size=1024),
                        progress=False, resume=True)
    for a, b in zip(jax.tree.leaves(full.dictionary), jax.tree.leaves(resumed.dictionary)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]
    with pytest.raises(FileExistsError, match="resume"):
        sae.train(small_cfg(tmp_path / "full"), store=sae.ArrayActivationStore(x, batch_size=256), progress=False)
    with pytest.raises(ValueError, match="different config"):
        sae.train(small_cfg(tmp_path / "part", lr=5e-3), store=sae.ArrayActivationStore(x, batch_size=256),
                  progress=False, resume=True)


def test_nan_stops_training_and_keeps_last_checkpoint(tmp_path):
    x = gaussian_acts(seed=2)
    x[256 * 6: 256 * 7] = np.nan  # the 7th batch is poisoned
    with pytest.raises(sae.TrainingDiverged, match=r"step 7.*step-00000004.*intact"):
        sae.train(small_cfg(tmp_path), store=sae.ArrayActivationStore(x, batch_size=256, chunk_size=4096, seed=None),
                  progress=False)
    ckpt = tmp_path / "checkpoints" / "step-00000004"
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["step"] == 4
    from interp.sae.checkpoints import load_checkpoint
    from interp.sae.trainer import init_state, make_optimizer

    cfg = small_cfg(tmp_path)
    state, _ = load_checkpoint(ckpt, init_state(cfg, make_optimizer(cfg)))
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state.dictionary))


def test_dimension_and_corpus_errors(default_model, tmp_path):
    with pytest.raises(ValueError, match=r"d_in=100 does not match .* 576 features; set d_in=576"):
        cfg = sae.TrainConfig(sae.TopKConfig(d_in=100, width=64, k=4, hook_name="blocks.1.hook_resid_post"),
                              total_tokens=1024, batch_size=256, buffer_tokens=1024)
        sae.train(cfg, model=default_model, progress=False)
    with pytest.raises(ValueError, match="unknown hook 'blocks.1.hook_resid'"):
        sae.ActivationStore(default_model, "blocks.1.hook_resid", ["text"])
    store = sae.ActivationStore(default_model, "blocks.1.hook_resid_post", [], context_size=16, buffer_tokens=64,
                                batch_size=32)
    with pytest.raises(ValueError, match="empty"):
        store.next_batch()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no .txt"):
        list(sae.iter_texts(empty))
    with pytest.raises(ValueError, match="at least one batch"):
        sae.ArrayActivationStore(np.zeros((100, 4)), batch_size=30, chunk_size=20)


def test_activation_store_streams_the_hooked_model(default_model, corpus_text):
    texts = corpus_text[:20000].split("\n\n")
    store = sae.ActivationStore(default_model, "blocks.2.hook_resid_post", texts, context_size=32,
                                buffer_tokens=256, batch_size=64, model_batch=4, seed=0)
    x, y = store.next_batch()
    assert x.shape == (64, 576) and y is x
    # the chunk is a permutation of the model's activations on the first 8 contexts
    from interp.sae.store import iter_contexts

    ctx = iter_contexts(default_model.tokenizer, texts, 32)
    toks = np.stack([next(ctx) for _ in range(8)])
    _, cache = default_model.run_with_cache(toks, names=["blocks.2.hook_resid_post"])
    ref = np.asarray(cache["blocks.2.hook_resid_post"]).reshape(-1, 576)
    chunk = np.concatenate([x] + [store.next_batch()[0] for _ in range(3)])
    np.testing.assert_allclose(np.sort(chunk, axis=0), np.sort(ref, axis=0), atol=1e-5)
    assert store.state() == {"chunk": 1, "batch": 0}
    # resuming at a position gives the same batches
    a = store.next_batch()[0]
    other = sae.ActivationStore(default_model, "blocks.2.hook_resid_post", texts, context_size=32,
                                buffer_tokens=256, batch_size=64, model_batch=4, seed=0)
    other.restore({"chunk": 1, "batch": 0})
    np.testing.assert_array_equal(other.next_batch()[0], a)


def test_cached_activations_replay_the_stream(default_model, corpus_text, tmp_path):
    texts = corpus_text[:20000].split("\n\n")
    kw = dict(context_size=32, buffer_tokens=256, batch_size=64, model_batch=4, seed=0)
    live = sae.ActivationStore(default_model, "blocks.1.hook_resid_post", texts, **kw)
    sae.cache_activations(sae.ActivationStore(default_model, "blocks.1.hook_resid_post", texts, **kw), 512,
                          tmp_path / "acts", progress=False)
    cached = sae.CachedActivationStore(tmp_path / "acts", batch_size=64, seed=0)
    for _ in range(8):
        np.testing.assert_allclose(cached.next_batch()[0], live.next_batch()[0], atol=1e-6)


def test_sharded_training_equals_single_device(tmp_path):
    """Data-parallel (4) × latent-parallel (2) on 8 virtual CPU devices gives the single-device result, for every
    registered architecture (each leaf split along the latent axis its annotation names)."""
    script = textwrap.dedent("""
        import numpy as np, jax
        from interp import sae
        from tests.sae.test_training import gaussian_acts
        x = gaussian_acts(seed=4)
        assert jax.device_count() == 8, jax.device_count()
        for arch, (config_cls, _) in sae.REGISTRY.items():
            out = {}
            for dp, lp in [(1, 1), (4, 2)]:
                cfg = sae.TrainConfig(config_cls(d_in=16, width=64), total_tokens=256 * 10, batch_size=256, lr=1e-3,
                                      lr_warmup_steps=1, data_parallel=dp, latent_parallel=lp, seed=5)
                out[(dp, lp)] = sae.train(cfg, store=sae.ArrayActivationStore(x, batch_size=256), progress=False)
            a, b = out[(1, 1)], out[(4, 2)]
            diff = max(float(np.abs(np.asarray(p) - np.asarray(q)).max())
                       for p, q in zip(jax.tree.leaves(a.dictionary), jax.tree.leaves(b.dictionary)))
            print("MAXDIFF", arch, diff)
            assert diff < 1e-4, (arch, diff)
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("MAXDIFF") == len(sae.REGISTRY), done.stdout


def test_input_normalization_is_folded_into_the_saved_weights(tmp_path):
    x = gaussian_acts(seed=6) * 50.0  # far from unit scale, like residual streams
    cfg = small_cfg(tmp_path, normalize="expected_average_only_in", total_tokens=256 * 8)
    result = sae.train(cfg, store=sae.ArrayActivationStore(x, batch_size=256), progress=False)
    s = result.scale
    assert s == pytest.approx(np.sqrt(16) / np.linalg.norm(x[:1024], axis=-1).mean(), rel=0.2)
    from interp.sae.checkpoints import latest_checkpoint, load_checkpoint
    from interp.sae.trainer import init_state, make_optimizer

    trained, _ = load_checkpoint(latest_checkpoint(tmp_path), init_state(cfg, make_optimizer(cfg)))
    raw = jnp.asarray(x[:512])
    # the saved dictionary reads raw activations and returns them at raw scale
    np.testing.assert_allclose(result.dictionary(raw), trained.dictionary(raw * s) / s, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(result.dictionary.encode(raw) > 0, trained.dictionary.encode(raw * s) > 0)
    back = sae.load(tmp_path / "final")
    np.testing.assert_allclose(back(raw), result.dictionary(raw), rtol=1e-5, atol=1e-4)
