"""SIGHUP reload on a real daemon (SPEC §7): the worker count follows the config file up and
down while tasks keep flowing, none is lost; a broken config is logged, naming the problem, and
the running config stays; a later good reload works."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import signal
from pathlib import Path

import pytest

from helpers import ops_daemon as od
from helpers.wait import wait_until_sync
from litbotd.tasks import Task

TOTAL = 300


def _set_workers(cfg: Path, n: int) -> None:
    text = cfg.read_text()
    start = text.index("count = ")
    end = text.index("\n", start)
    cfg.write_text(text[:start] + f"count = {n}" + text[end:])


def _log_has(log: Path, *words: str) -> bool:
    return any(all(w in line for w in words) for line in log.read_text().splitlines())


@pytest.mark.slow
def test_sighup_resizes_workers_without_losing_tasks(tmp_path: Path, redis_server) -> None:
    cfg = od.write_config(tmp_path / "litbotd.toml", redis_server.url, workers=4)
    # The operator's `litbotd status` reads a config of its own: the daemon's may be broken below.
    ops_cfg = od.write_config(tmp_path / "ops.toml", redis_server.url)
    log = tmp_path / "daemon.log"
    r = redis_server.client()
    batches = iter([TOTAL // 3, TOTAL // 3, TOTAL - 2 * (TOTAL // 3)])

    def enqueue_batch() -> None:
        # Short tasks, so some are always in flight when a worker is retired.
        tasks = [Task(kind="sleep", payload={"s": 0.01 + (i % 5) * 0.01}) for i in range(next(batches))]
        r.lpush("bot_queue", *(t.to_json() for t in tasks))

    proc = od.start(cfg, log)
    try:
        wait_until_sync(lambda: od.alive_workers(ops_cfg, proc.pid) == 4, 20, "4 workers")
        enqueue_batch()

        for n in (1, 6):
            _set_workers(cfg, n)
            assert r.llen("bot_queue") > 0  # the reload lands while tasks are flowing
            proc.send_signal(signal.SIGHUP)
            wait_until_sync(lambda n=n: od.alive_workers(ops_cfg, proc.pid) == n, 20, f"{n} workers after SIGHUP")
            assert _log_has(log, "reloaded", f"workers={n}")
            enqueue_batch()

        # A broken file: the error names the key, the daemon keeps its 6 workers.
        good = cfg.read_text()
        cfg.write_text(good.replace("[workers]\n", "[workers]\ncuont = 2\n"))
        proc.send_signal(signal.SIGHUP)
        wait_until_sync(lambda: _log_has(log, "reload refused", "workers.cuont", "unknown key"), 20,
                        "the refused reload in the log")
        cfg.write_text(good.replace("[workers]\n", "[workers\n"))
        proc.send_signal(signal.SIGHUP)
        wait_until_sync(lambda: _log_has(log, "reload refused", "invalid TOML"), 20, "the invalid TOML in the log")
        assert proc.poll() is None
        assert od.alive_workers(ops_cfg, proc.pid) == 6

        # A later good reload works.
        cfg.write_text(good)
        _set_workers(cfg, 2)
        proc.send_signal(signal.SIGHUP)
        wait_until_sync(lambda: od.alive_workers(ops_cfg, proc.pid) == 2, 20, "2 workers after the good reload")

        # Every task ran exactly once: none lost while workers came and went.
        wait_until_sync(lambda: r.scard("bot_queue:test:done") == TOTAL, 30, "all tasks done")
        assert int(r.get("bot_queue:test:runs")) == TOTAL
        assert r.llen("bot_queue") == 0 and r.llen("bot_queue:dead") == 0
        assert not r.keys("bot_queue:processing:*")
        assert proc.term() == 0
    finally:
        proc.close()


@pytest.mark.slow
def test_reload_changes_log_level_and_secrets(tmp_path: Path, redis_server) -> None:
    """Log level and the webhook secret (scrubbed from logs) take effect on SIGHUP."""
    cfg = od.write_config(tmp_path / "litbotd.toml", redis_server.url, workers=1)
    log = tmp_path / "daemon.log"
    r = redis_server.client()
    notify = od.FakeSystemd(tmp_path / "notify.sock")
    proc = od.start(cfg, log, NOTIFY_SOCKET=str(notify.path))
    try:
        ready = notify.wait_field(lambda f: f == "READY=1")
        cfg.write_text(cfg.read_text().replace('level = "info"', 'level = "error"')
                       .replace("test-webhook-secret", "rotated-secret-value"))
        proc.send_signal(signal.SIGHUP)
        reloading = notify.wait_field(lambda f: f == "RELOADING=1", ready + 1)
        notify.wait_field(lambda f: f == "READY=1", reloading)  # the new config is in force
        r.lpush("bot_queue", Task(kind="log", payload={"message": "uses rotated-secret-value"}).to_json())
        wait_until_sync(lambda: _log_has(log, "handler failed"), 20, "the error line")
        text = log.read_text()
        assert "handler says" not in text  # info is below the new level
        assert "rotated-secret-value" not in text and "handler failed: uses ***" in text
        assert proc.term() == 0
    finally:
        notify.close()
        proc.close()


@pytest.mark.slow
def test_a_retiring_worker_finishes_its_task_first(tmp_path: Path, redis_server) -> None:
    cfg = od.write_config(tmp_path / "litbotd.toml", redis_server.url, workers=2)
    log = tmp_path / "daemon.log"
    r = redis_server.client()
    proc = od.start(cfg, log)
    try:
        wait_until_sync(lambda: od.alive_workers(cfg, proc.pid) == 2, 20, "2 workers")
        long = Task(kind="sleep", payload={"s": 4})
        r.lpush("bot_queue", long.to_json())
        wait_until_sync(lambda: long.id in str(r.hvals("bot_queue:workers")), 20, "the task in flight")

        _set_workers(cfg, 0)
        proc.send_signal(signal.SIGHUP)
        # The idle worker goes at once; the busy one stays until its task is done, then goes too.
        busy = wait_until_sync(lambda: (
            ws := [w for w in od.status(cfg)["workers"] if w["alive"] and w["pid"] == proc.pid]) and len(ws) == 1 and ws,
            20, "only the busy worker left")
        assert busy[0]["task"] == long.id
        wait_until_sync(lambda: od.alive_workers(cfg, proc.pid) == 0, 20, "no workers")
        assert r.sismember("bot_queue:test:done", long.id)
        assert r.llen("bot_queue") == 0 and not r.keys("bot_queue:processing:*")
        assert proc.term() == 0
    finally:
        proc.close()


async def test_reload_is_ignored_before_start_and_while_stopping(redis_server, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """Before start() the recovery sweep has not run, and a draining daemon must not grow: a SIGHUP
    then changes nothing."""
    from litbotd.configfile import parse
    from litbotd.daemon import Daemon
    from litbotd.worker import Registry

    cfg = parse({"server": {"enabled": False}, "redis": {"url": redis_server.url},
                 "workers": {"count": 1, "heartbeat_interval": "0.2s", "lease_timeout": "2s"},
                 "github": {"redeliver_interval": 0},
                 "jobs": {"backend": "local", "local": {"workdir": str(tmp_path / "jobs"), "sandbox": False}}}, env={})
    bigger = dataclasses.replace(cfg, workers=dataclasses.replace(cfg.workers, count=3))
    caplog.set_level(logging.WARNING)
    d = Daemon(cfg, Registry(), config_loader=lambda: bigger)
    await d.reload()
    assert not d.workers and "reload ignored: the daemon is still starting" in caplog.text

    run = asyncio.create_task(d.run())
    await asyncio.wait_for(d.ready.wait(), 10)
    assert len(d.live_workers()) == 1
    d.stop()
    await d.reload()
    assert "reload ignored: the daemon is stopping" in caplog.text
    assert await asyncio.wait_for(run, 10) == 0
    assert d.cfg.workers.count == 1 and len(d.workers) <= 1  # no worker started by the late reload


def test_status_shows_a_refused_reload_and_works_with_the_broken_file(tmp_path: Path, redis_server) -> None:
    """Right after a refused reload the operator runs `litbotd status`: it reports the config error
    on stderr, still answers from [redis], and shows that (and why) the daemon refused the reload."""
    cfg = od.write_config(tmp_path / "litbotd.toml", redis_server.url, workers=1)
    proc = od.start(cfg, tmp_path / "daemon.log")
    try:
        wait_until_sync(lambda: od.alive_workers(cfg, proc.pid) == 1, 20, "a live worker")
        good = cfg.read_text()
        cfg.write_text(good.replace("count = 1", "count = -2"))
        proc.send_signal(signal.SIGHUP)

        def refused():
            r = od.cli("-c", str(cfg), "status", "--json")
            return r if r.returncode == 0 and json.loads(r.stdout)["reload_refused"] else None
        r = wait_until_sync(refused, 20, "status to show the refused reload")
        assert "workers.count" in r.stderr and "needs only [redis]" in r.stderr
        [entry] = json.loads(r.stdout)["reload_refused"]
        assert entry["pid"] == proc.pid and "workers.count" in entry["error"]
        text = od.cli("status", "-c", str(cfg)).stdout
        assert "last reload REFUSED" in text and "workers.count" in text
        cfg.write_text(good)  # a good reload clears it
        proc.send_signal(signal.SIGHUP)
        wait_until_sync(lambda: not od.status(cfg)["reload_refused"], 20, "the refusal cleared")
        assert proc.term() == 0
    finally:
        proc.close()
