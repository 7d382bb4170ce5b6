"""The reliable Redis queue (SPEC §6): a thin adapter, with Lua wherever two steps must be one.

Keys, with `q` = the configured queue name (default "bot_queue"):
    q                   main list: LPUSH in, BLMOVE out from the right (FIFO)
    q:processing:<wid>  a worker's in-flight tasks; left only when the task is finished
    q:lease:<wid>       a worker's lease (PX lease_timeout), renewed by the heartbeat
    q:workers           hash wid -> JSON {host, pid, started, task, since}
    q:delayed           sorted set: task JSON scored by due time
    q:dead              list of dead tasks, each with its last error
    q:delivery:<id>     a claimed X-GitHub-Delivery (7 days)
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from typing import Any, Callable, Iterable, Sequence, cast

import redis.asyncio as aioredis
import redis.exceptions

from . import logs, metrics
from .opsview import QueueStatus, WorkerInfo
from .redisconn import REDIS_UNAVAILABLE, connect, connect_config  # noqa: F401 (the names callers had here)
from .tasks import Task, TaskFormatError

# Replies are str (every client decodes: redisconn.connect); redis-py types them bytes | str,
# hence the casts marked "decoded".

log = logs.get("litbotd.queue")
REPLICAS_FRESH = 1.0       # seconds a count of the connected replicas is reused
DEGRADED_WARN_EVERY = 60.0  # seconds between two "no replica connected" warnings
WAIT_MS = 1000             # how long a delivery waits for its replicas (WAIT's timeout)

DELIVERY_TTL = 7 * 24 * 3600

# The one push loop, a Lua function the scripts below start with. From ARGV[i]: n_now, the raw
# tasks due now (LPUSH onto `main`), n_later, (score, raw) pairs (ZADD to `delayed`). Pushes only
# when `go`; returns the index after them either way, so a script can walk several batches.
_PUSH_FN = """
local function push(main, delayed, i, go)
  local n = tonumber(ARGV[i]); i = i + 1
  if go then for j = i, i + n - 1 do redis.call('LPUSH', main, ARGV[j]) end end
  i = i + n
  local m = tonumber(ARGV[i]); i = i + 1
  if go then for j = i, i + 2 * m - 1, 2 do redis.call('ZADD', delayed, ARGV[j], ARGV[j + 1]) end end
  return i + 2 * m
end
"""

# KEYS: processing, main, delayed, dead. ARGV: take ("1" or ""), raw, n_now, now..., n_later,
# (score, raw)..., dead_raw|"".
# Finish a task: remove it from the processing list and enqueue what follows it. When it is no
# longer there (swept from a worker whose lease expired, it runs elsewhere) its successors are
# dropped, not duplicated. Then, with take, move the next task into the processing list as BLMOVE
# would: a busy worker pays one round trip per task and blocks only when the queue is empty.
# Returns {kept 0|1, next raw or false}.
_FINISH_TAKE = _PUSH_FN + """
local kept = redis.call('LREM', KEYS[1], -1, ARGV[2])
local i = push(KEYS[2], KEYS[3], 3, kept == 1)
if kept == 1 and ARGV[i] ~= '' then redis.call('LPUSH', KEYS[4], ARGV[i]) end
if ARGV[1] == '' then return {kept, false} end
return {kept, redis.call('LMOVE', KEYS[2], KEYS[1], 'RIGHT', 'LEFT')}
"""

# KEYS: main, delayed. ARGV: n_now, now..., n_later, (score, raw)...
_PUSH = _PUSH_FN + """
push(KEYS[1], KEYS[2], 1, true)
return 1
"""

# KEYS: main, delayed, then one delivery key per delivery. ARGV: per delivery: ttl, n_now, now...,
# n_later, (score, raw)... Returns one 1 (claimed and queued) or 0 (seen before) per delivery. A
# claim and its push are one step, so a crash can neither queue a delivery twice nor claim it
# without queueing it; one call carries every delivery that arrived meanwhile (group commit).
_CLAIM_AND_PUSH = _PUSH_FN + """
local out = {}
local i = 1
for d = 3, #KEYS do
  local fresh = redis.call('SET', KEYS[d], '1', 'NX', 'EX', ARGV[i]) ~= false
  i = push(KEYS[1], KEYS[2], i + 1, fresh)
  out[#out + 1] = fresh and 1 or 0
end
return out
"""
CLAIM_BATCH = 200    # deliveries per script call at most
CLAIM_TIMEOUT = 2.0  # a batch of claims waits no longer for Redis: the webhooks answer 503 (GitHub
                     # records the failure), one waiting behind a batch under way within twice this

# KEYS: delayed, main. ARGV: now, limit. Returns {moved, next due score or -1}.
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(due) do
  redis.call('LPUSH', KEYS[2], m)
  redis.call('ZREM', KEYS[1], m)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due, nxt[2] or '-1'}
"""

# KEYS: workers, main, then each worker's lease and processing list. ARGV: "force" or "", then the
# worker ids, one per (lease, processing) pair. Without "force": only a worker whose lease has
# expired; with it, unconditionally (own host, process gone). Checking the lease and moving the
# list in one script is what keeps a live worker's tasks from ever being taken. Tasks go to the
# right end of main, so they are the next taken, oldest first. Every key comes in KEYS (Cluster).
_RECOVER = """
local forced = ARGV[1] == 'force'
local moved = 0
for i = 2, #ARGV do
  local lease, pl = KEYS[2 * i - 1], KEYS[2 * i]
  if forced or redis.call('EXISTS', lease) == 0 then
    while redis.call('LMOVE', pl, KEYS[2], 'LEFT', 'RIGHT') do moved = moved + 1 end
    redis.call('HDEL', KEYS[1], ARGV[i])
    redis.call('DEL', lease)
  end
end
return moved
"""

# KEYS: delayed, main. ARGV: raw. A task still waiting in the delayed set goes to the main list now
# (none when it was promoted or taken meanwhile: never twice).
_BRING_FORWARD = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[1])
return 1
"""

# KEYS: src, dst. ARGV: raw to remove from src, raw to push onto dst.
_MOVE_ONE = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
return 1
"""


