"""Crash recovery with real daemon processes (SPEC §6, §7, §8): SIGKILL with tasks in flight, a second
daemon taking over a dead one's tasks by lease, SIGTERM drain, idle cost, malformed input.

Each daemon is `tests/helpers/queue_daemon.py` (litbotd's Daemon with a test registry) against a
private redis-server. Readiness is the "ready" log line; every wait polls with a deadline.
"""
from __future__ import annotations

import collections
import json
import os
import time
import uuid

import pytest

from helpers.configs import write_config
from helpers.daemon import QUEUE_HELPER, DaemonProcess
from helpers.wait import wait_until, wait_until_sync
from litbotd.tasks import Task

pytestmark = pytest.mark.slow


@pytest.fixture
def daemons(tmp_path, redis_server):
    """Makes DaemonProcesses of the crash tests' helper (helpers/queue_daemon.py), all with one host name."""
    made: list[DaemonProcess] = []
    host = f"testhost-{uuid.uuid4().hex[:8]}"

    def make(name: str = "d1", **workers) -> DaemonProcess:
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
        cfg = write_config(tmp_path / name / "litbotd.toml", redis_server.url, server={"enabled": False},
                           workers={"count": 4, "heartbeat_interval": "500ms", "lease_timeout": "30s",
                                    "shutdown_grace": "10s", "retry_backoff": "200ms", **workers})
        d = DaemonProcess(cfg, tmp_path / name / "stderr.log", program=QUEUE_HELPER, env={"LITBOTD_HOST": host},
                          name=name)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


def events(r) -> list[dict]:
    return [json.loads(e) for e in r.lrange("test:events", 0, -1)]


def queued_ids(r) -> set[str]:
    """Ids of every task still held anywhere in the queue: main list, processing lists, delayed."""
    raws = r.lrange("bot_queue", 0, -1) + r.zrange("bot_queue:delayed", 0, -1)
    for k in r.keys("bot_queue:processing:*"):
        raws += r.lrange(k, 0, -1)
    return {json.loads(x)["id"] for x in raws}


def processing(r) -> dict[str, list[str]]:
    return {k: [json.loads(x)["id"] for x in r.lrange(k, 0, -1)] for k in r.keys("bot_queue:processing:*")}


def enqueue(r, *tasks: Task) -> None:
    r.lpush("bot_queue", *[t.to_json() for t in tasks])


# 2 -------------------------------------------------------------------------------------------------
def test_sigkill_with_tasks_in_flight_then_restart(daemons, redis_server):
    r = redis_server.client()
    d = daemons("d1", count=6, lease_timeout="30s").start()
    # Three tasks hang on their first run, so they are surely mid-task at the kill; the others
    # flow past them (0.1 s each) on the remaining workers.
    stuck = {10, 20, 30}
    tasks = [Task(kind="count", payload={"i": i, **({"first_sleep": 60} if i in stuck else {}), "sleep": 0.1})
             for i in range(40)]
    enqueue(r, *tasks)
    all_ids = {t.id for t in tasks}
    stuck_ids = {tasks[i].id for i in stuck}
    wait_until_sync(lambda: r.llen("test:done") >= 15 and stuck_ids <= {e["id"] for e in events(r)}, 15,
                    "some tasks done and the stuck ones in flight")
    d.kill()
    killed_at = time.monotonic()
    old_pid = d.pid
    in_flight = {k: v for k, v in processing(r).items() if v}
    unacked = queued_ids(r)
    acked = all_ids - unacked
    assert stuck_ids <= {i for ids in in_flight.values() for i in ids}, in_flight
    assert len(acked) >= 15
    done_before = collections.Counter(r.lrange("test:done", 0, -1))
    assert acked <= set(done_before)  # acked means its handler finished and it left the queue

    d.start()
    # The restarted daemon took its old processing lists back at once, before being ready:
    # not after the 30 s lease.
    assert all(r.llen(k) == 0 for k in in_flight)  # new worker ids (new pid): these stay empty
    assert not any(json.loads(v).get("pid") == old_pid for v in r.hvals("bot_queue:workers"))
    wait_until_sync(lambda: set(r.lrange("test:done", 0, -1)) >= all_ids, 20,
                    "every task done after the restart")
    assert time.monotonic() - killed_at < 30 - 5, "recovery waited for the lease"
    evs = events(r)
    new_starts = [e for e in evs if e["ev"] == "start" and e["pid"] == d.pid]
    assert not {e["id"] for e in new_starts} & acked, "an acknowledged task ran again after the restart"
    assert {e["id"] for e in new_starts} >= {i for ids in in_flight.values() for i in ids}
    assert {e["id"] for e in evs if e["ev"] == "done"} == all_ids
    assert all(e["wid"].startswith(f"{d.env['LITBOTD_HOST']}:") for e in evs)
    # the old workers are gone from the registry, the new ones are there
    reg = [json.loads(v) for v in r.hvals("bot_queue:workers")]
    assert reg and all(x["pid"] == d.pid for x in reg)
    assert d.term() == 0


