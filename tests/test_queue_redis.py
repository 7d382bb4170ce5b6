"""The reliable queue against a real redis-server (SPEC §6): concurrency, leases, delays, retries,
a Redis restart, a lost reply. Worker coroutines run in-process; daemon subprocesses are in
test_daemon_recovery.py."""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import random
import time

import redis.exceptions

from helpers.wait import wait_until
from litbotd import configfile, procinfo
from litbotd.context import Context, Current
from litbotd.pool import WorkerPool
from litbotd.queue import Queue, connect
from litbotd.tasks import Task
from litbotd.worker import Registry


def make_services(redis, **workers) -> Context:
    cfg = configfile.parse({"workers": {"lease_timeout": 1.0, "heartbeat_interval": 0.2, **workers}}, env={})
    return Context.of(cfg, Queue(redis, cfg.redis.queue))


# The test's own client sees a Redis restart too: a connection error there means "not yet".
until = functools.partial(wait_until, every=0.02,
                          ignore=(redis.exceptions.ConnectionError, redis.exceptions.TimeoutError))


class Pool:
    """The daemon's own WorkerPool (workers, heartbeat, promoter, sweeper) with `n` workers, in this
    process; leaving it fails the test if any worker or loop failed unexpectedly."""

    def __init__(self, services: Context, registry: Registry, n: int) -> None:
        cfg = services.config
        services = dataclasses.replace(services, config=dataclasses.replace(cfg, workers=dataclasses.replace(cfg.workers, count=n)))
        self.pool = WorkerPool(Current(services), registry, procinfo.identity("test"))

    async def __aenter__(self) -> "Pool":
        await self.pool.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.pool.stop(5)
        assert self.pool.restarts == 0, "a worker or loop failed unexpectedly (see the ERROR lines)"


def counting_registry(log: list | None = None) -> Registry:
    async def count(task: Task, s: Context):
        if log is not None:
            log.append(("start", task.id))
        if task.payload.get("sleep"):
            await asyncio.sleep(task.payload["sleep"])
        await s.redis.rpush("test:done", task.id)
        if log is not None:
            log.append(("done", task.id))
        return [task.successor(t["kind"], t.get("payload", {})) for t in task.payload.get("then", [])]

    return Registry(handlers={"count": count, "leaf": count})


# 1 -------------------------------------------------------------------------------------------------
async def test_many_concurrent_workers_do_every_task_exactly_once(aredis):
    s = make_services(aredis)
    n = 2000
    tasks = [Task(kind="count", payload={"i": i, **({"then": [{"kind": "leaf", "payload": {"run": str(i)}}]}
                                                    if i % 4 == 0 else {})}) for i in range(n)]
    expected = {t.id for t in tasks} | {t.successor("leaf", {"run": str(i)}).id
                                        for i, t in enumerate(tasks) if i % 4 == 0}
    assert len(expected) == n + n // 4
    for i in range(0, n, 250):
        await s.queue.enqueue(*tasks[i:i + 250])
    async with Pool(s, counting_registry(), 16):
        await until(lambda: _llen_at_least(aredis, "test:done", len(expected)), 60, "every task done")
        await asyncio.sleep(0.1)  # anything extra would show up now
    done = collections.Counter(await aredis.lrange("test:done", 0, -1))
    assert set(done) == expected
    assert max(done.values()) == 1, [k for k, v in done.items() if v > 1][:5]
    assert await s.queue.depths() == {"queued": 0, "delayed": 0, "dead": 0}
    assert [k for k in await aredis.keys("bot_queue:processing:*") if await aredis.llen(k)] == []


async def _llen_at_least(r, key, n):
    return await r.llen(key) >= n


