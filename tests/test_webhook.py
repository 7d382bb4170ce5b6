"""The webhook app over real HTTP on loopback, with a real redis-server (SPEC §5–§8)."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import signal
import time
import urllib.parse
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from litbotd import configfile
from litbotd.context import Context, Current, Liveness
from litbotd.queue import Queue, connect
from litbotd.tasks import Task, derive_id
from litbotd.webhook import make_app

SECRET = "test-webhook-secret"
LIMIT = 64 * 1024
WEBHOOKS = Path(__file__).parent / "data" / "webhooks"
PR_OPENED = (WEBHOOKS / "pull_request.opened.4.json").read_bytes()


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def headers(body: bytes, event: str = "pull_request", delivery: str = "d-1", **extra: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-GitHub-Event": event, "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": sign(body), **extra}


class Intake:
    def __init__(self, services: Context, live: Liveness, port: int, redis_server: Any) -> None:
        self.services = services
        self.live = live
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.redis = redis_server.client()
        self.http = aiohttp.ClientSession()

    async def post(self, body: bytes, hdrs: dict[str, str], path: str = "/hook") -> tuple[int, Any]:
        async with self.http.post(self.url + path, data=body, headers=hdrs) as r:
            return r.status, await r.json()

    async def get(self, path: str) -> tuple[int, str]:
        async with self.http.get(self.url + path) as r:
            return r.status, await r.text()

    def queued(self) -> list[Task]:
        return [Task.from_json(raw) for raw in self.redis.lrange("bot_queue", 0, -1)]

    async def raw(self, request: bytes) -> tuple[bytes, bool]:
        """Send raw bytes; return what the server answers and whether it then closed the connection."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(request)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            try:  # read() returns only once the server closes the connection
                return head + await asyncio.wait_for(reader.read(), 2), True
            except asyncio.TimeoutError:
                return head, False
        finally:
            writer.close()