# 3 -------------------------------------------------------------------------------------------------
def test_a_second_daemon_recovers_a_dead_daemons_tasks_by_lease(daemons, redis_server):
    r = redis_server.client()
    lease, beat = 3.0, 0.5
    a = daemons("a", count=2, lease_timeout=f"{lease}s", heartbeat_interval=f"{beat}s").start()
    tasks = [Task(kind="count", payload={"i": i, "first_sleep": 60, "sleep": 0.2}) for i in range(2)]
    enqueue(r, *tasks)
    wait_until_sync(lambda: sum(1 for e in events(r) if e["ev"] == "start") == 2, 10, "a to start both tasks")
    b = daemons("b", count=2, lease_timeout=f"{lease}s", heartbeat_interval=f"{beat}s").start()
    assert r.llen("test:done") == 0 and r.llen("bot_queue") == 0  # b's startup took nothing of a's
    a.kill()
    killed_at = time.time()
    held = processing(r)
    assert sorted(i for v in held.values() for i in v) == sorted(t.id for t in tasks)
    wait_until_sync(lambda: r.llen("test:done") >= 2, lease + lease / 2 + 5, "b to complete a's tasks")
    evs = events(r)
    done = {e["id"]: e for e in evs if e["ev"] == "done"}
    assert set(done) == {t.id for t in tasks}
    assert all(e["pid"] == b.pid for e in done.values())
    for e in done.values():
        after = e["t"] - killed_at
        print(f"recovered {after:.2f}s after the kill")
        # not before a's lease ran out (renewed about one heartbeat before the kill; allow a late beat) ...
        assert after >= lease - 2 * beat - 0.2, f"a live lease was ignored: recovered {after:.2f}s after the kill"
        # ... and within the lease plus one sweep interval (+ the 0.2 s re-run and some slack)
        assert after <= lease + lease / 2 + 0.2 + 1.0, f"recovered only {after:.2f}s after the kill"
    assert r.llen("bot_queue:processing:" + next(iter(held)).split(":", 2)[2]) == 0
    assert b.term() == 0


# 7 -------------------------------------------------------------------------------------------------
def test_sigterm_lets_the_running_task_finish_and_exits_0(daemons, redis_server):
    r = redis_server.client()
    d = daemons("d1", count=2, shutdown_grace="10s").start()
    t = Task(kind="count", payload={"sleep": 1.0})
    enqueue(r, t)
    wait_until_sync(lambda: r.llen("test:events") >= 1, 5, "the task to start")
    t0 = time.monotonic()
    assert d.term() == 0
    took = time.monotonic() - t0
    assert r.lrange("test:done", 0, -1) == [t.id]
    assert 0.5 <= took < 10, took  # it waited for the task, not for the grace
    assert all(r.llen(k) == 0 for k in r.keys("bot_queue:processing:*"))
    out = d.output()
    assert "stopping: draining in-flight tasks" in out and "stopped" in out
    assert r.hlen("bot_queue:workers") == 0  # retired cleanly


def test_a_task_longer_than_the_grace_stays_for_the_next_start(daemons, redis_server):
    r = redis_server.client()
    d = daemons("d1", count=2, shutdown_grace="1s", lease_timeout="30s").start()
    t = Task(kind="count", payload={"first_sleep": 60, "sleep": 0.1})
    enqueue(r, t)
    wait_until_sync(lambda: r.llen("test:events") >= 1, 5, "the task to start")
    t0 = time.monotonic()
    assert d.term() == 0
    assert time.monotonic() - t0 < 6
    assert "shutdown grace over" in d.output()
    assert r.llen("test:done") == 0
    held = processing(r)
    assert [i for v in held.values() for i in v] == [t.id]
    d.start()
    wait_until_sync(lambda: r.lrange("test:done", 0, -1) == [t.id], 10,
                    "the task to complete after the next start")
    assert [e["pid"] for e in events(r) if e["ev"] == "done"] == [d.pid]
    assert d.term() == 0


