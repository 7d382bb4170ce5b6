"""The run page as a maintainer uses it, in a real headless Chromium: from a check run's
details_url (the GitHub stand-in) to the page, lines appearing while the job runs, an annotation
followed to its line, a tampered URL answered 404. The whole daemon runs (local backend)."""
from __future__ import annotations

import os
import re
from pathlib import Path

from browser import chromium, need_browser
from fake_github import REPO
from helpers.configs import config_data
from helpers.e2e import SECRET, InProcessDaemon, pr_payload, sha_of
from helpers.net import free_port
from helpers.wait import wait_until

DOCS = Path(__file__).resolve().parents[1] / "docs"


def workflow(gate1: Path, gate2: Path) -> str:
    return f"""\
name: tests
run: |
  printf '\\033[1;34m==>\\033[0m collecting\\n'
  for i in $(seq 1 40); do echo "tests/test_widgets.py::test_case_$i PASSED"; done
  echo '<script>document.title="owned"</script>'
  while [ ! -f {gate1} ]; do sleep 0.05; done
  echo "live line after the first gate"
  while [ ! -f {gate2} ]; do sleep 0.05; done
  printf '\\033[31mFAILED\\033[0m tests/test_widgets.py::test_resize - AssertionError\\n'
  echo "::error file=src/widgets.py,line=42,title=test_resize::assert 3 == 4"
  for i in $(seq 1 80); do echo "teardown $i"; done
  mkdir -p reports
  printf '<testsuite><testcase classname="w" name="a"/><testcase classname="w" name="b"/><testcase classname="w" name="test_resize"><failure message="assert 3 == 4">src/widgets.py:42: AssertionError</failure></testcase></testsuite>' > reports/junit.xml
  exit 1
reports: ["reports/*.xml"]
"""


async def test_follow_a_check_run_to_its_live_page(redis_server, world, tmp_path):
    need_browser()
    sha = sha_of("browser")
    gate1, gate2 = tmp_path / "gate1", tmp_path / "gate2"
    await world.start({sha: {".litci.yaml": workflow(gate1, gate2)}})
    world.pull(sha, pr=12)
    port = free_port()
    data = config_data(redis_server.url, world.url, tmp_path / "jobs",
                       server={"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}"},
                       report={"logs_dir": str(tmp_path / "runs")})
    async with InProcessDaemon(data) as d, chromium() as browser:
        assert await d.send("pull_request", pr_payload("opened", sha, pr=12)) == 202
        run = await wait_until(lambda: next((r for r in world.runs(sha) if r["status"] == "in_progress"
                                             and r["details_url"]), None), 60, "the check run in progress")
        url = run["details_url"]
        assert url.startswith(f"http://127.0.0.1:{port}/runs/{REPO}/{sha}/")

        page = await browser.new_page(viewport={"width": 1100, "height": 900})
        resp = await page.goto(url)
        assert resp.status == 200
        assert resp.headers["content-security-policy"] == "default-src 'self'"
        await page.wait_for_selector("#log >> text=test_case_40 PASSED", timeout=20_000)
        assert await page.locator("#status").inner_text() == "running"
        # The page's script is allowed, the log's is text.
        assert await page.title() != "owned"
        assert await page.locator("#log", has_text='<script>document.title="owned"</script>').count() == 1

        gate1.touch()  # the job prints a line: it appears without a reload
        await page.wait_for_selector("#log >> text=live line after the first gate", timeout=20_000)
        gate2.touch()
        await wait_until(lambda: world.runs(sha)[0]["status"] == "completed", 60, "the check run completed")
        done = world.runs(sha)[0]
        assert done["conclusion"] == "failure" and done["details_url"] == url
        # The summary comment's row links to the same page (SPEC §5).
        await wait_until(lambda: any(url in c["body"] for c in world.gh.comments), 30, "the comment's link")
        await page.wait_for_selector("#log >> text=teardown 80", timeout=20_000)
        await page.wait_for_selector("#status:text-is('failed')", timeout=20_000)

        # The finished page: its annotation, followed to its line.
        await page.goto(url)
        mark = page.locator(".marks a", has_text="test_resize: assert 3 == 4")
        await mark.wait_for(timeout=20_000)
        line = int(await mark.get_attribute("data-line"))
        await mark.click()
        await page.wait_for_url(re.compile(f"#L{line}$"))
        target = page.locator(f"#L{line}")
        assert "::error file=src/widgets.py,line=42" in await target.inner_text()
        assert await page.evaluate("document.querySelector(':target').id") == f"L{line}"
        assert await target.is_visible()
        assert await page.locator("#tests").inner_text() == "Tests: 2 passed, 1 failed, 0 skipped, 0 errors"
        if os.environ.get("LITBOTD_SCREENSHOTS"):
            await page.goto(url)
            await page.screenshot(path=str(DOCS / "runpage.png"), full_page=False)

        content = await page.content()
        assert SECRET not in content and "PRIVATE KEY" not in content and redis_server.url not in content
        # Readable on a phone: nothing wider than the screen but the log's own scroll box.
        phone = await browser.new_page(viewport={"width": 390, "height": 844})
        await phone.goto(url)
        assert await phone.evaluate("document.scrollingElement.scrollWidth <= window.innerWidth")
        await phone.close()

        # Without JavaScript: the same page, the annotation a plain link to its line.
        nojs = await browser.new_context(java_script_enabled=False)
        plain = await nojs.new_page()
        await plain.goto(url)
        await plain.locator(".marks a", has_text="test_resize: assert 3 == 4").click()
        await plain.wait_for_url(re.compile(f"#L{line}$"))
        assert "::error file=src/widgets.py,line=42" in await plain.locator(f"#L{line}").inner_text()
        assert await plain.locator("#follow").count() == 0  # finished: nothing to follow
        await nojs.close()

        # The raw log, and a tampered URL.
        raw = await page.goto(url + "log.txt")
        assert raw.status == 200 and "live line after the first gate" in await raw.text()
        tampered = url[:-3] + ("0" if url[-3] != "0" else "1") + url[-2:]
        resp = await page.goto(tampered)
        assert resp.status == 404
        assert "test_case" not in await page.content()
        await page.close()
        await wait_until(d.idle, 20, "the daemon to go idle")
    kept = list((tmp_path / "runs").glob("litci-*/log.txt"))
    assert len(kept) == 1 and "teardown 80" in kept[0].read_text()
    world.assert_no_duplicates()
