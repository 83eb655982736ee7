"""A fake Hugging Face Hub on 127.0.0.1, written with the standard library, serving model repos held in memory.

It answers what ``huggingface_hub``'s ``snapshot_download`` and ``hf_hub_download`` ask:

- ``GET /api/models/{repo}[/revision/{rev}]``: the repo's info (``id``, ``sha``, ``siblings``, ``gated``);
- ``GET /api/models/{repo}/tree/{rev}[/{path}]``: its files (``type``, ``path``, ``size``, ``oid``; ``lfs`` for
  ``*.safetensors``), in one page;
- ``HEAD``/``GET /{repo}/resolve/{rev}/{file}``: the file, with ``X-Repo-Commit``, ``ETag`` (the sha256 of the
  bytes), ``Content-Length``.

Errors carry the Hub's ``X-Error-Code`` header: ``RepoNotFound`` (404), ``RevisionNotFound`` (404),
``EntryNotFound`` (404), ``GatedRepo`` (401 without a token, 403 with a wrong one: a gated repo's info and listing
are public, its files need ``Authorization: Bearer {hub.token}``). A revision is ``main`` or the repo's commit hash.

    with FakeHub({"org/tiny": {"config.json": b"{}"}}) as hub:
        os.environ["HF_ENDPOINT"] = hub.endpoint
        ...
        hub.requests  # [("GET", "/api/models/org/tiny/revision/main"), ...]
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

MAX_BODY = 1 << 16  # bytes of a request body read at most (the client sends none)


class FakeHub:
    """Repos ``{name: {filename: bytes}}`` served at :attr:`endpoint` while the context is open."""

    token = "hf_fake_token_for_tests"

    def __init__(self, repos: dict[str, dict[str, bytes]] | None = None):
        self._repos: dict[str, _Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.failures: dict[tuple[str, str], int] = {}  # (repo, filename) -> HTTP status its download answers
        self.delay = 0.0  # seconds each file's GET waits before answering (to overlap concurrent downloads)
        for name, files in (repos or {}).items():
            self.add_repo(name, files)
        self._server: ThreadingHTTPServer | None = None

    def add_repo(self, name: str, files: dict[str, bytes], *, gated: bool = False) -> str:
        """Serve (or replace) repo ``name``; returns its commit hash."""
        repo = _Repo(name, dict(files), gated)
        self._repos[name] = repo
        return repo.sha

    def fail(self, repo: str, filename: str, status: int = 403) -> None:
        """Answer HTTP ``status`` for ``filename`` of ``repo`` until :meth:`heal`."""
        self.failures[(repo, filename)] = status

    def heal(self) -> None:
        self.failures.clear()

    def downloads(self) -> list[str]:
        """The files fetched with ``GET .../resolve/...``, as ``repo/filename``."""
        return [p.split("/resolve/", 1)[0].lstrip("/") + "/" + p.split("/resolve/", 1)[1].split("/", 1)[1]
                for m, p in self.requests if m == "GET" and "/resolve/" in p]

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "the fake hub is not running: use it as a context manager"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _Repo:
    def __init__(self, name: str, files: dict[str, bytes], gated: bool):
        self.name, self.files, self.gated = name, files, gated
        digest = hashlib.sha1(name.encode())
        for f in sorted(files):
            digest.update(f.encode() + b"\0" + hashlib.sha256(files[f]).digest())
        self.sha = digest.hexdigest()

    def tree(self) -> list[dict]:
        out = []
        for path, data in sorted(self.files.items()):
            entry = {"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
            if path.endswith(".safetensors"):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            out.append(entry)
        return out


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    timeout = 10  # seconds a connection may stay silent

    def log_message(self, format, *args):  # keep test output clean
        pass

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def do_POST(self):
        if self._read_body():
            self._send(405, b"method not allowed", body=True)

    def _read_body(self) -> bool:
        """Read (and drop) the request's body; False, with a 413 sent, when it is longer than MAX_BODY."""
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = MAX_BODY + 1
        if n > MAX_BODY or n < 0:
            self.close_connection = True
            self._send(413, b"request body too large", body=True)
            return False
        self.rfile.read(n)
        return True

    def _serve(self, body: bool) -> None:
        if not self._read_body():
            return
        path = unquote(urlsplit(self.path).path)
        self.hub.requests.append((self.command, path))
        if path.startswith("/api/models/"):
            self._api(path[len("/api/models/"):], body)
        elif "/resolve/" in path:
            self._resolve(path, body)
        else:
            self._send(404, b"not found", body)

    def _api(self, rest: str, body: bool) -> None:
        parts = rest.split("/")
        repo = self._repo("/".join(parts[:2]), body)
        if repo is None:
            return
        tail = parts[2:]
        if not tail or tail[0] == "revision":
            if not self._revision(repo, tail[1] if len(tail) > 1 else "main", body):
                return
            info = {"id": repo.name, "sha": repo.sha, "private": False, "gated": "manual" if repo.gated else False,
                    "siblings": [{"rfilename": f} for f in sorted(repo.files)]}
            self._json(info, body)
        elif tail[0] == "tree" and len(tail) > 1:
            if not self._revision(repo, tail[1], body):
                return
            prefix = "/".join(tail[2:])
            entries = [e for e in repo.tree() if not prefix or e["path"].startswith(prefix + "/")]
            self._json(entries, body)
        else:
            self._send(404, b"not found", body)

    def _resolve(self, path: str, body: bool) -> None:
        name, rest = path.lstrip("/").split("/resolve/", 1)
        repo = self._repo(name, body)
        if repo is None:
            return
        revision, _, filename = rest.partition("/")
        if not self._revision(repo, revision, body):
            return
        headers = {"X-Repo-Commit": repo.sha}
        if repo.gated:
            auth = self.headers.get("Authorization")
            if auth != f"Bearer {self.hub.token}":
                status, msg = (401, "You must be authenticated") if auth is None else (403, "Not granted access")
                self._send(status, f"Access to model {repo.name} is restricted. {msg}.".encode(), body,
                           {**headers, "X-Error-Code": "GatedRepo", "X-Error-Message": msg})
                return
        status = self.hub.failures.get((repo.name, filename))
        if status is not None:
            self._send(status, b"injected failure", body, {**headers, "X-Error-Message": "injected failure"})
            return
        data = repo.files.get(filename)
        if data is None:
            self._send(404, b"entry not found", body, {**headers, "X-Error-Code": "EntryNotFound"})
            return
        if body and self.hub.delay:
            time.sleep(self.hub.delay)
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        self._send(200, data, body, {**headers, "ETag": etag, "Content-Type": "application/octet-stream"})

    def _repo(self, name: str, body: bool) -> _Repo | None:
        repo = self.hub._repos.get(name)
        if repo is None:
            self._send(404, b"Repository not found", body,
                       {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
        return repo

    def _revision(self, repo: _Repo, revision: str, body: bool) -> bool:
        if revision in ("main", repo.sha):
            return True
        self._send(404, f"Invalid rev id: {revision}".encode(), body,
                   {"X-Error-Code": "RevisionNotFound", "X-Error-Message": f"Invalid rev id: {revision}"})
        return False

    def _json(self, value, body: bool) -> None:
        self._send(200, json.dumps(value).encode(), body, {"Content-Type": "application/json"})

    def _send(self, status: int, data: bytes, body: bool, headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)
