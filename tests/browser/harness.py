"""Helpers for real-browser tests: offline page loading with event recording, a throwaway JupyterLab server,
and running a notebook through the JupyterLab UI.

Playwright is imported lazily so that this module (and the conftest that uses it) can be imported, and the
tests skipped with a clear reason, on machines without it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_DIR = REPO_ROOT / "tests" / "artifacts"
SCREENSHOTS_DIR = ARTIFACTS_DIR / "screenshots"

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Schemes that never leave the machine; every other request made by an offline page is aborted and recorded.
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")

REQUIRE_ENV = "INTERP_REQUIRE_BROWSER"


def browser_required() -> bool:
    """True when missing browser prerequisites must fail the tests instead of skipping them (set in CI)."""
    return os.environ.get(REQUIRE_ENV, "") == "1"


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the current test for a missing prerequisite, or fail it when ``INTERP_REQUIRE_BROWSER=1``."""
    import pytest

    if browser_required():
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1, so this is an error rather than a skip)", pytrace=False)
    pytest.skip(f"{reason} (set {REQUIRE_ENV}=1 to make this an error)")


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def require_modules(*names: str) -> None:
    """:func:`skip_or_fail` unless every module in ``names`` can be imported."""
    missing = [n for n in names if not _importable(n)]
    if missing:
        skip_or_fail(f"missing Python packages: {', '.join(missing)}")


def find_chromium() -> str | None:
    """Path of a Chromium executable: ``$INTERP_CHROMIUM``, ``/usr/bin/chromium``, or ``chromium`` /
    ``chromium-browser`` on ``PATH``; ``None`` when there is none."""
    override = os.environ.get("INTERP_CHROMIUM")
    if override:
        return override if os.access(override, os.X_OK) else None
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


# --------------------------------------------------------------------------------------------------------------
# Event recording and offline pages
# --------------------------------------------------------------------------------------------------------------


@dataclass
class PageEvents:
    """What a page did that a test usually wants to be empty. Filled by listeners while the page runs."""

    page: Page
    blocked: list[str] = field(default_factory=list)  # URLs of aborted network requests (and WebSockets)
    console_errors: list[str] = field(default_factory=list)  # console.error(...) and failed resource loads
    page_errors: list[str] = field(default_factory=list)  # uncaught exceptions / unhandled rejections
    dialogs: list[str] = field(default_factory=list)  # "alert: 1", "confirm: ...", ... (all dismissed)

    def flush(self) -> None:
        """Let pending events reach the listeners: Playwright delivers them in order with the reply to any
        later call, so one round trip after the next animation frame is enough."""
        self.page.evaluate("() => new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)))")

    def problems(self) -> dict[str, list[str]]:
        """The non-empty categories, after a flush."""
        self.flush()
        found = {
            "blocked requests": self.blocked,
            "console errors": self.console_errors,
            "page errors": self.page_errors,
            "dialogs": self.dialogs,
        }
        return {k: list(v) for k, v in found.items() if v}

    def assert_clean(self, tolerated_console_errors: tuple[str, ...] = ()) -> None:
        """Fail listing every blocked request, console error, page error and dialog seen so far. A console error
        containing one of ``tolerated_console_errors`` is left out: for a known message of a third-party component
        whose outcome the test checks by other means."""
        problems = self.problems()
        errors = [m for m in problems.pop("console errors", []) if not any(t in m for t in tolerated_console_errors)]
        if errors:
            problems["console errors"] = errors
        assert not problems, "page was not clean:\n" + json.dumps(problems, indent=2)


# The recorder of each open page set up by record_events (entries leave when the page closes).
_EVENTS: dict[Page, PageEvents] = {}


def page_events(page: Page) -> PageEvents:
    """The :class:`PageEvents` recording ``page`` (opened by :func:`open_offline` or
    :func:`run_notebook_in_lab`, or passed to :func:`record_events`)."""
    return _EVENTS[page]


def _page_and_context(target: Page | BrowserContext) -> tuple[Page, BrowserContext]:
    from playwright.sync_api import Page

    if isinstance(target, Page):
        return target, target.context
    return target.new_page(), target


def _request_page(request) -> Page | None:
    from playwright.sync_api import Error as PlaywrightError

    try:
        return request.frame.page
    except PlaywrightError:  # no frame (service worker request)
        return None


