"""Checkpoint files that do not match their config, damaged configs and tokenizers, and hostile GGUF headers are
refused with a ValueError that names the file, the field or tensor, and what would fix it."""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import signal
import struct
import tracemalloc

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import interp
from interp.models import gemma, gpt2, llama, neox
from tests.conftest import random_tokens
from tests.weights.tiny_files import (
    MERGES,
    TOKEN_TYPES,
    TOKENS,
    gguf_bytes,
    gguf_string,
    llama_gguf_meta,
    llama_gguf_tensors,
    tiny_llama_gguf,
    write_gguf,
)

U8, U32, STRING, ARRAY = 0, 4, 8, 9  # GGUF value types


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail (instead of hanging the suite) when the body runs longer than ``seconds``."""
    def stop(*_):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def edited(folder, dest, *, config=None, tensors=None):
    """A copy of checkpoint ``folder`` with config.json fields replaced (``...`` deletes one) and tensors edited by
    ``tensors(dict) -> None``."""
    shutil.copytree(folder, dest)
    if config:
        cfg = json.loads((dest / "config.json").read_text())
        for k, v in config.items():
            cfg.pop(k) if v is ... else cfg.__setitem__(k, v)
        (dest / "config.json").write_text(json.dumps(cfg))
    if tensors:
        st = dest / "model.safetensors"
        t = load_file(str(st))
        tensors(t)
        save_file({k: np.ascontiguousarray(v) for k, v in t.items()}, str(st))
    return dest


def _set(name, value):
    return lambda t: t.__setitem__(name, value(t[name]) if callable(value) else value)


# ---------------------------------------------------------------------------------------------- tensors vs config
@pytest.mark.parametrize("name, value, found, expected", [
    ("model.norm.weight", np.ones(1, np.float32), r"\[1\]", r"\[32\]"),  # would broadcast
    # the same number of elements as [32, 32]: a reshape would take it silently
    ("model.layers.0.self_attn.q_proj.weight", lambda w: w.reshape(16, 64), r"\[16, 64\]", r"\[32, 32\]"),
    ("model.layers.1.mlp.down_proj.weight", lambda w: w.T, r"\[48, 32\]", r"\[32, 48\]"),
])
def test_tensor_shapes_must_match_the_config(hf_checkpoints, tmp_path, name, value, found, expected):
    _, folder = hf_checkpoints("gqa")
    bad = edited(folder, tmp_path / "bad", tensors=_set(name, value))
    with pytest.raises(ValueError, match=rf"(?s)model.safetensors.*'{name}'.*{found}.*config.json.*{expected}"):
        interp.load(bad)


@pytest.mark.parametrize("name, value, dtype", [
    ("model.layers.0.self_attn.q_proj.weight", lambda w: w.view(np.int32), "I32"),  # float bytes labelled I32
    ("model.embed_tokens.weight", lambda w: w.astype(np.int64), "I64"),
    ("model.norm.weight", lambda w: w > 0, "BOOL"),
])
def test_integer_tensors_are_refused(hf_checkpoints, tmp_path, name, value, dtype):
    _, folder = hf_checkpoints("gqa")
    bad = edited(folder, tmp_path / "bad", tensors=_set(name, value))
    with pytest.raises(ValueError, match=rf"(?s)model.safetensors.*'{name}'.*{dtype}.*floating point"):
        interp.load(bad)


def test_fewer_layers_in_config_than_in_the_weights(hf_checkpoints, tmp_path):
    _, folder = hf_checkpoints("gqa")
    bad = edited(folder, tmp_path / "bad", config={"num_hidden_layers": 1})
    with pytest.raises(ValueError, match=r"(?s)\d+ tensors.*config.json does not account for.*model.layers.1\."):
        interp.load(bad)


def test_other_head_split_in_config(hf_checkpoints, tmp_path):
    _, folder = hf_checkpoints("mha")  # 4 heads of 8; config.json says 8 heads (head_dim stays 8)
    bad = edited(folder, tmp_path / "bad", config={"num_attention_heads": 8, "num_key_value_heads": 8})
    with pytest.raises(ValueError, match=r"(?s)q_proj.weight.*\[32, 32\].*\[64, 32\]"):
        interp.load(bad)


def test_tied_checkpoint_with_a_stored_head_and_rotary_buffers_loads(hf_checkpoints, tmp_path):
    """Files transformers wrote in other versions: a tied head saved anyway, rotary inv_freq buffers."""
    _, folder = hf_checkpoints("tied")

    def add(t):
        t["lm_head.weight"] = t["model.embed_tokens.weight"].copy()
        t["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)

    ok = edited(folder, tmp_path / "ok", tensors=add)
    tokens = random_tokens(97, (1, 5))
    np.testing.assert_array_equal(np.asarray(interp.load(ok)(tokens)), np.asarray(interp.load(folder)(tokens)))


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    import torch
    import transformers

    cfg = transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=32, n_inner=24)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(cfg)
    folder = tmp_path_factory.mktemp("gpt2")
    hf.save_pretrained(folder)
    return folder


def test_gpt2_unprefixed_names_and_attention_buffers_load(gpt2_folder, tmp_path):
    """openai-community/gpt2's own file: no ``transformer.`` prefix, causal-mask buffers stored."""
    def strip(t):
        for k in list(t):
            t[k.removeprefix("transformer.")] = t.pop(k)
        t["h.0.attn.bias"] = np.tril(np.ones((1, 1, 32, 32), np.float32))
        t["h.0.attn.masked_bias"] = np.array(-1e4, np.float32)

    ok = edited(gpt2_folder, tmp_path / "ok", tensors=strip)
    tokens = random_tokens(50, (1, 5))
    np.testing.assert_array_equal(np.asarray(interp.load(ok)(tokens)), np.asarray(interp.load(gpt2_folder)(tokens)))
    bad = edited(ok, tmp_path / "bad", tensors=_set("h.1.attn.c_attn.weight", lambda w: w.reshape(48, 16)))
    with pytest.raises(ValueError, match=r"(?s)'h.1.attn.c_attn.weight'.*\[48, 16\].*\[16, 48\]"):
        interp.load(bad)


