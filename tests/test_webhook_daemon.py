"""The SPEC §8 HTTP rows against the real daemon: `python -m litbotd run` as a subprocess, listener
only (`workers.count = 0`), on loopback, with a private redis-server."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Iterator

import aiohttp
import pytest
import redis as syncredis

from conftest import RedisServer
from helpers.configs import write_config
from helpers.daemon import DaemonProcess
from helpers.env import scrubbed_env
from helpers.net import free_port
from test_webhook import LIMIT, PR_OPENED, SECRET, WEBHOOKS, headers, sign


def start_listener(tmp: Path, redis: RedisServer) -> DaemonProcess:
    """`litbotd run`, listener only (workers.count = 0), on a free loopback port; ready when it says so."""
    cfg = write_config(tmp / "litbotd.toml", redis.url, server={"port": free_port(), "max_body_bytes": LIMIT},
                       workers={"count": 0})
    return DaemonProcess(cfg, tmp / "litbotd.log", env={"GH_WEBHOOK_SECRET": SECRET}, cwd=tmp).start(timeout=30)


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    redis = RedisServer(tmp_path_factory.mktemp("redis"))
    redis.start()
    yield redis
    redis.stop(kill=True)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, module_redis: RedisServer) -> Iterator[DaemonProcess]:
    with start_listener(tmp_path_factory.mktemp("daemon"), module_redis) as d:
        yield d
        d.term()


@pytest.fixture
def db(module_redis: RedisServer) -> Iterator[syncredis.Redis]:
    client = module_redis.client()
    client.flushall()
    yield client
    client.close()


async def post(url: str, body: bytes, hdrs: dict[str, str]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=hdrs) as r:
        return r.status, await r.json()


async def raw(port: int, request: bytes) -> tuple[bytes, bool]:
    """The status line and headers of the answer, and whether the server then closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        try:
            await asyncio.wait_for(reader.read(), 2)
            return head, True
        except asyncio.TimeoutError:
            return head, False
    finally:
        writer.close()


def _without(h: dict[str, str], key: str) -> dict[str, str]:
    return {k: v for k, v in h.items() if k != key}


FORM = b"payload=" + urllib.parse.quote_plus(PR_OPENED).encode()
PING = (WEBHOOKS / "ping.3.json").read_bytes()
NO_INSTALLATION = (WEBHOOKS / "issue_comment.created.5.json").read_bytes()
NOT_JSON = b"{not json"

# name, body, headers for a delivery id, status, tasks queued
ROWS: list[tuple[str, bytes, Callable[[str], dict[str, str]], int, int]] = [
    ("accepted", PR_OPENED, lambda d: headers(PR_OPENED, delivery=d), 202, 1),
    ("form-encoded", FORM, lambda d: headers(FORM, delivery=d, **{"Content-Type": "application/x-www-form-urlencoded"}),
     202, 1),
    ("bad-signature", PR_OPENED, lambda d: headers(PR_OPENED, delivery=d, **{"X-Hub-Signature-256": sign(b"x")}),
     401, 0),
    ("missing-signature", PR_OPENED, lambda d: _without(headers(PR_OPENED, delivery=d), "X-Hub-Signature-256"),
     401, 0),
    ("not-json", NOT_JSON, lambda d: headers(NOT_JSON, delivery=d), 400, 0),
    ("wrong-content-type", PR_OPENED, lambda d: headers(PR_OPENED, delivery=d, **{"Content-Type": "text/plain"}),
     400, 0),
    ("missing-event", PR_OPENED, lambda d: _without(headers(PR_OPENED, delivery=d), "X-GitHub-Event"), 400, 0),
    ("missing-delivery", PR_OPENED, lambda d: _without(headers(PR_OPENED, delivery=d), "X-GitHub-Delivery"), 400, 0),
    ("ping", PING, lambda d: headers(PING, event="ping", delivery=d), 200, 0),
    ("no-installation", NO_INSTALLATION, lambda d: headers(NO_INSTALLATION, event="issue_comment", delivery=d),
     200, 0),
]


@pytest.mark.parametrize("name,body,make_headers,status,queued", ROWS, ids=[r[0] for r in ROWS])
async def test_http_rows(daemon: DaemonProcess, db: syncredis.Redis, name: str, body: bytes,
                         make_headers: Callable[[str], dict[str, str]], status: int, queued: int) -> None:
    got, answer = await post(daemon.url + "/", body, make_headers(f"row-{name}"))
    assert got == status, answer
    assert db.llen("bot_queue") == queued