# 4 -------------------------------------------------------------------------------------------------
async def test_a_live_workers_long_task_is_never_swept(aredis, redis_server):
    s = make_services(aredis, lease_timeout=1.0, heartbeat_interval=0.2)
    log: list = []
    t = Task(kind="count", payload={"sleep": 3.5})  # > 3 x lease_timeout
    await s.queue.enqueue(t)
    sweeper = connect(redis_server.url)  # another process's view
    other = Queue(sweeper, "bot_queue")
    sweeps = moved = 0
    async with Pool(s, counting_registry(log), 2):
        await until(lambda: _started(log), 5, "the task to start")
        started = time.monotonic()
        while not any(e == ("done", t.id) for e in log):
            moved += await other.sweep()
            sweeps += 1
            assert await aredis.llen("bot_queue") == 0, "a live worker's task went back to the queue"
            await asyncio.sleep(0.005)
        assert time.monotonic() - started > 3 * s.config.workers.lease_timeout
    await sweeper.aclose()
    assert sweeps >= 100 and moved == 0, (sweeps, moved)
    assert [e for e in log if e[0] == "start"] == [("start", t.id)]
    assert await aredis.lrange("test:done", 0, -1) == [t.id]


async def _started(log):
    return any(e[0] == "start" for e in log)


# 5 -------------------------------------------------------------------------------------------------
async def test_delayed_tasks_come_due_in_order(aredis):
    s = make_services(aredis)
    now = time.time()
    offsets = [0.9, 0.2, 1.4, 0.6, 0.35, 1.1, 0.75, 0.5]
    tasks = [Task(kind="d", payload={"off": o}, run_at=now + o) for o in offsets]
    random.Random(3).shuffle(tasks)
    await s.queue.enqueue(*tasks)
    assert await s.queue.depths() == {"queued": 0, "delayed": len(offsets), "dead": 0}
    taken: list[tuple[float, float]] = []

    async def promoter():
        while True:
            _, nxt = await s.queue.promote_due()
            await asyncio.sleep(0.01 if nxt is None else min(0.05, max(0.0, nxt - time.time())))

    p = asyncio.create_task(promoter())
    try:
        while len(taken) < len(offsets):
            raw = await s.queue.take("w", 0.5)
            if raw is not None:
                task = Task.from_json(raw)
                taken.append((task.payload["off"], time.time() - now))
                assert (await s.queue.finish_and_take("w", raw, take=False))[0]
    finally:
        p.cancel()
    assert [o for o, _ in taken] == sorted(offsets)
    for off, at in taken:
        assert at >= off - 0.01, f"task due at +{off}s taken early at +{at:.3f}s"
        assert at <= off + 1.0, f"task due at +{off}s taken late at +{at:.3f}s"


async def test_retries_back_off_then_the_dead_letter_keeps_the_error(aredis):
    s = make_services(aredis, max_attempts=4, retry_backoff="200ms", retry_backoff_max="5s")
    seen: list[tuple[int, float, float]] = []
    reported: list[Task] = []

    async def fail(task: Task, _s):
        seen.append((task.attempt, task.run_at, time.time()))
        raise RuntimeError(f"boom on attempt {task.attempt + 1}")

    async def on_dead(task: Task, _s):
        reported.append(task)

    t = Task(kind="fail", payload={"repo": "o/r"})
    await s.queue.enqueue(t)
    async with Pool(s, Registry(handlers={"fail": fail}, on_dead=on_dead), 2):
        await until(lambda: _llen_at_least(aredis, "bot_queue:dead", 1), 10, "the dead letter")
    [(_, dead)] = await s.queue.dead_tasks()
    assert dead.id == t.id and dead.attempt == 4
    assert dead.error == "RuntimeError: boom on attempt 4"
    assert [x.id for x in reported] == [t.id] and reported[0].error == dead.error
    assert [a for a, _, _ in seen] == [0, 1, 2, 3]
    run_ats = [r for _, r, _ in seen]
    assert run_ats[0] == 0.0 and run_ats[1] < run_ats[2] < run_ats[3]
    for (a, run_at, _), (_, _, started_prev) in zip(seen[1:], seen[:-1], strict=True):
        base = min(5.0, 0.2 * 2 ** (a - 1))  # backoff after failure number a
        assert 0.5 * base - 0.02 <= run_at - started_prev <= base + 0.1, (a, run_at - started_prev)
    for _, run_at, started in seen[1:]:
        assert started >= run_at - 0.01  # never ran before it was due
    assert await s.queue.depths() == {"queued": 0, "delayed": 0, "dead": 1}


