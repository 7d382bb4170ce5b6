"""The worker loop: take a task, run its handler, finish it with its successors (SPEC §6).

Read it top to bottom: `Worker.run` takes, `Worker.process` decides, `Queue.finish_and_take` commits
the outcome (successors, a delayed retry or a dead letter) in one atomic step and, in the same
round trip, takes the next waiting task; the worker blocks in BLMOVE only when the queue is empty.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import Awaitable, Callable, Sequence

import redis.asyncio as aioredis

from . import logs, metrics
from .backoff import backoff
from .context import Context, Current, Liveness
from .outcomes import Outcome, outcome_for
from .payloads import PayloadInvalid, schema_of
from .queue import Queue
from .redisconn import REDIS_UNAVAILABLE
from .tasks import Permanent, Task, TaskFormatError, shown

log = logs.get("litbotd.worker")

Handler = Callable[[Task, Context], Awaitable[Sequence[Task] | None]]
DeadHook = Callable[[Task, Context], Awaitable[Sequence[Task] | None]]
__all__ = ["DeadHook", "Handler", "Permanent", "Registry", "TaskTimeout", "Worker"]


class TaskTimeout(Exception):
    """The handler ran longer than workers.task_timeout and was cancelled."""


@dataclass
class Registry:
    """Task kind -> handler. A handler returns the tasks that follow (a `run_at` in the future
    delays one) or raises to have the task retried. `on_dead` runs when a task is given up; the
    tasks it returns are committed by the same finish as the dead letter."""
    handlers: dict[str, Handler] = field(default_factory=dict)
    on_dead: DeadHook | None = None


def _malformed(raw: str, error: str) -> Task:
    """The dead letter of a queue entry that is no task this litbotd can run: its text (cut at
    4 KiB) and why."""
    return Task(kind="malformed", payload={"raw": raw[:4096]}, error=error)


class Worker:
    def __init__(self, wid: str, current: Current, registry: Registry, live: Liveness | None = None) -> None:
        self.id = wid
        self.current = current  # the context in force, read afresh for every task (SIGHUP swaps it)
        self.live = live or Liveness()
        self.registry = registry
        self.task: Task | None = None
        self.since: float | None = None
        # Look in our processing list before the next take: at start, after a failover, and after a
        # finish whose reply was lost (it may have moved a task there that we never saw).
        self.recheck = True
        self._stop = asyncio.Event()
        self._conn: aioredis.Redis | None = None  # this worker's own connection, while it runs

    @property
    def queue(self) -> Queue:
        return self.current.ctx.queue

    def stop(self) -> None:
        """Finish the current task, then leave the loop (retire or shutdown)."""
        self._stop.set()

    def info(self) -> dict:
        return {"task": self.task.id if self.task else None, "since": self.since}

    async def run(self) -> None:
        # A connection of its own for the blocking take and the finish: no pool checkout per
        # command, and a blocked BLMOVE never holds one of the shared pool's.
        self._conn = self.queue.redis.client()
        try:
            await self._loop()
        finally:
            conn, self._conn = self._conn, None
            await conn.aclose()

    async def _fresh_connection(self) -> None:
        """After a Redis error, a new connection from the pool, which finds the current primary
        (Sentinel): a reconnect of the old one would go back to the old, demoted address."""
        if self._conn is None:  # process() called outside run(): the shared pool is used
            return
        old, self._conn = self._conn, self.queue.redis.client()
        await old.aclose()  # hands the (dropped) connection back to the pool; no I/O

    async def _loop(self) -> None:
        cfg = self.current.ctx.config.workers
        # Shorter than the lease, so a dead process's blocked BLMOVE ends before its lease does
        # and nothing can land in a processing list after the sweep emptied it.
        block = min(2.0, cfg.lease_timeout / 2)
        failures = 0
        self.recheck = True  # a restarted worker may find the task it was doing when it failed
        leftovers: list[str] = []
        while not self._stop.is_set():
            try:
                if failures or self.recheck:
                    # A BLMOVE or finish whose reply was lost (connection dropped, Redis restarted)
                    # may have moved a task into our processing list all the same. Between tasks
                    # that list is empty, and no sweep takes it while our lease lives: do what is there.
                    leftovers = await self.queue.leftovers(self.id, client=self._conn)
                raw = None if leftovers else await self.queue.take(self.id, block, client=self._conn)
            except REDIS_UNAVAILABLE as e:
                await self._fresh_connection()
                failures += 1
                delay = backoff(failures + 1, 0.1, 5.0, jitter=False)
                if failures in (1, 5) or failures % 50 == 0:
                    log.warning("redis unreachable, retrying", worker=self.id, error=type(e).__name__,
                                retry_in=f"{delay:.1f}s")
                await self._pause(delay)
                continue
            failures, self.recheck = 0, False
            while leftovers:  # oldest (rightmost) first
                await self.process(leftovers.pop(), take_next=False)
            while raw is not None:  # each finish hands over the next task while one is waiting
                raw = await self.process(raw)

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def process(self, raw: str, take_next: bool = True) -> str | None:
        """Run one taken task and commit its outcome; returns the next task, already moved into
        our processing list by the same finish, or None (queue empty, stopping, or not take_next).
        Nothing a task holds ends the worker: whatever escapes the steps below (a bug, a value no
        check foresaw) is one ERROR line, and the task goes to the dead letter, never round again."""
        try:
            return await self._process(raw, take_next)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            error = logs.redact(f"{type(e).__name__}: {shown(str(e), 300)}")
            log.error("task could not be processed; sent to the dead letter", worker=self.id, error=error)
            self.task, self.since = None, None
            return await self._finish(raw, [], _malformed(raw, error), Outcome.DEAD, "?", take_next)

    async def _process(self, raw: str, take_next: bool) -> str | None:
        try:
            task = Task.from_json(raw)
        except TaskFormatError as e:
            log.error("malformed task sent to the dead letter", worker=self.id, error=str(e))
            return await self._finish(raw, [], _malformed(raw, str(e)), Outcome.DEAD, "?", take_next)
        self.task, self.since = task, time.time()
        ctx = self.current.ctx  # one context for the whole task, its finish included
        try:
            with logs.context(**task.context()):
                if (invalid := self._invalid(task)) is not None:
                    # Retrying cannot add a field: dead at once, one line, no traceback, no report.
                    log.error("invalid task sent to the dead letter", error=invalid)
                    return await self._finish(raw, [], replace(task, error=invalid, run_at=0.0), Outcome.DEAD,
                                              "(invalid)", take_next)
                successors, dead, outcome = await self._handle(task, ctx)
                return await self._finish(raw, successors, dead, outcome, task.kind, take_next)
        finally:
            self.task, self.since = None, None

    def _invalid(self, task: Task) -> str | None:
        """Why the task cannot run at all: a kind no handler serves, or a payload its handler's
        schema refuses (payloads.py); None when it may run."""
        handler = self.registry.handlers.get(task.kind)
        if handler is None:
            return f"no handler for task kind {shown(task.kind, 64)!r}"
        if (schema := schema_of(handler)) is not None:
            try:
                schema.check(task.payload)
            except PayloadInvalid as e:
                return str(e)
        return None

    async def _handle(self, task: Task, ctx: Context) -> tuple[Sequence[Task], Task | None, Outcome]:
        cfg = ctx.config.workers
        handler = self.registry.handlers[task.kind]
        started = time.monotonic()
        try:
            successors = await self._call(handler, task, ctx, cfg.task_timeout)
            return successors, None, Outcome.DONE
        except asyncio.CancelledError:
            raise  # shutdown past its grace: the task stays in the processing list
        except Exception as e:
            error = logs.redact(f"{type(e).__name__}: {e}")[:2000]
            decided = outcome_for(task, e, cfg, time.time())
            failed = replace(task, attempt=decided.attempt, error=error, run_at=0.0)
            if decided.outcome is Outcome.DEAD:
                log.error("task failed, giving up: sent to the dead letter", attempt=decided.attempt, error=error)
                return await self._on_dead(failed, ctx), failed, Outcome.DEAD
            log.warning("task failed, will retry", attempt=decided.attempt, retry_in=f"{decided.delay:.1f}s",
                        error=error)
            if not isinstance(e, REDIS_UNAVAILABLE) and decided.attempt == 1:
                log.exception("first failure of this task")
            return [failed.later(decided.run_at)], None, Outcome.RETRY
        finally:
            metrics.task_seconds(task.kind).observe(time.monotonic() - started)

    async def _call(self, handler: Handler, task: Task, ctx: Context, limit: float) -> Sequence[Task]:
        """The handler, cancelled after `limit` seconds (workers.task_timeout): a hung GitHub call
        or backend must not hold a worker slot forever under a lease that looks alive."""
        try:
            async with asyncio.timeout(limit) as cm:
                return await handler(task, ctx) or []
        except TimeoutError:
            if cm.expired():
                raise TaskTimeout(f"ran longer than workers.task_timeout ({limit:g}s) and was cancelled") from None
            raise

    async def _on_dead(self, task: Task, ctx: Context) -> Sequence[Task]:
        """The dead task's successors (its report), to be committed with the dead letter."""
        if self.registry.on_dead is None:
            return []
        try:
            return await self.registry.on_dead(task, ctx) or []
        except Exception as e:  # reporting is best effort; the dead letter keeps the task
            log.error("could not report the dead task", error=logs.redact(f"{type(e).__name__}: {e}"))
            return []

    async def _finish(self, raw: str, successors: Sequence[Task], dead: Task | None, outcome: Outcome, kind: str,
                      take_next: bool) -> str | None:
        """Commit the outcome, and take the next task in the same step unless stopping. Redis may be
        down right now: keep trying, the task is safe meanwhile in the processing list, and a finish
        whose reply was lost is harmless to repeat. Such a retry takes nothing: the lost reply may
        have moved a task into our processing list, which the loop then reads (recheck)."""
        attempt = 0
        take = take_next and not self._stop.is_set() and not self.live.draining
        lost_reply = False
        while True:
            try:
                kept, nxt = await self.queue.finish_and_take(self.id, raw, successors, dead,
                                                             take=take and not lost_reply, client=self._conn)
                break
            except REDIS_UNAVAILABLE as e:
                await self._fresh_connection()
                lost_reply = self.recheck = True
                attempt += 1
                delay = backoff(attempt, 0.1, 5.0, jitter=False)
                log.warning("redis unreachable while finishing a task, retrying", retry_in=f"{delay:.1f}s",
                            error=f"{type(e).__name__}: {str(e)[:200]}")
                await asyncio.sleep(delay)
        if not kept:
            # Our lease lapsed (a stalled loop) and the task was requeued: it will run again
            # elsewhere, so its successors are dropped here rather than duplicated.
            log.warning("task was requeued while it ran (lease lost); dropping its successors")
            outcome = Outcome.LOST
        metrics.tasks(kind, outcome.value).inc()
        return nxt
