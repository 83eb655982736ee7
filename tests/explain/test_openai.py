"""OpenAICompatible against a fake chat-completions server on 127.0.0.1 (no internet), and the ResponseCache.

The server answers from a script (a queue of ``Answer``s, or a function of the request body) and records every
request it gets, so the tests count requests and read what was sent.
"""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from interp.explain.backends import Backend, OpenAICompatible, Reply
from interp.explain.cache import ResponseCache, default_cache

KEY_ENV = "INTERP_TEST_EXPLAIN_KEY"
SECRET = "sk-test-SECRET-7f3a9c"
HELLO = [{"role": "system", "content": "You explain neurons."}, {"role": "user", "content": "hello"}]


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@dataclasses.dataclass
class Answer:
    """What the fake server sends: a chat completion of ``text`` unless ``body`` is given."""

    status: int = 200
    text: str = "ok"
    finish_reason: str = "stop"
    body: bytes | dict | None = None
    delay: float = 0.0  # seconds before answering
    headers: dict = dataclasses.field(default_factory=dict)
    extra_length: int = 0  # announce this many more bytes than are sent: a body cut short

    def payload(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        body = self.body if self.body is not None else {
            "id": "chatcmpl-1", "object": "chat.completion", "model": "fake-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.text},
                         "finish_reason": self.finish_reason}]}
        return json.dumps(body).encode()


def error(status: int, message: str = "", **headers) -> Answer:
    return Answer(status=status, body={"error": {"message": message or f"status {status}", "type": "x"}},
                  headers=headers)


class FakeServer:
    """A threaded chat-completions server; it refuses (418) past ``MAX_REQUESTS`` or when the script runs out."""

    MAX_REQUESTS = 40

    def __init__(self):
        self.script: list[Answer] = []
        self.responder: Callable[[dict], Answer] | None = None
        self.requests: list[dict] = []
        self.in_flight = 0
        self.peak = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with server.lock:
                    server.requests.append({"path": self.path, "time": time.monotonic(), "body": json.loads(raw),
                                            "headers": {k.lower(): v for k, v in self.headers.items()}})
                    server.in_flight += 1
                    server.peak = max(server.peak, server.in_flight)
                    count = len(server.requests)
                    if count > server.MAX_REQUESTS:
                        answer = error(418, "fake server: too many requests")
                    elif server.responder is not None:
                        answer = server.responder(server.requests[-1]["body"])
                    elif server.script:
                        answer = server.script.pop(0)
                    else:
                        answer = error(418, "fake server: no scripted answer left")
                try:
                    if answer.delay:
                        server.stop.wait(answer.delay)
                    payload = answer.payload()
                    self.send_response(answer.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload) + answer.extra_length))
                    for name, value in answer.headers.items():
                        self.send_header(name.replace("_", "-"), value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    fake = FakeServer()
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No test writes to the user's cache; no proxy from the environment gets in the way."""
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "interp-cache"))
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(KEY_ENV, raising=False)


def make(server_or_url, tmp_path, **kwargs) -> OpenAICompatible:
    url = server_or_url if isinstance(server_or_url, str) else server_or_url.url
    kwargs = {"cache": tmp_path / "cache", "backoff": 0.01, "timeout": 5.0, "retries": 3, **kwargs}
    return OpenAICompatible(url, "fake-model", **kwargs)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ---------------------------------------------------------------------------------------------------------- requests


def test_request_format_without_key(server, tmp_path):
    server.script = [Answer(text="It fires on French.")]
    backend = make(server.url + "/", tmp_path, extra={"top_p": 0.5})
    assert isinstance(backend, Backend)
    assert backend.name == f"openai:fake-model@{server.url}"
    [reply] = backend.chat([HELLO], max_tokens=17, temperature=0.25)
    assert reply == Reply("It fires on French.")
    [request] = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["body"] == {"model": "fake-model", "messages": HELLO, "max_tokens": 17, "temperature": 0.25,
                               "top_p": 0.5}
    assert request["headers"]["content-type"] == "application/json"
    assert "authorization" not in request["headers"]


