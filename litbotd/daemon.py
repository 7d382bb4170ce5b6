"""`litbotd run`: wiring, the background loops, signals, reload and drain (SPEC §1, §6, §7).

One process, one event loop: the aiohttp listener, `workers.count` worker coroutines, and four
small loops — heartbeat (leases, watchdog, status), promoter (delayed → due), sweeper (dead
workers' tasks back to the queue) and the redelivery sweeper.
"""
from __future__ import annotations

import asyncio
import dataclasses
import faulthandler
import gc
import itertools
import os
import signal
import socket
import time
from typing import Callable

import redis.asyncio as aioredis
from aiohttp import web

from . import config as config_mod
from . import logs, metrics, procinfo, systemd
from .backends import check as check_backend
from .backends import make_backend
from .config import Config, ConfigError, JobsConfig
from .github import GitHubApp
from .queue import Queue, connect
from .redeliver import redeliver_once
from .services import Services
from .webhook import make_app
from .worker import REDIS_DOWN, Registry, Worker

log = logs.get("litbotd.daemon")


class Daemon:
    def __init__(self, cfg: Config, registry: Registry, config_path: str | None = None,
                 config_loader: Callable[[], Config] | None = None, redis: aioredis.Redis | None = None) -> None:
        self.registry = registry
        self.config_path = config_path
        self._load_config = config_loader or (lambda: config_mod.load(config_path))
        self.host = os.environ.get("LITBOTD_HOST") or socket.gethostname()
        self.identity = {"host": self.host, "pid": os.getpid(), "boot": procinfo.boot_id(), "pidns": procinfo.pid_namespace(),
                         "pstart": procinfo.process_start(os.getpid())}
        self._ids = itertools.count()
        self.workers: dict[str, tuple[Worker, asyncio.Task]] = {}
        self._stop = asyncio.Event()
        self._loops: list[asyncio.Task] = []
        self._backend_jobs: JobsConfig | None = None  # the [jobs] the backend was built from
        self._running = False  # start() done: a SIGHUP before that has nothing to reload yet
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Task] = set()  # strong refs: the loop keeps only weak ones
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.started = time.time()
        self.ready = asyncio.Event()
        redis = redis if redis is not None else connect(cfg.redis.url)
        self.services = Services(config=cfg, redis=redis, queue=Queue(redis, cfg.redis.queue))

    @property
    def cfg(self) -> Config:
        return self.services.config

    # -- life ---------------------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        try:
            if not await self._wait_for_redis():
                return 0
            await self.start()
            self._running = True
            # Everything built so far lives as long as the process: keep it out of GC passes,
            # whose pauses otherwise show in webhook p99 latency.
            gc.freeze()
            systemd.notify("READY=1", f"STATUS={self.status_line({})}")
            self.ready.set()
            log.info("ready", host=self.host, pid=os.getpid(), workers=self.cfg.workers.count,
                     listen=f"{self.cfg.server.host}:{self.port}" if self.port is not None else "off")
            await self._stop.wait()
            systemd.notify("STOPPING=1")
            await self.drain()
            return 0
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def _on_sighup(self) -> None:
        """The handler only schedules: the reload itself runs as a task of its own."""
        task = asyncio.get_running_loop().create_task(self.reload(), name="reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    def stop(self) -> None:
        if not self._stop.is_set():
            log.info("stopping: draining in-flight tasks", grace=f"{self.cfg.workers.shutdown_grace:g}s")
            self.services.draining = True
            self._stop.set()

    async def _wait_for_redis(self) -> bool:
        """READY waits for Redis; a stop request while waiting ends the daemon."""
        delay = 0.2
        while not self._stop.is_set():
            try:
                await self.services.redis.ping()
                return True
            except REDIS_DOWN as e:
                log.warning("waiting for redis", url=logs.safe_url(self.cfg.redis.url), error=type(e).__name__,
                            retry_in=f"{delay:.1f}s")
                systemd.notify(f"STATUS=waiting for redis at {logs.safe_url(self.cfg.redis.url)}")
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                except asyncio.TimeoutError:
                    delay = min(5.0, delay * 2)
        return False

    async def start(self) -> None:
        s = self.services
        s.backend = make_backend(self.cfg) if self.cfg.workers.count > 0 else None
        self._backend_jobs = self.cfg.jobs if s.backend is not None else None
        s.github = GitHubApp(s) if self.cfg.github.app_id and self.cfg.github.private_key else None
        await self._recover_own_host()
        n = await s.queue.sweep()
        if n:
            metrics.REQUEUED.inc(n)
            log.warning("startup sweep requeued tasks of expired workers", tasks=n)
        self.resize(self.cfg.workers.count)
        await self._beat()  # leases exist before the first take
        self._loops = [asyncio.create_task(c, name=n) for n, c in (
            ("watchdog", self._watchdog_loop()),
            ("heartbeat", self._heartbeat_loop()), ("promoter", self._promoter_loop()),
            ("sweeper", self._sweeper_loop()), ("redeliver", self._redeliver_loop()),
            ("prune", self._prune_loop()),
        )]
        if self.cfg.server.enabled:
            self._runner = web.AppRunner(make_app(s), access_log=None, handle_signals=False)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.cfg.server.host, self.cfg.server.port, reuse_address=True)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _recover_own_host(self) -> None:
        """Take back at once the processing lists of this host's dead processes (SPEC §6)."""
        me = self.identity

        def gone(info: dict) -> bool:
            if info.get("host") != me["host"]:
                return False
            if info.get("boot") != me["boot"]:
                return True  # the host rebooted since
            if info.get("pidns") != me["pidns"]:
                return False  # another container on this host name: its pids mean nothing here
            if info.get("pid") == me["pid"]:
                # Our pid, so not a live other process: an earlier one (same pid after a restart:
                # its worker ids are ours, and its tasks would sit under our live leases) unless it
                # is this very process (another Daemon in it, as in tests).
                return info.get("pstart") != me["pstart"]
            return not procinfo.pid_alive(int(info.get("pid", 0)))

        dead = [wid for wid, info in (await self.services.queue.registered()).items() if gone(info)]
        n = await self.services.queue.recover(dead)
        if dead:
            metrics.REQUEUED.inc(n)
            log.warning("took back the tasks of this host's previous run", workers=len(dead), tasks=n)

    async def drain(self) -> None:
        """Stop taking, let in-flight tasks finish within shutdown_grace, leave the rest queued."""
        for w, _ in self.workers.values():
            w.stop()
        tasks = [t for _, t in self.workers.values()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.cfg.workers.shutdown_grace)
            if pending:
                log.warning("shutdown grace over: unfinished tasks stay queued for the next start",
                            tasks=len(pending))
                await _cancel_all(pending)
        await _cancel_all(self._loops)
        try:
            await self.services.queue.retire(list(self.workers))
        except REDIS_DOWN:
            pass  # leases expire by themselves; the next start recovers what is left
        if self._runner is not None:
            await self._runner.cleanup()
        if self.services.github is not None:
            await self.services.github.close()
        if self.services.backend is not None:
            await self.services.backend.close()
        await self.services.redis.aclose()
        log.info("stopped")

    # -- workers ------------------------------------------------------------------------------------
    def resize(self, count: int) -> None:
        """Start or retire workers; a retiring worker finishes its task first."""
        live = [wid for wid, (w, t) in self.workers.items() if not t.done() and not w._stop.is_set()]
        live.sort(key=lambda wid: self.workers[wid][0].task is None)  # idle ones last: retired first
        for wid in live[count:]:
            self.workers[wid][0].stop()
        for _ in range(count - len(live)):
            wid = f"{self.host}:{os.getpid()}:{next(self._ids)}"
            worker = Worker(wid, self.services, self.registry)
            task = asyncio.create_task(worker.run(), name=f"worker {wid}")
            self.workers[wid] = (worker, task)
        metrics.WORKERS.set(count)

    def live_workers(self) -> list[Worker]:
        return [w for w, t in self.workers.values() if not t.done()]

    # -- background loops ---------------------------------------------------------------------------
    async def _beat(self) -> None:
        done = [wid for wid, (_, t) in self.workers.items() if t.done()]
        for wid in done:
            del self.workers[wid]
        if done:
            await self.services.queue.retire(done)
        infos = {w.id: {**self.identity, "started": self.started, **w.info()} for w in self.live_workers()}
        await self.services.queue.heartbeat(infos, self.cfg.workers.lease_timeout)

    async def _watchdog_loop(self) -> None:
        """WATCHDOG=1 every half WatchdogSec, from the event loop and from nothing else: a blocked
        loop stops the pings and systemd restarts the daemon, while a slow Redis (which only
        delays the heartbeat) does not get a healthy daemon killed."""
        interval = systemd.watchdog_interval()
        if interval is None:
            return
        while True:
            systemd.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def _heartbeat_loop(self) -> None:
        """Leases, loop lag and STATUS=, every heartbeat_interval."""
        loop = asyncio.get_running_loop()
        while True:
            interval = self.cfg.workers.heartbeat_interval
            t0 = loop.time()
            await asyncio.sleep(interval)
            self.services.loop_lag = max(0.0, loop.time() - t0 - interval)
            try:
                await self._beat()
                depths = await self.services.queue.depths()
            except REDIS_DOWN:
                continue
            for k, v in depths.items():
                metrics.QUEUE_DEPTH.labels(k).set(v)
            systemd.notify(f"STATUS={self.status_line(depths)}")

    def status_line(self, depths: dict[str, int]) -> str:
        busy = sum(1 for w in self.live_workers() if w.task is not None)
        return (f"{len(self.live_workers())} workers ({busy} busy); queued {depths.get('queued', 0)}, "
                f"delayed {depths.get('delayed', 0)}, dead {depths.get('dead', 0)}")

    async def _promoter_loop(self) -> None:
        """Delayed tasks move to the main list when due; at most one poll a second when idle."""
        while True:
            try:
                moved, nxt = await self.services.queue.promote_due()
            except REDIS_DOWN:
                await asyncio.sleep(1.0)
                continue
            if moved:
                log.debug("delayed tasks due", tasks=moved)
            wait = 1.0 if nxt is None else min(1.0, max(0.0, nxt - time.time()))
            await asyncio.sleep(wait)

    async def _sweeper_loop(self) -> None:
        while True:
            await asyncio.sleep(max(0.5, self.cfg.workers.lease_timeout / 2))
            try:
                n = await self.services.queue.sweep()
            except REDIS_DOWN:
                continue
            if n:
                metrics.REQUEUED.inc(n)
                log.warning("requeued the tasks of workers whose lease expired", tasks=n)

    async def _redeliver_loop(self) -> None:
        while True:
            interval = self.cfg.github.redeliver_interval
            await asyncio.sleep(interval or 60.0)
            if not interval or self.services.github is None:
                continue
            try:
                n = await redeliver_once(self.services)
                if n:
                    log.info("asked GitHub to redeliver failed webhooks", deliveries=n)
            except Exception as e:  # the next round tries again
                log.warning("redelivery sweep failed", error=logs.redact(f"{type(e).__name__}: {e}"))

    async def _prune_loop(self) -> None:
        """Delete finished local job directories older than jobs.local.keep (never a running job's)."""
        while True:
            prune = getattr(self.services.backend, "prune", None)  # the local backend's
            if prune is not None:
                try:
                    n = await prune()
                    if n:
                        log.info("deleted finished job directories", jobs=n, keep=f"{self.cfg.jobs.local.keep:g}s")
                except Exception as e:  # the next round tries again
                    log.warning("pruning job directories failed", error=logs.redact(f"{type(e).__name__}: {e}"))
            await asyncio.sleep(min(max(self.cfg.jobs.local.keep / 4, 1.0), 300.0))

    # -- reload -------------------------------------------------------------------------------------
    async def reload(self) -> None:
        """SIGHUP: validate the new config and build its adapters before changing anything (SPEC §7)."""
        if not self._running or self._stop.is_set():
            log.warning("reload ignored: the daemon is " + ("stopping" if self._stop.is_set() else "still starting"))
            return
        async with self._reload_lock:  # two quick SIGHUPs: the second reload waits for the first
            systemd.reloading()
            try:
                await self._reload()
            except Exception as e:  # an adapter that cannot be built: the running config stays
                log.error("reload refused: keeping the running config", error=logs.redact(f"{type(e).__name__}: {e}"))
            finally:
                depths: dict[str, int] = {}
                try:
                    depths = await self.services.queue.depths()
                except REDIS_DOWN:
                    pass
                systemd.notify("READY=1", f"STATUS={self.status_line(depths)}")

    async def _reload(self) -> None:
        s = self.services
        try:
            new = await asyncio.to_thread(self._load_config)
        except ConfigError as e:
            log.error("reload refused: keeping the running config", error=logs.redact(str(e)))
            return
        old = self.cfg
        fixed = [k for k in ("redis", "server") if getattr(old, k) != getattr(new, k)]
        if fixed:
            log.warning("reload: [redis] and [server] changes need a restart; keeping the old values",
                        sections=",".join(fixed))
            new = dataclasses.replace(new, redis=old.redis, server=old.server)
        changed = [f.name for f in dataclasses.fields(Config)
                   if f.name != "source" and getattr(old, f.name) != getattr(new, f.name)]
        # Everything that can fail happens before the first change.
        backend = s.backend
        if new.workers.count > 0 and new.jobs != self._backend_jobs:
            backend = make_backend(new)
        logs.setup(new.log.level, new.log.format, config_mod.secrets_of(new))
        s.config = new
        if backend is not s.backend:
            old_backend, s.backend, self._backend_jobs = s.backend, backend, new.jobs
            if old_backend is not None:
                await old_backend.close()  # jobs keep running; only threads and connections go
        if new.github != old.github:
            if s.github is not None:
                await s.github.close()
            s.github = GitHubApp(s) if new.github.app_id and new.github.private_key else None
        if self._stop.is_set():
            return  # SIGTERM arrived while reloading: a draining daemon starts no workers
        self.resize(new.workers.count)
        log.info("reloaded", changed=",".join(changed) or "nothing", workers=new.workers.count)


async def _cancel_all(tasks) -> None:
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


def run(cfg: Config, registry: Registry, config_path: str | None = None) -> int:
    """Entry point of `litbotd run`: uvloop, then the daemon until SIGTERM."""
    import uvloop

    if not cfg.github.webhook_secret and cfg.server.enabled:
        raise ConfigError("github.webhook_secret: not set — refusing to start an unauthenticated webhook "
                          "listener (set GH_WEBHOOK_SECRET, the config key, or a systemd credential)")
    if cfg.workers.count > 0:
        check_backend(cfg)  # e.g. no bwrap: one line at start, before waiting for Redis
    logs.setup(cfg.log.level, cfg.log.format, config_mod.secrets_of(cfg))
    # A watchdog kill (SIGABRT) then leaves the Python stack of the blocked code in the journal.
    faulthandler.enable()

    async def main() -> int:
        return await Daemon(cfg, registry, config_path).run()

    return uvloop.run(main())

