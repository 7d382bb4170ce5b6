"""A real headless Chromium for the tests (SPEC §9: "tested as a person would use it").

Debian's `chromium` package, driven by playwright pointed at that executable (never a browser
playwright downloads). Tests that use the `browser` fixture skip with a reason where no
browser or no playwright is installed.

    from helpers.browser import browser  # noqa: F401  (a pytest fixture)

    async def test_x(browser):
        page = await browser.new_page()
"""
from __future__ import annotations

import os
import shutil
from typing import Any, AsyncIterator

import pytest

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def chromium_path() -> str | None:
    given = os.environ.get("LITBOTD_CHROMIUM")
    for path in ((given,) if given else ()) + CHROMIUM_CANDIDATES:
        if path and os.access(path, os.X_OK):
            return path
    return shutil.which("chromium")


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium installed (apt-get install chromium)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; the browser is Debian's chromium)")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=path, args=ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()