@pytest.fixture
async def intake(redis_server: Any) -> AsyncIterator[Intake]:
    cfg = configfile.parse({"server": {"port": 0, "path": "/hook", "max_body_bytes": LIMIT},
                        "github": {"webhook_secret": SECRET}, "redis": {"url": redis_server.url}}, env={})
    redis = connect(cfg.redis.url)
    services = Context.of(cfg, Queue(redis, cfg.redis.queue))
    live = Liveness()
    runner = web.AppRunner(make_app(Current(services), live), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    it = Intake(services, live, site._server.sockets[0].getsockname()[1], redis_server)  # type: ignore[union-attr]
    yield it
    await it.http.close()
    await runner.cleanup()
    await redis.aclose()
    it.redis.close()


def nothing_queued(it: Intake, delivery: str = "d-1") -> bool:
    return it.redis.llen("bot_queue") == 0 and not it.redis.exists(f"bot_queue:delivery:{delivery}")


async def test_accepted_delivery_queues_exactly_its_task(intake: Intake) -> None:
    status, body = await intake.post(PR_OPENED, headers(PR_OPENED, delivery="d-42"))
    assert (status, body) == (202, {"delivery": "d-42", "queued": 1})
    [task] = intake.queued()
    assert task.id == derive_id("d-42", "new_event")
    assert task.kind == "new_event"
    assert task.payload == {
        "delivery": "d-42", "installation": 1, "repo": "Codertocat/Hello-World", "event": "pull_request",
        "action": "opened", "pr": 2, "sha": "ec26c3e57ca3a959ca5aad62de7213c562f8c821", "base_ref": "master",
        "head_repo": "Codertocat/Hello-World", "fork": False, "author_association": "OWNER",
        "author": "Codertocat", "private": False,
    }


async def test_duplicate_delivery_is_answered_200_and_not_queued_again(intake: Intake) -> None:
    assert (await intake.post(PR_OPENED, headers(PR_OPENED)))[0] == 202
    status, body = await intake.post(PR_OPENED, headers(PR_OPENED))
    assert (status, body) == (200, {"delivery": "d-1", "duplicate": True})
    assert len(intake.queued()) == 1


async def test_form_encoded_payload_is_accepted(intake: Intake) -> None:
    form = b"payload=" + urllib.parse.quote_plus(PR_OPENED).encode()
    hdrs = headers(form, **{"Content-Type": "application/x-www-form-urlencoded"})
    status, _ = await intake.post(form, hdrs)
    assert status == 202
    assert [t.kind for t in intake.queued()] == ["new_event"]


@pytest.mark.parametrize("hdrs", [
    {"X-Hub-Signature-256": sign(PR_OPENED, "wrong-secret")},
    {"X-Hub-Signature-256": sign(PR_OPENED + b" ")},
    {"X-Hub-Signature-256": "sha256=zz"},
    # The SHA-1 header alone does not do (gidgethub's from_http would accept it).
    {"X-Hub-Signature-256": "", "X-Hub-Signature": "sha1=" + hmac.new(SECRET.encode(), PR_OPENED, "sha1").hexdigest()},
    {"X-Hub-Signature-256": "sha1=" + hmac.new(SECRET.encode(), PR_OPENED, "sha1").hexdigest()},
], ids=["wrong-secret", "other-body", "garbage", "sha1-header-only", "sha1-in-sha256-header"])
async def test_bad_signature_is_401_and_nothing_queued(intake: Intake, hdrs: dict[str, str]) -> None:
    h = {k: v for k, v in {**headers(PR_OPENED), **hdrs}.items() if v}
    status, body = await intake.post(PR_OPENED, h)
    assert status == 401, body
    assert nothing_queued(intake)


async def test_missing_signature_is_401_logged_without_the_body(
        intake: Intake, caplog: pytest.LogCaptureFixture) -> None:
    h = headers(PR_OPENED, delivery="d-unsigned")
    del h["X-Hub-Signature-256"]
    with caplog.at_level(logging.INFO, logger="litbotd.webhook"):
        status, body = await intake.post(PR_OPENED, h)
    assert (status, body) == (401, {"error": "missing X-Hub-Signature-256 header"})
    assert nothing_queued(intake, "d-unsigned")
    [rec] = [r for r in caplog.records if r.name == "litbotd.webhook"]
    assert rec.kv["delivery"] == "d-unsigned"
    assert rec.kv["event"] == "pull_request"
    assert (rec.kv["outcome"], rec.kv["status"]) == ("bad_signature", 401)
    assert "Codertocat" not in repr(rec.__dict__)


async def test_one_log_line_per_request_names_the_delivery(
        intake: Intake, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="litbotd.webhook"):
        await intake.post(PR_OPENED, headers(PR_OPENED, delivery="d-log"))
    [rec] = [r for r in caplog.records if r.name == "litbotd.webhook"]
    assert {k: rec.kv[k] for k in ("delivery", "event", "action", "repo", "outcome", "status")} == {
        "delivery": "d-log", "event": "pull_request", "action": "opened", "repo": "Codertocat/Hello-World",
        "outcome": "queued", "status": 202}


async def test_under_load_delivery_lines_go_to_debug_and_one_line_a_second_counts_them(
        caplog: pytest.LogCaptureFixture) -> None:
    from litbotd.webhook import _Lines
    now = [100.2]
    lines = _Lines(limit=3, clock=lambda: now[0])
    levels = [lines.level("queued") for _ in range(5)] + [lines.level("duplicate")]
    assert levels == ["info"] * 3 + ["debug"] * 3
    now[0] = 101.0  # a new second: info again
    assert lines.level("queued") == "info"
    with caplog.at_level(logging.INFO, logger="litbotd.webhook"):
        lines.flush()  # what the loop calls a second after the first quieted line
    [rec] = [r for r in caplog.records if r.name == "litbotd.webhook"]
    assert rec.levelno == logging.INFO and rec.kv == {"queued": 2, "duplicate": 1}
    assert not lines.quieted


async def test_oversized_content_length_is_413_without_reading_the_body(intake: Intake) -> None:
    """Only headers and a few bytes of a 'huge' body are sent: a server that tried to read the
    body would wait for the rest instead of answering."""
    req = (b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"X-GitHub-Event: pull_request\r\nX-GitHub-Delivery: d-1\r\nX-Hub-Signature-256: sha256=00\r\n"
           b"Content-Length: 100000000\r\n\r\n{\"acti")
    answer, closed = await intake.raw(req)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"Connection: close" in answer
    assert closed  # not kept alive to drain the rest
    assert nothing_queued(intake)


async def test_oversized_with_expect_continue_gets_413_instead_of_100(intake: Intake) -> None:
    req = (b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
           b"X-GitHub-Event: pull_request\r\nX-GitHub-Delivery: d-1\r\nContent-Length: 100000000\r\n\r\n")
    answer, _ = await intake.raw(req)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]


