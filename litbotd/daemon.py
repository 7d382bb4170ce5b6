"""`litbotd run`: wiring, signals, reload and drain (SPEC §1, §6, §7).

One process, one event loop: the aiohttp listener and a supervised WorkerPool (pool.py) holding
`workers.count` worker coroutines and the periodic loops. Start-up order: the listener is bound
first (a port in use is one line and exit 1), then Redis is waited for, then the workers start.
"""
from __future__ import annotations

import asyncio
import dataclasses
import faulthandler
import gc
import json
import os
import signal
import socket
import time
from typing import Callable

import redis.asyncio as aioredis
from aiohttp import web

from . import config as config_mod
from . import configfile, jobsecrets, logs, preflight, procinfo, systemd
from .backends import Backend, machine_names, make_backend
from .backoff import backoff
from .config import Config, ConfigError, JobsConfig
from .context import Context, Current
from .github import GitHubApp
from .logstore import Store, load_link_key, logs_dir
from .pages import dashboard
from .pages.ctx import Pages
from .pool import WorkerPool
from .queue import queue_config
from .redisconn import REDIS_UNAVAILABLE, connect_config
from .runlink import Links
from .spend import PriceBook
from .webhook import make_app
from .worker import Registry, Worker
from .workflows import Defaults

log = logs.get("litbotd.daemon")


class StartError(Exception):
    """`litbotd run` cannot start: one line naming the address, key or backend."""


