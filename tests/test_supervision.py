"""The supervised runtime (SPEC §6, issue 9) against a real redis-server: Redis answering OOM or
READONLY for a few seconds, a SIGHUP resize with a crash right after it, two daemons with one host
name, a hung handler, a worker that fails unexpectedly, and liveness."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from helpers import ops_daemon as od
from helpers.daemon import OPS_HELPER, DaemonProcess
from helpers.net import free_port
from helpers.wait import wait_until, wait_until_sync
from litbotd import configfile, procinfo
from litbotd.context import Context, Current
from litbotd.queue import Queue
from litbotd.tasks import Task
from litbotd.worker import Registry


def daemon_config(tmp_path: Path, redis_url: str, *, workers: int = 4, port: int | None = None,
                  lease: str = "5s", heartbeat: str = "0.25s") -> Path:
    cfg = od.write_config(tmp_path / "litbotd.toml", redis_url, workers=workers, server_port=port)
    cfg.write_text(cfg.read_text().replace("max_attempts = 2", "max_attempts = 5")
                   .replace('lease_timeout = "2s"', f'lease_timeout = "{lease}"')
                   .replace('heartbeat_interval = "0.25s"', f'heartbeat_interval = "{heartbeat}"'))
    return cfg


def push(r, *tasks: Task) -> None:
    r.lpush("bot_queue", *[t.to_json() for t in tasks])


def healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def in_flight(r) -> int:
    """Tasks in the workers' processing lists."""
    return sum(r.llen(k) for k in r.keys("bot_queue:processing:*"))


def runs_and_done(r) -> tuple[int, set[str]]:
    return int(r.get("bot_queue:test:runs") or 0), set(r.smembers("bot_queue:test:done"))


# -- Redis refusing writes for a few seconds -------------------------------------------------------
def _oom(r) -> None:
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", "1")


def _oom_end(r) -> None:
    r.config_set("maxmemory", "0")


def _readonly(r) -> None:
    r.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))  # a primary that does not exist


def _readonly_end(r) -> None:
    r.execute_command("REPLICAOF", "NO", "ONE")


@pytest.mark.parametrize("window", [(_oom, _oom_end, "maxmemory"), (_readonly, _readonly_end, "read only replica")],
                         ids=["oom", "readonly"])
def test_a_redis_error_window_leaves_every_worker_alive_and_loses_nothing(tmp_path, redis_server, window):
    start_window, end_window, reply = window
    port = free_port()
    cfg = daemon_config(tmp_path, redis_server.url, port=port)
    r = redis_server.client()
    proc = od.start(cfg, tmp_path / "daemon.log")
    try:
        wait_until_sync(lambda: od.alive_workers(cfg, proc.pid) == 4, 20, "4 live workers")
        before = [Task(kind="sleep", payload={"s": 1.5}) for _ in range(4)]
        push(r, *before)
        wait_until_sync(lambda: in_flight(r) == 4, 20, "4 tasks in flight")
        start_window(r)
        try:
            with pytest.raises(Exception, match=reply):
                r.lpush("bot_queue:probe", "x")  # the window is real: writes are refused
            time.sleep(2.5)  # the fault window itself (its length is the scenario, not a wait)
        finally:
            end_window(r)
        after = [Task(kind="sleep", payload={"s": 0.1}) for _ in range(6)]
        push(r, *after)
        ids = {t.id for t in before + after}
        wait_until_sync(lambda: runs_and_done(r)[1] >= ids, 30, "every task done")
        wait_until_sync(lambda: od.alive_workers(cfg, proc.pid) == 4, 20, "4 live workers after the window")
        assert healthz(port) == 200
        runs, done = runs_and_done(r)
        assert done == ids and runs == len(ids), f"{runs} runs for {len(ids)} tasks: one ran twice"
        assert r.llen("bot_queue:dead") == 0
        assert proc.poll() is None
    finally:
        assert proc.term() == 0
    log = (tmp_path / "daemon.log").read_text()
    assert "failed unexpectedly" not in log and "Traceback" not in log, log[-3000:]


