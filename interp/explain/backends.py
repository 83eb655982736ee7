"""Language-model backends for automated interpretability: an explainer or scorer sends chat conversations to one.

A conversation is a list of messages ``{"role": "system" | "user" | "assistant", "content": str}``. Every backend
has a ``name`` (part of the cache key) and ``chat(conversations, *, max_tokens, temperature) -> list[Reply]``, one
reply per conversation, in order. A failure of one conversation is a ``Reply`` with ``text=None`` and an ``error``
saying why; it never raises. Configuration mistakes (a missing API key, a bad URL) raise at construction, before any
request.

``OpenAICompatible`` talks to any server with the OpenAI chat-completions API: hosted APIs, vLLM, the llama.cpp
server, Ollama::

    backend = OpenAICompatible("http://127.0.0.1:8000/v1", "Qwen/Qwen2.5-7B-Instruct")
    backend = OpenAICompatible("https://api.openai.com/v1", "gpt-4o-mini", api_key_env="OPENAI_API_KEY")
    [reply] = backend.chat([[{"role": "user", "content": "Say hi"}]], max_tokens=16)
    reply.text, reply.error, reply.cached
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import http.client
import ipaddress
import json
import math
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from interp.explain.cache import ResponseCache, default_cache


@dataclasses.dataclass(frozen=True)
class Reply:
    """One conversation's answer: ``text`` on success; ``text=None`` and a one-line ``error`` when the call
    failed. ``cached`` is True when it came from the ``ResponseCache`` instead of a request."""

    text: str | None  # the assistant's text; None when the call failed
    error: str | None = None  # why it failed (clear, one line); None on success
    cached: bool = False  # served from the ResponseCache

    @property
    def ok(self) -> bool:
        """True when the call gave a text."""
        return self.text is not None

    def __repr__(self) -> str:
        if self.text is None:
            return f"Reply(error={self.error!r})"
        text = self.text if len(self.text) <= 60 else self.text[:57] + "..."
        return f"Reply({text!r}{', cached' if self.cached else ''})"


@runtime_checkable
class Backend(Protocol):
    """What an explainer or scorer needs from a language model: a ``name`` (part of the cache key, e.g.
    ``"openai:gpt-4o-mini@https://api.openai.com/v1"``) and ``chat``."""

    name: str

    def chat(self, conversations: Sequence[list[dict]], *, max_tokens: int = 256,
             temperature: float = 0.0) -> list[Reply]:
        """One ``Reply`` per conversation, in order; a failed conversation gives ``Reply(None, error=...)`` and
        never raises."""
        ...


# Fields of the request body that ``chat`` sets itself; ``backend`` would clash with the cache key's own field.
_RESERVED = ("model", "messages", "max_tokens", "temperature", "stream", "backend")
_MESSAGE_CHARS = 200  # of a server's error message, in a Reply's error


@dataclasses.dataclass(frozen=True)
class _Retry:
    """A failed attempt worth repeating (rate limit, server error, timeout, lost connection)."""

    error: str
    retry_after: float | None = None


def _one_line(text: str, limit: int = _MESSAGE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _server_message(raw: bytes) -> str:
    """The message in an error body: OpenAI's ``{"error": {"message": ...}}``, the variants other servers use, or
    the body itself."""
    text = raw.decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return _one_line(text) or "(empty body)"
    if isinstance(data, dict):
        for field in ("error", "message", "detail"):
            value = data.get(field)
            if isinstance(value, dict):
                value = value.get("message", value)
            if value:
                return _one_line(value if isinstance(value, str) else json.dumps(value))
    return _one_line(text)


def _retry_after(headers) -> float | None:
    """A numeric ``Retry-After`` header in seconds (an HTTP date is ignored: the backoff applies)."""
    value = headers.get("Retry-After") if headers is not None else None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _conversation_problem(conversation) -> str | None:
    if not isinstance(conversation, list | tuple) or not conversation:
        return f"a conversation must be a non-empty list of messages, got {type(conversation).__name__}"
    for i, message in enumerate(conversation):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            return (f"message {i} must be a dict with str 'role' ('system', 'user' or 'assistant') and str "
                    f"'content', got {_one_line(repr(message), 80)}")
    return None


class OpenAICompatible:
    """A backend that POSTs to ``{base_url}/chat/completions`` of any OpenAI-compatible server.

    ``base_url`` is the API root, usually ending in ``/v1`` (``https://api.openai.com/v1``, vLLM's
    ``http://host:8000/v1``, Ollama's ``http://localhost:11434/v1``). ``api_key_env`` names the environment variable
    holding the API key, read once here and sent as ``Authorization: Bearer``; the key itself never appears in
    ``name``, ``repr``, errors or the cache. ``timeout`` is seconds for connecting and for each read. A rate limit
    (429), a server error (5xx), a timeout or a lost connection is retried up to ``retries`` more times, waiting
    ``min(max_backoff, backoff * 2**attempt)`` seconds (or the server's numeric ``Retry-After``, capped by
    ``max_backoff``); other errors are not. Up to ``concurrency`` requests are in flight at once. ``cache``: True
    for ``default_cache()``, a folder or a ``ResponseCache``, or False/None for none. ``extra``: more fields for the
    request body (``{"top_p": 1, "seed": 0}``), also part of the cache key.
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = None, timeout: float = 60.0,
                 retries: int = 4, backoff: float = 1.0, max_backoff: float = 30.0, concurrency: int = 4,
                 cache: ResponseCache | str | Path | None | bool = True, extra: dict | None = None):
        parts = urllib.parse.urlsplit(base_url) if isinstance(base_url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL of the API root, such as 'http://127.0.0.1:8000/v1' "
                             f"(vLLM, llama.cpp) or 'https://api.openai.com/v1', got {base_url!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"base_url must not have a query or fragment ('?...', '#...'), got {base_url!r}; pass "
                             "the API root such as 'http://127.0.0.1:8000/v1'")
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"model must be the server's model name (such as 'gpt-4o-mini'), got {model!r}")
        if not (isinstance(timeout, int | float) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if not (isinstance(retries, int) and retries >= 0):
            raise ValueError(f"retries must be an int >= 0 (extra attempts after the first), got {retries!r}")
        if not (isinstance(backoff, int | float) and backoff >= 0 and isinstance(max_backoff, int | float)
                and max_backoff >= 0):
            raise ValueError(f"backoff and max_backoff must be seconds >= 0, got {backoff!r} and {max_backoff!r}")
        if not (isinstance(concurrency, int) and concurrency >= 1):
            raise ValueError(f"concurrency must be an int >= 1 (requests in flight at once), got {concurrency!r}")
        extra = dict(extra or {})
        clash = sorted(set(_RESERVED) & extra.keys())
        if clash:
            raise ValueError(f"extra may not set {clash}: chat() sets model, messages, max_tokens and temperature "
                             "itself (pass max_tokens=/temperature= to chat), and streaming is not supported")
        try:
            json.dumps(extra)
        except (TypeError, ValueError) as e:
            raise ValueError(f"extra must hold JSON values (it goes into the request body): {e}") from None

        self._key: str | None = None
        if api_key_env is not None:
            key = os.environ.get(api_key_env, "").strip()
            if not key:
                raise ValueError(f"api_key_env={api_key_env!r}: the environment variable {api_key_env} is not set "
                                 f"or empty; set it before constructing the backend (shell: export "
                                 f"{api_key_env}=...; Python: os.environ[{api_key_env!r}] = ...), or pass "
                                 "api_key_env=None for a server without authentication")
            self._key = key

        if cache is True:
            cache = default_cache()
        elif cache is False or cache is None:
            cache = None
        elif isinstance(cache, str | Path):
            cache = ResponseCache(cache)
        elif not isinstance(cache, ResponseCache):
            raise TypeError(f"cache must be True (the default cache), a folder, a ResponseCache, or False/None, got "
                            f"{type(cache).__name__}")

        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.concurrency = concurrency
        self.cache: ResponseCache | None = cache
        self.extra = extra
        self.name = f"openai:{model}@{self.base_url}"
        self._url = f"{self.base_url}/chat/completions"
        # A server on this machine is never reached through a proxy from the environment (http_proxy would
        # otherwise capture 127.0.0.1 unless no_proxy lists it); remote servers honour the environment's proxies.
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(parts.hostname) else []
        self._opener = urllib.request.build_opener(*handlers)

    def __repr__(self) -> str:
        auth = f", api_key_env={self.api_key_env!r}" if self.api_key_env else ""
        return f"OpenAICompatible({self.base_url!r}, {self.model!r}{auth}, cache={self.cache!r})"

    def chat(self, conversations: Sequence[list[dict]], *, max_tokens: int = 256,
             temperature: float = 0.0) -> list[Reply]:
        """One ``Reply`` per conversation, in order. Cached replies are served without a request; the rest are
        sent ``concurrency`` at a time, and only successful replies are cached. A failed conversation gives
        ``Reply(None, error=...)``: it never raises."""
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or temperature < 0:
            raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
        params = {"max_tokens": max_tokens, "temperature": float(temperature), **self.extra}
        conversations = list(conversations)
        replies: list[Reply | None] = [None] * len(conversations)
        todo: list[tuple[int, list[dict], str | None]] = []
        for i, conversation in enumerate(conversations):
            problem = _conversation_problem(conversation)
            if problem is not None:
                replies[i] = Reply(None, error=problem)
                continue
            conversation = [dict(m) for m in conversation]
            key = None
            if self.cache is not None:
                try:
                    key = ResponseCache.key(self.name, conversation, **params)
                except TypeError as e:
                    replies[i] = Reply(None, error=str(e))
                    continue
                text = self.cache.get(key)
                if text is not None:
                    replies[i] = Reply(text, cached=True)
                    continue
            todo.append((i, conversation, key))
        if todo:
            with concurrent.futures.ThreadPoolExecutor(max_workers=min(self.concurrency, len(todo))) as pool:
                done = pool.map(lambda job: self._ask(job[1], job[2], params), todo)
                for (i, _, _), reply in zip(todo, done):
                    replies[i] = reply
        return replies

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "[API key]") if self._key else text

    def _ask(self, conversation: list[dict], key: str | None, params: dict) -> Reply:
        """Send one conversation, with retries; cache a success."""
        try:
            body = json.dumps({"model": self.model, "messages": conversation, **params}).encode("utf-8")
            failure = None
            for attempt in range(self.retries + 1):
                outcome = self._attempt(body, params["max_tokens"])
                if isinstance(outcome, Reply):
                    break
                failure = outcome
                if attempt < self.retries:
                    wait = self.backoff * 2**attempt if outcome.retry_after is None else outcome.retry_after
                    time.sleep(min(self.max_backoff, wait))
            else:
                tries = "1 attempt" if self.retries == 0 else f"{self.retries + 1} attempts"
                outcome = Reply(None, error=f"{failure.error} (gave up after {tries}; raise retries= or backoff= "
                                            "if the server is busy)")
        except Exception as e:  # a bug or an unforeseen failure of one conversation must not sink the others
            outcome = Reply(None, error=f"request to {self._url} failed: {type(e).__name__}: {_one_line(str(e))}")
        if outcome.text is None:
            return Reply(None, error=self._redact(outcome.error))
        if key is not None:
            try:
                self.cache.put(key, outcome.text)
            except OSError as e:
                warnings.warn(f"could not cache a reply in {self.cache.folder}: {e}; the reply is used but will be "
                              "requested again next time", RuntimeWarning, stacklevel=2)
        return outcome

    def _attempt(self, body: bytes, max_tokens: int) -> Reply | _Retry:
        """One request: a final ``Reply`` (success, or an error not worth repeating) or a ``_Retry``."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        request = urllib.request.Request(self._url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                expected = response.headers.get("Content-Length")
                raw = response.read()
        except urllib.error.HTTPError as e:
            try:
                message = _server_message(e.read())
            except (OSError, http.client.HTTPException):
                message = "(body unreadable)"
            if e.code == 429 or e.code >= 500:
                what = "rate limited" if e.code == 429 else "server error"
                return _Retry(f"HTTP {e.code} ({what}) from {self._url}: {message}", _retry_after(e.headers))
            return Reply(None, error=f"HTTP {e.code} from {self._url}: {message}{self._hint(e.code)}")
        except http.client.IncompleteRead as e:
            return Reply(None, error=f"the reply from {self._url} was cut short ({len(e.partial)} bytes of "
                                     f"{len(e.partial) + (e.expected or 0)} expected); nothing was cached, call "
                                     "again (check any proxy in between if it keeps happening)")
        except TimeoutError:
            return _Retry(f"no reply from {self._url} within timeout={self.timeout:g} s (raise timeout= for slow "
                          "servers or long answers)")
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                return _Retry(f"could not connect to {self._url} within timeout={self.timeout:g} s")
            return _Retry(f"could not connect to {self._url}: {e.reason}; is the server running at that address?")
        except (OSError, http.client.HTTPException) as e:
            return _Retry(f"connection to {self._url} failed: {type(e).__name__}: {_one_line(str(e))}")
        if expected is not None and expected.isdigit() and int(expected) != len(raw):
            return Reply(None, error=f"the reply from {self._url} was cut short ({len(raw)} bytes of {expected} "
                                     "expected); nothing was cached, call again")
        return self._parse(raw, max_tokens)

    def _hint(self, status: int) -> str:
        if status in (401, 403):
            if self.api_key_env:
                return f" (check the key in ${self.api_key_env} and its access to model {self.model!r})"
            return " (the server wants an API key: pass api_key_env='NAME_OF_THE_VARIABLE_HOLDING_IT')"
        if status == 404:
            return (f" (check base_url, usually the API root ending in /v1, and that the server serves model "
                    f"{self.model!r})")
        return ""

    def _parse(self, raw: bytes, max_tokens: int) -> Reply:
        """The text of a 2xx chat-completions body, or an error saying what is wrong with it."""
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            start = _one_line(raw[:80].decode("utf-8", errors="replace"), 80)
            return Reply(None, error=f"the reply from {self._url} is not valid JSON ({e}; it starts {start!r}); is "
                                     "base_url the API root of an OpenAI-compatible server (usually ending in /v1)?")
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            return Reply(None, error=f"the reply from {self._url} has no choices[0].message.content (it has "
                                     f"{_one_line(json.dumps(data), 120)}); is this a chat-completions endpoint?")
        finish = choice.get("finish_reason")
        if finish == "length":
            return Reply(None, error=f"the answer was cut off at max_tokens={max_tokens} (finish_reason 'length'); "
                                     "raise max_tokens or ask for a shorter answer")
        if not isinstance(text, str):
            return Reply(None, error=f"the reply from {self._url} has no text (content is {text!r}, finish_reason "
                                     f"{finish!r}); the model may have refused or called a tool")
        return Reply(text)


# ---------------------------------------------------------------------------------------------------------------------
# Local models (``LocalModel``) follow below.
# ---------------------------------------------------------------------------------------------------------------------
