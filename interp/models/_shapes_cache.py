"""The hook vocabulary kept on disk beside the compiled programs, so that a new process does not trace the whole
model twice (about a second on the default model) before its first compiled call.

An entry is keyed by the model's config, its depth, the input shape and a digest of the code that places hook
points (``interp/models`` and ``interp/hooks``), so a changed library never reads a stale vocabulary. It lives in
the persistent compilation cache's folder (``interp.compilation_cache_dir()``) and is off when that is off.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path

import jax


@functools.cache
def _code_digest() -> str:
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for folder in ("models", "hooks"):
        for path in sorted((root / folder).glob("*.py")):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def _path(key: tuple) -> Path | None:
    folder = jax.config.jax_compilation_cache_dir
    if not folder:
        return None
    digest = hashlib.sha256(repr((key, _code_digest())).encode()).hexdigest()[:32]
    return Path(folder) / "interp-hook-shapes" / f"{digest}.json"


def load(key: tuple) -> dict[str, tuple[int, ...]] | None:
    """The stored hook shapes for ``key``, or None (not stored, unreadable, or the cache is off)."""
    path = _path(key)
    try:
        data = json.loads(path.read_text()) if path is not None else None
    except (OSError, ValueError):  # absent or damaged: trace again
        return None
    if not isinstance(data, dict):
        return None
    return {str(k): tuple(int(n) for n in v) for k, v in data.items()}


def store(key: tuple, shapes: dict[str, tuple[int, ...]]) -> None:
    """Write the hook shapes for ``key`` atomically; a folder that cannot be written is skipped quietly (the
    vocabulary is traced again next time)."""
    path = _path(key)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({k: list(v) for k, v in shapes.items()}, f)
        os.replace(tmp, path)
    except OSError:
        pass