class Daemon:
    def __init__(self, cfg: Config, registry: Registry, config_path: str | None = None,
                 config_loader: Callable[[], Config] | None = None, redis: aioredis.Redis | None = None) -> None:
        self.registry = registry
        self.config_path = config_path
        self._load_config = config_loader or (lambda: configfile.load(config_path))
        self.host = os.environ.get("LITBOTD_HOST") or socket.gethostname()
        self.identity = procinfo.identity(self.host)
        self._stop = asyncio.Event()
        self._backend_jobs: JobsConfig | None = None  # the [jobs] the backend was built from
        self._running = False  # start() done: a SIGHUP before that has nothing to reload yet
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Task] = set()  # strong refs: the loop keeps only weak ones
        self._runner: web.AppRunner | None = None
        self._doors: tuple[Links, Store] | None = None  # the run pages' link key and store
        self.port: int | None = None
        self.ready = asyncio.Event()
        self.redis = redis if redis is not None else connect_config(cfg.redis)
        self.queue = queue_config(self.redis, cfg.redis)  # [redis] is fixed for the process's life
        # Until start() builds the adapters: the config alone (nothing runs a handler before).
        self.current = Current(Context.of(cfg, self.queue))
        self.pool = WorkerPool(self.current, registry, self.identity)
        self.live = self.pool.live

    @property
    def ctx(self) -> Context:
        """The context in force (replaced whole on SIGHUP)."""
        return self.current.ctx

    @property
    def cfg(self) -> Config:
        return self.current.ctx.config

    @property
    def workers(self) -> dict[str, tuple[Worker, asyncio.Task]]:
        return self.pool.workers

    def live_workers(self) -> list[Worker]:
        return self.pool.live_workers()

    # -- life ---------------------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        try:
            await self.listen()
            if not await self._wait_for_redis():
                await self._close()
                return 0
            await self.start()
            # Everything built so far lives as long as the process: keep it out of GC passes,
            # whose pauses otherwise show in webhook p99 latency.
            gc.freeze()
            systemd.notify("READY=1", f"STATUS={self.pool.status_line({})}")
            self.ready.set()
            log.info("ready", host=self.host, instance=self.identity["instance"], pid=os.getpid(),
                     workers=self.cfg.workers.count,
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
            self.live.draining = True
            self._stop.set()

    async def listen(self) -> None:
        """Bind the webhook listener, before anything else starts: StartError when it cannot."""
        if not self.cfg.server.enabled:
            return
        host, port = self.cfg.server.host, self.cfg.server.port
        pages = await self._pages()
        app = make_app(self.current, self.live, pages)
        if dashboard.wanted(self.cfg):
            current = self.current
            dashboard.add_to(app, lambda: current.ctx, run_url=lambda ctx, ref: current.ctx.page_url(
                ref.repo, ref.sha, ref.key, ref.attempt))
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            self._runner = None
            raise StartError(f"cannot listen on {host}:{port} (server.host, server.port): "
                             f"{e.strerror or e}") from None
        self.port = self._runner.addresses[0][1]  # the port bound (port 0: a free one)

    async def _page_doors(self) -> tuple[Links, Store] | None:
        """The run pages' link key and store, when server.public_url is set (SPEC §9); read once
        ([server] is fixed for the process's life). StartError when the key cannot be read or made."""
        cfg = self.cfg
        if not cfg.server.public_url:
            return None
        if self._doors is None:
            store = Store(logs_dir(cfg))
            try:
                key = await asyncio.to_thread(load_link_key, None, str(store.root))
            except (OSError, ValueError) as e:
                raise StartError(f"server.public_url: cannot read or create the run pages' link key: "
                                 f"{getattr(e, 'strerror', None) or e}") from None
            self._doors = (Links(cfg.server.public_url, key), store)
        return self._doors

    async def _pages(self) -> Pages | None:
        """What the web app's run pages read: the context in force, through `current`."""
        doors = await self._page_doors()
        if doors is None:
            return None
        links, store = doors
        current = self.current
        return Pages(config=lambda: current.ctx.config, queue=lambda: current.ctx.queue,
                     backend=lambda: current.ctx.backend_impl, store=store, link_key=links.key,
                     mask=lambda: current.ctx.masker.mask)  # job secrets (SPEC §10), the store in force

    def _context(self, cfg: Config, github: GitHubApp | None, backend: Backend | None,
                 defaults: Defaults | None, secrets: jobsecrets.Store, prices: PriceBook | None = None) -> Context:
        links, store = self._doors or (None, None)
        return Context.of(cfg, self.queue, github, backend, defaults, links=links, page_store=store, secrets=secrets,
                          prices=prices)

    async def _wait_for_redis(self) -> bool:
        """READY waits for Redis; a stop request while waiting ends the daemon."""
        attempt = 0
        where = "sentinels " + ",".join(self.cfg.redis.sentinels) if self.cfg.redis.sentinels \
            else logs.safe_url(self.cfg.redis.url)
        while not self._stop.is_set():
            try:
                await self.redis.ping()
                return True
            except REDIS_UNAVAILABLE as e:
                attempt += 1
                delay = backoff(attempt, 0.2, 5.0, jitter=False)
                log.warning("waiting for redis", at=where, error=type(e).__name__, retry_in=f"{delay:.1f}s")
                systemd.notify(f"STATUS=waiting for redis at {where}")
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                except asyncio.TimeoutError:
                    pass
        return False

    async def start(self) -> None:
        """Adapters, then the pool (recovery, sweep, workers, loops); listen() if not yet done."""
        cfg = self.cfg
        try:
            store = await asyncio.to_thread(self._secrets, cfg)
        except jobsecrets.SecretsError as e:
            raise StartError(f"secrets.file: {e}") from None
        logs.set_job_secrets(store.masked_values())
        if store.values() and cfg.jobs.backend == "local" and not cfg.jobs.local.sandbox:
            log.warning("job secrets with jobs.local.sandbox = false: an unsandboxed job can read the secrets "
                        "of the others running beside it (README, Job secrets)")
        backend = make_backend(cfg.jobs, configfile.secret_paths(cfg)) if cfg.workers.count > 0 else None
        self._backend_jobs = cfg.jobs if backend is not None else None
        await self._page_doors()
        self.current.ctx = self._context(cfg, self._github(cfg), backend, await self._defaults(cfg, backend), store)
        await self.pool.start()
        if self.cfg.server.enabled and self._runner is None:
            await self.listen()
        self._running = True

    async def drain(self) -> None:
        """Stop taking, let in-flight tasks finish within shutdown_grace, leave the rest queued."""
        await self.pool.stop(self.cfg.workers.shutdown_grace)
        try:
            await self.redis.hdel(self.queue.key("reload"), self._reload_field())
        except REDIS_UNAVAILABLE:
            pass
        await self._close()
        log.info("stopped")

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self.ctx.github_app is not None:
            await self.ctx.github_app.close()
        if self.ctx.backend_impl is not None:
            await self.ctx.backend_impl.close()
        await self.redis.aclose()

    def _github(self, cfg: Config) -> GitHubApp | None:
        """The GitHub App client for a config; None without App credentials."""
        if not (cfg.github.app_id and cfg.github.private_key):
            return None
        return GitHubApp.on_redis(cfg.github, self.redis, self.queue.name)

    @staticmethod
    def _secrets(cfg: Config) -> jobsecrets.Store:
        """The job secrets store the config points at (blocking file I/O: call it on a thread)."""
        return configfile.load_secrets(cfg.secrets.file)

    @staticmethod
    async def _defaults(cfg: Config, backend: Backend | None) -> Defaults:
        """The planner's defaults; with Lightning, the valid machine names (imports the SDK: a thread)."""
        lightning = backend is not None and cfg.jobs.backend == "lightning"
        return Defaults.from_config(cfg.jobs, await asyncio.to_thread(machine_names) if lightning else None)

    # -- reload -------------------------------------------------------------------------------------
    async def reload(self) -> None:
        """SIGHUP: validate the new config and build its adapters before changing anything (SPEC §7)."""
        if not self._running or self._stop.is_set():
            log.warning("reload ignored: the daemon is " + ("stopping" if self._stop.is_set() else "still starting"))
            return
        async with self._reload_lock:  # two quick SIGHUPs: the second reload waits for the first
            systemd.reloading()
            refused: str | None = None
            try:
                refused = await self._reload()
            except Exception as e:  # an adapter that cannot be built: the running config stays
                refused = logs.redact(f"{type(e).__name__}: {e}")
            if refused:
                log.error("reload refused: keeping the running config", error=refused)
            depths: dict[str, int] = {}
            try:
                await self._record_reload(refused)
                depths = await self.queue.depths()
            except REDIS_UNAVAILABLE:
                pass
            systemd.notify("READY=1", f"STATUS={self.pool.status_line(depths)}")

    def _reload_field(self) -> str:
        return f"{self.host}:{os.getpid()}:{self.identity['instance']}"

    async def _record_reload(self, refused: str | None) -> None:
        """`litbotd status` shows a refused reload and why (its operator may not see the log)."""
        key, field = self.queue.key("reload"), self._reload_field()
        if refused is None:
            await self.redis.hdel(key, field)
        else:
            await self.redis.hset(key, field, json.dumps(
                {"host": self.host, "pid": os.getpid(), "at": time.time(), "error": refused,
                 "config": self.config_path or self.cfg.source}))

    async def _reload(self) -> str | None:
        """Apply the new config; the reason when it is refused."""
        try:
            new = await asyncio.to_thread(self._load_config)
        except ConfigError as e:
            return logs.redact(str(e))
        old = self.cfg
        fixed = [k for k in ("redis", "server") if getattr(old, k) != getattr(new, k)]
        if fixed:
            log.warning("reload: [redis] and [server] changes need a restart; keeping the old values",
                        sections=",".join(fixed))
            new = dataclasses.replace(new, redis=old.redis, server=old.server)
        changed = [f.name for f in dataclasses.fields(Config)
                   if f.name != "source" and getattr(old, f.name) != getattr(new, f.name)]
        # Everything that can fail happens before the first change.
        was = self.ctx
        try:  # the secrets file, re-read: a bad one is refused like a bad config, the old store kept
            store = (await asyncio.to_thread(self._secrets, new)).succeeding(was.secrets)
        except jobsecrets.SecretsError as e:
            return f"secrets.file: {e}"
        backend = was.backend_impl
        if new.workers.count > 0 and new.jobs != self._backend_jobs:
            backend = make_backend(new.jobs, configfile.secret_paths(new))
        github = self._github(new) if new.github != old.github else was.github_app
        defaults = await self._defaults(new, backend)
        logs.setup(new.log.level, new.log.format, config_mod.secrets_of(new))
        logs.set_job_secrets(store.masked_values())
        # The prices read stay with their backend: a new backend's are read afresh (the gate reads them).
        prices = was.prices if backend is was.backend_impl else None
        self.current.ctx = self._context(new, github, backend, defaults, store, prices)  # the swap: one assignment
        if backend is not was.backend_impl:
            self._backend_jobs = new.jobs
            if was.backend_impl is not None:
                await was.backend_impl.close()  # jobs keep running; only threads and connections go
        if github is not was.github_app and was.github_app is not None:
            await was.github_app.close()
        if self._stop.is_set():
            return None  # SIGTERM arrived while reloading: a draining daemon starts no workers
        self.pool.resize(new.workers.count)
        log.info("reloaded", changed=",".join(changed) or "nothing", workers=new.workers.count,
                 secrets=f"{len(store.orgs)} orgs, {len(store.repos)} repos")
        return None


def run(cfg: Config, registry: Registry, config_path: str | None = None) -> int:
    """Entry point of `litbotd run`: uvloop, then the daemon until SIGTERM."""
    import uvloop

    if problems := preflight.problems(cfg):
        raise StartError(problems[0])
    logs.setup(cfg.log.level, cfg.log.format, config_mod.secrets_of(cfg))
    # A watchdog kill (SIGABRT) then leaves the Python stack of the blocked code in the journal.
    faulthandler.enable()

    async def main() -> int:
        return await Daemon(cfg, registry, config_path).run()

    return uvloop.run(main())

