"""Fixtures for real-browser tests (headless Chromium through Playwright, optionally a JupyterLab server).

Every test in this folder is skipped when Chromium or Playwright is missing, unless ``INTERP_REQUIRE_BROWSER=1``
is set (CI), in which case it fails instead. All tests here carry the ``browser`` marker: ``-m "not browser"``
leaves them out.

Helpers live in :mod:`tests.browser.harness` (``open_offline``, ``page_events``, ``run_notebook_in_lab``, ...).
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest

from .harness import (
    ARTIFACTS_DIR,
    CHROMIUM_ARGS,
    SCREENSHOTS_DIR,
    find_chromium,
    require_modules,
    skip_or_fail,
    start_jupyterlab,
    stop_jupyterlab,
)

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    # This hook sees the whole session's items, not only this folder's.
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.browser)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    # Keep each phase's report on the item so fixtures can tell, at teardown, whether the test failed.
    report = yield
    setattr(item, f"_browser_rep_{report.when}", report)
    return report


@pytest.fixture(scope="session", autouse=True)
def chromium_executable() -> str:
    """Path of the Chromium used by the tests; skips (or fails, see module doc) when it or Playwright is
    missing."""
    path = find_chromium()
    if path is None:
        skip_or_fail("Chromium not found (/usr/bin/chromium, chromium on PATH or $INTERP_CHROMIUM); "
                     "install it with `apt-get install -y chromium`")
    # The system Chromium is driven directly: `playwright install` is not needed.
    require_modules("playwright")
    return path


@pytest.fixture(scope="session")
def browser(chromium_executable):
    """A headless Chromium (playwright ``Browser``), shared by the session and closed at its end.

    Playwright gives each launch a fresh temporary user-data-dir (removed on close), so no profile state is
    shared with other runs; use the ``context`` fixture for per-test isolation.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=chromium_executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def context(browser, request, artifacts):
    """A fresh browser context (own cookies, storage and routes) for one test, closed afterwards. Service
    workers are blocked so that every request goes through routing. If the test fails, each page still
    open is saved as ``<artifacts>/<test>-failure-<n>.png``."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
    ctx.set_default_timeout(30_000)
    yield ctx
    rep = getattr(request.node, "_browser_rep_call", None)
    if rep is not None and rep.failed:
        from playwright.sync_api import Error as PlaywrightError

        name = re.sub(r"[^\w.-]+", "_", request.node.name)
        for i, page in enumerate(ctx.pages):
            with contextlib.suppress(PlaywrightError):  # a crashed or closed page: nothing to save
                page.screenshot(path=str(artifacts / f"{name}-failure-{i}.png"), timeout=5_000)
    ctx.close()


@pytest.fixture
def page(context):
    """A new page in the test's own ``context``."""
    return context.new_page()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """``tests/artifacts/screenshots/`` under the repository root (created), where tests save PNGs."""
    SCREENSHOTS_DIR.mkdir(parents=True, exist_ok=True)
    ignore = ARTIFACTS_DIR / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# Test outputs (screenshots, ...): never committed.\n*\n!.gitignore\n")
    return SCREENSHOTS_DIR


@pytest.fixture(scope="session")
def jupyterlab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 (free port, random token, temporary root dir, isolated Jupyter dirs,
    news and update checks off, a ``python3`` kernel on this interpreter), stopped with its kernels at the end
    of the session. Yields a :class:`tests.browser.harness.JupyterLab` (``url``, ``token``, ``root_dir``, ...).
    """
    require_modules("jupyterlab", "ipykernel")
    lab = start_jupyterlab(tmp_path_factory.mktemp("jupyterlab"))
    try:
        yield lab
    finally:
        stop_jupyterlab(lab)


@pytest.fixture(autouse=True)
def _lab_kernels_per_test(request):
    """After each test that used ``jupyterlab``, shut its kernels down (the server itself is shared)."""
    if "jupyterlab" not in request.fixturenames:
        yield
        return
    lab = request.getfixturevalue("jupyterlab")
    yield
    lab.shutdown_kernels()