def queue_config(redis: aioredis.Redis, rcfg: Any) -> "Queue":
    """The Queue for a [redis] section: with Sentinel, deliveries wait for the connected replicas
    (with redis.require_replica, for one replica even when none is connected)."""
    return Queue(redis, rcfg.queue, ack_replicas=1 if rcfg.sentinels else 0,
                 require_replica=bool(getattr(rcfg, "require_replica", False)))


class NotReplicated(redis.exceptions.RedisError):
    """No replica confirmed a write in time (Sentinel setups): it must not be acknowledged."""


class Queue:
    def __init__(self, redis: aioredis.Redis, name: str = "bot_queue", ack_replicas: int = 0,
                 require_replica: bool = False) -> None:
        self.redis = redis
        self.name = name
        # With Sentinel: a delivery is acknowledged only once the connected replicas hold it (WAIT),
        # so a failover (asynchronous replication) cannot drop a webhook GitHub was told we have.
        # With none connected (a failover left one node), it is acknowledged at once and the
        # durability is "degraded" — unless require_replica: then at least `ack_replicas` must have it.
        self.ack_replicas = ack_replicas
        self.require_replica = require_replica
        self.replicas: int | None = None  # connected replicas at the last count (Sentinel setups)
        self._replicas_at = -REPLICAS_FRESH
        self._degraded_warned = -DEGRADED_WARN_EVERY
        self.delayed = f"{name}:delayed"
        self.dead = f"{name}:dead"
        self.workers = f"{name}:workers"
        self._finish_take = redis.register_script(_FINISH_TAKE)
        self._push = redis.register_script(_PUSH)
        self._claim = redis.register_script(_CLAIM_AND_PUSH)
        self._promote = redis.register_script(_PROMOTE)
        self._recover = redis.register_script(_RECOVER)
        self._move_one = redis.register_script(_MOVE_ONE)
        self._bring_forward = redis.register_script(_BRING_FORWARD)
        self._claims: list[tuple[str, Sequence[Task], int, asyncio.Future[bool]]] = []
        self._claimer: asyncio.Task | None = None

    def key(self, *parts: str) -> str:
        """Every key of litbotd's starts with the queue name (one Cluster slot with a hash tag)."""
        return ":".join((self.name, *parts))

    def processing(self, wid: str) -> str:
        return self.key("processing", wid)

    async def leftovers(self, wid: str, client: aioredis.Redis | None = None) -> list[str]:
        """What is in the worker's processing list, newest first: between two tasks it is empty,
        unless a take or finish whose reply was lost moved a task there all the same."""
        return cast(list[str], await (client or self.redis).lrange(self.processing(wid), 0, -1))  # decoded

    def lease(self, wid: str) -> str:
        return self.key("lease", wid)

    @staticmethod
    def _split(tasks: Iterable[Task], now: float) -> tuple[list[str], list[str]]:
        """Argument lists for the Lua scripts: tasks due now, and (score, raw) pairs for later."""
        now_raw: list[str] = []
        later: list[str] = []
        for t in tasks:
            if t.run_at > now:
                later += [repr(t.run_at), t.to_json()]
            else:
                now_raw.append(t.to_json())
        return now_raw, later

    # -- producing ------------------------------------------------------------------------------
    async def enqueue(self, *tasks: Task) -> None:
        """Tasks due now go onto the main list, later ones into the delayed set, in one step."""
        now_raw, later = self._split(tasks, time.time())
        await self._push(keys=[self.name, self.delayed],
                         args=[len(now_raw), *now_raw, len(later) // 2, *later])

    async def enqueue_delivery(self, delivery_id: str, tasks: Sequence[Task], ttl: int = DELIVERY_TTL) -> bool:
        """Claim a webhook delivery id and queue its tasks atomically; False if it was seen before.
        Concurrent calls share one script call: the first sends at once, and those that come while
        it is under way go together in the next (a burst of webhooks costs a round trip per batch,
        not per delivery; a lone one waits for nothing). A Redis that does not answer within
        CLAIM_TIMEOUT raises TimeoutError; with ack_replicas, NotReplicated when no replica
        confirmed the batch in time."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._claims.append((delivery_id, tasks, ttl, fut))
        if self._claimer is None:
            self._claimer = asyncio.create_task(self._claim_batches())
        return await fut

    async def _claim_batches(self) -> None:
        try:
            while self._claims:
                batch, self._claims = self._claims[:CLAIM_BATCH], self._claims[CLAIM_BATCH:]
                keys, args, now = [self.name, self.delayed], [], time.time()
                for delivery_id, tasks, ttl, _ in batch:
                    now_raw, later = self._split(tasks, now)
                    keys.append(self.key("delivery", delivery_id))
                    args += [ttl, len(now_raw), *now_raw, len(later) // 2, *later]
                try:
                    async with asyncio.timeout(CLAIM_TIMEOUT):
                        fresh, acked = await self._send_claims(keys, args)
                except BaseException as e:  # every caller of the batch sees the error (503)
                    for *_, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    if isinstance(e, asyncio.CancelledError):
                        raise
                    continue
                for (*_, fut), ok in zip(batch, fresh, strict=True):
                    if fut.done():  # a caller that gave up (timeout) is not told
                        continue
                    if ok and acked < self.ack_replicas:
                        # Kept on the primary all the same: a redelivery finds it claimed and answers 200.
                        fut.set_exception(NotReplicated(
                            "no replica confirmed the delivery within 1s (redis.sentinels is set"
                            + (", redis.require_replica)" if self.require_replica else ")")))
                    else:
                        fut.set_result(bool(ok))
        finally:
            self._claimer = None

    async def _send_claims(self, keys: list[str], args: list[Any]) -> tuple[list[int], int]:
        """The batch's script call; with ack_replicas also the replicas that confirmed it — as
        many as are needed (0 when none is connected and require_replica is off)."""
        if not self.ack_replicas:
            return await self._claim(keys=keys, args=args), 0
        connected = await self.connected_replicas()
        if connected == 0 and not self.require_replica:
            return await self._claim(keys=keys, args=args), self.ack_replicas  # degraded: said so
        # WAIT counts the replicas that have this connection's writes: one pipeline, one connection,
        # one WAIT per batch; it returns once all `connected` have them, or after WAIT_MS.
        async with self.redis.pipeline(transaction=False) as p:
            await self._claim(keys=keys, args=args, client=p)
            p.wait(max(connected, self.ack_replicas), WAIT_MS)
            fresh, acked = await p.execute()
        acked = int(acked)
        if acked < self.ack_replicas and not self.require_replica and await self.connected_replicas(fresh=True) == 0:
            acked = self.ack_replicas  # the replicas left meanwhile: kept, degraded, and said so
        return fresh, acked

    async def connected_replicas(self, fresh: bool = False) -> int:
        """The primary's replicas in sync now (INFO replication, state=online), counted at most
        once a REPLICAS_FRESH; sets litbotd_redis_replicas_connected, and with none connected
        (and require_replica off) warns at most once a DEGRADED_WARN_EVERY."""
        now = time.monotonic()
        if fresh or self.replicas is None or now - self._replicas_at > REPLICAS_FRESH:
            info = await self.redis.info("replication")
            self.replicas = sum(1 for k, v in info.items()
                                if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online")
            self._replicas_at = now
            metrics.REPLICAS_CONNECTED.set(self.replicas)
            if self.replicas == 0 and now - self._degraded_warned >= DEGRADED_WARN_EVERY:
                self._degraded_warned = now
                log.warning("no Redis replica connected: deliveries are acknowledged without one "
                            "(a failover now could lose them)" if not self.require_replica else
                            "no Redis replica connected: deliveries are refused (redis.require_replica)")
        return self.replicas

    def durability(self) -> str:
        """/healthz: "single" (no Sentinel), "replicated", or "degraded" (Sentinel, no replica)."""
        if not self.ack_replicas:
            return "single"
        return "degraded" if self.replicas == 0 else "replicated"

    async def delivery_seen(self, delivery_id: str) -> bool:
        return bool(await self.redis.exists(self.key("delivery", delivery_id)))

    # -- consuming ------------------------------------------------------------------------------
    async def take(self, wid: str, timeout: float, client: aioredis.Redis | None = None) -> str | None:
        """Block up to `timeout` seconds for a task; it moves into the worker's processing list.
        `client`: a worker's own connection (Redis.client()), so a blocked take holds no pooled one."""
        conn = client or self.redis
        raw = await conn.blmove(self.name, self.processing(wid), timeout, "RIGHT",  # type: ignore[arg-type]  # a float: Redis 6+ takes one, redis-py's hint says int
                                "LEFT")
        return cast(str | None, raw)  # decoded

    async def finish_and_take(self, wid: str, raw: str, successors: Sequence[Task] = (), dead: Task | None = None,
                              *, take: bool = True, client: aioredis.Redis | None = None) -> tuple[bool, str | None]:
        """Remove a taken task and enqueue what follows it (successors, a retry, or a dead letter)
        in one atomic step and, with `take`, move the next waiting task into the processing list,
        in the same script call. Returns (kept: False when the task had been swept away from this
        worker, the next raw task or None when the queue was empty)."""
        now_raw, later = self._split(successors, time.time())
        keys = (self.processing(wid), self.name, self.delayed, self.dead)
        args = ("1" if take else "", raw, len(now_raw), *now_raw, len(later) // 2, *later,
                dead.to_json() if dead else "")
        try:
            # EVALSHA directly: the worker's hot path, and Script.__call__ costs ~7 % of a task on
            # its own (an import and a Pipeline check per call). NOSCRIPT: the Script loads it.
            kept, nxt = await (client or self.redis).evalsha(self._finish_take.sha, 4, *keys, *args)
        except redis.exceptions.NoScriptError:
            kept, nxt = await self._finish_take(keys=keys, args=args, client=client)
        return bool(kept), nxt or None

    async def promote_due(self, now: float | None = None, limit: int = 500) -> tuple[int, float | None]:
        """Move due delayed tasks onto the main list. Returns (moved, next due time or None)."""
        moved, nxt = await self._promote(keys=[self.delayed, self.name],
                                         args=[repr(time.time() if now is None else now), limit])
        nxt = float(nxt)
        return int(moved), (None if nxt < 0 else nxt)

    async def bring_forward(self, match: str, want: Callable[[Task], bool]) -> int:
        """Move the delayed tasks `want` picks to the main list now; returns how many. `match` is a
        Redis glob over their JSON (ZSCAN MATCH) that narrows the scan to likely candidates."""
        moved = 0
        async for raw, _ in self.redis.zscan_iter(self.delayed, match=match, count=1000):
            try:
                task = Task.from_json(raw)
            except TaskFormatError:
                continue
            if want(task):
                moved += int(await self._bring_forward(keys=[self.delayed, self.name], args=[raw]))
        return moved

    # -- leases and recovery --------------------------------------------------------------------
    async def heartbeat(self, workers: dict[str, dict[str, Any]], lease_timeout: float) -> None:
        """Renew the leases of this process's workers and publish what each is doing."""
        if not workers:
            return
        px = max(1, int(lease_timeout * 1000))
        async with self.redis.pipeline(transaction=False) as p:
            for wid in workers:
                p.set(self.lease(wid), "1", px=px)
            p.hset(self.workers, mapping={wid: json.dumps(info) for wid, info in workers.items()})
            await p.execute()

    async def sweep(self) -> int:
        """Put back the tasks of every worker whose lease has expired, on any host."""
        return await self._recover_workers(cast(list[str], await self.redis.hkeys(self.workers)), forced=False)

    async def recover(self, wids: Sequence[str]) -> int:
        """Put back the tasks of workers known dead (this host, process gone), without waiting."""
        return await self._recover_workers(wids, forced=True)

    async def _recover_workers(self, wids: Sequence[str], forced: bool) -> int:
        if not wids:
            return 0
        keys = [self.workers, self.name]
        for wid in wids:
            keys += [self.lease(wid), self.processing(wid)]
        return int(await self._recover(keys=keys, args=["force" if forced else "", *wids]))

    async def registered(self) -> dict[str, dict[str, Any]]:
        raw = cast(dict[str, str], await self.redis.hgetall(self.workers))  # decoded
        out: dict[str, dict[str, Any]] = {}
        for wid, info in raw.items():
            try:
                out[wid] = json.loads(info)
            except ValueError:
                out[wid] = {}
        return out

    async def retire(self, wids: Sequence[str]) -> None:
        """Forget workers that stopped cleanly; any task they left stays for recovery."""
        for wid in wids:
            if await self.redis.llen(self.processing(wid)) == 0:
                async with self.redis.pipeline(transaction=True) as p:
                    p.hdel(self.workers, wid)
                    p.delete(self.lease(wid))
                    await p.execute()

    # -- inspection -----------------------------------------------------------------------------
    async def depths(self) -> dict[str, int]:
        async with self.redis.pipeline(transaction=False) as p:
            p.llen(self.name)
            p.zcard(self.delayed)
            p.llen(self.dead)
            queued, delayed, dead = await p.execute()
        return {"queued": int(queued), "delayed": int(delayed), "dead": int(dead)}

    async def queued_by_kind(self, limit: int = 10_000) -> dict[str, int]:
        counts: dict[str, int] = {}
        for raw in await self.redis.lrange(self.name, -limit, -1):
            try:
                kind = Task.from_json(raw).kind
            except TaskFormatError:
                kind = "(malformed)"
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    async def refused_reloads(self) -> list[dict[str, Any]]:
        """What running daemons recorded about a refused SIGHUP reload (cleared by a good one)."""
        out = []
        for raw in (await self.redis.hgetall(self.key("reload"))).values():
            try:
                out.append(json.loads(raw))
            except ValueError:
                continue
        return sorted(out, key=lambda r: r.get("at", 0))

    async def status(self, now: float | None = None) -> QueueStatus:
        """The one snapshot `litbotd status` and the dashboard show (opsview shapes it)."""
        depths = await self.depths()
        return QueueStatus(queue=self.name, **depths, by_phase=await self.queued_by_kind(),
                           oldest_s=await self.oldest_age(now), workers=tuple(await self.worker_infos(now)),
                           refused_reloads=tuple(await self.refused_reloads()))

    async def oldest_age(self, now: float | None = None) -> float | None:
        raw = await self.redis.lindex(self.name, -1)
        if raw is None:
            return None
        try:
            return max(0.0, (now or time.time()) - Task.from_json(raw).created)
        except TaskFormatError:
            return None

    async def worker_infos(self, now: float | None = None) -> list[WorkerInfo]:
        now = now or time.time()
        reg = await self.registered()
        wids = sorted(reg)
        async with self.redis.pipeline(transaction=False) as p:
            for wid in wids:
                p.exists(self.lease(wid))
                p.llen(self.processing(wid))
            res = await p.execute()
        out = []
        for i, wid in enumerate(wids):
            info = reg[wid]
            since = info.get("since")
            out.append(WorkerInfo(
                id=wid, host=info.get("host", "?"), pid=int(info.get("pid", 0)), alive=bool(res[2 * i]),
                task=info.get("task"), busy_s=round(now - since, 1) if since else None,
                processing=int(res[2 * i + 1]),
            ))
        return out

    # -- the dead letter ------------------------------------------------------------------------
    async def dead_tasks(self) -> list[tuple[str, Task | None]]:
        out: list[tuple[str, Task | None]] = []
        for raw in cast(list[str], await self.redis.lrange(self.dead, 0, -1)):  # decoded
            try:
                out.append((raw, Task.from_json(raw)))
            except TaskFormatError:
                out.append((raw, None))
        return out

    async def dead_retry(self, task_id: str | None = None) -> int:
        """Send one dead task (by id) or all of them back to the main list with fresh attempts."""
        n = 0
        for raw, task in await self.dead_tasks():
            if task is None or (task_id is not None and task.id != task_id):
                continue
            fresh = replace(task, attempt=0, run_at=0.0, error=None)
            n += int(await self._move_one(keys=[self.dead, self.name], args=[raw, fresh.to_json()]))
        return n

    async def dead_purge(self) -> int:
        async with self.redis.pipeline(transaction=True) as p:
            p.llen(self.dead)
            p.delete(self.dead)
            n, _ = await p.execute()
        return int(n)