async def test_expect_continue_within_the_limit_is_invited(intake: Intake) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", intake.port)
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers(PR_OPENED).items())
        writer.write(f"POST /hook HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n{head}"
                     f"Content-Length: {len(PR_OPENED)}\r\n\r\n".encode())
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(PR_OPENED)
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)).startswith(b"HTTP/1.1 202 ")
    finally:
        writer.close()
    assert len(intake.queued()) == 1


async def test_chunked_oversize_is_413_once_past_the_limit(intake: Intake) -> None:
    chunk = b"x" * 16384
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(LIMIT // len(chunk) + 1))
    req = (b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
           b"X-GitHub-Event: pull_request\r\nX-GitHub-Delivery: d-1\r\nX-Hub-Signature-256: sha256=00\r\n\r\n")
    # No terminating 0-chunk: the answer must come from the running count, not the end of the body.
    answer, closed = await intake.raw(req + body)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert closed
    assert nothing_queued(intake)


async def test_chunked_body_within_limit_is_accepted(intake: Intake) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(PR_OPENED), 4096):
            yield PR_OPENED[i:i + 4096]

    async with intake.http.post(intake.url + "/hook", data=chunks(), headers=headers(PR_OPENED)) as r:
        assert r.status == 202


async def test_signed_non_json_is_400(intake: Intake) -> None:
    body = b"{not json"
    status, answer = await intake.post(body, headers(body))
    assert (status, answer) == (400, {"error": "body is not JSON"})
    assert nothing_queued(intake)


async def test_form_without_payload_is_400(intake: Intake) -> None:
    body = b"other=1"
    status, _ = await intake.post(body, headers(body, **{"Content-Type": "application/x-www-form-urlencoded"}))
    assert status == 400


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", ""])
async def test_wrong_content_type_is_400(intake: Intake, content_type: str) -> None:
    h = headers(PR_OPENED, **{"Content-Type": content_type})
    status, body = await intake.post(PR_OPENED, h)
    assert status == 400
    assert "content type" in body["error"]
    assert nothing_queued(intake)


async def test_json_with_charset_is_accepted(intake: Intake) -> None:
    status, _ = await intake.post(PR_OPENED, headers(PR_OPENED, **{"Content-Type": "application/json; charset=utf-8"}))
    assert status == 202


@pytest.mark.parametrize("header", ["X-GitHub-Event", "X-GitHub-Delivery"])
async def test_missing_event_header_is_400_naming_it(intake: Intake, header: str) -> None:
    h = headers(PR_OPENED)
    del h[header]
    status, body = await intake.post(PR_OPENED, h)
    assert (status, body) == (400, {"error": f"missing {header} header"})
    assert intake.redis.llen("bot_queue") == 0


async def test_payload_missing_a_field_is_400_naming_it(intake: Intake) -> None:
    data = json.loads(PR_OPENED)
    del data["pull_request"]["head"]["sha"]
    body = json.dumps(data).encode()
    status, answer = await intake.post(body, headers(body))
    assert status == 400
    assert "pull_request.head.sha" in answer["error"]
    assert nothing_queued(intake)


async def test_ping_is_200_with_zen(intake: Intake) -> None:
    body = (WEBHOOKS / "ping.3.json").read_bytes()
    status, answer = await intake.post(body, headers(body, event="ping"))
    assert (status, answer) == (200, {"ok": True, "zen": json.loads(body)["zen"]})
    assert nothing_queued(intake)


