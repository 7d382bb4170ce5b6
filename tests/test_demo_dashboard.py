"""`litbotd demo --keep` serves the dashboard (issue 19): the address and the admin token it made
are printed; in a real headless Chromium the token opens the dashboard, which lists the demo's two
runs, each linked to its run page. With LITBOTD_SCREENSHOTS=DIR the dashboard, with the demo's
real data, is saved as DIR/dashboard-demo.png."""
from __future__ import annotations

import os
import re
import urllib.request
from pathlib import Path

from browser import chromium, need_browser
from helpers.demo import demo_keep


async def test_demo_keep_serves_the_dashboard_with_its_admin_token() -> None:
    need_browser()
    with demo_keep() as out:
        m = re.search(r"at (http://127\.0\.0\.1:\d+/dashboard) \(admin token: ([\w-]+)\)", out)
        assert m, out[-3000:]
        dashboard, token = m.groups()
        pages = re.findall(r"run page: (http://127\.0\.0\.1:\d+(/runs/\S+))", out)
        assert len(pages) == 2, out[-3000:]
        # without the token: the sign-in page, nothing of the queue
        try:
            urllib.request.urlopen(dashboard, timeout=10)
            raise AssertionError("the dashboard opened without the token")
        except urllib.error.HTTPError as e:
            assert e.code == 401
        async with chromium() as browser:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            await page.goto(dashboard)
            await page.fill("#token", token)
            await page.click("#token-signin")
            await page.wait_for_selector("#runs")
            links = await page.eval_on_selector_all("#runs a", "els => els.map(e => e.getAttribute('href'))")
            assert sorted(links) == sorted(url for url, _ in pages)
            assert await page.inner_text("#dead") == "0" and await page.inner_text("#queued") == "0"
            states = await page.inner_text("#runs")
            assert "success" in states and "failure" in states
            if shots := os.environ.get("LITBOTD_SCREENSHOTS"):
                await page.screenshot(path=str(Path(shots) / "dashboard-demo.png"), full_page=True)
            await page.click("#runs a >> nth=0")       # a run's link lands on its page
            await page.wait_for_selector("#L1")
            assert page.url in [url for url, _ in pages]