# ---------------------------------------------------------------------------------------------- GGUF vs metadata
def test_gguf_tensor_shapes_must_match_the_metadata(tmp_path):
    path = tiny_llama_gguf(tmp_path / "norm.gguf", edit=_set("blk.1.attn_norm.weight", np.ones(1, np.float32)))
    with pytest.raises(ValueError, match=r"(?s)norm.gguf.*blk.1.attn_norm.weight.*\[1\].*metadata.*\[16\]"):
        interp.load(path)
    path = tiny_llama_gguf(tmp_path / "heads.gguf", meta={"llama.attention.head_count": 4})
    with pytest.raises(ValueError, match=r"(?s)heads.gguf.*blk.0.attn_q.weight.*\[16, 16\].*\[32, 16\]"):
        interp.load(path)


def test_gguf_layer_count_must_match_the_tensors(tmp_path):
    fewer = tiny_llama_gguf(tmp_path / "fewer.gguf", meta={"llama.block_count": 1})
    with pytest.raises(ValueError, match=r"(?s)fewer.gguf.*does not account for.*blk.1"):
        interp.load(fewer)
    more = tiny_llama_gguf(tmp_path / "more.gguf", meta={"llama.block_count": 3})
    with pytest.raises(ValueError, match=r"(?s)more.gguf.*lacks \d+ tensors.*model.layers.2"):
        interp.load(more)


def test_gguf_integer_tensors_are_refused(tmp_path):
    import gguf

    path = tmp_path / "int.gguf"
    tensors = llama_gguf_tensors()
    tensors["blk.0.ffn_up.weight"] = tensors["blk.0.ffn_up.weight"].view(np.int32)
    write_gguf(path, llama_gguf_meta(), tensors, raw_types={"blk.0.ffn_up.weight": gguf.GGMLQuantizationType.I32})
    with pytest.raises(ValueError, match=r"(?s)int.gguf.*blk.0.ffn_up.weight.*I32.*floating point"):
        interp.load(path)


