"""A real headless Chromium (Debian's), driven by Playwright, for tests of web pages. A failed
test leaves a screenshot of every page it had open in test-artifacts/ (printed)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
# No network but the test's own servers: nothing in the background reaches out.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session", name="browser")
def browser_fixture() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture(name="web")
def web_fixture(browser, request: pytest.FixtureRequest) -> Iterator[object]:
    """A fresh browser context (no cookies) per test; screenshots kept if the test fails."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(30_000)
    # What the browser saw go wrong, printed with a failed test's screenshots: a page's error
    # ("failed to fetch a module") rarely says which request failed, or why.
    seen: list[str] = []
    context.on("requestfailed", lambda r: seen.append(f"request failed: {r.url}: {r.failure}"))
    context.on("console", lambda m: seen.append(f"console {m.type}: {m.text}"))
    context.on("weberror", lambda e: seen.append(f"page error: {e.error}"))
    try:
        yield context
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            ARTIFACTS.mkdir(exist_ok=True)
            name = re.sub(r"[^\w.-]", "_", request.node.nodeid)
            for line in seen:
                print(f"browser: {line}")
            for i, page in enumerate(context.pages):
                path = ARTIFACTS / f"{name}-{i}.png"
                page.screenshot(path=str(path), full_page=True)
                print(f"screenshot of the failed test's page {page.url}: {path}")
        context.close()