def record_events(page: Page, *, allowed_prefixes: tuple[str, ...] = LOCAL_SCHEMES) -> PageEvents:
    """Block every request in ``page``'s browser context whose URL does not start with one of
    ``allowed_prefixes`` and record it, together with console errors, page errors and dialogs (dialogs are
    dismissed so the page never hangs on them). Call before navigating.

    Routes and listeners are installed on the whole context, so popups, workers and frames are covered too.
    Events that come from another recorded page of the same context are left to that page's recorder; those
    of pages without a recorder (popups) go to every recorder of the context.
    """
    from playwright.sync_api import Error as PlaywrightError

    events = PageEvents(page)
    context = page.context
    # A regular expression (unlike a callable) is matched by the browser driver, so allowed requests are never
    # intercepted and pay no round trip through Python; only foreign ones reach the handlers.
    foreign = re.compile("^(?!(?:" + "|".join(re.escape(p) for p in allowed_prefixes) + "))")

    def mine(source: Page | None) -> bool:
        return source is None or source is page or source not in _EVENTS

    def on_route(route):
        if not mine(_request_page(route.request)):
            route.fallback()  # to the handler of the recorder that owns the page
            return
        events.blocked.append(route.request.url)
        route.abort("blockedbyclient")

    def on_websocket(ws_route):
        # Never connected to the server: the socket is a mock that does not reach the network.
        events.blocked.append(ws_route.url)
        ws_route.close()

    def on_console(msg):
        if msg.type == "error" and mine(msg.page):
            loc = msg.location or {}
            where = f" ({loc.get('url', '')}:{loc.get('lineNumber', '')})" if loc.get("url") else ""
            events.console_errors.append(msg.text + where)

    def on_dialog(dialog):
        if mine(dialog.page):
            events.dialogs.append(f"{dialog.type}: {dialog.message}")
        # Every recorder dismisses: the first call wins, later ones are no-ops.
        with contextlib.suppress(PlaywrightError):
            dialog.dismiss()

    def on_web_error(web_error):
        if mine(web_error.page):
            events.page_errors.append(str(web_error.error))

    context.route(foreign, on_route)
    context.route_web_socket(foreign, on_websocket)
    context.on("console", on_console)
    context.on("dialog", on_dialog)
    context.on("weberror", on_web_error)
    _EVENTS[page] = events
    page.once("close", lambda _: _EVENTS.pop(page, None))
    return events


def open_offline(page_or_context: Page | BrowserContext, path: str | os.PathLike, *,
                 wait_until: str = "load") -> PageEvents:
    """Open the local HTML file ``path`` with every request other than ``file:``/``data:``/``blob:``/``about:``
    aborted. Given a context, a new page is opened in it. Returns the :class:`PageEvents` recorder; its
    ``page`` is the opened page."""
    page, _ = _page_and_context(page_or_context)
    events = record_events(page)
    page.goto(Path(path).resolve().as_uri(), wait_until=wait_until)
    return events


# --------------------------------------------------------------------------------------------------------------
# JupyterLab server
# --------------------------------------------------------------------------------------------------------------