@pytest.mark.parametrize("key, value, message", [
    ("llama.embedding_length", None, r"'llama.embedding_length' is missing"),
    ("llama.block_count", "two", r"'llama.block_count' must be a positive integer, got 'two'"),
    ("llama.attention.layer_norm_rms_epsilon", -1.0, r"'llama.attention.layer_norm_rms_epsilon' must be a positive"),
    ("tokenizer.ggml.tokens", None, r"'tokenizer.ggml.tokens' is missing"),
    ("tokenizer.ggml.bos_token_id", 999, r"'tokenizer.ggml.bos_token_id' .*999.*20 tokens"),
    ("tokenizer.ggml.token_type", [1, 1], r"'tokenizer.ggml.token_type' .*2 .*20"),
])
def test_gguf_metadata_is_validated(tmp_path, key, value, message):
    path = tiny_llama_gguf(tmp_path / "meta.gguf", meta={key: value})
    with pytest.raises(ValueError, match=rf"(?s)meta.gguf.*{message}"):
        interp.load(path)


def test_gguf_sentencepiece_pieces_are_bounded(tmp_path):
    """Building merges costs a piece's length squared: one huge piece must not stall the load."""
    path = tiny_llama_gguf(tmp_path / "long.gguf", meta={
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.merges": None,
        "tokenizer.ggml.tokens": [*TOKENS[:-1], "ab" * 100_000]})
    with deadline(10), pytest.raises(ValueError, match=r"(?s)long.gguf.*'tokenizer.ggml.tokens' .*200000 characters"):
        interp.load(path)


# ---------------------------------------------------------------------------------------------- hostile GGUF headers
def _hostile(tmp_path, name, data):
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(data)
    return path


