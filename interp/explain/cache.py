"""A cache of chat replies on disk, so that re-running an explanation or scoring sweep costs no new requests.

One small JSON file per reply, ``<folder>/<first 2 hex digits of the key>/<key>.json``, written atomically: a reader
finds a complete file or none, and several processes may share the folder. The key is the SHA-256 of the canonical
JSON of everything that decides the reply (backend name, conversation, sampling parameters), so a change to any of
them is a miss, never a stale hit. Only successful replies are stored. Nothing secret is written: backends keep API
keys out of their names and parameters.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from interp._io import atomic_file

_KEY = re.compile(r"[0-9a-f]{64}")


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValueError(f"cache key must be 64 lowercase hex digits (from ResponseCache.key(...)), got {key!r}")
    return key


class ResponseCache:
    """Chat replies on disk, one JSON file per key under ``folder`` (created on the first ``put``).

    ``key(backend_name, conversation, **params)`` names a request; ``get(key)`` returns the stored text or None
    (a missing or damaged file is a miss); ``put(key, text)`` stores a successful reply atomically.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.folder)!r})"

    @staticmethod
    def key(backend_name: str, conversation: list[dict], **params) -> str:
        """SHA-256 hex digest of the canonical JSON of ``{"backend", "messages", **params}`` (sorted keys, UTF-8).

        ``params`` are the sampling parameters and extra request fields (``max_tokens=256, temperature=0.0``);
        they must be JSON values and may not be named ``backend`` or ``messages``.
        """
        clash = sorted({"backend", "messages"} & params.keys())
        if clash:
            raise ValueError(f"cache key parameters may not be named {clash}: those names hold the backend name and "
                             "the conversation; rename the parameter")
        try:
            payload = json.dumps({"backend": backend_name, "messages": conversation, **params}, sort_keys=True,
                                 ensure_ascii=False)
        except TypeError as e:
            raise TypeError(f"cannot make a cache key: the conversation and parameters must be JSON values "
                            f"(str, numbers, lists, dicts): {e}") from None
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def path(self, key: str) -> Path:
        """The file that holds (or would hold) the reply for ``key``."""
        key = _check_key(key)
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        """The stored reply for ``key``, or None when there is none or its file is damaged (then it is rewritten
        on the next ``put``)."""
        try:
            data = json.loads(self.path(key).read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(data, dict) or data.get("key") != key or not isinstance(data.get("text"), str):
            return None
        return data["text"]

    def put(self, key: str, text: str) -> None:
        """Store the successful reply ``text`` for ``key``, atomically (a concurrent reader never sees half a
        file; the last writer wins)."""
        if not isinstance(text, str):
            raise TypeError(f"only reply texts (str) are cached, got {type(text).__name__}")
        payload = json.dumps({"key": key, "text": text}, ensure_ascii=False).encode("utf-8")
        with atomic_file(self.path(key)) as fh:
            fh.write(payload)


def default_cache() -> ResponseCache:
    """The shared reply cache, ``<interp cache>/explain`` (``$INTERP_CACHE``, else ``~/.cache/interp``)."""
    from interp.weights.default import cache_dir  # imported here: the weights package pulls in the model code

    return ResponseCache(cache_dir() / "explain")