@dataclass
class JupyterLab:
    """A running JupyterLab server bound to 127.0.0.1."""

    url: str  # base URL, e.g. http://127.0.0.1:8899 (no trailing slash)
    token: str
    root_dir: Path  # the server's root directory: notebooks must live under it
    log_path: Path  # server stdout + stderr
    process: subprocess.Popen = field(repr=False)

    def lab_url(self, path: str = "") -> str:
        """URL of ``/lab/tree/<path>`` (or ``/lab``), with the token."""
        tail = f"/tree/{quote(path)}" if path else ""
        return f"{self.url}/lab{tail}?token={self.token}"

    def api(self, endpoint: str, method: str = "GET", timeout: float = 10.0) -> Any:
        """Call the REST API (``endpoint`` like ``"status"`` or ``"kernels"``); returns the decoded JSON."""
        req = urllib.request.Request(f"{self.url}/api/{endpoint}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        """End every session and kernel the server has, so the next test starts from a quiet server."""
        for session in self.api("sessions"):
            self.api(f"sessions/{session['id']}", method="DELETE")
        for kernel in self.api("kernels"):
            self.api(f"kernels/{kernel['id']}", method="DELETE")

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


# User settings for the lab frontend. JupyterLab reads ``<settings dir>/<package>/<plugin>.jupyterlab-settings``.
LAB_SETTINGS = {
    # No "Would you like to receive official Jupyter news?" toast, no update check.
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {
        # Keep every cell attached to the DOM so outputs below the fold can be queried.
        "windowingMode": "none",
        # Start the notebook's kernel without the "Select Kernel" dialog.
        "autoStartDefaultKernel": True,
    },
}

KERNEL_NAME = "python3"


def prepare_jupyter_dirs(base: Path) -> dict[str, str]:
    """Create isolated Jupyter config/data/runtime/settings dirs under ``base``, a kernelspec for the current
    interpreter and the lab settings; return the environment variables that point at them."""
    dirs = {name: base / name for name in ("config", "data", "runtime", "share", "lab-settings",
                                           "lab-workspaces", "ipython")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    # A kernelspec named like the default one, found first through JUPYTER_PATH, so that notebooks run in this
    # interpreter (the one that has interp and the widget libraries) whatever else is installed.
    _write_json(dirs["share"] / "jupyter" / "kernels" / KERNEL_NAME / "kernel.json", {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "metadata": {"debugger": True},
    })
    for plugin, values in LAB_SETTINGS.items():
        _write_json(dirs["lab-settings"] / f"{plugin}.jupyterlab-settings", values)
    # The prebuilt lab never needs a rebuild: skip the build check (seconds of CPU on first load) and with it
    # any "Build recommended" dialog.
    _write_json(dirs["config"] / "labconfig" / "page_config.json", {"buildCheck": False, "buildAvailable": False})
    return {
        "JUPYTER_CONFIG_DIR": str(dirs["config"]),
        "JUPYTER_DATA_DIR": str(dirs["data"]),
        "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
        "JUPYTER_PATH": str(dirs["share"] / "jupyter"),
        "JUPYTERLAB_SETTINGS_DIR": str(dirs["lab-settings"]),
        "JUPYTERLAB_WORKSPACES_DIR": str(dirs["lab-workspaces"]),
        "IPYTHONDIR": str(dirs["ipython"]),
        "PYTHONUNBUFFERED": "1",
    }


def start_jupyterlab(base: Path, *, startup_timeout: float = 90.0) -> JupyterLab:
    """Start ``jupyter lab`` on a free 127.0.0.1 port with a random token, a root dir and Jupyter dirs all under
    ``base``, and wait until ``/api/status`` answers. Stop it with :func:`stop_jupyterlab`."""
    base.mkdir(parents=True, exist_ok=True)
    root = base / "root"
    root.mkdir(exist_ok=True)
    env = {**os.environ, **prepare_jupyter_dirs(base)}
    token = secrets.token_hex(16)
    log_path = base / "jupyterlab.log"

    last_error = ""
    for _attempt in range(3):  # the free port can be taken between probing and binding: retry on a new one
        port = _free_port()
        cmd = [
            sys.executable, "-m", "jupyter", "lab",
            "--no-browser", "--allow-root",
            "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            # window.jupyterapp lets the tests drive the app through its command registry.
            "--LabApp.expose_app_in_browser=True",
            # Server side of the news/update feeds: never fetched.
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        with open(log_path, "ab") as log:
            # Own session so that teardown can signal the server and anything it spawned as one group.
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        lab = JupyterLab(url=f"http://127.0.0.1:{port}", token=token, root_dir=root, log_path=log_path,
                         process=proc)
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                last_error = f"jupyter lab exited with code {proc.returncode}"
                break
            try:
                lab.api("status", timeout=2.0)
                return lab
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        else:
            stop_jupyterlab(lab)
            raise RuntimeError(f"jupyter lab did not answer within {startup_timeout:.0f}s; log:\n"
                               + lab.log_tail())
        if "address already in use" not in lab.log_tail().lower():
            break
    raise RuntimeError(f"{last_error}; log:\n" + lab.log_tail())


def _descendants(pid: int) -> list:
    try:
        import psutil
    except ImportError:
        return []
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:  # already gone
        return []


def stop_jupyterlab(lab: JupyterLab, timeout: float = 15.0) -> None:
    """Shut the server down through the API (which also shuts its kernels down), then make sure neither it nor
    any process it started (kernels run in their own sessions) is left running."""
    proc = lab.process
    children = _descendants(proc.pid)
    if proc.poll() is None:
        with contextlib.suppress(OSError, ValueError):  # not answering: signals below
            lab.api("shutdown", method="POST", timeout=5.0)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
    for child in children:
        with contextlib.suppress(Exception):  # psutil.Error: already gone
            if child.is_running():
                child.kill()


# --------------------------------------------------------------------------------------------------------------
# Running a notebook in the JupyterLab UI
# --------------------------------------------------------------------------------------------------------------

# Find the notebook panel open on `path` among the main-area widgets.
_FIND_PANEL_JS = """
window.__interpFindPanel = (path) => {
  const app = window.jupyterapp;
  if (!app || !app.shell) return null;
  for (const w of app.shell.widgets('main')) {
    if (w.context && w.context.path === path && w.content && w.sessionContext) return w;
  }
  return null;
};
"""

# The panel is open, its document loaded, and its kernel connected and idle.
_READY_JS = """
(path) => {
  const w = window.__interpFindPanel && window.__interpFindPanel(path);
  if (!w || !w.context.isReady) return false;
  const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
  return !!kernel && kernel.status === 'idle' && kernel.connectionStatus === 'connected';
}
"""

# Run every cell through the same command as "Run > Run All Cells"; the command resolves, with false if a cell
# raised, once every cell's execute_reply came back. The outcome is left on window for wait_for_function.
_RUN_ALL_JS = """
(path) => {
  const app = window.jupyterapp;
  const w = window.__interpFindPanel(path);
  app.shell.activateById(w.id);
  window.__interpRunAll = {done: false, ok: null, error: null};
  Promise.resolve(app.commands.execute('notebook:run-all-cells'))
    .then(ok => { window.__interpRunAll = {done: true, ok: ok !== false, error: null}; })
    .catch(e => { window.__interpRunAll = {done: true, ok: false, error: String(e)}; });
}
"""

# Nothing is queued or running: kernel idle and no "[*]" prompt left.
_SETTLED_JS = """
(path) => {
  const w = window.__interpFindPanel(path);
  const kernel = w && w.sessionContext.session && w.sessionContext.session.kernel;
  if (!kernel || kernel.status !== 'idle') return false;
  for (const p of w.node.querySelectorAll('.jp-InputArea-prompt')) {
    if (p.textContent.includes('*')) return false;
  }
  return true;
}
"""

_ERROR_OUTPUTS_JS = """
(path) => {
  const w = window.__interpFindPanel(path);
  return Array.from(w.node.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'))
    .map(n => n.textContent);
}
"""


def _with_kernelspec(nb: dict) -> dict:
    """Give a notebook without kernel metadata the harness kernel, so JupyterLab asks nothing when opening it."""
    meta = nb.setdefault("metadata", {})
    if not meta.get("kernelspec", {}).get("name"):
        meta["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python 3 (ipykernel)", "language": "python"}
    return nb


def run_notebook_in_lab(browser_context: BrowserContext, lab: JupyterLab, notebook_path: str | os.PathLike,
                        timeout: float = 60.0, *, raise_on_error: bool = True) -> Page:
    """Open a copy of ``notebook_path`` in ``lab`` in a new page of ``browser_context``, run all cells with
    JupyterLab's "Run All Cells" command, wait until execution has finished and the kernel is idle, and return
    the page.

    Each call copies the notebook into a fresh sub-directory of the server's root (so two runs never share a
    kernel session); files next to the notebook are not copied. Requests that do not go to the server (or to
    ``data:``/``blob:``) are aborted and recorded with the page's errors and dialogs: see :func:`page_events`.
    ``timeout`` (seconds) bounds each stage: loading the notebook and starting its kernel, then running the
    cells. With ``raise_on_error``, a cell that raises fails the call with the notebook's error outputs.
    """
    src = Path(notebook_path)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{src.stem}-", dir=lab.root_dir))
    dest = run_dir / src.name
    dest.write_text(json.dumps(_with_kernelspec(json.loads(src.read_text()))))
    rel = dest.relative_to(lab.root_dir).as_posix()

    page = browser_context.new_page()
    ws_url = "ws" + lab.url.removeprefix("http")  # kernel channels
    record_events(page, allowed_prefixes=(lab.url + "/", ws_url + "/", "data:", "blob:", "about:"))
    page.add_init_script(_FIND_PANEL_JS)
    ms = timeout * 1000

    def wait(js: str, what: str) -> None:
        from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

        try:
            page.wait_for_function(js, arg=rel, timeout=ms, polling=100)
        except PlaywrightTimeoutError as e:
            prompts = page.locator(".jp-InputArea-prompt").all_text_contents()
            raise AssertionError(f"{rel}: {what} within {timeout:.0f}s (prompts: {prompts}); "
                                 f"server log:\n{lab.log_tail()}") from e

    page.goto(lab.lab_url(rel), wait_until="domcontentloaded", timeout=ms)
    wait(_READY_JS, "the notebook did not open with an idle kernel")
    page.evaluate(_RUN_ALL_JS, rel)
    wait("() => window.__interpRunAll.done", "'Run All Cells' did not finish")
    wait(_SETTLED_JS, "cells still running or kernel busy")
    outcome = page.evaluate("() => window.__interpRunAll")
    if raise_on_error and not outcome["ok"]:
        errors = page.evaluate(_ERROR_OUTPUTS_JS, rel)
        reason = outcome["error"] or "a cell raised"
        raise AssertionError(f"running {rel} failed ({reason}):\n" + "\n---\n".join(errors))
    return page