HOSTILE = {
    # 113 bytes whose one array claims 10**8 elements
    "huge_array": (gguf_bytes([("general.architecture", STRING, gguf_string("llama")),
                               ("tokenizer.ggml.token_type", ARRAY, struct.pack("<IQ", U8, 10**8) + b"\0" * 40)]),
                   r"'tokenizer.ggml.token_type'.*10+ .*bytes"),
    "huge_string": (gguf_bytes([("general.name", STRING, struct.pack("<Q", 2**62) + b"abc")]),
                    r"'general.name'.*string of 4611686018427387904 bytes"),
    "huge_string_array": (gguf_bytes([("tokenizer.ggml.tokens", ARRAY, struct.pack("<IQ", STRING, 2**40))]),
                          r"'tokenizer.ggml.tokens'.*1099511627776"),
    "huge_kv_count": (gguf_bytes([("general.architecture", STRING, gguf_string("llama"))], n_kv=2**60),
                      r"1152921504606846976 key"),
    "huge_tensor_count": (gguf_bytes([], n_tensors=2**50), r"1125899906842624 tensors"),
    "huge_key": (b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 2**63) + b"x" * 20, r"key of 9223372036854775808 bytes"),
    "bad_value_type": (gguf_bytes([("general.architecture", 99, b"\0" * 16)]),
                       r"'general.architecture'.*value type 99"),
    "bad_utf8_key": (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + gguf_string(b"bad\xff") + struct.pack("<II", U32, 1),
                     r"key b'bad\\xff' is not valid UTF-8"),
    "huge_tensor": (gguf_bytes([("general.architecture", STRING, gguf_string("llama"))], n_tensors=1,
                               tensor_infos=gguf_string("t") + struct.pack("<I2QIQ", 2, 2**31, 2**31, 0, 0)),
                    r"'t'.*bytes"),
    "tensor_past_end": (gguf_bytes([("general.architecture", STRING, gguf_string("llama"))], n_tensors=1,
                                   tensor_infos=gguf_string("t") + struct.pack("<I1QIQ", 1, 4, 0, 4096)),
                        r"'t'.*ends at byte"),
    "tensor_many_dims": (gguf_bytes([], n_tensors=1,
                                    tensor_infos=gguf_string("t") + struct.pack("<I", 2**31) + b"\0" * 64),
                         r"'t'.*2147483648 dimensions"),
    "nested_arrays": (gguf_bytes([("x", ARRAY, struct.pack("<IQ", ARRAY, 1) * 100 + struct.pack("<IQ", U8, 0))]),
                      r"'x'.*nested"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_gguf_header_is_refused_quickly(tmp_path, name):
    data, message = HOSTILE[name]
    path = _hostile(tmp_path, name, data)
    tracemalloc.start()
    try:
        with deadline(10), pytest.raises(ValueError, match=rf"(?s){name}.gguf.*{message}"):
            interp.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20


def test_magic_check_reads_only_the_header(tmp_path):
    big = tmp_path / "weights.bin"
    with open(big, "wb") as fh:  # sparse: costs no disk
        fh.truncate(256 * 2**20)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="cannot tell what kind of checkpoint"):
            interp.load(big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20


# ---------------------------------------------------------------------------------------------- config.json
@pytest.mark.parametrize("field, value, message", [
    ("hidden_size", ..., r"field 'hidden_size' is missing"),
    ("hidden_size", "abc", r"field 'hidden_size' must be a positive integer, got 'abc'"),
    ("hidden_size", [32], r"field 'hidden_size' must be a positive integer, got \[32\]"),
    ("hidden_size", 32.5, r"field 'hidden_size' must be a positive integer, got 32.5"),
    ("hidden_size", True, r"field 'hidden_size' must be a positive integer, got True"),
    ("num_hidden_layers", -1, r"field 'num_hidden_layers' must be a positive integer, got -1"),
    ("vocab_size", 0, r"field 'vocab_size' must be a positive integer, got 0"),
    ("num_key_value_heads", 3, r"n_heads=4 must be a multiple of n_kv_heads=3"),
    ("rms_norm_eps", -1, r"field 'rms_norm_eps' must be a positive finite number, got -1"),
    ("rms_norm_eps", 0, r"field 'rms_norm_eps' must be a positive finite number, got 0"),
    ("rms_norm_eps", math.nan, r"field 'rms_norm_eps' must be a positive finite number, got nan"),
    ("rms_norm_eps", "1e-5", r"field 'rms_norm_eps' must be a positive finite number, got '1e-5'"),
    ("tie_word_embeddings", "false", r"field 'tie_word_embeddings' must be true or false, got 'false'"),
    ("eos_token_id", "2", r"field 'eos_token_id' must be a token id"),
    ("rope_scaling", "linear", r"field 'rope_scaling' must be an object"),
    ("rope_scaling", {"rope_type": "linear"}, r"field 'rope_scaling.factor' is missing"),
    ("architectures", "LlamaForCausalLM", r"field 'architectures' must be a list"),
])
def test_llama_config_fields_are_validated(hf_checkpoints, tmp_path, field, value, message):
    _, folder = hf_checkpoints("gqa")
    bad = edited(folder, tmp_path / "bad", config={field: value})
    with pytest.raises(ValueError, match=rf"{re.escape(str(bad / 'config.json'))}: {message}"):
        interp.load(bad)


def test_config_json_must_be_an_object(hf_checkpoints, tmp_path):
    _, folder = hf_checkpoints("gqa")
    bad = edited(folder, tmp_path / "bad")
    (bad / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"config.json must hold a JSON object"):
        interp.load(bad)


@pytest.mark.parametrize("family, cfg, field, value", [
    (gpt2, {**gpt2.GPT2Config(50, 16, 2, 2, 24).to_hf()}, "n_embd", "16"),
    (gpt2, {**gpt2.GPT2Config(50, 16, 2, 2, 24).to_hf()}, "layer_norm_epsilon", 0.0),
    (gpt2, {**gpt2.GPT2Config(50, 16, 2, 2, 24).to_hf()}, "n_inner", -4),
    (neox, {**neox.NeoXConfig(50, 16, 2, 2, 24).to_hf()}, "hidden_size", 16.0),
    (neox, {**neox.NeoXConfig(50, 16, 2, 2, 24).to_hf()}, "layer_norm_eps", math.inf),
    (gemma, {**gemma.GemmaConfig(2, 50, 16, 2, 2, 1, 24, head_dim=8, sliding_window=4,
                                 sliding_layers=(True, False)).to_hf()}, "rms_norm_eps", -1e-6),
    (gemma, {**gemma.GemmaConfig(2, 50, 16, 2, 2, 1, 24, head_dim=8, sliding_window=4,
                                 sliding_layers=(True, False)).to_hf()}, "head_dim", 0),
    (gemma, {**gemma.GemmaConfig(2, 50, 16, 2, 2, 1, 24, head_dim=8, sliding_window=4,
                                 sliding_layers=(True, False)).to_hf()}, "layer_types", ["full_attention"]),
    (llama, llama.LlamaConfig(50, 16, 2, 2, 1, 24).to_hf(), "rope_theta", -1.0),
])
def test_every_family_validates_its_config(family, cfg, field, value):
    with pytest.raises(ValueError, match=rf"/x/config.json: .*'{field}'"):
        family.Config.from_hf({**cfg, field: value}, where="/x/config.json")


@pytest.mark.parametrize("make", [
    lambda eps: llama.LlamaConfig(50, 16, 2, 2, 1, 24, rms_eps=eps),
    lambda eps: gpt2.GPT2Config(50, 16, 2, 2, 24, ln_eps=eps),
    lambda eps: neox.NeoXConfig(50, 16, 2, 2, 24, ln_eps=eps),
    lambda eps: gemma.GemmaConfig(1, 50, 16, 2, 2, 1, 24, rms_eps=eps),
])
@pytest.mark.parametrize("eps", [0.0, -1e-5, math.nan, math.inf])
def test_configs_refuse_a_bad_epsilon(make, eps):
    with pytest.raises(ValueError, match=r"eps must be a positive finite number"):
        make(eps)


# ---------------------------------------------------------------------------------------------- tokenizer.json
@pytest.fixture(scope="module")
def folder_with_tokenizer(hf_checkpoints, tmp_path_factory):
    _, folder = hf_checkpoints("gqa")
    out = tmp_path_factory.mktemp("tok") / "ckpt"
    shutil.copytree(folder, out)
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": TOKENS, "tokenizer.ggml.token_type": TOKEN_TYPES,
            "tokenizer.ggml.merges": MERGES, "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 0}
    interp.Tokenizer.from_gguf_metadata(meta).save(out / "tokenizer.json")
    assert interp.load(out).tokenizer is not None
    return out


@pytest.mark.parametrize("damage", [
    lambda data: data[: len(data) // 2],  # cut short: not JSON
    lambda data: json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": 5}}).encode(),  # JSON it cannot read
    lambda data: b"\xff\xfe" + data,  # not UTF-8
])
def test_corrupt_tokenizer_json_is_named(folder_with_tokenizer, tmp_path, damage):
    bad = tmp_path / "bad"
    shutil.copytree(folder_with_tokenizer, bad)
    tok = bad / "tokenizer.json"
    tok.write_bytes(damage(tok.read_bytes()))
    with pytest.raises(ValueError, match=rf"(?s)cannot read the tokenizer {re.escape(str(tok))}.*remove it"):
        interp.load(bad)


def test_corrupt_tokenizer_config_is_named(folder_with_tokenizer, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(folder_with_tokenizer, bad)
    (bad / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match=rf"{re.escape(str(bad / 'tokenizer_config.json'))} is not valid JSON"):
        interp.load(bad)
