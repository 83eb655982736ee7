"""A dictionary trained on activations harvested from a bfloat16 model: the store serves them upcast to float32
(exactly, every value a bfloat16 number) and the dictionary trains in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

import interp
from interp import sae
from tests.tiny_chat import WORDS, tiny_chat_folder

HOOK = "blocks.1.hook_resid_post"
RECONS = f"{HOOK}.sae.hook_recons"
KW = dict(context_size=16, buffer_tokens=256, batch_size=64, model_batch=4, seed=0)


def texts(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, 12)) for _ in range(n)]


def test_bfloat16_activations_train_a_float32_dictionary(tmp_path):
    folder = tiny_chat_folder(tmp_path / "toy")
    m16, m32 = interp.load(folder, dtype=jnp.bfloat16), interp.load(folder)
    corpus = texts()
    x16, _ = sae.ActivationStore(m16, HOOK, corpus, **KW).next_batch()
    x32, _ = sae.ActivationStore(m32, HOOK, corpus, **KW).next_batch()
    assert x16.dtype == np.float32
    # harvested in bfloat16 and upcast: every value is a bfloat16 number
    np.testing.assert_array_equal(x16.astype(ml_dtypes.bfloat16).astype(np.float32), x16)
    # the same rows as the float32 model's (same seed, same order), up to bfloat16 rounding through two blocks:
    # 4 ulps per block of the activations' magnitude, as in tests/models/test_low_precision.py
    bound = 4 * 3 * float(jnp.finfo(jnp.bfloat16).eps) * float(np.abs(x32).max())
    assert float(np.abs(x16 - x32).max()) <= bound

    cfg = sae.TrainConfig(sae.TopKConfig(d_in=m16.d_model, width=128, k=8, hook_name=HOOK), total_tokens=64 * 40,
                          batch_size=64, context_size=16, lr=3e-3, lr_warmup_steps=1, eval_every=10)
    result = sae.train(cfg, store=sae.ActivationStore(m16, HOOK, corpus, **KW), progress=False)
    leaves = jax.tree.leaves(result.dictionary)
    assert leaves and all(x.dtype == jnp.float32 for x in leaves if hasattr(x, "dtype") and
                          jnp.issubdtype(x.dtype, jnp.floating))
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0]
    # it encodes the bfloat16 model's activations as well as the float32 model's (upcast on the way in)
    rec16 = result.dictionary(jnp.asarray(x16))
    rec32 = result.dictionary(jnp.asarray(x32))
    err16 = float(jnp.mean((rec16 - x16) ** 2) / np.mean(x16**2))
    err32 = float(jnp.mean((rec32 - x32) ** 2) / np.mean(x32**2))
    assert err16 < 0.5 and abs(err16 - err32) < 0.05

    # spliced into the bfloat16 model's forward pass, it reads the bfloat16 stream upcast to float32 (so strict
    # dtype promotion, on in these tests, is satisfied) and writes its reconstruction back in bfloat16
    from interp.hooks import Splice

    tokens = np.stack([t[:16] for t in (m16.tokenizer.encode(s) for s in corpus[:2])]).astype(np.int32)
    assert jax.config.jax_numpy_dtype_promotion == "strict"
    _, cache = m16.run_with_cache(tokens, [RECONS], splices=[Splice(result.dictionary, HOOK)])
    assert cache[RECONS].dtype == jnp.bfloat16
    _, plain = m16.run_with_cache(tokens, [HOOK])
    want = result.dictionary(jnp.asarray(plain[HOOK], jnp.float32)).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(cache[RECONS], np.float32), np.asarray(want, np.float32))
