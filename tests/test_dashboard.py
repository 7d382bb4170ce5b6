"""/dashboard (SPEC §9) on loopback: a real redis-server, the GitHub stand-in, aiohttp's test
client. Who may read it, the CSRF-guarded actions and who did them, the figures `litbotd status`
shows (the same functions), escaping, and no secret on any page."""
from __future__ import annotations

import logging
import re
import time

import pytest

from helpers.pages_stack import ADMIN_TOKEN, CLIENT_SECRET, PEM, WEBHOOK_SECRET, Stack
from litbotd import opsview
from litbotd.pages import dashboard, dashview
from litbotd.runstate import RunRef, RunState
from litbotd.tasks import Task

SHA = "c0ffee" + "0" * 34
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def stack(aredis):
    s = Stack()
    await s.start(aredis, run_url=lambda ctx, ref: f"/runs/{ref.repo}/{ref.sha[:7]}/{ref.key}/{ref.attempt}",
                  flaky=dashboard.flaky_rows, spend=dashboard.spend_rows)
    yield s
    await s.close()


def actions(caplog, message: str) -> list[dict]:
    """The key=value fields of the log lines with this message (logs.Log keeps them in `kv`)."""
    return [r.kv for r in caplog.records if r.getMessage() == message]


async def seed(stack: Stack) -> dict:
    """Real state through the product's own functions: queued, delayed and dead tasks, two
    workers (one alive with a task), runs in three states."""
    q = stack.current.queue
    await q.enqueue(Task(kind="start_job", payload={"repo": "o/r"}), Task(kind="start_job"), Task(kind="results"),
                    Task(kind="wait_job", run_at=time.time() + 3600))
    taken = await q.take("host-a:1:x:0", 1)
    assert taken is not None
    await q.heartbeat({"host-a:1:x:0": {"host": "host-a", "pid": 1, "task": Task.from_json(taken).id,
                                        "since": time.time() - 12}}, lease_timeout=60)
    evil = Task(kind="start_job", payload={"repo": "o/r", "pr": 3, "run": "<b>x</b>"}, attempt=5,
                error="ValueError: <script>alert('dead')</script>")
    plain = Task(kind="results", payload={"repo": "o/r", "pr": 4}, attempt=5, error="GitHubError: 502")
    await q.redis.lpush(q.dead, evil.to_json(), plain.to_json(), "not a task <i>")
    rs = RunState(q)
    refs = [RunRef("o/r", SHA, f"tests-{i}", 1) for i in range(3)]
    for ref in refs:
        await rs.transition(ref, ("",), status="queued")
    await rs.transition(refs[1], ("queued",), status="in_progress")
    await rs.conclude(refs[2], "failure", "2 failed", time.time())
    # flaky runs of two repositories (as runstate's outcome step records them)
    now = time.time()
    await q.redis.zadd("pg:flaky", {"o/gpu": now, "o/cpu": now})
    await q.redis.zadd("pg:flaky:o/gpu", {f"{'a' * 40}:lint": now, f"{'b' * 40}:unit": now})
    await q.redis.zadd("pg:flaky:o/cpu", {f"{'c' * 40}:lint": now})
    await q.redis.hset("pg:runs:o/gpu", str(int(now // 86400)), 40)
    await q.redis.hset("pg:runs:o/cpu", str(int(now // 86400)), 7)
    # today's spend ledger (spend.py's, as a run's end records it) and another day's
    await q.redis.hset(f"pg:spend:{time.strftime('%Y-%m-%d', time.gmtime(now))}", mapping={"o/gpu": 12.5, "o/cpu": 0.25})
    await q.redis.hset("pg:spend:2000-01-01", "o/old", 99)
    return {"evil": evil, "plain": plain, "refs": refs, "taken": taken}


async def test_without_credentials_it_is_a_sign_in_page(stack: Stack) -> None:
    await seed(stack)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {ADMIN_TOKEN}"}):
        resp = await stack.client.get("/dashboard", headers=headers)
        text = await resp.text()
        assert resp.status == 401, headers
        assert 'id="token-signin"' in text and "Sign in with GitHub" in text
        assert "start_job" not in text and "host-a" not in text          # nothing of the queue
        assert resp.headers["Content-Security-Policy"] == "default-src 'self'"


async def test_the_bearer_token_shows_what_status_shows(stack: Stack) -> None:
    s = await seed(stack)
    resp = await stack.client.get("/dashboard", headers=BEARER)
    text = await resp.text()
    assert resp.status == 200, text
    assert resp.headers["Content-Security-Policy"] == "default-src 'self'"
    st = opsview.status_json(await stack.current.queue.status())
    assert (st["queued"], st["delayed"], st["dead"]) == (2, 1, 3)
    for name in ("queued", "delayed", "dead"):
        assert re.search(rf'id="{name}">{st[name]}<', text), name
    for phase, n in st["queued_by_phase"].items():
        assert f"<td>{phase}</td><td class=\"lb-num\">{n}</td>" in text
    [w] = st["workers"]
    assert w["id"] in text
    # flaky runs per repository: what `litbotd status --json` counts, most first
    from litbotd.runstate import flaky_stats
    st = opsview.status_json(await stack.current.queue.status(), await flaky_stats(stack.current.queue))
    assert st["flaky_runs_30d"] == {"o/gpu": {"flaky": 2, "runs": 40}, "o/cpu": {"flaky": 1, "runs": 7}}
    flaky = re.findall(r'<tr><td>(o/\w+)</td><td class="lb-num">(\d+)</td><td class="lb-num">(\d+)</td></tr>',
                       text.split('id="flaky"')[1])
    assert flaky == [("o/gpu", "2", "40"), ("o/cpu", "1", "7")] and f"task {w['task']} for " in text
    # spend per repository today: what `litbotd status --json` shows, most first
    from litbotd import spend
    assert opsview.status_json(await stack.current.queue.status(), None,
                               await spend.view(stack.current.queue))["spend_today_usd"] == {"o/cpu": 0.25, "o/gpu": 12.5}
    spent = re.findall(r'<tr><td>(o/\w+)</td><td class="lb-num">([\d.]+)</td></tr>', text.split('id="spend"')[1])
    assert spent[:2] == [("o/gpu", "12.50"), ("o/cpu", "0.25")] and "o/old" not in text
    # the recent runs, newest change first, each linked to its page
    rows = re.findall(r'<a href="(/runs/[^"]+)">(tests-\d)</a>', text)
    assert [name for _, name in rows] == ["tests-2", "tests-1", "tests-0"]
    assert rows[0][0] == f"/runs/o/r/{SHA[:7]}/tests-2/1"
    assert "lb-failure" in text and "lb-in_progress" in text
    # the dead letter, escaped: the task's error and context and a malformed entry are text
    assert "<script>alert" not in text and "&lt;script&gt;alert(&#39;dead&#39;)&lt;/script&gt;" in text
    assert "<b>x</b>" not in text and "&lt;b&gt;x&lt;/b&gt;" in text
    assert "(malformed) not a task &lt;i&gt;" in text
    assert s["evil"].id in text


async def test_a_browser_session_opened_with_the_token_acts_with_csrf(stack: Stack, caplog) -> None:
    s = await seed(stack)
    c = stack.client
    page = await (await c.get("/dashboard")).text()
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    resp = await c.post("/dashboard/login", data={"csrf": csrf, "token": "nope"}, allow_redirects=False)
    assert resp.status == 403 and "not the admin token" in await resp.text()
    resp = await c.post("/dashboard/login", data={"csrf": "forged", "token": ADMIN_TOKEN}, allow_redirects=False)
    assert resp.status == 403
    resp = await c.post("/dashboard/login", data={"csrf": csrf, "token": ADMIN_TOKEN}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/dashboard"
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie  # http public_url
    assert ADMIN_TOKEN not in cookie
    page = await (await c.get("/dashboard")).text()
    assert 'id="retry-all"' in page
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    q = stack.current.queue
    # Without the session's CSRF token (a cross-site form) nothing happens.
    for bad in ({}, {"csrf": "x" * len(csrf)}):
        resp = await c.post("/dashboard/dead/retry", data={**bad, "id": s["evil"].id}, allow_redirects=False)
        assert resp.status == 403
        resp = await c.post("/dashboard/dead/purge", data=bad, allow_redirects=False)
        assert resp.status == 403
    assert (await q.depths())["dead"] == 3
    caplog.set_level(logging.INFO, logger="litbotd.pages")
    resp = await c.post("/dashboard/dead/retry", data={"csrf": csrf, "id": s["evil"].id})
    assert resp.status == 200 and "requeued 1 task(s)" in await resp.text()
    assert (await q.depths())["dead"] == 2
    assert {"by": "admin-token", "task": s["evil"].id, "requeued": 1} in actions(caplog, "dashboard: dead letter retried")
    resp = await c.post("/dashboard/dead/purge", data={"csrf": csrf})
    assert "purged 2 task(s)" in await resp.text()
    assert (await q.depths())["dead"] == 0
    assert actions(caplog, "dashboard: dead letter purged") == [{"by": "admin-token", "purged": 2}]
    # A rotated token ends the session opened with the old one.
    import dataclasses
    cfg = stack.current.config
    stack.ctx = dataclasses.replace(stack.current, config=dataclasses.replace(
        cfg, server=dataclasses.replace(cfg.server, admin_token="rotated")))
    assert (await c.get("/dashboard")).status == 401


async def test_a_bearer_request_acts_without_a_cookie(stack: Stack) -> None:
    s = await seed(stack)
    resp = await stack.client.post("/dashboard/dead/retry", data={"all": "1"}, headers=BEARER)
    assert resp.status == 200 and (await resp.json())["message"] == "requeued 2 task(s)"
    resp = await stack.client.post("/dashboard/dead/retry", data={"id": "nosuch"}, headers=BEARER)
    assert (await resp.json())["message"] == "no dead task with id nosuch"
    resp = await stack.client.post("/dashboard/dead/purge", headers={"Authorization": "Bearer wrong"})
    assert resp.status == 403
    assert (await stack.current.queue.depths())["dead"] == 1  # only the malformed entry stays
    for path in ("/dashboard/dead/retry", "/dashboard/dead/purge"):   # actions are POSTs only
        assert (await stack.client.get(path, headers=BEARER)).status == 405
    assert s


async def test_no_secret_appears_on_any_page(stack: Stack) -> None:
    await seed(stack)
    secrets = [WEBHOOK_SECRET, CLIENT_SECRET, ADMIN_TOKEN, "PRIVATE KEY", PEM.splitlines()[1][:40]]
    bodies = []
    for path, headers in (("/dashboard", {}), ("/dashboard", BEARER), ("/auth/login?next=/dashboard", {})):
        resp = await stack.client.get(path, headers=headers, allow_redirects=False)
        bodies.append(await resp.text() + str(resp.headers))
    resp = await stack.client.get("/auth/callback?code=x&state=y")
    bodies.append(await resp.text() + str(resp.headers))
    resp = await stack.client.post("/dashboard/login", data={"csrf": "x", "token": "y"})
    bodies.append(await resp.text())
    for body in bodies:
        for secret in secrets:
            assert secret not in body


async def test_an_admin_user_signed_in_with_github_reads_it(aredis) -> None:
    stack = await Stack().start(aredis, admin_users=("Alice",))
    try:
        stack.gh.sign_in("alice")
        resp = await stack.client.get("/auth/login?next=/dashboard")  # follows GitHub's redirects back
        text = await resp.text()
        assert resp.status == 200 and "github:alice" in text and 'id="queued"' in text
        stack.gh.sign_in("mallory")
        resp = await stack.client.post("/auth/logout", data={"csrf": re.search(
            r'name="csrf" value="([^"]+)"', text).group(1)})
        assert resp.status == 401  # back on the sign-in page, signed out
        resp = await stack.client.get("/auth/login?next=/dashboard")
        text = await resp.text()
        assert resp.status == 401 and "mallory" in text and "not in <code>server.admin_users</code>" in text
    finally:
        await stack.close()


def test_the_view_model_leaves_out_sections_not_given() -> None:
    st = opsview.QueueStatus(queue="q", queued=1, delayed=0, dead=0)
    d = dashview.build(st, [], [], lambda ref: None, 0.0)
    assert d.spend is None and d.flaky is None and d.generated == "1970-01-01 00:00:00Z"
    d = dashview.build(st, [], [], lambda ref: None, 0.0,
                       spend=[dashview.SpendRow("a/b", 1.5), dashview.SpendRow("c/d", 9.0)],
                       flaky=[dashview.FlakyRow("a/b", 1, 10), dashview.FlakyRow("c/d", 3, 5)])
    assert [s.repo for s in d.spend] == ["c/d", "a/b"] and [f.repo for f in d.flaky] == ["c/d", "a/b"]
