"""bfloat16 and float16 against Hugging Face transformers in the same dtype, for every family: logits on tiny
random-init checkpoints, closeness to the float32 model, and the memory a low-precision model and its activation
cache take (half of float32's, less what stays float32 on purpose)."""

from __future__ import annotations

import copy

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import interp
from interp.hooks import NOOP
from interp.models._blocks import LayerNorm, RMSNorm
from tests.conftest import TINY as LLAMA_TINY
from tests.conftest import VARIANTS as LLAMA_VARIANTS
from tests.conftest import random_tokens, saved_checkpoints
from tests.models.parity import tiny_transformers
from tests.models.test_gemma_qwen3_parity import FAMILIES as GEMMA_QWEN3
from tests.models.test_gemma_qwen3_parity import make_hf as make_gemma_qwen3
from tests.models.test_gpt2_neox_parity import VARIANTS as GPT2_NEOX
from tests.numerics import assert_close, magnitude

DTYPES = {"bfloat16": (jnp.bfloat16, torch.bfloat16), "float16": (jnp.float16, torch.float16)}

# One checkpoint of each layout: Llama (GQA), Qwen2 (biases), Mistral (sliding window), GPT-2, GPT-NeoX (parallel and
# sequential residual, partial rotary), Gemma 1, 2 (soft-caps), 3 (QK-norm, local rotary base), Qwen3.
CHECKPOINTS = ["gqa", "qwen2", "mistral_window", "gpt2", "neox_parallel", "neox_sequential", *GEMMA_QWEN3]


