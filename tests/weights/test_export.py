"""save_hf_dir: every family written as a Hugging Face folder that interp.load reads back to the same arrays and
transformers reads with the same logits; transformed models refused; the folder written atomically."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
import torch
import transformers

import interp
from interp.models import gemma, transforms
from interp.weights.export import family_of, hf_tensors
from tests.conftest import make_hf_model, random_tokens
from tests.models import test_gemma_qwen3_parity as gemma_qwen3
from tests.models import test_gpt2_neox_parity as gpt2_neox
from tests.numerics import model_bound
from tests.tiny_chat import tiny_chat_model
from tests.weights.tiny_files import tiny_llama_gguf

# each family and what its config.json must carry beyond the basics: tied heads, biases, Qwen2's q/k/v-only biases,
# sliding windows (Mistral, Qwen3, Gemma 2/3), soft-caps, partial rotary and sequential residuals (GPT-NeoX)
MAKERS = {
    **{v: make_hf_model for v in ("gqa", "tied", "biases", "qwen2", "mistral_window")},
    **{v: gemma_qwen3.make_hf for v in gemma_qwen3.FAMILIES},
    **{v: gpt2_neox.make_hf for v in ("gpt2", "gpt2_layer_scale", "neox_sequential")},
}


def _same_arrays(a, b) -> None:
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb):
        assert np.array_equal(np.asarray(x), np.asarray(y)), jax.tree_util.keystr(path)


def _same_config(a, b) -> None:
    """Equal configs, but for head_dim left unset in one and written out in the other (the same head size)."""
    assert a.d_head == b.d_head
    assert dataclasses.replace(a, **({"head_dim": b.head_dim} if hasattr(a, "head_dim") else {})) == b


def _transformers_logits(folder, tokens) -> np.ndarray:
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        return hf(torch.tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize("variant", list(MAKERS))
def test_round_trip_through_interp_and_transformers(variant, tmp_path):
    MAKERS[variant](variant).save_pretrained(tmp_path / "source")
    model = interp.load(tmp_path / "source")
    folder = interp.save_hf_dir(model, tmp_path / "saved")
    back = interp.load(folder)
    _same_config(back.config, model.config)
    _same_arrays(back, model)
    tokens = random_tokens(model.d_vocab, (2, 11), seed=1)  # longer than the tiny sliding windows
    ours = np.asarray(model(tokens))
    theirs = _transformers_logits(folder, tokens)
    bound = model_bound(theirs, n_layers=model.n_layers)
    assert np.abs(ours - theirs).max() <= bound


def test_tied_head_is_not_written(tmp_path):
    make_hf_model("tied").save_pretrained(tmp_path / "source")
    model = interp.load(tmp_path / "source")
    _, tensors = hf_tensors(model)
    assert "lm_head.weight" not in tensors and "model.embed_tokens.weight" in tensors


def test_tokenizer_and_chat_template_round_trip(tmp_path):
    model = tiny_chat_model(seed=1)
    folder = interp.save_hf_dir(model, tmp_path / "chat")
    back = interp.load(folder)
    tok, new = model.tokenizer, back.tokenizer
    assert (new.chat_template, new.add_bos, new.bos_id, new.eos_id, new.pad_id) == (
        tok.chat_template, tok.add_bos, tok.bos_id, tok.eos_id, tok.pad_id)
    messages = [{"role": "user", "content": "the red fox can run"}]
    text = tok.apply_chat_template(messages)
    assert new.apply_chat_template(messages) == text
    assert new.encode(text) == tok.encode(text)
    _same_arrays(back, model)

    auto = transformers.AutoTokenizer.from_pretrained(folder)
    assert auto.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == text
    assert auto(text, add_special_tokens=True)["input_ids"] == tok.encode(text)
    assert auto.eos_token == "<|im_end|>" and auto.pad_token == "<|im_end|>"
    tokens = np.asarray(tok.encode(text))[None]
    theirs = _transformers_logits(folder, tokens)
    assert np.abs(np.asarray(model(tokens)) - theirs).max() <= model_bound(theirs, n_layers=model.n_layers)


def test_gguf_model_is_saved_in_hugging_face_conventions(tmp_path):
    model = interp.load(tiny_llama_gguf(tmp_path / "tiny.gguf"))  # Q/K rows unpermuted on load
    folder = interp.save_hf_dir(model, tmp_path / "saved")
    _same_arrays(interp.load(folder), model)
    tokens = random_tokens(model.d_vocab, (1, 9), seed=2)
    theirs = _transformers_logits(folder, tokens)
    assert np.abs(np.asarray(model(tokens)) - theirs).max() <= model_bound(theirs, n_layers=model.n_layers)


def test_gemma_norms_stored_as_one_plus_w_are_written_as_w(tmp_path):
    """A Gemma model read from GGUF keeps norm weights 1 + w (norm_offset 0); the folder stores w, as HF does."""
    gemma_qwen3.make_hf("gemma3").save_pretrained(tmp_path / "source")
    model = interp.load(tmp_path / "source")
    config, tensors = hf_tensors(model)
    stored = {k: (v + np.float32(1.0) if k.endswith("norm.weight") else v) for k, v in tensors.items()}
    as_gguf = gemma.from_hf_weights(dataclasses.replace(config, norm_offset=0.0), stored.__getitem__)
    folder = interp.save_hf_dir(as_gguf, tmp_path / "saved")
    assert json.loads((folder / "config.json").read_text())["model_type"] == "gemma3_text"
    back = interp.load(folder)
    _same_config(back.config, model.config)
    for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(model)):  # (1 + w) - 1 + 1 rounds in float32
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=4 * np.finfo(np.float32).eps)


@pytest.mark.parametrize("variant", ["tied", "gpt2"])
def test_transformed_model_is_refused(variant, tmp_path):
    maker = make_hf_model if variant == "tied" else gpt2_neox.make_hf
    maker(variant).save_pretrained(tmp_path / "source")
    folded = transforms.fold_norm_weights(interp.load(tmp_path / "source"))
    cause = "unembed" if variant == "tied" else "b_U"  # an untied copy of the head; a LayerNorm bias folded into b_U
    with pytest.raises(ValueError, match=f"(?s){cause}.*fold_norm_weights"):
        interp.save_hf_dir(folded, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["source"]  # no partial folder left beside it


def _loader_reading(model, monkeypatch, read):
    """Make ``model``'s family loader read its stored tensors through ``read(get, name)``."""
    family = family_of(model.config)
    original = family.from_hf_weights
    monkeypatch.setattr(family, "from_hf_weights",
                        lambda config, get, **kw: original(config, lambda n: read(get, n), **kw))


