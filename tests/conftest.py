"""Shared fixtures: tiny random-init Hugging Face checkpoints built locally, and the packaged default model."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")

TINY = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            intermediate_size=48, rms_norm_eps=1e-5, max_position_embeddings=64)

# name -> (config class, overrides)
VARIANTS = {
    "mha": ("LlamaConfig", {}),
    "gqa": ("LlamaConfig", {"num_key_value_heads": 2}),
    "mqa": ("LlamaConfig", {"num_key_value_heads": 1}),
    "tied": ("LlamaConfig", {"tie_word_embeddings": True, "num_key_value_heads": 2}),
    "head_dim": ("LlamaConfig", {"head_dim": 16, "num_key_value_heads": 2}),
    "biases": ("LlamaConfig", {"attention_bias": True, "mlp_bias": True}),
    "llama3_rope": ("LlamaConfig", {"num_key_value_heads": 2, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}, "rope_theta": 500000.0}),
    "qwen2": ("Qwen2Config", {"num_key_value_heads": 2, "tie_word_embeddings": False}),
    "mistral_window": ("MistralConfig", {"num_key_value_heads": 2, "sliding_window": 5}),
}


def make_hf_model(variant: str, seed: int = 0, **overrides):
    """A tiny random-init ``transformers`` causal LM (eager attention), with random norm weights and biases
    so that every weight has a visible effect."""
    import torch
    import transformers

    cls_name = VARIANTS[variant][0]
    cfg = getattr(transformers, cls_name)(**{**TINY, **VARIANTS[variant][1], **overrides}, initializer_range=0.1)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model


def saved_checkpoints(make, tmp_path_factory):
    """``get(variant) -> (transformers model, folder it is saved in)``, built by ``make(variant)`` once each."""
    cache = {}

    def get(variant: str):
        if variant not in cache:
            model = make(variant)
            folder = tmp_path_factory.mktemp(f"hf-{variant}")
            model.save_pretrained(folder, safe_serialization=True)
            cache[variant] = (model, folder)
        return cache[variant]

    return get


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory):
    """variant -> (transformers model, saved checkpoint folder)."""
    return saved_checkpoints(make_hf_model, tmp_path_factory)


@pytest.fixture(scope="session")
def tiny3(tmp_path_factory):
    """A tiny three-layer GQA model (interp), for tools that need more than two layers."""
    import interp

    hf = make_hf_model("gqa", seed=3, num_hidden_layers=3)
    folder = tmp_path_factory.mktemp("hf-gqa3")
    hf.save_pretrained(folder, safe_serialization=True)
    return interp.load(folder)


@pytest.fixture(scope="session")
def default_model():
    """The packaged SmolLM2-135M-Instruct (fetched and converted into the user cache on first use)."""
    import interp

    return interp.load("smollm2-135m")


@pytest.fixture(scope="session")
def default_gguf():
    from interp.weights import default_gguf_path

    return default_gguf_path("smollm2-135m")


def random_tokens(vocab: int, shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=shape).astype(np.int32)


CORPORA = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data" / "corpora"


@pytest.fixture(scope="session")
def corpus_text() -> str:
    """Real English text: WikiText-2 validation split from the shared corpora (a built-in text if absent)."""
    path = CORPORA / "wikitext2" / "valid.txt"
    if path.exists():
        return path.read_text(encoding="utf-8")
    import pydoc_data.topics

    return "\n".join(pydoc_data.topics.topics.values())


def hf_logits_head_zeroed(hf, tokens, layer: int, head: int) -> np.ndarray:
    """transformers' logits with the ``o_proj`` input columns of one head zeroed (the reference ablation)."""
    import torch

    E = getattr(hf.config, "head_dim", None) or hf.config.hidden_size // hf.config.num_attention_heads

    def zero_head(mod, args):
        x = args[0].clone()
        x[..., head * E:(head + 1) * E] = 0.0
        return (x,)

    h = hf.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(zero_head)
    try:
        with torch.no_grad():
            return hf(torch.tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()
    finally:
        h.remove()


def random_transcoders(model, width=24, k=4, seed=0):
    """Random-init TopK transcoders for every layer of ``model`` (first position skipped)."""
    import jax

    from interp import sae
    from interp.circuits import graph as G

    ds = []
    for l in range(model.n_layers):
        cfg = sae.TopKConfig(d_in=model.d_model, width=width, k=k, hook_name=G.HOOK_IN.format(layer=l),
                             hook_name_out=G.HOOK_OUT.format(layer=l))
        ds.append(sae.create(cfg, jax.random.key(seed + l)))
    return G.Transcoders(tuple(ds), skip_positions=1)