# -- a SIGHUP that adds workers, and a crash right after -------------------------------------------
def test_a_crash_right_after_a_resize_loses_no_task(tmp_path, redis_server):
    """New workers hold their lease before their first take: a SIGKILL just after they took tasks
    leaves nothing in a processing list that no sweep or recovery visits."""
    host = f"resize-{uuid.uuid4().hex[:6]}"
    cfg = daemon_config(tmp_path, redis_server.url, workers=1, lease="8s", heartbeat="4s")
    r = redis_server.client()
    proc = od.start(cfg, tmp_path / "daemon.log", LITBOTD_HOST=host)
    try:
        wait_until_sync(lambda: od.alive_workers(cfg, proc.pid) == 1, 20, "1 live worker")
        tasks = [Task(kind="sleep", payload={"s": 2}) for _ in range(4)]
        push(r, *tasks)
        wait_until_sync(lambda: len(r.keys("bot_queue:processing:*")) == 1, 20, "the first task taken")
        cfg.write_text(cfg.read_text().replace("count = 1", "count = 4"))
        proc.send_signal(signal.SIGHUP)
        wait_until_sync(lambda: in_flight(r) == 4, 20, "4 tasks taken", every=0.005)
        proc.kill()  # inside the window: the heartbeat (every 4s) has not run since the resize
        proc.wait(10)
        unleased = [k for k in r.keys("bot_queue:processing:*") if r.llen(k)
                    and not r.exists("bot_queue:lease:" + k.split(":", 2)[2])]
        assert not unleased, f"tasks taken by workers with no lease: {unleased}"
    finally:
        proc.close()
    proc = od.start(cfg, tmp_path / "daemon2.log", LITBOTD_HOST=host)
    try:
        wait_until_sync(lambda: runs_and_done(r)[1] == {t.id for t in tasks}, 30,
                        "every task done after the restart")
    finally:
        proc.term()


# -- two hosts with one name -----------------------------------------------------------------------
def _other_host_command(tmp_path: Path) -> list[str]:
    """Run a command as if on another machine with the same host name: its own mount namespace
    with another boot id (unprivileged: a user namespace)."""
    unshare = shutil.which("unshare")
    fake = tmp_path / "boot_id"
    fake.write_text(str(uuid.uuid4()) + "\n")
    probe = subprocess.run([unshare or "unshare", "-rm", "sh", "-c",
                            f"mount --bind {fake} /proc/sys/kernel/random/boot_id && cat /proc/sys/kernel/random/boot_id"],
                           capture_output=True, text=True) if unshare else None
    if probe is None or probe.returncode != 0 or probe.stdout.strip() != fake.read_text().strip():
        pytest.skip("needs unshare with unprivileged user and mount namespaces")
    return [unshare, "-rm", "sh", "-c", f'mount --bind {fake} /proc/sys/kernel/random/boot_id && exec "$@"', "sh"]


def test_two_daemons_with_one_host_name_never_take_each_others_tasks(tmp_path, redis_server):
    host = f"samename-{uuid.uuid4().hex[:6]}"
    prefix = _other_host_command(tmp_path)
    cfg = daemon_config(tmp_path, redis_server.url, workers=2, lease="10s")
    r = redis_server.client()
    a = od.start(cfg, tmp_path / "a.log", LITBOTD_HOST=host)
    b = None
    try:
        wait_until_sync(lambda: od.alive_workers(cfg, a.pid) == 2, 20, "daemon A's workers")
        tasks = [Task(kind="sleep", payload={"s": 4}) for _ in range(2)]
        push(r, *tasks)
        wait_until_sync(lambda: in_flight(r) == 2, 20, "A runs both tasks")
        b = DaemonProcess(cfg, tmp_path / "b.log", program=[*prefix, *OPS_HELPER], env={"LITBOTD_HOST": host},
                          name="daemon B").start(wait=False)
        wait_until_sync(lambda: sum(1 for w in od.status(cfg)["workers"] if w["alive"] and w["host"] == host) == 4,
                        20, "daemon B's workers")
        wait_until_sync(lambda: runs_and_done(r)[1] == {t.id for t in tasks}, 30, "both tasks done")
        wait_until_sync(lambda: r.llen("bot_queue") == 0 and not any(
            r.llen(k) for k in r.keys("bot_queue:processing:*")), 30, "nothing queued or in flight")
        runs, _ = runs_and_done(r)
        assert runs == 2, f"{runs} runs of 2 tasks: daemon B took daemon A's live tasks"
        wids = [w["id"] for w in od.status(cfg)["workers"]]
        assert len(set(wids)) == len(wids) == 4
    finally:
        a.term()
        if b is not None:
            b.term()


# -- in-process: the pool itself -------------------------------------------------------------------
def make_pool(services: Context, registry: Registry):
    from litbotd.pool import WorkerPool  # here, so the subprocess tests above also run on older code

    return WorkerPool(Current(services), registry, procinfo.identity("test"))