def test_key_sent_as_bearer_and_never_shown(server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.script = [Answer(text="fine"), error(401, f"Incorrect API key provided: {SECRET}.")]
    backend = make(server, tmp_path, api_key_env=KEY_ENV)
    assert backend.chat([ask("a")]) == [Reply("fine")]
    assert server.requests[0]["headers"]["authorization"] == f"Bearer {SECRET}"
    [failed] = backend.chat([ask("b")])
    assert failed.text is None and failed.error.startswith("HTTP 401") and "[API key]" in failed.error
    assert KEY_ENV in failed.error  # the hint names the variable to check
    assert len(server.requests) == 2  # 401 is not retried
    cached = files_under(tmp_path / "cache")
    assert len(cached) == 1
    for shown in (repr(backend), backend.name, failed.error, repr(failed), *(p.read_text() for p in cached)):
        assert SECRET not in shown


@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_key_raises_before_any_request(server, tmp_path, monkeypatch, value):
    if value is not None:
        monkeypatch.setenv(KEY_ENV, value)
    with pytest.raises(ValueError, match=f"{KEY_ENV} is not set.*export {KEY_ENV}="):
        make(server, tmp_path, api_key_env=KEY_ENV)
    assert server.requests == []


@pytest.mark.parametrize("url", ["127.0.0.1:8000/v1", "localhost:8000", "ftp://host/v1", "http:///v1", ""])
def test_base_url_must_be_http(tmp_path, url):
    with pytest.raises(ValueError, match=r"http\(s\) URL.*'http://127.0.0.1:8000/v1'"):
        make(url, tmp_path)


def test_extra_may_not_override_request_fields(tmp_path):
    with pytest.raises(ValueError, match=r"extra may not set \['max_tokens', 'model'\]"):
        make("http://127.0.0.1:1/v1", tmp_path, extra={"model": "other", "max_tokens": 3, "seed": 0})


def test_cache_choices(tmp_path):
    url = "http://127.0.0.1:1/v1"
    assert make(url, tmp_path, cache=True).cache.folder == tmp_path / "interp-cache" / "explain"
    assert make(url, tmp_path, cache=False).cache is None
    assert make(url, tmp_path, cache=None).cache is None
    assert make(url, tmp_path, cache=str(tmp_path / "c")).cache.folder == tmp_path / "c"


# ----------------------------------------------------------------------------------------------------------- retries


def test_retries_rate_limits_and_server_errors_with_exponential_backoff(server, tmp_path):
    server.script = [error(429), error(500), error(503), Answer(text="at last")]
    backend = make(server, tmp_path, retries=3, backoff=0.05, max_backoff=10)
    assert backend.chat([HELLO]) == [Reply("at last")]
    times = [r["time"] for r in server.requests]
    assert len(times) == 4
    gaps = [b - a for a, b in zip(times, times[1:])]
    for attempt, gap in enumerate(gaps):
        assert gap >= 0.05 * 2**attempt, gaps


def test_gives_up_after_the_retries_and_caches_nothing(server, tmp_path):
    server.script = [error(500, "model overloaded")] * 3
    backend = make(server, tmp_path, retries=2)
    [reply] = backend.chat([HELLO])
    assert reply.text is None
    assert reply.error.startswith("HTTP 500 (server error)") and "model overloaded" in reply.error
    assert "gave up after 3 attempts" in reply.error
    assert len(server.requests) == 3
    assert files_under(tmp_path / "cache") == []


def test_retry_after_is_honoured_and_capped(server, tmp_path):
    server.script = [error(429, Retry_After="0.3"), Answer(text="one"),
                     error(429, Retry_After="100"), Answer(text="two")]
    backend = make(server, tmp_path, backoff=0.01, max_backoff=0.5)
    start = time.monotonic()
    assert backend.chat([ask("1")]) == [Reply("one")]
    assert backend.chat([ask("2")]) == [Reply("two")]
    times = [r["time"] for r in server.requests]
    assert times[1] - times[0] >= 0.3  # the server's wait, not the 0.01 s backoff
    assert times[3] - times[2] >= 0.5  # capped at max_backoff, not 100 s
    assert time.monotonic() - start < 5


def test_timeout_is_retried_then_reported(server, tmp_path):
    server.script = [Answer(text="too late", delay=2.0)] * 2
    backend = make(server, tmp_path, timeout=0.3, retries=1)
    start = time.monotonic()
    [reply] = backend.chat([HELLO])
    assert time.monotonic() - start < 1.8
    assert reply.text is None and "within timeout=0.3 s" in reply.error and "gave up after 2 attempts" in reply.error
    assert len(server.requests) == 2


def test_connection_refused_is_retried_then_reported(tmp_path):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    [reply] = make(f"http://127.0.0.1:{port}/v1", tmp_path, retries=1).chat([HELLO])
    assert reply.text is None and "could not connect" in reply.error and "is the server running" in reply.error


@pytest.mark.parametrize("status, hint", [(400, ""), (404, "check base_url"), (401, "api_key_env=")])
def test_client_errors_are_not_retried(server, tmp_path, status, hint):
    server.script = [error(status, "bad request: " + "x" * 1000)]
    [reply] = make(server, tmp_path, retries=3).chat([HELLO])
    assert len(server.requests) == 1
    assert reply.text is None and reply.error.startswith(f"HTTP {status} from {server.url}/chat/completions: bad")
    assert hint in reply.error
    assert len(reply.error) < 450  # the server's message is cut to ~200 characters


# ---------------------------------------------------------------------------------------------------- unusable bodies

UNUSABLE = {
    "malformed JSON": (Answer(body=b'{"choices": [{"mess'), r"not valid JSON .*ending in /v1"),
    "cut short": (Answer(text="a long explanation " * 10, extra_length=500), r"cut short \(\d+ bytes of \d+"),
    "no choices": (Answer(body={"choices": []}), r"no choices\[0\]\.message\.content"),
    "no content": (Answer(body={"choices": [{"message": {"role": "assistant", "content": None}}]}), r"no text"),
    "max_tokens": (Answer(text="It fires on", finish_reason="length"), r"max_tokens=8 .*raise max_tokens"),
}


@pytest.mark.parametrize("case", list(UNUSABLE))
def test_unusable_replies_give_clear_errors_and_are_not_cached(server, tmp_path, case):
    answer, message = UNUSABLE[case]
    server.script = [answer, Answer(text="whole answer")]
    backend = make(server, tmp_path, retries=3)
    [reply] = backend.chat([HELLO], max_tokens=8)
    assert reply.text is None and re.search(message, reply.error), reply.error
    assert len(server.requests) == 1
    assert files_under(tmp_path / "cache") == []
    assert backend.chat([HELLO], max_tokens=8) == [Reply("whole answer")]  # asked again, not served from a cache
    assert len(server.requests) == 2


# -------------------------------------------------------------------------------------------- caching and concurrency


def test_successful_replies_are_cached(server, tmp_path):
    server.responder = lambda body: Answer(text=f"answer at max_tokens={body['max_tokens']}")
    backend = make(server, tmp_path)
    assert backend.chat([HELLO]) == [Reply("answer at max_tokens=256")]
    assert backend.chat([HELLO]) == [Reply("answer at max_tokens=256", cached=True)]
    assert make(server, tmp_path).chat([HELLO]) == [Reply("answer at max_tokens=256", cached=True)]  # on disk
    assert len(server.requests) == 1
    assert backend.chat([HELLO], max_tokens=9) == [Reply("answer at max_tokens=9")]  # the key holds the parameters
    assert backend.chat([HELLO], temperature=0.5)[0].cached is False
    assert len(server.requests) == 3
    mixed = backend.chat([ask("new"), HELLO])
    assert [r.cached for r in mixed] == [False, True]
    assert len(server.requests) == 4


def test_order_is_kept_under_bounded_concurrency(server, tmp_path):
    n = 6
    # the first conversation is answered last
    server.responder = lambda body: Answer(text=f"answer {body['messages'][0]['content']}",
                                           delay=0.05 * (n - int(body["messages"][0]["content"])))
    replies = make(server, tmp_path, concurrency=3).chat([ask(str(i)) for i in range(n)])
    assert [r.text for r in replies] == [f"answer {i}" for i in range(n)]
    assert len(server.requests) == n
    assert 2 <= server.peak <= 3


def test_one_failure_does_not_sink_the_others(server, tmp_path):
    server.responder = lambda body: (error(400, "no") if body["messages"][0]["content"] == "bad"
                                     else Answer(text="fine"))
    replies = make(server, tmp_path).chat([ask("a"), ask("bad"), "not a conversation", ask("b")])
    assert [r.text for r in replies] == ["fine", None, None, "fine"]
    assert replies[1].error.startswith("HTTP 400") and "non-empty list of messages" in replies[2].error
    assert len(server.requests) == 3


# ------------------------------------------------------------------------------------------------------ ResponseCache


def test_cache_key_is_canonical_and_complete():
    key = ResponseCache.key("openai:m@u", HELLO, max_tokens=5, temperature=0.0)
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert key == ResponseCache.key("openai:m@u", json.loads(json.dumps(HELLO)), temperature=0.0, max_tokens=5)
    others = [ResponseCache.key("openai:m2@u", HELLO, max_tokens=5, temperature=0.0),
              ResponseCache.key("openai:m@u", HELLO[1:], max_tokens=5, temperature=0.0),
              ResponseCache.key("openai:m@u", HELLO, max_tokens=6, temperature=0.0),
              ResponseCache.key("openai:m@u", HELLO, max_tokens=5, temperature=0.0, top_p=1)]
    assert len({key, *others}) == 5
    with pytest.raises(ValueError, match="may not be named"):
        ResponseCache.key("b", HELLO, messages=[])


def test_cache_round_trip_and_damaged_files(tmp_path):
    cache = ResponseCache(tmp_path / "c")
    key = ResponseCache.key("b", HELLO)
    assert cache.get(key) is None
    cache.put(key, "Feuer — ça brûle 🔥")
    assert cache.get(key) == "Feuer — ça brûle 🔥"
    assert files_under(tmp_path / "c") == [tmp_path / "c" / key[:2] / f"{key}.json"]  # no partial files left
    cache.path(key).write_bytes(b'{"key": "' + key.encode() + b'", "te')
    assert cache.get(key) is None
    cache.path(key).write_bytes(b"\xff\xfe")
    assert cache.get(key) is None
    cache.put(key, "again")
    assert cache.get(key) == "again"
    with pytest.raises(ValueError, match="64 lowercase hex"):
        cache.get("../../etc/passwd")


def test_default_cache_follows_interp_cache(tmp_path):
    assert default_cache().folder == tmp_path / "interp-cache" / "explain"
