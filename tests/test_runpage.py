"""A run page over HTTP (pages/): what it shows, who gets a 404, the raw log, earlier lines and the
live events. The app is the pages' routes alone, on fakeredis; the browser test (test_runpage_browser)
goes through the whole daemon."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import fakeredis.aioredis
import pytest
import yarl
from aiohttp import web
from aiohttp.test_utils import TestServer

from litbotd import configfile, decisions, runlink, runview
from litbotd.logstore import Store
from litbotd.pages.app import add_routes
from litbotd.pages.ctx import Pages
from litbotd.queue import Queue
from litbotd.runstate import RunRef, RunState
from litbotd.workflows import Run

KEY = b"L" * 32
REPO, SHA = "octo-org/widgets", "c" * 40
RUN = Run(workflow="ci", file=".litci.yaml", check_name="ci (3.11)", key="ci-3-11", cell={}, image="python:3.12-slim",
          machine="CPU", interruptible=False, timeout=600.0, env={"SECRET_ENV": "hunter2-env-value"},
          script="echo hi")
ID = runlink.RunId(REPO, SHA, RUN.key, 1)
JOB = decisions.job_name(REPO, SHA, RUN.key, 1)


class LocalLogs:
    """The part of a local backend the pages use: where a job's own log file is."""
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def log_file(self, name: str) -> str:
        return str(self.root / name / "log.txt")

    async def copy_log(self, name: str, dest: str) -> bool:  # pragma: no cover - not used by pages for local
        raise AssertionError("local logs are read in place")


class World:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.redis = fakeredis.aioredis.FakeRedis(decode_responses=True)
        self.queue = Queue(self.redis)
        self.rs = RunState(self.queue)
        self.store = Store(str(tmp / "runs"))
        self.backend = LocalLogs(tmp / "jobs")
        self.cfg = configfile.parse({"server": {"public_url": "http://127.0.0.1:1"}}, env={})
        self.log = tmp / "jobs" / JOB / "log.txt"
        self.log.parent.mkdir(parents=True)
        self.log.write_bytes(b"")
        self.server: TestServer | None = None

    async def start(self) -> str:
        app = web.Application()
        add_routes(app, Pages(config=lambda: self.cfg, queue=lambda: self.queue, backend=lambda: self.backend,
                              store=self.store, link_key=KEY))
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return f"http://127.0.0.1:{self.server.port}"

    async def record(self, **fields: Any) -> None:
        await self.rs.add_runs(REPO, SHA, [RUN], pr=7, owner="t")
        await self.rs.update(RunRef(REPO, SHA, RUN.key, 1), job=JOB, **fields)

    def write(self, *lines: str | bytes) -> None:
        with open(self.log, "ab") as f:
            for line in lines:
                f.write((line if isinstance(line, bytes) else line.encode()) + b"\n")


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[World, str, aiohttp.ClientSession]]:
    w = World(tmp_path)
    base = await w.start()
    async with aiohttp.ClientSession() as http:
        yield w, base, http
    assert w.server is not None
    await w.server.close()


async def sse(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str | None, Any]]:
    """A server-sent event stream as (id, event, data) per `data:` line, the JSON decoded."""
    ident, event = "", None
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("id: "):
            ident = line[4:]
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            yield ident, event, json.loads(line[6:])


def page_url(base: str, run: runlink.RunId = ID, key: bytes = KEY) -> str:
    return base + runlink.path(key, run)


async def test_page_shows_the_run_and_its_log_as_text(world):
    w, base, http = world
    await w.record(status="in_progress", started_at=time.time() - 5)
    w.write("\x1b[32mcollected 3 items\x1b[0m", "<script>alert('x')</script>", b"bad \xff\xfe bytes",
            "50%\r100%", "::error file=src/app.py,line=10,title=Type error::expected int", "last line")
    async with http.get(page_url(base)) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Security-Policy"] == "default-src 'self'"
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        body = await resp.text()
    assert "ci (3.11)" in body and "running" in body and "pull request #7" in body and "python:3.12-slim" in body
    assert '<span class="f2">collected 3 items</span>' in body
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in body and "<script>alert" not in body
    assert "bad \ufffd\ufffd bytes" in body
    assert "100%" in body and "50%" not in body
    assert 'id="L5"' in body and 'href="#L5"' in body  # the annotation links to its line
    assert "data-events=" in body  # running: the page follows the log
    assert "<script" not in body.replace('<script src="/static/runpage.js" defer></script>', "")
    assert "hunter2-env-value" not in body and "echo hi" not in body  # no env, no script