def make_services(redis, **workers) -> Context:
    cfg = configfile.parse({"workers": {"lease_timeout": 1.0, "heartbeat_interval": 0.2, "retry_backoff": "50ms",
                                        **workers}}, env={})
    return Context.of(cfg, Queue(redis, cfg.redis.queue))


async def healthz_in_process(pool) -> int:
    from aiohttp.test_utils import TestClient, TestServer

    from litbotd.webhook import make_app

    ctx = pool.current.ctx
    current = Current(dataclasses.replace(ctx, config=dataclasses.replace(ctx.config, github=dataclasses.replace(
        ctx.config.github, webhook_secret="x"))))
    async with TestClient(TestServer(make_app(current, pool.live))) as client:
        resp = await client.get("/healthz")
        return resp.status


async def test_a_hung_handler_is_cancelled_retried_then_dead_lettered(aredis):
    s = make_services(aredis, count=1, task_timeout="300ms", max_attempts=2)
    starts = []

    async def hang(task: Task, _s):
        starts.append(task.attempt)
        await asyncio.Event().wait()

    async def quick(task: Task, _s):
        await aredis.rpush("test:done", task.id)

    pool = make_pool(s, Registry(handlers={"hang": hang, "quick": quick}))
    await pool.start()
    try:
        await s.queue.enqueue(Task(kind="hang"))
        await wait_until(lambda: aredis.llen("bot_queue:dead"), 10, "the hung task in the dead letter")
        [(_, dead)] = await s.queue.dead_tasks()
        assert "workers.task_timeout (0.3s)" in dead.error and dead.attempt == 2
        assert starts == [0, 1]
        t = Task(kind="quick")
        await s.queue.enqueue(t)  # the worker slot is free again
        await wait_until(lambda: aredis.lrange("test:done", 0, -1), 5, "the next task")
        assert pool.restarts == 0 and pool.liveness() is None
    finally:
        await pool.stop(2)


async def test_a_worker_that_fails_unexpectedly_is_restarted_and_liveness_says_so(aredis, caplog, tmp_path,
                                                                                  monkeypatch):
    """An error outside a handler (here: finishing a task) ends the worker: the pool logs it once,
    restarts it with backoff, the restarted worker does the task it held, and while workers stay
    down longer than a lease the pool reports it (so /healthz answers 503 and the watchdog starves)."""
    s = make_services(aredis, count=2, lease_timeout="600ms", heartbeat_interval="100ms")
    systemd = od.FakeSystemd(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(systemd.path))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1s while healthy
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    pings = lambda: sum(1 for _, f in systemd.lines() if f == "WATCHDOG=1")  # noqa: E731
    async def count(task: Task, _s):
        await aredis.rpush("test:done", task.id)

    pool = make_pool(s, Registry(handlers={"count": count}))
    broken = True
    real_finish = s.queue.finish_and_take  # what a worker calls to finish a task

    async def finish(*a, **kw):
        if broken:
            raise RuntimeError("a bug in finish")
        return await real_finish(*a, **kw)

    s.queue.finish_and_take = finish
    caplog.set_level(logging.ERROR, "litbotd.pool")
    await pool.start()
    try:
        tasks = [Task(kind="count") for _ in range(2)]
        await s.queue.enqueue(*tasks)
        await wait_until(pool.liveness, 10, "liveness to report the workers down")
        assert "of 2 workers alive" in pool.liveness()
        assert await healthz_in_process(pool) == 503
        starved = pings()
        await asyncio.sleep(0.5)  # five ping intervals
        assert pings() == starved, "the watchdog was fed while workers were down"
        errors = [r for r in caplog.records if "failed unexpectedly; restarting it" in r.getMessage()]
        assert errors and all(r.kv["error"] == "RuntimeError: a bug in finish" for r in errors)
        broken = False
        await wait_until(lambda: pool.liveness() is None, 20, "the restarted workers")
        await wait_until(lambda: all(w.task is None for w in pool.live_workers()), 5, "idle workers")
        done = await aredis.lrange("test:done", 0, -1)
        assert set(done) == {t.id for t in tasks}  # at least once: the handler may have run again
        assert await s.queue.depths() == {"queued": 0, "delayed": 0, "dead": 0}
        assert not await aredis.keys("bot_queue:processing:*") or all(
            [await aredis.llen(k) == 0 for k in await aredis.keys("bot_queue:processing:*")])
        assert pool.restarts >= 2
        assert await healthz_in_process(pool) == 200
        await wait_until(lambda: pings() > starved, 5, "the watchdog fed again")
    finally:
        await pool.stop(2)
        systemd.close()
