"""Tiny GGUF files built from numpy alone (no transformers): through the ``gguf`` writer with chosen metadata and
tensors, or byte by byte for headers no tool would write."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

# a byte-level BPE vocabulary small enough that a GGUF header stays a few hundred bytes
TOKENS = ["<|endoftext|>", "<|im_start|>", *"abcdefghijklmnop ", "ab"]
TOKEN_TYPES = [3, 3] + [1] * (len(TOKENS) - 2)
MERGES = ["a b"]

LLAMA_DIMS = dict(layers=2, d=16, heads=2, kv=1, head_dim=8, mlp=24)


def llama_gguf_tensors(dims=LLAMA_DIMS, vocab=None, seed=0, tied=False) -> dict[str, np.ndarray]:
    """Random float32 tensors of a tiny Llama under GGUF names, in numpy's ``[out, in]`` order (``vocab``: the
    vocabulary's size, that of ``TOKENS`` unless given)."""
    rng, vocab = np.random.default_rng(seed), len(TOKENS) if vocab is None else vocab
    d, e, f = dims["d"], dims["head_dim"], dims["mlp"]
    shapes = {"token_embd.weight": (vocab, d), "output_norm.weight": (d,)}
    if not tied:
        shapes["output.weight"] = (vocab, d)
    for i in range(dims["layers"]):
        shapes.update({
            f"blk.{i}.attn_norm.weight": (d,), f"blk.{i}.ffn_norm.weight": (d,),
            f"blk.{i}.attn_q.weight": (dims["heads"] * e, d), f"blk.{i}.attn_k.weight": (dims["kv"] * e, d),
            f"blk.{i}.attn_v.weight": (dims["kv"] * e, d), f"blk.{i}.attn_output.weight": (d, dims["heads"] * e),
            f"blk.{i}.ffn_gate.weight": (f, d), f"blk.{i}.ffn_up.weight": (f, d), f"blk.{i}.ffn_down.weight": (d, f),
        })
    return {k: (0.3 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}


def llama_gguf_meta(dims=LLAMA_DIMS) -> dict:
    """GGUF metadata of the tiny Llama, as ``{key: value}`` (ints as uint32, floats as float32)."""
    return {
        "llama.block_count": dims["layers"], "llama.context_length": 64, "llama.embedding_length": dims["d"],
        "llama.feed_forward_length": dims["mlp"], "llama.attention.head_count": dims["heads"],
        "llama.attention.head_count_kv": dims["kv"], "llama.rope.freq_base": 10000.0,
        "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.rope.dimension_count": dims["head_dim"],
        "llama.vocab_size": len(TOKENS), "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": TOKENS, "tokenizer.ggml.token_type": TOKEN_TYPES, "tokenizer.ggml.merges": MERGES,
        "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 0,
    }


def write_gguf(path: Path, meta: dict, tensors: dict[str, np.ndarray], arch: str = "llama", raw_types=None) -> Path:
    """A GGUF file through the ``gguf`` package's writer. ``meta`` values: int (uint32), float (float32), str,
    bool, or lists of those; a value given as ``(GGUFValueType, value)`` is written with that type.
    ``raw_types`` maps tensor names to a ``GGMLQuantizationType`` to store the array's bytes under."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch=arch)
    scalar = {bool: gguf.GGUFValueType.BOOL, int: gguf.GGUFValueType.UINT32, float: gguf.GGUFValueType.FLOAT32,
              str: gguf.GGUFValueType.STRING}
    for key, value in meta.items():
        if isinstance(value, tuple):
            w.add_key_value(key, value[1], value[0])
        elif isinstance(value, list):
            w.add_key_value(key, value, gguf.GGUFValueType.ARRAY)
        else:
            w.add_key_value(key, value, scalar[type(value)])
    for name, t in tensors.items():
        raw = (raw_types or {}).get(name)
        w.add_tensor(name, t, raw_dtype=raw) if raw is not None else w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tiny_llama_gguf(path: Path, *, meta=None, edit=None, seed=0, tied=False) -> Path:
    """The tiny Llama as a GGUF file; ``meta`` overrides keys (None removes one), ``edit(tensors)`` changes tensors."""
    m = {**llama_gguf_meta(), **(meta or {})}
    tensors = llama_gguf_tensors(seed=seed, tied=tied)
    if edit is not None:
        edit(tensors)
    return write_gguf(path, {k: v for k, v in m.items() if v is not None}, tensors)


def gguf_bytes(kvs: list[tuple[str, int, bytes]], tensor_infos: bytes = b"", n_tensors: int = 0,
               n_kv: int | None = None, version: int = 3) -> bytes:
    """A GGUF header written byte by byte: ``kvs`` are ``(key, value type, encoded value)``; counts may lie."""
    out = b"GGUF" + struct.pack("<IQQ", version, n_tensors, len(kvs) if n_kv is None else n_kv)
    for key, vtype, value in kvs:
        k = key.encode()
        out += struct.pack("<Q", len(k)) + k + struct.pack("<I", vtype) + value
    return out + tensor_infos


def gguf_string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b
