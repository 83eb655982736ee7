"""Both loaders under randomly damaged files: every mutated checkpoint folder or GGUF file either loads into a model
of the original shapes or is refused with a ValueError / FileNotFoundError that names the file, quickly and without
large allocations."""

from __future__ import annotations

import json
import math
import resource
import shutil
import struct
import time

import equinox as eqx
import jax
import numpy as np
import pytest

import interp
from tests.conftest import make_hf_model
from tests.reliability.test_model_files import deadline
from tests.weights.tiny_files import MERGES, TOKEN_TYPES, TOKENS, tiny_llama_gguf

SEED = 20261128
CASE_SECONDS = 10  # a case that runs longer has hung
RSS_GROWTH_MB = 300  # over the whole run; one bad allocation from a lying header is far larger
JSON_VALUES = [None, ..., -1, 0, 1, 3, 2**40, 2**63, 1.5, -0.0, math.nan, math.inf, "abc", "", [], [1, 2], {}, True,
               False]
INTERESTING = [0, 1, 2, 3, 255, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 10**8, 2**62, 2**63, 2**64 - 1]


def signature(model) -> dict[str, tuple]:
    """Every array of the model by path, with its shape."""
    leaves = jax.tree_util.tree_flatten_with_path(eqx.filter(model, eqx.is_array))[0]
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in leaves}


def same_shapes(model, base: dict) -> bool:
    sig = signature(model)
    common = sig.keys() & base.keys()
    # a config that ties the head drops the unembedding (transformers ties it too); nothing else may change
    only = {k for k in sig.keys() ^ base.keys() if "unembed" not in k}
    return not only and all(sig[k] == base[k] for k in common)


# ---------------------------------------------------------------------------------------------- mutations
def flip_bytes(data: bytes, rng, region: int) -> bytes:
    b = bytearray(data)
    for _ in range(rng.integers(1, 4)):
        i = int(rng.integers(0, min(region, len(b))))
        b[i] = int(rng.integers(0, 256))
    return bytes(b)


def truncate(data: bytes, rng, region: int) -> bytes:
    end = min(region, len(data)) if rng.random() < 0.7 else len(data)  # mostly inside the header
    return data[: int(rng.integers(0, end))]


def mutate_safetensors_header(data: bytes, rng) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    name = rng.choice(sorted(k for k in header if k != "__metadata__"))
    info = header[name]
    what = rng.integers(0, 4)
    if what == 0:
        info["shape"] = [int(d) + int(rng.integers(-1, 2)) for d in info["shape"]] or [2]
    elif what == 1:
        info["dtype"] = str(rng.choice(["F16", "BF16", "I32", "I64", "U8", "BOOL", "F64", "XX"]))
    elif what == 2:
        info["data_offsets"] = [int(x) + int(rng.integers(-8, 9)) for x in info["data_offsets"]]
    else:
        header[name + ".extra" if rng.random() < 0.5 else "model.layers.9.mlp.up_proj.weight"] = dict(info)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + n:]


def mutate_folder(src, dest, rng) -> str:
    shutil.copytree(src, dest)
    kind = int(rng.integers(0, 9))
    st, cfg_path, tok = dest / "model.safetensors", dest / "config.json", dest / "tokenizer.json"
    data = st.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    if kind == 0:
        st.write_bytes(flip_bytes(data, rng, 8 + n))
    elif kind == 1:
        st.write_bytes(flip_bytes(data, rng, len(data)))
    elif kind == 2:
        st.write_bytes(truncate(data, rng, 8 + n))
    elif kind == 3:
        st.write_bytes(mutate_safetensors_header(data, rng))
    elif kind in (4, 5):
        cfg = json.loads(cfg_path.read_text())
        key = str(rng.choice(sorted(cfg)))
        value = JSON_VALUES[int(rng.integers(0, len(JSON_VALUES)))]
        cfg.pop(key) if value is ... else cfg.__setitem__(key, value)
        cfg_path.write_text(json.dumps(cfg))
        return f"config.json {key}={value!r}"
    elif kind == 6:
        text = cfg_path.read_bytes()
        cfg_path.write_bytes(flip_bytes(text, rng, len(text)) if rng.random() < 0.5 else truncate(text, rng, len(text)))
    elif kind == 7:
        text = tok.read_bytes()
        tok.write_bytes(flip_bytes(text, rng, len(text)) if rng.random() < 0.5 else truncate(text, rng, len(text)))
    else:
        (dest / "tokenizer_config.json").write_bytes(
            bytes(rng.choice([b"{", b"[]", b'{"bos_token": 5}', b'{"eos_token": {"content": 3}}', b"\xff"])))
    return f"mutation {kind}"