async def test_wrong_stale_unknown_and_dotted_urls_are_the_same_404(world):
    w, base, http = world
    await w.record(status="in_progress")
    good = page_url(base)
    async with http.get(good) as resp:
        assert resp.status == 200
    async with http.get(page_url(base, key=b"x" * 32)) as resp:
        wrong = (resp.status, await resp.text())
    unknown_run = runlink.RunId(REPO, "d" * 40, RUN.key, 1)
    bad = [page_url(base, key=b"x" * 32), page_url(base, unknown_run),  # wrong key; a run nobody recorded
           page_url(base, runlink.RunId(REPO, SHA, RUN.key, 2)),     # another attempt under this key's mac
           good[:-2] + "0/", good + "../../../../../../etc/passwd", good.replace("/widgets/", "/%2e%2e/"),
           good + "log.txt/..", good + "%2e%2e/log.txt", base + "/runs/", base + "/runs/../static/litbotd.css"]
    bad[2] = good.replace(f"/{RUN.key}/1/", f"/{RUN.key}/2/")
    for url in bad:
        # as sent: the client must not resolve the `..` itself
        async with http.get(yarl.URL(url, encoded=True), allow_redirects=False) as resp:
            assert (resp.status, await resp.text()) == wrong, url
    assert wrong[0] == 404 and "widgets" not in wrong[1]


async def test_raw_log_lines_json_and_static_files(world):
    w, base, http = world
    await w.record(status="completed", conclusion="success", finished_at=time.time())
    w.write("one", "<two>", b"\xff")
    async with http.get(page_url(base) + "log.txt") as resp:
        assert resp.status == 200 and resp.content_type == "text/plain"
        assert await resp.read() == b"one\n<two>\n\xff\n"
    async with http.get(page_url(base) + "lines?from=2&to=4") as resp:
        data = await resp.json()
    assert data == {"first": 2, "lines": [[["", "<two>"]], [["", "\ufffd"]]]}
    async with http.get(base + "/static/runpage.js") as resp:
        assert resp.status == 200 and "textContent" in await resp.text()
    async with http.get(base + "/static/../pages/app.py") as resp:
        assert resp.status == 404


async def test_events_follow_the_log_until_the_run_ends(world):
    w, base, http = world
    await w.record(status="in_progress")
    w.write("first")
    async with http.get(page_url(base)) as resp:
        body = await resp.text()
    events = body.split('data-events="')[1].split('"')[0].replace("&amp;", "&")
    got: list[tuple[str, Any]] = []
    async with http.get(page_url(base) + events) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        w.write("\x1b[31msecond\x1b[0m")
        t0 = time.monotonic()
        async for _, event, data in sse(resp):
            got.append((event, data))
            if event == "lines" and len(got) == 1:
                latency = time.monotonic() - t0
                w.write("third")
                await w.record(status="completed", conclusion="failure", finished_at=time.time())
            if event == "end":
                break
    assert got[0] == ("lines", {"first": 2, "lines": [[["f1", "second"]]]})
    assert ("lines", {"first": 3, "lines": [[["", "third"]]]}) in got
    assert got[-1] == ("end", {"status_text": "failed", "badge": "failure"})
    assert latency < 5  # generous: the product's goal (1 s) is measured by the bench