async def test_duplicate_delivery(daemon: DaemonProcess, db: syncredis.Redis) -> None:
    hdrs = headers(PR_OPENED, delivery="dup")
    assert (await post(daemon.url + "/", PR_OPENED, hdrs))[0] == 202
    assert await post(daemon.url + "/", PR_OPENED, hdrs) == (200, {"delivery": "dup", "duplicate": True})
    assert db.llen("bot_queue") == 1


async def test_oversized_bodies_are_413_and_not_read(daemon: DaemonProcess, db: syncredis.Redis) -> None:
    head = (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-GitHub-Event: pull_request\r\n"
            b"X-GitHub-Delivery: big\r\nX-Hub-Signature-256: sha256=00\r\n")
    answer, closed = await raw(daemon.port, head + b"Content-Length: 100000000\r\n\r\n{\"a")
    assert answer.startswith(b"HTTP/1.1 413 ") and closed
    chunk = b"x" * 16384
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(LIMIT // len(chunk) + 1))
    answer, closed = await raw(daemon.port, head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks)
    assert answer.startswith(b"HTTP/1.1 413 ") and closed
    assert db.llen("bot_queue") == 0


async def test_metrics_count_queued_pull_requests(daemon: DaemonProcess, db: syncredis.Redis) -> None:
    async def queued_count() -> float:
        async with aiohttp.ClientSession() as session, session.get(daemon.url + "/metrics") as r:
            for line in (await r.text()).splitlines():
                if line.startswith('litbotd_webhooks_total{event="pull_request",outcome="queued"}'):
                    return float(line.split()[-1])
        return 0.0

    before = await queued_count()
    for i in range(2):
        await post(daemon.url + "/", PR_OPENED, headers(PR_OPENED, delivery=f"metrics-{i}"))
    assert await queued_count() - before == 2


async def test_redis_down_then_back_health_and_sigterm(tmp_path_factory: pytest.TempPathFactory) -> None:
    redis = RedisServer(tmp_path_factory.mktemp("redis"))
    redis.start()
    d = start_listener(tmp_path_factory.mktemp("daemon"), redis)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(d.url + "/healthz") as r:
                assert (r.status, (await r.json())["redis"]) == (200, True)
            redis.stop(kill=True)
            t0 = time.monotonic()
            status, _ = await post(d.url + "/", PR_OPENED, headers(PR_OPENED, delivery="while-down"))
            assert status == 503
            assert time.monotonic() - t0 < 3
            async with session.get(d.url + "/healthz") as r:
                assert (r.status, (await r.json())["redis"]) == (503, False)
            redis.start()
            status, _ = await post(d.url + "/", PR_OPENED, headers(PR_OPENED, delivery="while-down"))
            assert status == 202
        assert redis.client().llen("bot_queue") == 1
        # SIGTERM: a clean exit with status 0.
        assert d.term() == 0
    finally:
        d.close()
        redis.stop(kill=True)


def test_refuses_to_start_without_a_webhook_secret(tmp_path: Path) -> None:
    cfg = tmp_path / "litbotd.toml"
    cfg.write_text('[workers]\ncount = 0\n[redis]\nurl = "redis://127.0.0.1:1/0"\n')
    r = subprocess.run([sys.executable, "-m", "litbotd", "run", "-c", str(cfg)], env=scrubbed_env(), cwd=tmp_path,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "webhook_secret" in r.stderr


def _pr_with(path: str, value: Any) -> bytes:
    data = json.loads(PR_OPENED)
    node = data
    *parents, last = path.split(".")
    for p in parents:
        node = node[p]
    node[last] = value
    return json.dumps(data).encode()


@pytest.mark.parametrize("path,value", [
    ("pull_request.head.sha", "../../../etc/passwd"),
    ("pull_request.head.sha", "f" * 10_000),
    ("repository.full_name", "acme/widgets/../../app"),
    ("installation.id", "77"),
    ("pull_request.number", 1.5),
    ("pull_request.number", 0),
    ("pull_request.number", -5),
    ("installation.id", -77),
])
async def test_malformed_signed_payloads_are_400_and_not_queued(daemon: DaemonProcess, db: syncredis.Redis,
                                                                path: str, value: Any) -> None:
    body = _pr_with(path, value)
    got, answer = await post(daemon.url + "/", body, headers(body, delivery=f"bad-{path}-{len(str(value))}"))
    assert got == 400 and path in answer["error"], answer
    assert db.llen("bot_queue") == 0 and db.zcard("bot_queue:delayed") == 0
