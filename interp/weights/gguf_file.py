"""GGUF files (llama.cpp): metadata, dequantized tensors renamed to Hugging Face names, tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class GGUFFile:
    """An opened GGUF file: ``arch``, ``meta`` (plain Python values) and ``tensor(name)`` (dequantized float32)."""

    def __init__(self, path: str | Path):
        import gguf  # imported here: opening is the slow part, and most loads never need it

        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no such GGUF file: {self.path}")
        size = os.path.getsize(self.path)
        try:
            self._reader = gguf.GGUFReader(str(self.path))
        except Exception as e:  # the reader raises assorted errors on damaged headers
            raise ValueError(
                f"cannot read GGUF file {self.path} ({type(e).__name__}: {e}); the file is truncated or "
                "corrupt: download or copy it again"
            ) from None
        self.meta: dict = {}
        for key, field in self._reader.fields.items():
            try:
                self.meta[key] = field.contents()
            except Exception:  # keys whose value the reader cannot decode are not needed here
                continue
        self._tensors = {t.name: t for t in self._reader.tensors}
        for t in self._reader.tensors:
            if t.data_offset + t.n_bytes > size:
                raise ValueError(
                    f"GGUF file {self.path} is truncated: tensor '{t.name}' ends at byte "
                    f"{t.data_offset + t.n_bytes} but the file has {size} bytes; download or copy it again"
                )
        self.meta["__tensor_names__"] = frozenset(self._tensors)
        self.arch = self.meta.get("general.architecture")

    def names(self) -> list[str]:
        return list(self._tensors)

    def tensor(self, name: str) -> np.ndarray:
        from gguf.quants import dequantize

        t = self._tensors[name]
        return np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)


def hf_tensors(f: GGUFFile, family) -> dict[str, np.ndarray]:
    """All tensors under Hugging Face names, float32, with llama.cpp's Q/K row permutation undone."""
    config = family.config_from_gguf(f.arch, f.meta)
    permuted = family.GGUF_ARCHITECTURES[f.arch]
    out: dict[str, np.ndarray] = {}
    unknown = []
    for name in f.names():
        if name in family.GGUF_NAMES:
            hf = family.GGUF_NAMES[name]
        elif name.startswith("blk."):
            _, layer, rest = name.split(".", 2)
            if rest not in family.GGUF_BLOCK_NAMES:
                unknown.append(name)
                continue
            hf = f"model.layers.{layer}.{family.GGUF_BLOCK_NAMES[rest]}"
        else:
            unknown.append(name)
            continue
        w = f.tensor(name)
        if permuted and ".q_proj." in hf:
            w = family.unpermute_gguf_qk(w, config.n_heads)
        elif permuted and ".k_proj." in hf:
            w = family.unpermute_gguf_qk(w, config.n_kv_heads)
        out[hf] = w
    if unknown:
        raise ValueError(
            f"GGUF file {f.path} holds tensors this loader does not know: {unknown[:5]}"
            f"{' ...' if len(unknown) > 5 else ''}; its architecture '{f.arch}' may need support first"
        )
    return out
