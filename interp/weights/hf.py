"""Hugging Face checkpoint folders: ``config.json``, ``*.safetensors`` (single or sharded), ``tokenizer.json``."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open

from interp.weights._check import Stored

_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
_RAW_DTYPES = {"BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2}


class SafetensorsReader:
    """Tensors by name across one or more ``.safetensors`` files, read lazily as numpy arrays."""

    def __init__(self, files: list[Path]):
        self.files = files
        self._where: dict[str, Path] = {}
        self._handles = {}
        for f in files:
            try:
                h = safe_open(str(f), framework="numpy")
            except (SafetensorError, OSError) as e:
                raise ValueError(
                    f"cannot read weights file {f}: {e}. The file is truncated or corrupt; "
                    "download or copy it again"
                ) from None
            self._handles[f] = h
            for k in h.keys():
                if k in self._where:
                    raise ValueError(f"tensor '{k}' is stored twice, in {self._where[k]} and in {f}; "
                                     "remove the file that does not belong to this checkpoint")
                self._where[k] = f

    def stored(self) -> dict[str, Stored]:
        """What the files declare of every tensor (no data read)."""
        out = {}
        for k, f in self._where.items():
            info = self._handles[f].get_slice(k)
            dtype = info.get_dtype()
            out[k] = Stored(k, tuple(info.get_shape()), dtype, dtype in _FLOAT_DTYPES, str(f))
        return out

    def keys(self):
        return self._where.keys()

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def __call__(self, name: str) -> np.ndarray:
        if name not in self._where:
            raise KeyError(f"tensor '{name}' is missing from {', '.join(str(f) for f in self.files)}")
        f = self._where[name]
        try:
            return self._handles[f].get_tensor(name)
        except TypeError:  # a dtype numpy lacks (bfloat16, float8): read the raw bytes
            return _read_raw(f, name)


def _read_raw(path: Path, name: str) -> np.ndarray:
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    info = header[name]
    dtype = _RAW_DTYPES.get(info["dtype"])
    if dtype is None:
        raise ValueError(f"tensor '{name}' in {path} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n + start, shape=(end - start,))
    return np.asarray(data).view(dtype).reshape(info["shape"]).astype(np.float32)


def safetensor_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(index, "the index of a sharded checkpoint").get("weight_map")
        if not isinstance(weight_map, dict) or not all(
            isinstance(f, str) and f and Path(f).name == f for f in weight_map.values()
        ):
            raise ValueError(f"{index}: field 'weight_map' must map tensor names to shard file names in {folder}; "
                             "the file is damaged: download or copy it again")
        files = sorted({folder / f for f in weight_map.values()})
        missing = [f for f in files if not f.exists()]
        if missing:
            raise FileNotFoundError(
                f"{index} lists shards that are missing: {', '.join(f.name for f in missing)}; copy them into {folder}"
            )
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        hint = " (PyTorch .bin files are not read; convert them to safetensors)" if list(folder.glob("*.bin")) else ""
        raise FileNotFoundError(f"no .safetensors weights in {folder}{hint}")
    return files


def read_json(path: Path, what: str = "a JSON file", fix: str = "fix it, or copy it again") -> dict:
    """A JSON object from ``path`` (``what`` it should be); damage is a ValueError that names the file and ``fix``."""
    try:
        value = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); it should be {what}: {fix}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(value).__name__}; it should be {what}: {fix}")
    return value


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{folder} has no config.json; is it a Hugging Face checkpoint folder?")
    return read_json(path, "the checkpoint's config")