async def test_a_reconnecting_follower_resumes_where_it_was(world):
    """EventSource reconnects with Last-Event-ID (each event's id is "offset:line"): no line twice."""
    w, base, http = world
    await w.record(status="in_progress")
    w.write("one")
    async with http.get(page_url(base)) as resp:
        events = (await resp.text()).split('data-events="')[1].split('"')[0].replace("&amp;", "&")
    w.write("two")

    async def first_event(headers: dict[str, str]) -> tuple[str, dict[str, Any]]:
        async with http.get(page_url(base) + events, headers=headers) as resp:
            async for ident, _, data in sse(resp):
                return ident, data
        raise AssertionError("no event")

    ident, data = await first_event({})
    assert data == {"first": 2, "lines": [[["", "two"]]]} and ident == f"{w.log.stat().st_size}:3"
    w.write("three")
    _, again = await first_event({"Last-Event-ID": ident})
    assert again == {"first": 3, "lines": [[["", "three"]]]}


async def test_a_long_log_shows_its_tail_first_and_earlier_parts_on_demand(world, monkeypatch):
    w, base, http = world
    monkeypatch.setattr(runview, "PAGE_LINES", 100)
    await w.record(status="completed", conclusion="success", finished_at=time.time())
    w.write(*(f"line {i}" for i in range(1, 1001)))
    async with http.get(page_url(base)) as resp:
        body = await resp.text()
    assert 'id="L901"' in body and 'id="L1000"' in body and 'id="L900"' not in body
    assert '?from=801' in body and '?from=1"' in body
    async with http.get(page_url(base) + "?from=1") as resp:
        body = await resp.text()
    assert 'id="L1"' in body and 'id="L100"' in body and 'id="L101"' not in body and "?from=101" in body
    await w.record(status="in_progress", conclusion="")
    async with http.get(page_url(base) + "?from=1") as resp:
        early = await resp.text()
    async with http.get(page_url(base)) as resp:
        tail = await resp.text()
    assert "data-events" not in early and "data-events" in tail  # only the part at the end follows


async def test_a_kept_page_outlives_the_redis_record(world):
    w, base, http = world
    w.store.write_meta(JOB, {"state": {"conclusion": "success", "status": "completed"},
                             "spec": {"check_name": "kept check", "machine": "CPU"},
                             "marks": [], "tests": "3 passed, 0 failed, 0 skipped, 0 errors"})
    w.store.log_path(JOB).write_text("kept line\n")
    async with http.get(page_url(base)) as resp:
        body = await resp.text()
    assert resp.status == 200 and "kept check" in body and "kept line" in body and "3 passed" in body
    assert "data-events" not in body


from test_backend_lightning import sdk_env  # noqa: E402,F401  (the Lightning stand-in, conftest.py `lightning`)


async def test_a_lightning_jobs_page_reads_its_log_through_the_sdk(sdk_env, tmp_path):  # noqa: F811
    """Lightning: the log comes through lightning-sdk, copied to the VM once per poll_interval, and
    a new line reaches a follower through the same path."""
    from litbotd.backends.lightning import LightningBackend

    job = sdk_env.add_job(JOB, state="running", logs=["fetching", "\x1b[33mwarming up\x1b[0m"])
    w = World(tmp_path)
    w.backend = LightningBackend("acme/ci", call_timeout=30, stop_wait=2.0)  # type: ignore[assignment]
    w.cfg = configfile.parse({"server": {"public_url": "http://127.0.0.1:1"},
                              "jobs": {"poll_interval": 0.3, "poll_interval_max": 1}}, env={})
    base = await w.start()
    try:
        await w.record(status="in_progress")
        async with aiohttp.ClientSession() as http:
            async with http.get(page_url(base)) as resp:
                body = await resp.text()
            assert '<span class="f3">warming up</span>' in body
            assert w.store.live_path(JOB).read_text() == "fetching\n\x1b[33mwarming up\x1b[0m\n"
            events = body.split('data-events="')[1].split('"')[0].replace("&amp;", "&")
            got = []
            sdk_env.requests.clear()
            t0 = time.monotonic()
            async with http.get(page_url(base) + events) as resp:
                job.logs.append("epoch 1 done")
                async for _, event, data in sse(resp):
                    got.append((event, data))
                    if event == "lines":
                        job.logs.append("litci-exit-code: 0")
                        job.state = "completed"
                        await w.record(status="completed", conclusion="success", finished_at=time.time())
                    if event == "end":
                        break
        elapsed = time.monotonic() - t0
        reads = sum("logs" in r for r in sdk_env.requests)
        assert 1 <= reads <= 2 * (elapsed / 0.3 + 2), (reads, elapsed)  # once per poll_interval, not per look
        assert got[0] == ("lines", {"first": 3, "lines": [[["", "epoch 1 done"]]]})
        assert got[-1] == ("end", {"status_text": "succeeded", "badge": "success"})
        assert any(e == "lines" and d["lines"] == [[["", "litci-exit-code: 0"]]] for e, d in got)
    finally:
        await w.backend.close()  # type: ignore[attr-defined]
        assert w.server is not None
        await w.server.close()


