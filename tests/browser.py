"""A real headless Chromium for the tests, driven by playwright (Debian's /usr/bin/chromium; never
`playwright install`). Tests that need it skip, with the reason, only when no browser is installed."""
from __future__ import annotations

import os
import shutil
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from conftest import missing_tool

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("LITBOTD_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def need_browser() -> str:
    path = chromium_path()
    if path is None:
        missing_tool("no Chromium installed (apt-get install chromium)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing_tool("playwright is not installed (pip install '.[test]')")
    assert path is not None
    return path


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    path = need_browser()
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=path, args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()
