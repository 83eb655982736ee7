"""Gemma 1/2/3 and Qwen3 against Hugging Face transformers on tiny random-init configs: logits and every hook point.

Sequences are longer than the sliding window, so local layers are checked where the window cuts. Each tiny config
turns on what its family adds: Gemma 2 soft-caps scores and logits hard enough to matter, Gemma 3 gives local layers
another rotary base and its global layers linear rope scaling, Qwen3 windows only its upper layers.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import interp
from interp.models import gemma, llama
from tests.conftest import random_tokens, saved_checkpoints
from tests.models.parity import compare_all, tiny_transformers
from tests.numerics import model_bound

WINDOW = 4

TINY = dict(vocab_size=97, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=48, head_dim=8, rms_norm_eps=1e-5, max_position_embeddings=64)

# name -> (transformers config class, overrides)
FAMILIES = {
    "gemma": ("GemmaConfig", {"num_key_value_heads": 1}),
    "gemma2": ("Gemma2Config", {"sliding_window": WINDOW, "query_pre_attn_scalar": 6,
                                "attn_logit_softcapping": 0.5, "final_logit_softcapping": 1.0}),
    "gemma3": ("Gemma3TextConfig", {"sliding_window": WINDOW, "sliding_window_pattern": 2, "query_pre_attn_scalar": 6,
                                    "rope_local_base_freq": 100.0, "rope_theta": 10000.0,
                                    "rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    "qwen3": ("Qwen3Config", {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1}),
}


def make_hf(family: str, seed: int = 0):
    """A tiny random-init transformers causal LM with random norm weights. Gemma norms scale by (1 + w): w around
    -0.4 keeps the residual stream O(1) through the post-norms, as in trained checkpoints."""
    cls_name, overrides = FAMILIES[family]
    centre = -0.4 if family.startswith("gemma") else 1.0
    return tiny_transformers(cls_name, {**TINY, **overrides}, seed, norm_centre=centre)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """family -> (transformers model, our model loaded from its saved folder, folder)."""
    saved = saved_checkpoints(make_hf, tmp_path_factory)
    cache = {}

    def get(family: str):
        if family not in cache:
            hf, folder = saved(family)
            cache[family] = (hf, interp.load(folder), folder)
        return cache[family]

    return get


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_hook_and_logits_match_transformers(family, checkpoint):
    hf, model, _ = checkpoint(family)
    tokens = random_tokens(model.d_vocab, (2, 11), seed=1)  # 11 tokens: longer than the window of 4
    compare_all(model, hf, tokens)
    names = set(model.hook_names)
    has = lambda part: any(part in n for n in names)  # noqa: E731
    assert has(".ln1_post.") == has(".ln2_post.") == (family in ("gemma2", "gemma3"))
    assert has(".q_norm.") == has(".k_norm.") == (family in ("gemma3", "qwen3"))


@pytest.mark.parametrize("family", ["gemma3", "qwen3"])
def test_left_padded_batch_matches_transformers(family, checkpoint):
    hf, model, _ = checkpoint(family)
    lengths = [11, 7, 3]
    T = max(lengths)
    tokens = random_tokens(model.d_vocab, (3, T), seed=2)
    mask = np.zeros((3, T), np.int32)
    for i, n in enumerate(lengths):
        mask[i, T - n:] = 1
    tokens = np.where(mask == 1, tokens, 0).astype(np.int32)
    compare_all(model, hf, tokens, attention_mask=mask, valid=mask)


def test_local_and_global_layers_are_set_up_as_configured(checkpoint):
    _, g2, _ = checkpoint("gemma2")
    _, g3, _ = checkpoint("gemma3")
    _, q3, _ = checkpoint("qwen3")
    assert [b.attn.sliding_window for b in g2.blocks] == [WINDOW, None, WINDOW]  # every other layer local
    assert [b.attn.sliding_window for b in g3.blocks] == [WINDOW, None, WINDOW]  # sliding_window_pattern 2
    assert [b.attn.rope.theta for b in g3.blocks] == [100.0, 10000.0, 100.0]
    assert [b.attn.rope.scaling for b in g3.blocks] == [None, ("linear", 2.0), None]
    assert [b.attn.sliding_window for b in q3.blocks] == [None, WINDOW, WINDOW]  # from max_window_layers on
    assert g2.blocks[0].attn.scale == g3.blocks[0].attn.scale == 6**-0.5
    assert (g2.blocks[0].attn.softcap, g2.logit_softcap) == (0.5, 1.0)
    assert g3.blocks[0].attn.softcap is None and g3.logit_softcap is None
    assert g3.embed.scale == 32**0.5


@pytest.mark.parametrize(
    "family, change",
    [
        ("gemma2", {"sliding_window": None}),
        ("gemma2", {"attn_softcap": None}),
        ("gemma2", {"final_softcap": None}),
        ("gemma3", {"sliding_window": None}),
        ("gemma3", {"rope_local_theta": None}),
        ("gemma3", {"rope_scaling": None}),
        ("gemma3", {"query_pre_attn_scalar": None}),
        ("gemma", {"norm_offset": 0.0}),
        ("qwen3", {"sliding_window": None}),
        ("qwen3", {"qk_norm": False}),
    ],
    ids=lambda v: v if isinstance(v, str) else "no-" + next(iter(v)),
)
def test_each_feature_changes_the_logits(family, change, checkpoint):
    """The parity above is not vacuous: dropping any one feature moves the logits well past the tolerance."""
    from interp.weights.hf import SafetensorsReader, safetensor_files

    hf, model, folder = checkpoint(family)
    module = llama if family == "qwen3" else gemma
    altered = module.from_hf_weights(dataclasses.replace(model.config, **change),
                                     SafetensorsReader(safetensor_files(folder)))
    tokens = random_tokens(model.d_vocab, (1, 11), seed=3)
    with torch.no_grad():
        ref = hf(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    bound = model_bound(ref, n_layers=model.n_layers)
    assert np.abs(np.asarray(model(tokens)) - ref).max() <= bound
    assert np.abs(np.asarray(altered(tokens)) - ref).max() > 10 * bound


def test_configs_from_transformers_4_and_5_agree():
    """config.json as transformers 4.x wrote it (rope_theta, rope_local_base_freq, rope_scaling,
    sliding_window_pattern) reads as the 5.x form (rope_parameters per layer type, layer_types)."""
    import transformers

    legacy = {
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", **TINY, "num_hidden_layers": 7,
        "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0, "sliding_window": 512,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "sliding_window_pattern": 6,
        "query_pre_attn_scalar": 8, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
    }
    current = transformers.Gemma3TextConfig(**{k: v for k, v in legacy.items() if k != "architectures"}).to_dict()
    current["architectures"] = ["Gemma3ForCausalLM"]
    assert "rope_parameters" in current and "rope_local_base_freq" not in current
    a, b = gemma.GemmaConfig.from_hf(legacy), gemma.GemmaConfig.from_hf(current)
    assert a == b
    assert a.sliding_layers == (True,) * 5 + (False, True)
    assert (a.rope_theta, a.rope_scaling, a.rope_local_theta, a.rope_local_scaling) == (
        1e6, ("linear", 8.0), 1e4, None)
    assert gemma.GemmaConfig.from_hf(a.to_hf()) == a
    legacy_qwen3 = {"architectures": ["Qwen3ForCausalLM"], **TINY, "use_sliding_window": False, "sliding_window": 4096}
    assert llama.LlamaConfig.from_hf(legacy_qwen3).sliding_window is None
    assert llama.LlamaConfig.from_hf(legacy_qwen3).qk_norm
