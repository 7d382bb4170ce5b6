"""sd_notify (SPEC §7) against a real daemon process and a real AF_UNIX datagram socket standing
in for systemd: READY=1 once Redis answers and the listener is bound, WATCHDOG=1 every half
WATCHDOG_USEC from the event loop (and none while the loop is blocked), STATUS= with numbers,
RELOADING=1 … READY=1 around SIGHUP, STOPPING=1 at SIGTERM."""
from __future__ import annotations

import re
import signal
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from helpers import ops_daemon as od
from helpers.net import free_port
from helpers.ops_daemon import FakeSystemd
from helpers.wait import wait_until_sync
from litbotd import systemd
from litbotd.tasks import Task

STATUS_RE = re.compile(r"^STATUS=(\d+) workers \((\d+) busy\); queued (\d+), delayed (\d+), dead (\d+)$")


@pytest.fixture
def fake_systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fs = FakeSystemd(tmp_path / "notify.sock")
    yield fs
    fs.close()


def test_notify_sends_to_path_and_abstract_sockets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   fake_systemd: FakeSystemd) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(fake_systemd.path))
    assert systemd.notify("READY=1", "STATUS=ok")
    assert systemd.reloading()
    fake_systemd.wait_field(lambda f: f.startswith("MONOTONIC_USEC="))
    fields = [f for _, f in fake_systemd.lines()]
    assert fields[:3] == ["READY=1", "STATUS=ok", "RELOADING=1"]
    usec = int(fields[3].split("=")[1])
    assert abs(usec / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 5  # systemd's clock, in µs

    name = f"litbotd-test-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as abstract:
        abstract.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("WATCHDOG=1")
        assert abstract.recv(100) == b"WATCHDOG=1"

    monkeypatch.delenv("NOTIFY_SOCKET")
    assert systemd.notify("READY=1") is False  # not under systemd: a no-op
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert systemd.notify("READY=1") is False  # a failed send never raises


def test_watchdog_interval_is_half_and_only_for_the_named_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert systemd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert systemd.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert systemd.watchdog_interval() is None


@pytest.mark.slow
def test_daemon_notifies_systemd_through_its_life(tmp_path: Path, redis_server, fake_systemd: FakeSystemd) -> None:
    port = free_port()
    cfg = od.write_config(tmp_path / "litbotd.toml", redis_server.url, workers=2, server_port=port)
    log = tmp_path / "daemon.log"
    proc = od.start(cfg, log, NOTIFY_SOCKET=str(fake_systemd.path), WATCHDOG_USEC="400000")
    try:
        # READY=1: Redis answered and the listener is bound — connecting right now works.
        ready = fake_systemd.wait_field(lambda f: f == "READY=1")
        socket.create_connection(("127.0.0.1", port), timeout=2).close()

        # WATCHDOG=1 every 0.2 s (half of 400 ms).
        first = fake_systemd.wait_field(lambda f: f == "WATCHDOG=1", ready)
        wait_until_sync(lambda: sum(f == "WATCHDOG=1" for _, f in fake_systemd.lines()[first:]) >= 5, 20, "5 watchdog pings")
        pings = [t for t, f in fake_systemd.lines()[first:] if f == "WATCHDOG=1"]
        gaps = sorted(b - a for a, b in zip(pings, pings[1:], strict=False))
        assert 0.15 < gaps[len(gaps) // 2] < 0.3 and gaps[-1] < 0.8, gaps  # median ≈ 0.2 s; a busy CI box may lag

        # STATUS= carries the live numbers: a delayed task shows up in it.
        r = redis_server.client()
        r.zadd("bot_queue:delayed", {Task(kind="sleep", run_at=time.time() + 3600).to_json(): time.time() + 3600})
        i = fake_systemd.wait_field(lambda f: bool((m := STATUS_RE.match(f)) and m.group(4) == "1"), ready)
        m = STATUS_RE.match(fake_systemd.lines()[i][1])
        assert m and m.group(1) == "2" and m.group(3) == "0" and m.group(5) == "0"

        # SIGHUP: RELOADING=1 (with MONOTONIC_USEC) … READY=1, and the new worker count in STATUS=.
        cfg.write_text(cfg.read_text().replace("count = 2", "count = 3"))
        mark = len(fake_systemd.lines())
        proc.send_signal(signal.SIGHUP)
        rel = fake_systemd.wait_field(lambda f: f == "RELOADING=1", mark)
        assert fake_systemd.lines()[rel + 1][1].startswith("MONOTONIC_USEC=")
        again = fake_systemd.wait_field(lambda f: f == "READY=1", rel)
        fake_systemd.wait_field(lambda f: bool((m := STATUS_RE.match(f)) and m.group(1) == "3"), again)

        # A task that blocks the event loop for 1.2 s: no WATCHDOG=1 while it blocks, pings after.
        r.lpush("bot_queue", Task(kind="block", payload={"s": 1.2}).to_json())
        start = fake_systemd.wait_field(lambda f: f == "X_BLOCK=start", again)
        end = fake_systemd.wait_field(lambda f: f == "X_BLOCK=end", start)
        assert not [f for _, f in fake_systemd.lines()[start:end] if f == "WATCHDOG=1"]
        after = fake_systemd.wait_field(lambda f: f == "WATCHDOG=1", end)
        lines = fake_systemd.lines()
        before = max(t for t, f in lines[:start] if f == "WATCHDOG=1")
        assert lines[after][0] - before >= 1.1  # the silence systemd's WatchdogSec would catch
        wait_until_sync(lambda: sum(f == "WATCHDOG=1" for _, f in fake_systemd.lines()[end:]) >= 3, 20, "pings to resume")

        # SIGTERM: STOPPING=1, then a clean exit.
        mark = len(fake_systemd.lines())
        assert proc.term() == 0, log.read_text()
        fake_systemd.wait_field(lambda f: f == "STOPPING=1", mark)
    finally:
        proc.close()


@pytest.mark.slow
def test_ready_waits_until_redis_answers(tmp_path: Path, redis_server, fake_systemd: FakeSystemd) -> None:
    """Started before Redis: STATUS= says what it waits for, READY=1 only once Redis is up."""
    redis_server.stop()
    cfg = od.write_config(tmp_path / "litbotd.toml", redis_server.url, workers=1)
    proc = od.start(cfg, tmp_path / "daemon.log", NOTIFY_SOCKET=str(fake_systemd.path))
    try:
        fake_systemd.wait_field(lambda f: f == f"STATUS=waiting for redis at {redis_server.url}")
        assert "READY=1" not in [f for _, f in fake_systemd.lines()]
        redis_server.start()  # same port
        fake_systemd.wait_field(lambda f: f == "READY=1")
        assert proc.term() == 0
    finally:
        proc.close()
