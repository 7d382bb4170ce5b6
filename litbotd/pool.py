"""The supervised worker pool (SPEC §6): this process's workers and periodic loops (heartbeat,
promoter, sweeper, redelivery, job-directory pruning, watchdog), kept alive.

- A worker holds its lease before its first take (a crash in between leaves nothing unswept).
- A Redis error of any kind is an outage, waited out inside the worker or loop (redisconn.REDIS_UNAVAILABLE).
- Anything else that ends a worker or a loop is one ERROR line, and the pool restarts it with backoff.
- Liveness: `liveness()` reports a problem while fewer workers are alive than configured, or a
  loop is down, for longer than one lease; /healthz then answers 503 and the watchdog goes unfed.

The periodic loops are a plain list of `Loop`s: adding one is one line in `WorkerPool.__init__`.
"""
from __future__ import annotations

import asyncio
import functools
import itertools
import time
import traceback
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

from . import logs, metrics, procinfo, systemd
from .backoff import backoff
from .config import Config
from .context import Current, Liveness
from .jobends import JobEnds
from .queue import Queue
from .redeliver import redeliver_once
from .redisconn import REDIS_UNAVAILABLE, Primary
from .spend import Spend
from .worker import Registry, Worker

log = logs.get("litbotd.pool")

RESTART_BACKOFF_MAX = 30.0
PRICES_INTERVAL = 3600.0     # machine prices read again every hour (SPEC §11)
RECONCILE_INTERVAL = 60.0    # leaked limit slots looked for this often
STABLE_AFTER = 60.0  # a unit that ran this long before failing starts its backoff afresh


@dataclass
class Loop:
    """A periodic loop: `step` runs, then the loop waits `interval()` seconds (read afresh each
    round, so a reload applies), or fewer when `step` returns a shorter wait."""
    name: str
    interval: Callable[[], float]
    step: Callable[[], Awaitable[float | None]]
    wait_first: bool = False  # the first round after one interval, not at start


