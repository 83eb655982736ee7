"""The packaged default, SmolLM2-135M-Instruct, against transformers loading the very same GGUF file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import interp
from interp import edits
from interp.models import llama
from tests.conftest import hf_logits_head_zeroed
from tests.numerics import model_bound

PROMPTS = [
    "The capital of France is",
    "When Mary and John went to the store, John gave a drink to",
    "def fibonacci(n):\n    if n < 2:\n        return n",
    "<|im_start|>user\nWhat is the boiling point of water?<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture(scope="module")
def hf_default(default_gguf):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(default_gguf.parent), default_gguf.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return model, tok


def hf_logits(hf, ids) -> np.ndarray:
    with torch.no_grad():
        return hf(torch.tensor(np.asarray(ids), dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_match_transformers_on_the_same_gguf(prompt, default_model, hf_default):
    hf, _ = hf_default
    ids = default_model.to_tokens(prompt)
    ours = np.asarray(default_model(ids))
    ref = hf_logits(hf, ids)
    err, bound = np.abs(ours - ref).max(), model_bound(ref, n_layers=default_model.n_layers)
    assert err <= bound, f"max abs logit diff {err:.3g} > {bound:.3g}"


def test_capital_of_france_is_paris(default_model, hf_default):
    _, tok = hf_default
    (word, p), *_ = default_model.top_next("The capital of France is")
    assert word == " Paris" and p > 0.5
    ids = default_model.to_tokens("The capital of France is")
    assert np.asarray(ids)[0].tolist() == tok("The capital of France is")["input_ids"]


def test_qk_unpermutation_is_what_makes_logits_right(default_model, default_gguf, hf_default):
    """Without undoing llama.cpp's Q/K row order the model still says ' Paris' — only logits tell."""
    from interp.weights.gguf_file import GGUFFile, hf_tensors

    hf, _ = hf_default
    f = GGUFFile(default_gguf)
    tensors = hf_tensors(f, llama)
    n = default_model.config
    for i in range(n.n_layers):  # put the permutation back
        for proj, heads in (("q", n.n_heads), ("k", n.n_kv_heads)):
            w = tensors[f"model.layers.{i}.self_attn.{proj}_proj.weight"]
            rows = w.shape[0]
            tensors[f"model.layers.{i}.self_attn.{proj}_proj.weight"] = (
                w.reshape(heads, 2, rows // heads // 2, -1).swapaxes(1, 2).reshape(w.shape)
            )
    wrong = llama.from_hf_weights(n, tensors.__getitem__, tokenizer=default_model.tokenizer)
    ids = default_model.to_tokens("The capital of France is")
    ref = hf_logits(hf, ids)
    assert wrong.top_next("The capital of France is", k=1)[0][0] == " Paris"
    assert np.abs(np.asarray(wrong(ids)) - ref).max() > 0.1
    assert np.abs(np.asarray(default_model(ids)) - ref).max() <= model_bound(ref, n_layers=n.n_layers)


def test_head_ablation_matches_transformers(default_model, hf_default):
    hf, _ = hf_default
    layer, head = 7, 4
    ids = default_model.to_tokens(PROMPTS[1])
    mask = np.ones(9, np.float32)
    mask[head] = 0
    ours = np.asarray(default_model.run_with_hooks(ids, [(f"blocks.{layer}.attn.hook_z", edits.head_mask, mask)]))
    ref = hf_logits_head_zeroed(hf, ids, layer, head)
    bound = model_bound(ref, n_layers=default_model.n_layers)
    assert np.abs(ours - ref).max() <= bound
    assert np.abs(ours - np.asarray(default_model(ids))).max() > 10 * bound


def test_capture_everything_is_bit_identical_on_the_real_model(default_model):
    ids, mask = default_model.to_tokens(PROMPTS, return_mask=True)
    plain = np.asarray(default_model(ids, attention_mask=mask))
    logits, cache = default_model.run_with_cache(ids, attention_mask=mask)
    np.testing.assert_array_equal(np.asarray(logits), plain)
    assert len(cache) == len(default_model.hook_names) == 1 + 30 * 20 + 2
    # marked any_length, so the edited run pads to the same length bucket as the plain one (an unmarked function
    # runs at the exact length, where float rounding may differ from the padded run)
    identity = [(n, interp.any_length(lambda x, name: x)) for n in default_model.hook_names]
    np.testing.assert_array_equal(np.asarray(default_model.run_with_hooks(ids, identity, attention_mask=mask)), plain)
    patched = [(n, edits.replace, cache[n]) for n in default_model.hook_names]
    np.testing.assert_array_equal(np.asarray(default_model.run_with_hooks(ids, patched, attention_mask=mask)), plain)


def test_tokenizer_matches_transformers_on_english_text(default_model, hf_default, corpus_text):
    _, tok = hf_default
    # transformers' GGUF conversion does not split digits one by one, as SmolLM2's own tokenizer (and
    # llama.cpp's 'smollm' pre-tokenizer) does; compare on text without digits, and check digits apart.
    text = "".join(c for c in corpus_text[:20000] if not c.isdigit())
    ours = default_model.tokenizer.encode(text)
    assert ours == tok(text)["input_ids"]
    assert default_model.to_string(ours) == text
    assert default_model.to_str_tokens("in 1984")[-4:] == ["1", "9", "8", "4"]
    assert default_model.to_tokens("<|im_start|>user").tolist()[0][0] == 1  # special tokens parse as such
    assert default_model.tokenizer.add_bos is False


def test_second_load_uses_cache(default_model, tmp_path, monkeypatch):
    """The converted folder is a normal checkpoint folder: transformers reads it too."""
    from interp.weights import cache_dir, ensure_default

    folder = ensure_default("smollm2-135m")
    assert folder.is_relative_to(cache_dir())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = default_model.to_tokens(PROMPTS[0])
    ref = hf_logits(hf, ids)
    assert np.abs(ref - np.asarray(default_model(ids))).max() <= model_bound(ref, n_layers=default_model.n_layers)


def test_second_load_needs_no_network(default_model, monkeypatch):
    import subprocess

    def no_network(*args, **kwargs):
        raise AssertionError("a cached load must not run pip")

    monkeypatch.setattr(subprocess, "run", no_network)
    again = interp.load("smollm2-135m")
    ids = default_model.to_tokens(PROMPTS[0])
    np.testing.assert_array_equal(np.asarray(again(ids)), np.asarray(default_model(ids)))