# 6 -------------------------------------------------------------------------------------------------
async def test_workers_carry_on_after_a_redis_restart(aredis, redis_server):
    s = make_services(aredis, lease_timeout=2.0, heartbeat_interval=0.3, retry_backoff="200ms")
    before = [Task(kind="count", payload={"i": i}) for i in range(50)]
    in_flight = [Task(kind="count", payload={"sleep": 0.5, "k": i}) for i in range(4)]
    after = [Task(kind="count", payload={"j": i}) for i in range(50)]
    await s.queue.enqueue(*before)
    async with Pool(s, counting_registry(), 4):
        await until(lambda: _llen_at_least(aredis, "test:done", 50), 10, "the first batch")
        await s.queue.enqueue(*in_flight)
        await until(lambda: _processing_total(aredis, 4), 5, "4 tasks in flight")
        redis_server.restart()  # workers are mid-task or blocked in BLMOVE; AOF keeps the data
        c = redis_server.client()
        try:
            # enqueued by someone else right after the restart
            c.lpush("bot_queue", *[t.to_json() for t in after])
        finally:
            c.close()
        await until(lambda: _llen_at_least(aredis, "test:done", 104), 30, "every task after the restart",
                    every=0.1)
        await asyncio.sleep(0.2)
    done = collections.Counter(await aredis.lrange("test:done", 0, -1))
    assert set(done) == {t.id for t in before + in_flight + after}
    assert all(done[t.id] == 1 for t in before + after)
    assert await s.queue.depths() == {"queued": 0, "delayed": 0, "dead": 0}


async def _processing_total(r, n):
    total = 0
    for k in await r.keys("bot_queue:processing:*"):
        total += await r.llen(k)
    return total >= n


async def test_on_dead_successors_are_committed_by_the_dead_letters_own_finish(aredis):
    """What on_dead returns (its report) goes out in the same finish as the dead letter: with it
    when the task was still ours, not at all when the lease was lost and the task swept away."""
    from litbotd.worker import Worker
    s = make_services(aredis, max_attempts=1)

    async def fail(task: Task, ctx: Context):
        raise RuntimeError("boom")

    async def on_dead(task: Task, ctx: Context):
        return [task.successor("report", {"for": task.id})]

    w = Worker("w1", Current(s), Registry(handlers={"fail": fail}, on_dead=on_dead))
    kept = Task(kind="fail")
    await s.queue.enqueue(kept)
    await w.process(await s.queue.take("w1", 1), take_next=False)
    [(_, dead)] = await s.queue.dead_tasks()
    assert dead.id == kept.id
    assert [Task.from_json(r).kind for r in await aredis.lrange("bot_queue", 0, -1)] == ["report"]
    await aredis.delete("bot_queue", "bot_queue:dead")

    lost = Task(kind="fail")
    await s.queue.enqueue(lost)
    raw = await s.queue.take("w1", 1)
    await s.queue.heartbeat({"w1": {"host": "h"}}, 0.1)
    await until(lambda: _gone(aredis, s.queue.lease("w1")), 2, "the lease to expire")
    assert await s.queue.sweep() == 1
    await w.process(raw, take_next=False)
    assert await s.queue.dead_tasks() == []
    assert await aredis.lrange("bot_queue", 0, -1) == [raw]  # swept back, and no report beside it


# 9 -------------------------------------------------------------------------------------------------
async def test_finish_after_the_lease_expired_and_the_task_was_swept(aredis):
    q = Queue(aredis)
    t = Task(kind="count")
    await q.enqueue(t)
    raw = await q.take("stalled", 1)
    assert raw is not None
    await q.heartbeat({"stalled": {"host": "h"}}, 0.1)
    await until(lambda: _gone(aredis, q.lease("stalled")), 2, "the lease to expire")
    assert await q.sweep() == 1
    assert await aredis.lrange("bot_queue", 0, -1) == [raw]  # back, unchanged, next to be taken
    ok, _ = await q.finish_and_take("stalled", raw, [t.successor("next", {"run": "r"}),
                                                     t.successor("later", {"run": "r"}, run_at=time.time() + 60)],
                                    dead=None, take=False)
    assert ok is False
    assert await aredis.lrange("bot_queue", 0, -1) == [raw]  # no successor pushed
    assert await q.depths() == {"queued": 1, "delayed": 0, "dead": 0}
    # the worker that takes it next finishes it normally
    raw2 = await q.take("fresh", 1)
    assert raw2 == raw and (await q.finish_and_take("fresh", raw2, [t.successor("next", {"run": "r"})], take=False))[0] is True
    assert await q.depths() == {"queued": 1, "delayed": 0, "dead": 0}


