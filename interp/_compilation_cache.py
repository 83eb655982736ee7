"""The persistent compilation cache: compiled programs are kept on disk, so a new Python process (a restarted
kernel, the next script) loads them instead of compiling again.

It is on from ``import interp``, in ``<interp cache>/jax-compilations`` (``$INTERP_CACHE``, else
``~/.cache/interp``), capped at 2 GiB (least recently used entries go first). ``INTERP_COMPILATION_CACHE=0``
turns it off, ``INTERP_COMPILATION_CACHE=/some/dir`` moves it; a cache folder already chosen through JAX
(``JAX_COMPILATION_CACHE_DIR`` or ``jax.config``) is left as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

MAX_BYTES = 2 * 1024**3
MIN_COMPILE_SECONDS = 0.2  # quicker compilations cost less than reading them back


def compilation_cache_dir() -> Path | None:
    """Where compiled programs are kept (None when the persistent cache is off)."""
    d = jax.config.jax_compilation_cache_dir
    return Path(d) if d else None


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Turn the persistent compilation cache on at ``path`` (default: as described above); returns the folder,
    or None when ``INTERP_COMPILATION_CACHE`` turns it off. Called by ``import interp``."""
    env = os.environ.get("INTERP_COMPILATION_CACHE", "").strip()
    if path is None:
        if env.lower() in ("0", "off", "false", "no"):
            return None
        if jax.config.jax_compilation_cache_dir:  # chosen through JAX already
            return compilation_cache_dir()
        if env:
            path = env
        else:
            from interp.weights.default import cache_dir

            path = cache_dir() / "jax-compilations"
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a read-only home must not stop the library from working
        import warnings

        warnings.warn(f"the compilation cache folder {path} cannot be created ({e}); compiled programs will not be "
                      "kept between processes. Set INTERP_COMPILATION_CACHE to a writable folder, or to 0",
                      stacklevel=2)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return path