# 8 -------------------------------------------------------------------------------------------------
def test_an_idle_daemon_makes_only_a_few_redis_commands(daemons, redis_server):
    r = redis_server.client()
    d = daemons("d1", count=4, heartbeat_interval="2s", lease_timeout="10s").start()
    time.sleep(1.0)  # measuring, not synchronising: let startup settle
    r.config_resetstat()
    t0 = time.monotonic()
    time.sleep(3.0)
    stats = r.info("commandstats")
    elapsed = time.monotonic() - t0
    total = r.info("stats")["total_commands_processed"] - 2  # our own INFO commands
    rate = total / elapsed
    breakdown = {k: v["calls"] for k, v in stats.items()}
    print(f"idle: {rate:.1f} commands/s: {breakdown}")
    assert rate < 15, f"{rate:.1f} commands/s while idle: {breakdown}"
    assert total > 0  # the measurement sees the daemon at all (heartbeats, BLMOVE)
    assert d.term() == 0


# 10 ------------------------------------------------------------------------------------------------
def test_malformed_json_goes_to_the_dead_letter_and_the_daemon_carries_on(daemons, redis_server):
    r = redis_server.client()
    d = daemons("d1", count=1).start()
    r.lpush("bot_queue", "{this is not json", json.dumps({"v": 99, "id": "x", "kind": "count"}))
    good = Task(kind="count")
    enqueue(r, good)
    wait_until_sync(lambda: r.lrange("test:done", 0, -1) == [good.id], 10, "the good task after the bad ones")
    dead = [json.loads(x) for x in r.lrange("bot_queue:dead", 0, -1)]
    assert len(dead) == 2
    by_raw = {x["payload"]["raw"]: x for x in dead}
    assert by_raw["{this is not json"]["error"].startswith("not JSON")
    assert "unsupported task version 99" in next(x["error"] for raw, x in by_raw.items() if raw.startswith("{\"v\""))
    assert d.proc.poll() is None
    assert "malformed task sent to the dead letter" in d.output()
    assert all(r.llen(k) == 0 for k in r.keys("bot_queue:processing:*"))
    assert d.term() == 0


# a restart that gets the same pid (containers: pid 1; a VM's boot-time unit: often the same pid) ----
async def test_a_restart_with_the_same_pid_still_takes_back_the_old_tasks(redis_server, aredis, monkeypatch,
                                                                         tmp_path):
    from litbotd import configfile
    from litbotd.daemon import Daemon
    from litbotd.queue import Queue, connect
    from litbotd.worker import Registry

    host = f"pidreuse-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("LITBOTD_HOST", host)
    cfg = configfile.parse({"server": {"enabled": False}, "redis": {"url": redis_server.url},
                            "workers": {"count": 1, "lease_timeout": "30s", "heartbeat_interval": "1s"},
                            "github": {"redeliver_interval": 0},
                            "jobs": {"backend": "local", "local": {"workdir": str(tmp_path / "jobs"), "sandbox": False}}}, env={})

    async def count(task, s):
        await s.redis.rpush("test:done", task.id)

    d = Daemon(cfg, Registry(handlers={"count": count}), redis=connect(redis_server.url))
    # What the previous process with this very pid left: a registered worker with a live lease and
    # a task in its processing list.
    q = Queue(aredis)
    old_wid = f"{host}:{os.getpid()}:0ld:0"
    t = Task(kind="count")
    await q.enqueue(t)
    assert await q.take(old_wid, 1) is not None
    await q.heartbeat({old_wid: {**d.identity, "instance": "0ld", "pstart": "an earlier process", "started": time.time() - 60,
                                 "task": t.id, "since": time.time() - 5}}, 30)
    await d.start()
    try:
        async def done() -> bool:
            return await aredis.lrange("test:done", 0, -1) == [t.id]

        await wait_until(done, 8, "the previous process's task to be done (not left in a processing list "
                         "under a live lease)")
    finally:
        d.stop()
        await d.drain()
