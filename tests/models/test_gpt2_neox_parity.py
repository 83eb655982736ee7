"""GPT-2 and GPT-NeoX parity with Hugging Face transformers on tiny random-init configs: logits and every hook
point, unpadded and left-padded, plus clear errors for config values the families do not support."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import interp
from interp.models import gpt2, neox
from tests.conftest import random_tokens, saved_checkpoints
from tests.models.parity import compare_all, tiny_transformers
from tests.numerics import assert_close, model_bound

_GPT2 = dict(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64, n_inner=48, layer_norm_epsilon=1e-5,
             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
_NEOX = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
             layer_norm_eps=1e-5, max_position_embeddings=64)

# name -> (transformers config class, arguments)
VARIANTS = {
    "gpt2": ("GPT2Config", _GPT2),
    # per-layer score scale 1 / (layer + 1), untied lm_head, tanh-free exact GELU
    "gpt2_layer_scale": ("GPT2Config", {**_GPT2, "scale_attn_by_inverse_layer_idx": True,
                                        "reorder_and_upcast_attn": True, "tie_word_embeddings": False,
                                        "activation_function": "gelu"}),
    "neox_parallel": ("GPTNeoXConfig", {**_NEOX, "rotary_pct": 0.5, "rotary_emb_base": 500.0}),
    # sequential residual, a quarter of a 16-wide head rotated, linear rope scaling
    "neox_sequential": ("GPTNeoXConfig", {**_NEOX, "num_attention_heads": 2, "rotary_pct": 0.25,
                                          "use_parallel_residual": False,
                                          "rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
}


def make_hf(variant: str, seed: int = 0):
    """A tiny random-init transformers model with random LayerNorm weights and biases."""
    cls_name, kwargs = VARIANTS[variant]
    return tiny_transformers(cls_name, kwargs, seed)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """variant -> (transformers model, saved checkpoint folder)."""
    return saved_checkpoints(make_hf, tmp_path_factory)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_hook_and_logits_match_transformers(variant, checkpoints):
    hf, folder = checkpoints(variant)
    model = interp.load(folder)
    family = neox if variant.startswith("neox") else gpt2
    assert isinstance(model.config, family.Config)
    tokens = random_tokens(model.d_vocab, (2, 9), seed=1)
    worst = compare_all(model, hf, tokens)
    print(f"{variant}: max abs diff {worst:.3g}")


@pytest.mark.parametrize("variant", ["gpt2", "neox_parallel"])
def test_left_padded_batch_matches_transformers(variant, checkpoints):
    """Positions count real tokens (``cumsum(mask) - 1``, clipped at 0): transformers gets them explicitly."""
    hf, folder = checkpoints(variant)
    model = interp.load(folder)
    lengths = [10, 6, 3]
    T = max(lengths)
    mask = np.zeros((3, T), np.int32)
    for i, n in enumerate(lengths):
        mask[i, T - n:] = 1
    tokens = np.where(mask == 1, random_tokens(model.d_vocab, (3, T), seed=2), 0).astype(np.int32)
    worst = compare_all(model, hf, tokens, attention_mask=mask, valid=mask)
    print(f"{variant} left-padded: max abs diff {worst:.3g}")
    # and the real tokens see what they see unpadded
    alone = np.asarray(model(tokens[2:, T - 3:]))
    assert_close(np.asarray(model(tokens, attention_mask=mask))[2:, T - 3:], alone,
                 model_bound(alone, n_layers=model.n_layers), "padded vs unpadded logits")


def test_gpt2_reads_unprefixed_tensor_names(checkpoints, tmp_path):
    """openai-community/gpt2's own files name tensors without the ``transformer.`` prefix."""
    import shutil
    from pathlib import Path

    from safetensors.numpy import save_file

    from interp.weights import SafetensorsReader, safetensor_files

    _, folder = checkpoints("gpt2")
    model = interp.load(folder)
    reader = SafetensorsReader(safetensor_files(folder))
    bare = {name.removeprefix("transformer."): reader(name) for name in reader.keys()}
    other = gpt2.from_hf_weights(model.config, bare.__getitem__)
    tokens = random_tokens(model.d_vocab, (1, 6), seed=3)
    np.testing.assert_array_equal(np.asarray(other(tokens)), np.asarray(model(tokens)))
    # and a folder saved that way loads through interp.load
    save_file({k: np.ascontiguousarray(v) for k, v in bare.items()}, str(tmp_path / "model.safetensors"))
    shutil.copy(Path(folder) / "config.json", tmp_path / "config.json")
    np.testing.assert_array_equal(np.asarray(interp.load(tmp_path)(tokens)), np.asarray(model(tokens)))
    with pytest.raises(ValueError, match="learned positions"):
        model(random_tokens(model.d_vocab, (1, model.embed.W_pos.shape[0] + 1)))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_config_round_trip(variant, checkpoints):
    _, folder = checkpoints(variant)
    config = interp.load(folder).config
    assert type(config).from_hf(config.to_hf()) == config


@pytest.mark.parametrize("variant, change, message", [
    ("gpt2", {"add_cross_attention": True}, "add_cross_attention"),
    ("gpt2", {"activation_function": "quick_gelu"}, "activation_function 'quick_gelu'"),
    ("neox_parallel", {"hidden_act": "quick_gelu"}, "hidden_act 'quick_gelu'"),
    ("neox_parallel", {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}},
     "rope type 'dynamic'"),
    ("neox_parallel", {"rope_parameters": {"rope_theta": 10000.0, "partial_rotary_factor": 0.375}},
     "odd rotary dim"),
])
def test_unsupported_config_values_raise_clearly(variant, change, message, checkpoints, tmp_path):
    _, folder = checkpoints(variant)
    copy = tmp_path / "ckpt"
    shutil.copytree(folder, copy)
    cfg = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(ValueError, match=message):
        interp.load(copy)


def test_upcast_attention_needs_float32(checkpoints):
    import jax.numpy as jnp

    _, folder = checkpoints("gpt2_layer_scale")
    with pytest.raises(ValueError, match="reorder_and_upcast_attn.*dtype=float32"):
        interp.load(folder, dtype=jnp.bfloat16)