def header_fields(path) -> list[tuple[int, int]]:
    """(offset, width) of every length, count, type, dimension and offset field of a valid GGUF header."""
    import gguf

    r = gguf.GGUFReader(str(path))
    base = r.data.__array_interface__["data"][0]
    out = []
    for parts in [f.parts for f in r.fields.values()] + [t.field.parts for t in r.tensors]:
        for part in parts:
            if part.dtype.itemsize in (4, 8) and part.size <= 4:
                start = part.__array_interface__["data"][0] - base
                out += [(start + i * part.dtype.itemsize, part.dtype.itemsize) for i in range(part.size)]
    return out


def mutate_gguf(data: bytes, fields, header_end: int, rng) -> bytes:
    kind = int(rng.integers(0, 4))
    if kind == 0:
        return flip_bytes(data, rng, header_end)
    if kind == 1:
        return truncate(data, rng, header_end)
    b = bytearray(data)
    for _ in range(1 if kind == 2 else 3):
        pos, width = fields[int(rng.integers(0, len(fields)))]
        value = INTERESTING[int(rng.integers(0, len(INTERESTING)))] if rng.random() < 0.7 else int(
            struct.unpack_from("<Q" if width == 8 else "<I", b, pos)[0]) + int(rng.integers(-2, 3))
        b[pos:pos + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
    return bytes(b)


# ---------------------------------------------------------------------------------------------- bases
@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-bases")
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": TOKENS, "tokenizer.ggml.token_type": TOKEN_TYPES,
            "tokenizer.ggml.merges": MERGES, "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 0}
    tokenizer = interp.Tokenizer.from_gguf_metadata(meta)
    folders = []
    for name, hf in (("llama", make_hf_model("gqa", vocab_size=len(TOKENS))), ("gpt2", _tiny_gpt2())):
        folder = root / name
        hf.save_pretrained(folder)
        tokenizer.save(folder / "tokenizer.json")
        folders.append(folder)
    ggufs = [tiny_llama_gguf(root / "bpe.gguf"),
             tiny_llama_gguf(root / "spm.gguf", tied=True, meta={"tokenizer.ggml.model": "llama",
                                                                 "tokenizer.ggml.merges": None})]
    return folders, ggufs


def _tiny_gpt2():
    import torch
    import transformers

    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=len(TOKENS), n_embd=16, n_layer=2, n_head=2,
                                                                n_positions=16, n_inner=24))


def run_case(path, base_sig, what, failures, slowest):
    start = time.perf_counter()
    try:
        with deadline(CASE_SECONDS):
            model = interp.load(path)
    except (ValueError, FileNotFoundError) as e:
        if str(path) not in str(e):
            failures.append(f"{what}: {type(e).__name__} without the file named: {e}")
    except Exception as e:  # noqa: BLE001 - anything else escaping is the failure under test
        failures.append(f"{what}: {type(e).__name__}: {e}")
    else:
        if not same_shapes(model, base_sig):
            failures.append(f"{what}: loaded with other shapes than the original checkpoint")
    slowest[0] = max(slowest[0], time.perf_counter() - start)


def test_damaged_checkpoints_load_or_fail_clearly(bases, tmp_path):
    folders, ggufs = bases
    rng = np.random.default_rng(SEED)
    failures, slowest = [], [0.0]
    base_sigs = {path: signature(interp.load(path)) for path in [*folders, *ggufs]}
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for folder in folders:
        base_sig = base_sigs[folder]
        for i in range(90):
            dest = tmp_path / f"{folder.name}-{i}"
            what = f"{folder.name} #{i} ({mutate_folder(folder, dest, rng)})"
            run_case(dest, base_sig, what, failures, slowest)
            shutil.rmtree(dest)
    for path in ggufs:
        base_sig = base_sigs[path]
        data, fields = path.read_bytes(), header_fields(path)
        header_end = max(pos + width for pos, width in fields)
        for i in range(120):
            dest = tmp_path / f"{path.stem}-{i}.gguf"
            dest.write_bytes(mutate_gguf(data, fields, header_end, rng))
            run_case(dest, base_sig, f"{path.name} #{i}", failures, slowest)
            dest.unlink()
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    assert not failures, f"{len(failures)} damaged files were not refused clearly:\n" + "\n".join(failures[:20])
    assert growth_mb < RSS_GROWTH_MB, f"peak memory grew by {growth_mb:.0f} MB"
    assert slowest[0] < CASE_SECONDS
