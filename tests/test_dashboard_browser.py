"""The dashboard as an operator uses it, in a real headless Chromium (SPEC §9): sign in with GitHub
through the stand-in's sign-in form, read the queue, retry a dead task by clicking; sign in with
the admin token on a second browser; and the page runs under its CSP with nothing blocked.

With LITBOTD_SCREENSHOTS=DIR the test saves DIR/dashboard.png (the README's picture)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from browser import chromium
from helpers.pages_stack import ADMIN_TOKEN, Stack
from litbotd import workflows
from litbotd.pages import dashboard
from litbotd.runstate import RunRef, RunState
from litbotd.tasks import Task

DATA = Path(__file__).parent / "data"


@pytest.fixture
async def browser():
    """tests/browser.py's Chromium (it skips, with the reason, where none is installed)."""
    async with chromium() as b:
        yield b


async def seed_real_data(stack: Stack) -> Task:
    """State made by the product's own functions: runs planned from a real workflow file in
    every state, queued and delayed tasks, live workers with tasks, a dead letter."""
    q = stack.current.queue
    rs = RunState(q)
    plan = workflows.plan({".litci.yml": (DATA / "workflows" / "spec-example.yml").read_bytes()}, "main",
                          workflows.Defaults(image="python:3.12-slim", machine="CPU", timeout=3600.0))
    now = time.time()
    outcomes = ["success", "failure", None, "success", "cancelled", None]
    for i, (repo, sha) in enumerate([("acme/trainer", "3f9a1c2" + "0" * 33), ("acme/trainer", "88b01de" + "1" * 33),
                                     ("acme/kernels", "c41d7e9" + "2" * 33)]):
        await rs.add_runs(repo, sha, plan.runs, pr=40 + i, owner=f"t{i}")
        for j, run in enumerate(plan.runs):
            ref = RunRef(repo, sha, run.key, 1)
            await rs.transition(ref, ("",), status="queued", queued_at=now)
            outcome = outcomes[(i + j) % len(outcomes)]
            await rs.transition(ref, ("queued",), status="in_progress", started_at=now)
            if outcome:
                await rs.conclude(ref, outcome, "", now)
                await rs.record_outcome(ref, outcome, now)
            if outcome == "failure":   # re-run: the second attempt passes, so the run was flaky
                again = RunRef(repo, sha, run.key, await rs.new_attempt(repo, sha, run.key, f"rerun{i}{j}"))
                await rs.transition(again, ("",), status="queued", queued_at=now)
                await rs.conclude(again, "success", "", now)
                await rs.record_outcome(again, "success", now)
    await q.enqueue(*(Task(kind="start_job", payload={"repo": "acme/trainer"}) for _ in range(3)),
                    Task(kind="results", payload={"repo": "acme/kernels"}),
                    *(Task(kind="wait_job", run_at=now + 30) for _ in range(4)))
    workers = {}
    for n in range(2):
        raw = await q.take(f"ci-1:4242:a1b2:{n}", 1)
        assert raw is not None
        workers[f"ci-1:4242:a1b2:{n}"] = {"host": "ci-1", "pid": 4242, "task": Task.from_json(raw).id,
                                          "since": now - 40 * (n + 1)}
    workers["ci-1:4242:a1b2:2"] = {"host": "ci-1", "pid": 4242}
    await q.heartbeat(workers, lease_timeout=60)
    dead = Task(kind="results", payload={"repo": "acme/kernels", "pr": 42, "sha": "c41d7e9" + "2" * 33},
                attempt=5, error="GitHubError: PATCH /repos/acme/kernels/check-runs/1009: 502 Bad Gateway")
    await q.redis.lpush(q.dead, dead.to_json(), Task(kind="start_job", payload={"repo": "acme/trainer", "pr": 41},
                                                      attempt=5, error="TimeoutError: task_timeout 600s").to_json())
    return dead


async def test_an_operator_signs_in_with_github_and_retries_a_dead_task(aredis, browser) -> None:
    stack = await Stack().start(aredis, admin_users=("alice",), flaky=dashboard.flaky_rows,
                                run_url=lambda ctx, ref: f"/runs/{ref.repo}/{ref.sha[:7]}/{ref.key}/{ref.attempt}")
    try:
        dead = await seed_real_data(stack)
        base = str(stack.client.make_url("/"))
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        blocked: list[str] = []
        page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
        failed: list[str] = []
        page.on("requestfailed", lambda r: failed.append(r.url))
        await page.goto(base + "dashboard")
        assert "Sign in" in await page.title()
        await page.click("#github-signin")                       # → the stand-in's github.com sign-in form
        await page.fill("#login", "alice")
        await page.click("#authorize")                           # → /auth/callback → /dashboard
        await page.wait_for_selector("#queue")
        assert page.url == base + "dashboard"
        assert await page.inner_text("#queued") == "2" and await page.inner_text("#delayed") == "4"
        assert await page.inner_text("#dead") == "2"
        assert "github:alice" in await page.inner_text(".lb-who")
        rows = await page.query_selector_all("#runs tbody tr")
        assert len(rows) == 3 * len(workflows.plan({".litci.yml": (DATA / "workflows" / "spec-example.yml").read_bytes()}, "main", workflows.Defaults(image="i", machine="CPU", timeout=1.0)).runs) + 2  # 2 re-runs
        assert "acme/trainer" in await page.inner_text("#flaky")
        link = await page.get_attribute("#runs tbody tr a", "href")
        assert link and link.startswith("/runs/acme/")
        # the stylesheet loaded under default-src 'self' and nothing was blocked
        color = await page.evaluate("getComputedStyle(document.querySelector('.lb-card')).borderTopStyle")
        assert color == "solid" and not blocked and not failed, (blocked, failed)
        shots = os.environ.get("LITBOTD_SCREENSHOTS")
        if shots:
            await page.screenshot(path=str(Path(shots) / "dashboard.png"), full_page=True)
        # retry one dead task by clicking its button
        row = page.locator("#deadletter tbody tr", has_text=dead.id[:12])
        await row.locator("button.lb-retry").click()
        await page.wait_for_selector("#flash")
        assert await page.inner_text("#flash") == "requeued 1 task(s)"
        assert await page.inner_text("#dead") == "1"
        assert (await stack.current.queue.depths())["dead"] == 1
        # a second operator with the admin token, in another browser context (no shared cookies)
        other = await (await browser.new_context()).new_page()
        await other.goto(base + "dashboard")
        await other.fill("#token", "wrong")
        await other.click("#token-signin")
        assert "not the admin token" in await other.inner_text("main")
        await other.fill("#token", ADMIN_TOKEN)
        await other.click("#token-signin")
        await other.wait_for_selector("#queue")
        assert "admin-token" in await other.inner_text(".lb-who")
        await other.click("#purge")
        await other.wait_for_selector("#flash")
        assert await other.inner_text("#flash") == "purged 1 task(s)"
        assert ADMIN_TOKEN not in await other.content()
    finally:
        await stack.close()


@pytest.mark.parametrize("width", [390])
async def test_the_dashboard_is_readable_on_a_phone(aredis, browser, width: int) -> None:
    stack = await Stack().start(aredis)
    try:
        await seed_real_data(stack)
        page = await browser.new_page(viewport={"width": width, "height": 800},
                                      extra_http_headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        await page.goto(str(stack.client.make_url("/dashboard")))
        await page.wait_for_selector("#queue")
        # the page itself does not scroll sideways; wide tables scroll inside their box
        assert await page.evaluate("document.documentElement.scrollWidth") <= width
    finally:
        await stack.close()