@pytest.mark.parametrize("event,name,reason", [
    ("issue_comment", "issue_comment.created.5", "not an App delivery (no installation)"),
    ("installation", "installation.created.1", "logged"),
    ("pull_request", "pull_request.labeled.2", "pull_request action 'labeled' is not handled"),
])
async def test_unqueued_events_are_200_and_unclaimed(intake: Intake, event: str, name: str, reason: str) -> None:
    body = (WEBHOOKS / f"{name}.json").read_bytes()
    status, answer = await intake.post(body, headers(body, event=event))
    assert (status, answer) == (200, {"delivery": "d-1", "ignored": reason})
    assert nothing_queued(intake)


async def test_draining_is_503_and_nothing_queued(intake: Intake) -> None:
    intake.live.draining = True
    status, _ = await intake.post(PR_OPENED, headers(PR_OPENED))
    assert status == 503
    assert nothing_queued(intake)
    assert (await intake.get("/healthz"))[0] == 503


async def test_redis_down_is_503_quickly_then_202_once_back(intake: Intake, redis_server: Any) -> None:
    redis_server.stop(kill=True)
    t0 = time.monotonic()
    status, body = await intake.post(PR_OPENED, headers(PR_OPENED))
    assert status == 503, body
    assert time.monotonic() - t0 < 3
    redis_server.start()
    status, _ = await intake.post(PR_OPENED, headers(PR_OPENED))
    assert status == 202
    assert len(intake.queued()) == 1


async def test_a_hung_redis_is_503_not_a_hung_webhook(intake: Intake, redis_server: Any) -> None:
    redis_server.proc.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        results = await asyncio.wait_for(asyncio.gather(*[
            intake.post(PR_OPENED, headers(PR_OPENED, delivery=f"d-hung-{i}")) for i in range(3)]), 15)
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    assert [status for status, _ in results] == [503] * 3, results
    status, _ = await intake.post(PR_OPENED, headers(PR_OPENED, delivery="d-after"))
    assert status == 202


async def test_healthz_reports_queue_then_503_without_redis(intake: Intake, redis_server: Any) -> None:
    await intake.post(PR_OPENED, headers(PR_OPENED))
    status, text = await intake.get("/healthz")
    health = json.loads(text)
    assert status == 200
    assert health["redis"] is True and health["draining"] is False
    assert (health["queued"], health["delayed"], health["dead"]) == (1, 0, 0)
    assert 0 <= health["oldest_task_age_s"] < 60
    assert isinstance(health["loop_lag_s"], float)
    redis_server.stop(kill=True)
    status, text = await intake.get("/healthz")
    down = json.loads(text)
    assert status == 503
    assert down["redis"] is False
    assert set(down) == set(health)


def _count(text: str, event: str, outcome: str) -> float:
    m = re.search(rf'^litbotd_webhooks_total{{event="{event}",outcome="{outcome}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


async def test_metrics_count_webhooks_by_event_and_outcome(intake: Intake) -> None:
    before = (await intake.get("/metrics"))[1]
    for i in range(3):
        await intake.post(PR_OPENED, headers(PR_OPENED, delivery=f"m-{i}"))
    await intake.post(PR_OPENED, headers(PR_OPENED, delivery="m-0"))
    await intake.post(PR_OPENED, {**headers(PR_OPENED), "X-Hub-Signature-256": "sha256=00"})
    async with intake.http.get(intake.url + "/metrics") as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        after = await r.text()
    assert _count(after, "pull_request", "queued") - _count(before, "pull_request", "queued") == 3
    assert _count(after, "pull_request", "duplicate") - _count(before, "pull_request", "duplicate") == 1
    # Before the signature is checked the event label is not trusted.
    assert _count(after, "-", "bad_signature") - _count(before, "-", "bad_signature") == 1
    assert 'litbotd_queue_depth{queue="queued"} 3.0' in after


async def test_metrics_page_survives_redis_down(intake: Intake, redis_server: Any) -> None:
    redis_server.stop(kill=True)
    status, text = await intake.get("/metrics")
    assert status == 200
    assert "# TYPE litbotd_webhooks_total counter" in text