def make_hf(name: str, seed: int = 0):
    if name in GPT2_NEOX:
        cls_name, kwargs = GPT2_NEOX[name]
        return tiny_transformers(cls_name, kwargs, seed)
    if name in GEMMA_QWEN3:
        return make_gemma_qwen3(name, seed)
    cls_name, overrides = LLAMA_VARIANTS[name]
    return tiny_transformers(cls_name, {**LLAMA_TINY, **overrides}, seed)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (float32 transformers model, saved folder)."""
    return saved_checkpoints(make_hf, tmp_path_factory)


def hf_logits(hf, tokens, dtype) -> np.ndarray:
    low = copy.deepcopy(hf).to(dtype)
    with torch.no_grad():
        return low(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()


# Two computations of one model in a dtype of epsilon eps (ours and transformers', or one of them against float32)
# round at every step to within half an ulp of the values there, and the roundings travel to the logits scaled by
# the magnitudes involved, as in float32 (tests/numerics.py) but with eps 2**-7 (bfloat16) or 2**-10 (float16) in
# place of 2**-23. Measured differences against transformers are 0.5 to 1.5 ulps of the logits' magnitude per block;
# 4 ulps per block (plus 4 for the embedding and unembedding) leaves room for other reduction orders and still
# catches a wrong weight or a missing step, which moves the logits by a good fraction of their size. On models this
# small the float32 steps themselves are below this bound; test_norms_round_from_float32_statistics checks them.
ULPS_PER_BLOCK = 4


def low_bound(logits, n_layers: int, dtype) -> float:
    eps = float(jnp.finfo(dtype).eps)
    return ULPS_PER_BLOCK * (n_layers + 1) * eps * magnitude(logits)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("name", CHECKPOINTS)
def test_logits_match_transformers_in_the_same_dtype(name, dtype, checkpoints):
    jdtype, tdtype = DTYPES[dtype]
    hf, folder = checkpoints(name)
    if name.startswith("gemma") and dtype == "float16":  # trained Gemma checkpoints overflow float16: a warning
        with pytest.warns(UserWarning, match="float16's largest.*bfloat16"):
            model = interp.load(folder, dtype=jdtype)
    else:
        model = interp.load(folder, dtype=jdtype)
    assert model.W_E.dtype == jdtype
    tokens = random_tokens(model.d_vocab, (2, 9), seed=1)
    ours = model(tokens)
    assert ours.dtype == jnp.float32  # logits come out float32 (see interp.models._blocks, "Precision")
    ours, ref = np.asarray(ours), hf_logits(hf, tokens, tdtype)
    bound = low_bound(ref, model.n_layers, jdtype)
    assert_close(ours, ref, bound, f"{name} {dtype} logits")

    # Both sides could be equally wrong: each must also stay near float32. Against float32 the low-dtype model
    # carries its own rounding only (one side of the comparison above), so the same per-block bound applies to
    # ours and to the reference's.
    f32 = hf_logits(hf, tokens, torch.float32)
    bound32 = low_bound(f32, model.n_layers, jdtype)
    print(f"{name} {dtype}: max |logit diff| to transformers {float(np.abs(ours - ref).max()):.3g} (bound "
          f"{bound:.3g}); to float32: ours {float(np.abs(ours - f32).max()):.3g}, transformers' "
          f"{float(np.abs(ref - f32).max()):.3g} (bound {bound32:.3g})")
    assert_close(ours, f32, bound32, f"{name} {dtype} logits against float32")
    assert_close(ref, f32, bound32, f"{name} transformers {dtype} logits against float32")


def param_bytes(model) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(eqx.filter(model, eqx.is_array)))


@pytest.mark.parametrize("name", ["gqa", "gpt2", "neox_parallel", "gemma3"])
def test_bfloat16_parameters_and_cache_take_half_the_memory(name, checkpoints):
    _, folder = checkpoints(name)
    m32, m16 = interp.load(folder), interp.load(folder, dtype=jnp.bfloat16)
    # Only Gemma's norm weights (1 + w, vectors) stay float32 on purpose; everything else halves.
    kept = [x for x in jax.tree.leaves(eqx.filter(m16, eqx.is_array)) if x.dtype == jnp.float32]
    assert all(x.ndim == 1 for x in kept)
    kept_bytes = sum(x.nbytes for x in kept)
    assert (kept_bytes > 0) == name.startswith("gemma")
    assert param_bytes(m16) == (param_bytes(m32) + kept_bytes) // 2
    assert kept_bytes <= 0.05 * param_bytes(m32)  # a few percent even at d_model 32; far less in real models

    tokens = random_tokens(m32.d_vocab, (2, 9), seed=2)
    _, c32 = m32.run_with_cache(tokens)
    _, c16 = m16.run_with_cache(tokens)
    assert set(c16) == set(c32) == set(m32.hook_names)
    # every activation halves except the norms' hook_scale divisors ([B T 1], float32 by design)
    scales = [n for n in c16 if n.endswith("hook_scale")]
    assert all(c16[n].dtype == jnp.float32 for n in scales)
    assert all(c16[n].dtype == jnp.bfloat16 for n in c16 if n not in scales)
    b32 = sum(c32[n].nbytes for n in c32)
    b16 = sum(c16[n].nbytes for n in c16)
    scale_bytes = sum(c16[n].nbytes for n in scales)
    assert b16 == (b32 + scale_bytes) // 2
    assert scale_bytes <= 0.05 * b32


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_norms_round_from_float32_statistics(dtype):
    """A norm in a low dtype equals the float64 computation on the same inputs up to two roundings: the normalized
    value (a hook point, kept in the activation dtype) and the result; statistics and the affine step of a LayerNorm
    or of an RMSNorm with a float32 weight (Gemma's 1 + w) add no rounding of their own."""
    rng = np.random.default_rng(0)
    eps = float(jnp.finfo(dtype).eps)
    # a large common offset, as residual streams carry: statistics in the low dtype would lose most of the spread
    x = jnp.asarray(40.0 + rng.standard_normal((2, 5, 64)), dtype)
    x64 = np.asarray(x, np.float64)
    w, b = 1.0 + 0.3 * rng.standard_normal(64), 0.5 * rng.standard_normal(64)
    centred = x64 - x64.mean(-1, keepdims=True)
    cases = {
        "layernorm": (LayerNorm(jnp.asarray(w, dtype), jnp.asarray(b, dtype), 1e-5), centred, True),
        "rmsnorm": (RMSNorm(jnp.asarray(w, dtype), 1e-5), x64, False),
        "rmsnorm float32 weight": (RMSNorm(jnp.asarray(w, jnp.float32), 1e-5), x64, False),
    }
    for what, (norm, c, has_bias) in cases.items():
        out = norm(x, NOOP, "norm")
        assert out.dtype == dtype, what
        n = c / np.sqrt((c * c).mean(-1, keepdims=True) + 1e-5)
        wn = np.asarray(norm.weight, np.float64) * n
        ref = wn + (np.asarray(norm.bias, np.float64) if has_bias else 0.0)
        # half an ulp for each rounding, of the values rounded (w * n's error comes from n's rounding)
        bound = 0.5 * eps * (np.abs(wn) + np.abs(ref)) * (1 + 1e-3)
        err = np.abs(np.asarray(out, np.float64) - ref)
        assert (err <= bound).all(), f"{what}: worst excess {float((err - bound).max()):.3g}"
