"""GGUF files (llama.cpp): metadata, dequantized tensors renamed to Hugging Face names, tokenizer.

The header is parsed here rather than by ``gguf.GGUFReader``: every count, length and offset is checked against the
file's size before anything is allocated for it, so a damaged or hostile header fails at once with the field named
(the reader would trust a count of 10**8 and loop over it), and metadata arrays are read in one piece instead of
element by element. The ``gguf`` package still supplies the format's constants and the dequantization.
"""

from __future__ import annotations

import math
import mmap
import os
import re
import struct
from pathlib import Path

import numpy as np

from interp.models.family import GGUFFamily
from interp.weights._check import Stored, check_tensors

_VERSIONS = (2, 3)
_MAX_DIMS = 4  # GGML_MAX_DIMS
# Far above any real model's metadata (vocabularies and merges of a few hundred thousand entries each), so that the
# Python lists a header turns into stay bounded.
_MAX_ARRAY_ELEMENTS = 1 << 24
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, a one-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # name length, dimension count, type, offset
_INTEGER_TENSOR_TYPES = ("I8", "I16", "I32", "I64")


class GGUFFile:
    """An opened GGUF file: ``arch``, ``meta`` (plain Python values) and ``tensor(name)`` (dequantized float32)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no such GGUF file: {self.path}")
        self.size = os.path.getsize(self.path)
        with open(self.path, "rb") as fh:
            if self.size < 24:
                self._fail(f"the file has {self.size} bytes, fewer than a GGUF header's 24")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                self.meta, self._tensors = _Header(self, buf).parse()
        self._data = None
        self.meta["__tensor_names__"] = frozenset(self._tensors)
        self.meta["__file__"] = str(self.path)
        self.arch = self.meta.get("general.architecture")
        if not isinstance(self.arch, str):
            raise ValueError(f"GGUF file {self.path}: field 'general.architecture' must name the model's architecture, "
                             f"got {self.arch!r}; the file is corrupt or not a model")

    def _fail(self, detail: str):
        raise ValueError(f"GGUF file {self.path} is truncated or corrupt: {detail}; download or copy it again")

    def names(self) -> list[str]:
        return list(self._tensors)

    def stored(self, name: str) -> Stored:
        """What the file declares of tensor ``name``: its numpy shape after dequantization and its type."""
        qtype, dims, _ = self._tensors[name]
        return Stored(name, dims, qtype.name, qtype.name not in _INTEGER_TENSOR_TYPES, f"GGUF file {self.path}")

    def tensor(self, name: str) -> np.ndarray:
        import gguf
        from gguf.quants import dequantize, quant_shape_to_byte_shape

        qtype, dims, (start, n_bytes) = self._tensors[name]
        if self._data is None:
            self._data = np.memmap(self.path, dtype=np.uint8, mode="r")
        raw = self._data[start:start + n_bytes]
        T = gguf.GGMLQuantizationType
        plain = {T.F32: np.float32, T.F16: np.float16, T.F64: np.float64}
        try:
            if qtype in plain:
                return raw.view(plain[qtype]).reshape(dims).astype(np.float32, copy=False)
            if qtype.name in _INTEGER_TENSOR_TYPES:
                raise NotImplementedError("integers are not model weights")
            return np.asarray(dequantize(raw.reshape(quant_shape_to_byte_shape(dims, qtype)), qtype), np.float32)
        except NotImplementedError as e:
            raise ValueError(f"GGUF file {self.path}: tensor '{name}' is stored as {qtype.name}, which cannot be "
                             f"read as float weights ({e}); requantize the model to a supported type") from None


class _Header:
    """One pass over a GGUF header (format: github.com/ggml-org/ggml docs/gguf.md), every read bounds-checked."""

    def __init__(self, file: GGUFFile, buf):
        self.file, self.buf, self.pos, self.size = file, buf, 0, file.size
        self.elements = 0

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            self.file._fail(f"{what} needs {n} bytes from byte {self.pos}, but only {self.size - self.pos} remain")

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize("<" + fmt)
        self.need(n, what)
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += n
        return values if len(values) > 1 else values[0]

    def string(self, what: str) -> str:
        n = self.unpack("Q", what)
        if n > self.size - self.pos:
            self.file._fail(f"{what} of {n} bytes at byte {self.pos}, but only {self.size - self.pos} bytes remain")
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.file._fail(f"{what} {_short(raw)} is not valid UTF-8")

    def parse(self) -> tuple[dict, dict]:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        if self.buf[:4] != b"GGUF":
            raise ValueError(f"{self.file.path} is not a GGUF file: it starts with {bytes(self.buf[:4])!r}, "
                             "not b'GGUF'")
        self.pos = 4
        version = self.unpack("I", "the version")
        if version not in _VERSIONS:
            swapped = struct.unpack(">I", struct.pack("<I", version))[0]
            hint = " (a big-endian file, which is not supported)" if swapped in _VERSIONS else ""
            self.file._fail(f"GGUF version {version}{hint}; supported: {', '.join(map(str, _VERSIONS))}")
        n_tensors, n_kv = self.unpack("QQ", "the counts")
        left = self.size - self.pos
        if n_kv * _MIN_KV_BYTES > left:
            self.file._fail(f"the header announces {n_kv} key/value pairs, but only {left} bytes remain")
        if n_tensors * _MIN_TENSOR_INFO_BYTES > left:
            self.file._fail(f"the header announces {n_tensors} tensors, but only {left} bytes remain")
        meta = {}
        for _ in range(n_kv):
            key = self.string("a key")
            if key in meta:
                self.file._fail(f"key '{key}' appears twice")
            meta[key] = self.value(key, self.unpack("I", f"the type of key '{key}'"))
        alignment = meta.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            self.file._fail(f"field 'general.alignment' must be a power of two, got {alignment!r}")
        infos = {}
        for _ in range(n_tensors):
            name = self.string("a tensor name")
            if name in infos:
                self.file._fail(f"tensor '{name}' appears twice")
            n_dims = self.unpack("I", f"the dimension count of tensor '{name}'")
            if n_dims > _MAX_DIMS:
                self.file._fail(f"tensor '{name}' has {n_dims} dimensions (at most {_MAX_DIMS})")
            dims = self.unpack("Q" * n_dims, f"the shape of tensor '{name}'") if n_dims else ()
            dims = (dims,) if isinstance(dims, int) else dims
            raw_type, offset = self.unpack("IQ", f"the type and offset of tensor '{name}'")
            try:
                qtype = GGMLQuantizationType(raw_type)
                block, type_size = GGML_QUANT_SIZES[qtype]
            except (ValueError, KeyError):
                self.file._fail(f"tensor '{name}' has unknown type {raw_type}")
            n = math.prod(dims)
            if dims and dims[0] % block:
                self.file._fail(f"tensor '{name}' of type {qtype.name} has rows of {dims[0]} values, not a multiple "
                                f"of its block of {block}")
            infos[name] = (qtype, tuple(reversed(dims)), offset, n // block * type_size)
        data_start = -(-self.pos // alignment) * alignment
        tensors = {}
        for name, (qtype, shape, offset, n_bytes) in infos.items():
            start, end = data_start + offset, data_start + offset + n_bytes
            if end > self.size:
                self.file._fail(f"tensor '{name}' ({qtype.name} {list(shape)}, {n_bytes} bytes) ends at byte {end}, "
                                f"but the file has {self.size} bytes")
            tensors[name] = (qtype, shape, (start, n_bytes))
        return meta, tensors

    def value(self, key: str, vtype: int, in_array: bool = False):
        from gguf import GGUFValueType as V

        what = f"the value of key '{key}'"
        if vtype in _SCALARS:
            v = self.unpack(_SCALARS[vtype], what)
            return bool(v) if vtype == V.BOOL else v
        if vtype == V.STRING:
            return self.string(f"key '{key}' holds a string")
        if vtype != V.ARRAY:
            self.file._fail(f"key '{key}' has unknown value type {vtype}")
        if in_array:
            self.file._fail(f"key '{key}' holds nested arrays, which no model file uses")
        item, n = self.unpack("IQ", f"the array header of key '{key}'")
        if item not in _SCALARS and item not in (V.STRING, V.ARRAY):
            self.file._fail(f"key '{key}' holds an array of unknown value type {item}")
        size = struct.calcsize("<" + _SCALARS[item]) if item in _SCALARS else 8  # a string's length field at least
        if n * size > self.size - self.pos:
            at_least = "" if item in _SCALARS else "at least "
            self.file._fail(f"key '{key}' holds an array of {n} {V(item).name} values ({at_least}{n * size} bytes from "
                            f"byte {self.pos}), but only {self.size - self.pos} bytes remain")
        self.elements += n
        if self.elements > _MAX_ARRAY_ELEMENTS:
            self.file._fail(f"key '{key}' holds an array of {n} values, beyond the {_MAX_ARRAY_ELEMENTS} array values "
                            "this loader reads from one file")
        if item in _SCALARS:
            values = np.frombuffer(self.buf, np.dtype("<" + _SCALARS[item]), n, self.pos).tolist()
            self.pos += n * size
            return [bool(v) for v in values] if item == V.BOOL else values
        return [self.value(key, item, in_array=True) for _ in range(n)]


# GGUF value type -> struct format of one value
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "B", 10: "Q", 11: "q", 12: "d"}


def _short(raw: bytes) -> str:
    text = repr(bytes(raw))
    return text if len(text) <= 60 else text[:57] + "..."


_BLOCK_NAME = re.compile(r"blk\.(0|[1-9][0-9]*)\.(.+)")


def hf_tensors(f: GGUFFile, family: GGUFFamily) -> dict[str, np.ndarray]:
    """All tensors under Hugging Face names, float32, with llama.cpp's Q/K row permutation undone; refused unless
    they are exactly the tensors, shapes and float types the file's metadata implies."""
    config = family.config_from_gguf(f.arch, f.meta)
    permuted = family.GGUF_ARCHITECTURES[f.arch]
    hf_names: dict[str, str] = {}
    unknown = []
    for name in f.names():
        block = _BLOCK_NAME.fullmatch(name)
        if name in family.GGUF_NAMES:
            hf_names[family.GGUF_NAMES[name]] = name
        elif block and block[2] in family.GGUF_BLOCK_NAMES:
            hf_names[f"model.layers.{block[1]}.{family.GGUF_BLOCK_NAMES[block[2]]}"] = name
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(
            f"GGUF file {f.path} holds tensors this loader does not know: {unknown[:5]}"
            f"{' ...' if len(unknown) > 5 else ''}; its architecture '{f.arch}' may need support first"
        )
    check_tensors({hf: f.stored(name) for hf, name in hf_names.items()}, family, config,
                  where=f"GGUF file {f.path}", config_name="its metadata",
                  fix="the file is damaged or its converter wrote inconsistent metadata; convert or download it again")
    out: dict[str, np.ndarray] = {}
    for hf, name in hf_names.items():
        w = f.tensor(name)
        if permuted and ".q_proj." in hf:
            w = unpermute_qk(w, config.n_heads)
        elif permuted and ".k_proj." in hf:
            w = unpermute_qk(w, config.n_kv_heads)
        out[hf] = w
    return out


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's row permutation of Q/K (``[out, in]`` weights or ``[out]`` biases).

    Its converter interleaves the two rotary halves of each head; rows go back to the rotate-half layout by
    viewing them as ``(heads, head_dim/2, 2)`` and swapping the last two axes.
    """
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
