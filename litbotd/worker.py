"""The worker loop: take a task, run its handler, finish it with its successors (SPEC §6).

Read it top to bottom: `Worker.run` takes, `Worker.process` decides, `Queue.finish` commits the
outcome (successors, a delayed retry or a dead letter) in one atomic step.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import Awaitable, Callable, Sequence

import redis.exceptions

from . import logs, metrics
from .queue import REDIS_UNAVAILABLE, Queue
from .services import Services
from .tasks import Task, TaskFormatError, backoff

log = logs.get("litbotd.worker")

Handler = Callable[[Task, Services], Awaitable[Sequence[Task] | None]]
DeadHook = Callable[[Task, Services], Awaitable[None]]
REDIS_DOWN = REDIS_UNAVAILABLE  # the one classification lives in queue.py


class TaskTimeout(Exception):
    """The handler ran longer than workers.task_timeout and was cancelled."""


class Permanent(Exception):
    """A failure that retrying cannot fix: the task goes straight to the dead letter."""


@dataclass
class Registry:
    """Task kind -> handler. A handler returns the tasks that follow (a `run_at` in the future
    delays one) or raises to have the task retried. `on_dead` runs when a task is given up."""
    handlers: dict[str, Handler] = field(default_factory=dict)
    on_dead: DeadHook | None = None


class Worker:
    def __init__(self, wid: str, services: Services, registry: Registry) -> None:
        self.id = wid
        self.services = services
        self.registry = registry
        self.task: Task | None = None
        self.since: float | None = None
        self.recheck = True  # look in our processing list before the next take (start, failover)
        self._stop = asyncio.Event()

    @property
    def queue(self) -> Queue:
        return self.services.queue

    def stop(self) -> None:
        """Finish the current task, then leave the loop (retire or shutdown)."""
        self._stop.set()

    def info(self) -> dict:
        return {"task": self.task.id if self.task else None, "since": self.since}

    async def run(self) -> None:
        cfg = self.services.config.workers
        # Shorter than the lease, so a dead process's blocked BLMOVE ends before its lease does
        # and nothing can land in a processing list after the sweep emptied it.
        block = min(2.0, cfg.lease_timeout / 2)
        failures = 0
        self.recheck = True  # a restarted worker may find the task it was doing when it failed
        leftovers: list[str] = []
        while not self._stop.is_set():
            try:
                if failures or self.recheck:
                    # A BLMOVE whose reply was lost (connection dropped, Redis restarted) may have
                    # moved a task into our processing list all the same. Between tasks that list
                    # is empty, and no sweep takes it while our lease lives: do what is there.
                    leftovers = await self.queue.redis.lrange(self.queue.processing(self.id), 0, -1)
                raw = None if leftovers else await self.queue.take(self.id, block)
            except REDIS_UNAVAILABLE as e:
                failures += 1
                delay = min(5.0, 0.1 * 2 ** failures)
                if failures in (1, 5) or failures % 50 == 0:
                    log.warning("redis unreachable, retrying", worker=self.id, error=type(e).__name__,
                                retry_in=f"{delay:.1f}s")
                await self._pause(delay)
                continue
            failures, self.recheck = 0, False
            while leftovers:  # oldest (rightmost) first
                await self.process(leftovers.pop())
            if raw is not None:
                await self.process(raw)

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def process(self, raw: str) -> None:
        try:
            task = Task.from_json(raw)
        except TaskFormatError as e:
            log.error("malformed task sent to the dead letter", worker=self.id, error=str(e))
            await self._finish(raw, [], Task(kind="malformed", payload={"raw": raw[:4096]}, error=str(e)), "dead", "?")
            return
        self.task, self.since = task, time.time()
        try:
            with logs.context(**task.context()):
                successors, dead, outcome = await self._handle(task)
                await self._finish(raw, successors, dead, outcome, task.kind)
        finally:
            self.task, self.since = None, None

    async def _handle(self, task: Task) -> tuple[Sequence[Task], Task | None, str]:
        cfg = self.services.config.workers
        handler = self.registry.handlers.get(task.kind)
        started = time.monotonic()
        try:
            if handler is None:
                raise Permanent(f"no handler for task kind {task.kind!r}")
            successors = await self._call(handler, task, cfg.task_timeout)
            return successors, None, "done"
        except asyncio.CancelledError:
            raise  # shutdown past its grace: the task stays in the processing list
        except Exception as e:
            attempt = task.attempt + 1
            error = logs.redact(f"{type(e).__name__}: {e}")[:2000]
            failed = replace(task, attempt=attempt, error=error, run_at=0.0)
            if isinstance(e, Permanent) or attempt >= cfg.max_attempts:
                log.error("task failed, giving up: sent to the dead letter", attempt=attempt, error=error)
                await self._on_dead(failed)
                return [], failed, "dead"
            delay = backoff(attempt, cfg.retry_backoff, cfg.retry_backoff_max)
            log.warning("task failed, will retry", attempt=attempt, retry_in=f"{delay:.1f}s", error=error)
            if not isinstance(e, (redis.exceptions.RedisError, OSError)) and attempt == 1:
                log.exception("first failure of this task")
            return [replace(failed, run_at=time.time() + delay)], None, "retry"
        finally:
            metrics.TASK_SECONDS.labels(task.kind).observe(time.monotonic() - started)

    async def _call(self, handler: Handler, task: Task, limit: float) -> Sequence[Task]:
        """The handler, cancelled after `limit` seconds (workers.task_timeout): a hung GitHub call
        or backend must not hold a worker slot forever under a lease that looks alive."""
        try:
            async with asyncio.timeout(limit) as cm:
                return await handler(task, self.services) or []
        except TimeoutError:
            if cm.expired():
                raise TaskTimeout(f"ran longer than workers.task_timeout ({limit:g}s) and was cancelled") from None
            raise

    async def _on_dead(self, task: Task) -> None:
        if self.registry.on_dead is None:
            return
        try:
            await self.registry.on_dead(task, self.services)
        except Exception as e:  # reporting is best effort; the dead letter keeps the task
            log.error("could not report the dead task", error=logs.redact(f"{type(e).__name__}: {e}"))

    async def _finish(self, raw: str, successors: Sequence[Task], dead: Task | None, outcome: str, kind: str) -> None:
        """Commit the outcome. Redis may be down right now: keep trying, the task is safe meanwhile
        in the processing list, and a finish whose reply was lost is harmless to repeat."""
        delay = 0.1
        while True:
            try:
                kept = await self.queue.finish(self.id, raw, successors, dead)
                break
            except REDIS_UNAVAILABLE:
                log.warning("redis unreachable while finishing a task, retrying", retry_in=f"{delay:.1f}s")
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
        if not kept:
            # Our lease lapsed (a stalled loop) and the task was requeued: it will run again
            # elsewhere, so its successors are dropped here rather than duplicated.
            log.warning("task was requeued while it ran (lease lost); dropping its successors")
            outcome = "lost"
        metrics.TASKS.labels(kind, outcome).inc()