class WorkerPool:
    def __init__(self, current: Current, registry: Registry, identity: dict[str, Any]) -> None:
        self.current = current  # the context in force: read afresh, SIGHUP swaps it
        self.live = Liveness(problem=self.liveness)  # handed to the web app (/healthz)
        self.registry = registry
        self.identity = identity
        self.started = time.time()
        self.workers: dict[str, tuple[Worker, asyncio.Task]] = {}
        self._ids = itertools.count()
        self._down: dict[str, float] = {}          # unit name -> when it failed (monotonic)
        self._failed_at: dict[str, float] = {}     # unit name -> its latest failure (monotonic)
        self._short_since: float | None = None     # since when fewer workers than configured live
        self._unhealthy_logged = False
        self.restarts = 0                          # workers and loops restarted after a failure
        self._running = False
        self._loop_tasks: list[asyncio.Task] = []
        self._last_beat = time.monotonic()
        self._primary = Primary()  # with Sentinel: where the primary was at the last heartbeat
        workers = lambda: self.cfg.workers  # noqa: E731 - read afresh: SIGHUP
        self.loops: list[Loop] = [
            Loop("heartbeat", lambda: workers().heartbeat_interval, self._heartbeat),
            Loop("promoter", lambda: 1.0, self._promote),
            Loop("sweeper", lambda: max(0.5, workers().lease_timeout / 2), self._sweep, wait_first=True),
            Loop("redeliver", lambda: self.cfg.github.redeliver_interval or 60.0, self._redeliver,
                 wait_first=True),
            Loop("prune", lambda: min(max(self.cfg.jobs.local.keep / 4, 1.0), 300.0), self._prune),
            Loop("prices", lambda: PRICES_INTERVAL, self._prices),
            Loop("limits", lambda: RECONCILE_INTERVAL, self._reconcile, wait_first=True),
        ]
        self._job_ends = JobEnds()
        # Ended local jobs, reported at once; it blocks in the backend's FIFO, so "interval" is
        # only the pause when the backend reports no ends (Lightning).
        self.loops.append(Loop("job-ends", lambda: 1.0, lambda: self._job_ends.step(
            self.queue, self.current.ctx.backend_impl, block=1.0)))
        if (interval := systemd.watchdog_interval()) is not None:
            self.loops.append(Loop("watchdog", lambda: interval, self._watchdog))

    @property
    def cfg(self) -> Config:
        return self.current.ctx.config

    @property
    def queue(self) -> Queue:
        return self.current.ctx.queue

    # -- life ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Take back what provably dead predecessors left, sweep expired leases, start everything."""
        await self._recover_predecessors()
        n = await self.queue.sweep()
        if n:
            metrics.REQUEUED.inc(n)
            log.warning("startup sweep requeued tasks of expired workers", tasks=n)
        self._running = True
        self.resize(self.cfg.workers.count)
        self._loop_tasks = [asyncio.create_task(self._supervise(f"loop {lp.name}", functools.partial(self._periodic, lp)),
                                                name=lp.name) for lp in self.loops]

    async def stop(self, grace: float) -> None:
        """Stop taking; in-flight tasks get `grace` seconds, then stay in their processing lists."""
        self._running = False
        for w, _ in self.workers.values():
            w.stop()
        tasks = [t for _, t in self.workers.values()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            if pending:
                log.warning("shutdown grace over: unfinished tasks stay queued for the next start",
                            tasks=len(pending))
                await cancel_all(pending)
        await cancel_all(self._loop_tasks)
        try:
            await self.queue.retire(list(self.workers))
        except REDIS_UNAVAILABLE:
            pass  # leases expire by themselves; the next start recovers what is left

    async def _recover_predecessors(self) -> None:
        """Take back at once the processing lists of workers whose process is provably gone
        (SPEC §6); every other worker's tasks wait for its lease to expire."""
        registered = await self.queue.registered()
        dead = [wid for wid, info in registered.items() if procinfo.provably_dead(info, self.identity)]
        n = await self.queue.recover(dead)
        if dead:
            metrics.REQUEUED.inc(n)
            (log.warning if n else log.info)("took back the tasks of this host's previous run",
                                             workers=len(dead), tasks=n)

    # -- workers ------------------------------------------------------------------------------------
    def resize(self, count: int) -> None:
        """Start or retire workers; a retiring worker finishes its task first."""
        live = [wid for wid, (w, t) in self.workers.items() if not t.done() and not w._stop.is_set()]
        live.sort(key=lambda wid: self.workers[wid][0].task is None)  # idle ones last: retired first
        for wid in live[count:]:
            self.workers[wid][0].stop()
        for _ in range(count - len(live)):
            self._spawn()
        metrics.WORKERS.set(count)

    def _spawn(self) -> None:
        me = self.identity
        wid = f"{me['host']}:{me['pid']}:{me['instance']}:{next(self._ids)}"
        worker = Worker(wid, self.current, self.registry, self.live)
        task = asyncio.create_task(self._supervise(f"worker {wid}", lambda: self._work(worker)), name=f"worker {wid}")
        self.workers[wid] = (worker, task)

    async def _work(self, worker: Worker) -> None:
        """Lease first, then take: a task is never in a processing list that no lease covers."""
        attempt = 0
        while not worker._stop.is_set():
            try:
                await self.queue.heartbeat({worker.id: self._info(worker)}, self.cfg.workers.lease_timeout)
                break
            except REDIS_UNAVAILABLE:
                attempt += 1
                await worker._pause(backoff(attempt, 0.1, 5.0, jitter=False))
        await worker.run()

    def _info(self, w: Worker) -> dict[str, Any]:
        return {**self.identity, "started": self.started, **w.info()}

    def live_workers(self) -> list[Worker]:
        return [w for w, t in self.workers.values() if not t.done()]

    # -- supervision --------------------------------------------------------------------------------
    async def _supervise(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        """Run `body` until it returns; restart it, with backoff, whenever it raises."""
        failures = 0
        while True:
            began = time.monotonic()
            try:
                await body()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                failures = 1 if time.monotonic() - began > STABLE_AFTER else failures + 1
                delay = backoff(failures, 0.5, RESTART_BACKOFF_MAX, jitter=False)
                self._down.setdefault(name, time.monotonic())
                self._failed_at[name] = time.monotonic()
                self.restarts += 1
                frame = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
                log.error(f"{name} failed unexpectedly; restarting it", error=logs.redact(f"{type(e).__name__}: {e}"),
                          at=f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}" if frame else None,
                          restart_in=f"{delay:.1f}s", failures=failures)
                await asyncio.sleep(delay)
                # Up again only once the restart has run a lease without failing: a unit in a
                # crash loop is alive for moments at a time and must not look healthy.
                asyncio.get_running_loop().call_later(self.cfg.workers.lease_timeout, self._up_again, name)

    def _up_again(self, name: str) -> None:
        if time.monotonic() - self._failed_at.get(name, 0.0) >= self.cfg.workers.lease_timeout:
            self._down.pop(name, None)

    async def _periodic(self, lp: Loop) -> None:
        outages = 0
        if lp.wait_first:
            await asyncio.sleep(lp.interval())
        while True:
            wait = None
            try:
                wait = await lp.step()
                outages = 0
            except REDIS_UNAVAILABLE as e:
                outages += 1
                if outages in (1, 5) or outages % 50 == 0:
                    log.warning("redis unavailable, retrying", loop=lp.name, error=type(e).__name__, attempts=outages)
            interval = lp.interval()
            await asyncio.sleep(interval if wait is None else max(0.0, min(wait, interval)))

    def liveness(self) -> str | None:
        """None when healthy, else the problem: workers or loops down for longer than one lease."""
        if not self._running:
            return None
        now = time.monotonic()
        lease = self.cfg.workers.lease_timeout
        alive = sum(1 for wid, (w, t) in self.workers.items()
                    if not t.done() and not w._stop.is_set() and f"worker {wid}" not in self._down)
        want = self.cfg.workers.count
        if alive >= want:
            self._short_since = None
        elif self._short_since is None:
            self._short_since = now
        problems = []
        if self._short_since is not None and now - self._short_since > lease:
            problems.append(f"{alive} of {want} workers alive for {now - self._short_since:.0f}s")
        problems += [f"{name} down for {now - t:.0f}s" for name, t in self._down.items()
                     if name.startswith("loop ") and now - t > lease]
        return "; ".join(problems) or None

    # -- the loops ----------------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        """Leases, loop lag, dead-worker replacement and STATUS=, every heartbeat_interval."""
        now = time.monotonic()
        self.live.loop_lag = max(0.0, now - self._last_beat - self.cfg.workers.heartbeat_interval)
        self._last_beat = now
        for wid, (w, t) in list(self.workers.items()):
            if t.done() and not w._stop.is_set() and self._running:
                # Supervision ends a worker only when told to: anything else must not pass unseen.
                log.error("worker ended without being stopped; starting a new one", worker=wid)
                w.stop()
                self._spawn()
        done = [wid for wid, (_, t) in self.workers.items() if t.done()]
        for wid in done:
            del self.workers[wid]
        if done:
            await self.queue.retire(done)
        await self._follow_failover()
        infos = {w.id: self._info(w) for w in self.live_workers()}
        await self.queue.heartbeat(infos, self.cfg.workers.lease_timeout)
        depths = await self.queue.depths()
        for k, v in depths.items():
            metrics.QUEUE_DEPTH.labels(k).set(v)
        systemd.notify(f"STATUS={self.status_line(depths)}")

    async def _follow_failover(self) -> None:
        """With Sentinel, when the primary moved every worker looks in its processing list on the
        new primary first (redisconn.Primary has dropped the old connections)."""
        if await self._primary.moved(self.queue.redis):
            for w in self.live_workers():
                w.recheck = True

    def status_line(self, depths: dict[str, int]) -> str:
        live = self.live_workers()
        busy = sum(1 for w in live if w.task is not None)
        problem = self.liveness()
        return (f"{len(live)} workers ({busy} busy); queued {depths.get('queued', 0)}, "
                f"delayed {depths.get('delayed', 0)}, dead {depths.get('dead', 0)}"
                + (f"; UNHEALTHY: {problem}" if problem else ""))

    async def _promote(self) -> float | None:
        """Delayed tasks move to the main list when due; at most one poll a second when idle."""
        moved, nxt = await self.queue.promote_due()
        if moved:
            log.debug("delayed tasks due", tasks=moved)
        return None if nxt is None else nxt - time.time()

    async def _sweep(self) -> None:
        n = await self.queue.sweep()
        if n:
            metrics.REQUEUED.inc(n)
            log.warning("requeued the tasks of workers whose lease expired", tasks=n)

    async def _redeliver(self) -> None:
        ctx = self.current.ctx
        if not ctx.config.github.redeliver_interval or ctx.github_app is None:
            return
        try:
            n = await redeliver_once(ctx)
            if n:
                log.info("asked GitHub to redeliver failed webhooks", deliveries=n)
        except Exception as e:  # GitHub trouble is expected here: the next round tries again
            log.warning("redelivery sweep failed", error=logs.redact(f"{type(e).__name__}: {e}"))

    async def _prune(self) -> None:
        """Delete finished local job directories older than jobs.local.keep (never a running job's),
        and run pages kept longer than report.keep_logs."""
        ctx = self.current.ctx
        if ctx.page_store is not None:
            try:
                n = await asyncio.to_thread(ctx.page_store.prune, self.cfg.report.keep_logs)
                if n:
                    log.info("deleted kept run pages", runs=n, keep=f"{self.cfg.report.keep_logs:g}s")
            except Exception as e:  # the next round tries again
                log.warning("pruning run pages failed", error=logs.redact(f"{type(e).__name__}: {e}"))
        backend = ctx.backend_impl
        if backend is None or not backend.prunes:
            return
        try:
            n = await backend.prune()
            if n:
                log.info("deleted finished job directories", jobs=n, keep=f"{self.cfg.jobs.local.keep:g}s")
        except Exception as e:  # the next round tries again
            log.warning("pruning job directories failed", error=logs.redact(f"{type(e).__name__}: {e}"))

    async def _prices(self) -> float | None:
        """Read the backend's machine prices (at start, then hourly); a failure tries again soon."""
        ctx = self.current.ctx
        if ctx.backend_impl is None:
            return None
        try:
            n = await ctx.prices.refresh(ctx.backend_impl)
            if n:
                log.info("machine prices read", machines=n)
        except REDIS_UNAVAILABLE:
            raise
        except Exception as e:  # the backend could not say: keep the prices known, try again in a minute
            log.warning("reading machine prices failed", error=logs.redact(f"{type(e).__name__}: {e}"))
            return 60.0
        return None

    async def _reconcile(self) -> None:
        """Free limit slots whose run ended without freeing them (its task lost for good)."""
        ctx = self.current.ctx
        n = await Spend(ctx.queue).reconcile(ctx.config.limits, ctx.prices.price_fn(ctx.config.limits.prices))
        if n:
            log.warning("freed limit slots of runs that had ended", runs=n)

    async def _watchdog(self) -> None:
        """WATCHDOG=1 from the event loop, only while the pool is alive: a blocked loop, or workers
        down for longer than a lease, stop the pings and systemd restarts the daemon. A slow
        Redis (which only delays the heartbeat) does not get a healthy daemon killed."""
        problem = self.liveness()
        if problem is None:
            systemd.notify("WATCHDOG=1")
            if self._unhealthy_logged:
                log.info("healthy again: feeding the systemd watchdog")
            self._unhealthy_logged = False
        elif not self._unhealthy_logged:
            log.error("unhealthy: no longer feeding the systemd watchdog", problem=problem)
            self._unhealthy_logged = True


async def cancel_all(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel the tasks and wait until they are done, cancelling again while one still runs: on
    Python 3.11, asyncio.wait_for (which redis-py uses for its socket timeout) can swallow a
    cancellation that races with a reply, and a `while True` loop would then run on forever."""
    tasks = list(tasks)
    while running := [t for t in tasks if not t.done()]:
        for t in running:
            t.cancel()
        await asyncio.wait(running, timeout=0.5)
    for t in tasks:
        if not t.cancelled():
            t.exception()  # retrieved: no "exception was never retrieved" noise