async def test_a_huge_log_is_never_read_whole(world):
    """30 MB of log: the page holds its tail, and serving the page, the raw log and the first
    lines allocates a small part of the log's size (tracemalloc's peak), not the log."""
    import tracemalloc

    w, base, http = world
    await w.record(status="completed", conclusion="success", finished_at=time.time())
    line = b"\x1b[32mPASSED\x1b[0m tests/test_huge.py::test_case " + b"x" * 60 + b"\n"
    block = line * 10_000
    with open(w.log, "wb") as f:
        for _ in range(30 * 1024 * 1024 // len(block)):
            f.write(block)
        f.write(b"the very last line\n")
    size = w.log.stat().st_size
    total = size // len(line) + 1
    tracemalloc.start()
    try:
        async with http.get(page_url(base)) as resp:
            body = await resp.text()
        async with http.get(page_url(base) + "log.txt") as resp:
            n = 0
            async for chunk in resp.content.iter_chunked(1 << 20):
                n += len(chunk)
        async with http.get(page_url(base) + "lines?from=1&to=3") as resp:
            first = await resp.json()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == size
    assert f'id="L{total}"' in body and "the very last line" in body and 'id="L1"' not in body
    assert len(body) < size / 5
    assert first["first"] == 1 and len(first["lines"]) == 2
    assert peak < size / 3, (peak, size)


async def test_the_prune_loop_deletes_pages_kept_longer_than_keep_logs(tmp_path):
    import os

    from litbotd import procinfo
    from litbotd.context import Context, Current
    from litbotd.lifecycle import REGISTRY
    from litbotd.pool import WorkerPool

    store = Store(str(tmp_path / "runs"))
    for job in ("litci-old", "litci-new"):
        store.write_meta(job, {"state": {}})
        store.log_path(job).write_text("x\n")
    old = time.time() - 2 * 3600
    for f in ("meta.json", "log.txt"):
        os.utime(store.dir("litci-old") / f, (old, old))
    cfg = configfile.parse({"report": {"keep_logs": "1h"}}, env={})
    ctx = Context.of(cfg, Queue(fakeredis.aioredis.FakeRedis(decode_responses=True)), page_store=store)
    pool = WorkerPool(Current(ctx), REGISTRY, procinfo.identity("test"))
    await pool._prune()
    assert not store.dir("litci-old").exists() and store.read_meta("litci-new") == {"state": {}}


async def test_redis_unavailable_is_a_503_that_says_nothing_of_the_run(tmp_path):
    server = fakeredis.FakeServer()
    w = World(tmp_path)
    w.redis = fakeredis.aioredis.FakeRedis(server=server, decode_responses=True)
    w.queue = Queue(w.redis)
    base = await w.start()
    try:
        server.connected = False
        async with aiohttp.ClientSession() as http:
            for suffix in ("", "log.txt", "lines?from=1", "events"):
                async with http.get(page_url(base) + suffix) as resp:
                    assert resp.status == 503, suffix
                    assert "widgets" not in await resp.text()
            async with http.get(page_url(base, key=b"x" * 32)) as resp:
                assert resp.status == 404  # a wrong key needs no Redis to be wrong
    finally:
        assert w.server is not None
        await w.server.close()