@pytest.mark.parametrize("how", ["scaled", "read twice"])
def test_loader_that_is_not_a_rearrangement_is_refused(how, tmp_path, monkeypatch):
    """A loader that changes values (a scale) or reads one stored tensor into two places cannot be inverted: the
    save is refused and nothing is written."""
    model = tiny_chat_model(seed=0, n_layers=1, d_model=32)
    names = list(family_of(model.config).hf_weight_shapes(model.config))
    up, gate = (next(n for n in names if part in n) for part in ("up_proj", "gate_proj"))
    if how == "scaled":
        _loader_reading(model, monkeypatch, lambda get, n: get(n) * 0.5 if n == up else get(n))
        cause = "not a plain rearrangement"
    else:
        _loader_reading(model, monkeypatch, lambda get, n: get(gate) if n == up else get(n))
        cause = "exactly once"
    with pytest.raises(ValueError, match=cause):
        interp.save_hf_dir(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_folder_needs_overwrite(tmp_path):
    model = tiny_chat_model(seed=0, n_layers=1, d_model=32)
    other = tiny_chat_model(seed=1, n_layers=1, d_model=32)
    folder = interp.save_hf_dir(model, tmp_path / "m")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        interp.save_hf_dir(other, folder)
    _same_arrays(interp.load(folder), model)  # untouched
    interp.save_hf_dir(other, folder, overwrite=True, extra={"note.txt": "replaced"})
    _same_arrays(interp.load(folder), other)
    assert (folder / "note.txt").read_text() == "replaced"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_default_model_round_trip(default_model, tmp_path):
    """SmolLM2-135M-Instruct (read from its GGUF file) saved and read by interp and transformers: same arrays, same
    tokens for a chat prompt, logits within the float32 bound of 30 blocks."""
    model = default_model
    folder = interp.save_hf_dir(model, tmp_path / "smollm2")
    back = interp.load(folder)
    _same_arrays(back, model)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = model.tokenizer.apply_chat_template(messages)
    assert back.tokenizer.apply_chat_template(messages) == text
    ids = model.tokenizer.encode(text, prepend_bos=False)
    assert back.tokenizer.encode(text, prepend_bos=False) == ids
    auto = transformers.AutoTokenizer.from_pretrained(folder)
    assert auto(text, add_special_tokens=False)["input_ids"] == ids
    assert auto.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == text
    tokens = np.asarray(ids)[None]
    theirs = _transformers_logits(folder, tokens)
    assert np.abs(np.asarray(model(tokens)) - theirs).max() <= model_bound(theirs, n_layers=model.n_layers)