async def _gone(r, key):
    return not await r.exists(key)


# a lost reply -------------------------------------------------------------------------------------
class DropFirstBulkReply:
    """A TCP proxy in front of Redis that closes the connection instead of forwarding the first
    reply that `drop` matches (default: a non-nil bulk reply, a BLMOVE that moved a task): Redis did
    the work, the client never hears."""

    def __init__(self, port: int, drop=lambda data: data.startswith(b"$") and not data.startswith(b"$-1")) -> None:
        self.port = port
        self.drop = drop
        self.dropped = 0
        self.armed = False  # set once the pool has started (its script loads are bulk replies too)
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _conn(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", self.port)
        await asyncio.gather(self._pump(cr, sw, False, sw), self._pump(sr, cw, True, cw, sw))

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, replies: bool,
                    *closing: asyncio.StreamWriter) -> None:
        """Copy one direction; Redis's replies (once armed) may be dropped, cutting the connection."""
        try:
            while data := await src.read(65536):
                if replies and self.armed and not self.dropped and self.drop(data):
                    self.dropped += 1
                    break
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            for w in closing:
                w.close()

    async def close(self) -> None:
        self.server.close()


async def test_a_task_whose_take_reply_was_lost_is_still_done(aredis, redis_server):
    proxy = DropFirstBulkReply(redis_server.port)
    port = await proxy.start()
    via_proxy = connect(f"redis://127.0.0.1:{port}/0")
    s = make_services(via_proxy, lease_timeout=2.0)
    t = Task(kind="count")
    try:
        async with Pool(s, counting_registry(), 1):
            proxy.armed = True
            await Queue(aredis).enqueue(t)
            await until(lambda: _dropped(proxy), 5, "the proxy to drop the BLMOVE reply")
            await until(lambda: _llen_at_least(aredis, "test:done", 1), 8,
                        "the task whose BLMOVE reply was lost (it sits in a live worker's processing list)")
    finally:
        await via_proxy.aclose()
        await proxy.close()
    assert await aredis.lrange("test:done", 0, -1) == [t.id]
    assert await _processing_total(aredis, 0) and not await aredis.keys("bot_queue:processing:*")


async def test_a_task_taken_by_a_finish_whose_reply_was_lost_is_still_done(aredis, redis_server):
    # The finish of the first task also takes the second (one round trip); its reply is lost. The
    # second task sits in the live worker's processing list: the worker must find it there.
    proxy = DropFirstBulkReply(redis_server.port, drop=lambda data: data.startswith(b"*2\r\n:1\r\n$")
                               and b'"kind":"count"' in data)
    port = await proxy.start()
    via_proxy = connect(f"redis://127.0.0.1:{port}/0")
    s = make_services(via_proxy, lease_timeout=2.0)
    first, second = Task(kind="count"), Task(kind="count")
    await Queue(aredis).enqueue(first, second)
    proxy.armed = True  # the predicate matches only a finish that hands over a task
    try:
        async with Pool(s, counting_registry(), 1):
            await until(lambda: _dropped(proxy), 5, "the proxy to drop the finish-and-take reply")
            await until(lambda: _llen_at_least(aredis, "test:done", 2), 8,
                        "the task taken by the finish whose reply was lost")
    finally:
        await via_proxy.aclose()
        await proxy.close()
    assert sorted(await aredis.lrange("test:done", 0, -1)) == sorted([first.id, second.id])
    assert not await aredis.keys("bot_queue:processing:*")


async def _dropped(proxy):
    return proxy.dropped > 0
