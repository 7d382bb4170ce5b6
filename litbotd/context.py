"""What a handler receives: the config in force and the adapters built from it, frozen.

The daemon builds one `Context` at start and a whole new one on SIGHUP, and puts it in the
`Current` holder; the pool and its workers read `Current.ctx` once per task, so a task runs from
start to end against one config. `Liveness` is the other shared thing: the pool's own state
(draining, loop lag, its health check), which the web app reads.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import redis.asyncio as aioredis

from . import jobsecrets, masking
from .backends.base import Backend
from .config import Config
from .github import GitHubApp
from .logstore import Store
from .queue import Queue
from .runlink import Links
from .runstate import RunState
from .spend import PriceBook
from .tasks import Permanent
from .workflows import Defaults


@dataclass(frozen=True)
class Context:
    config: Config
    queue: Queue
    runs: RunState
    defaults: Defaults                    # the planner's defaults for this config (workflows.plan)
    github_app: GitHubApp | None = None   # None: no App credentials configured
    backend_impl: Backend | None = None   # None: this daemon runs no workers
    links: Links | None = None            # run pages' URLs (server.public_url set), for details_url
    page_store: Store | None = None       # where finished runs' pages are kept (with links)
    secrets: jobsecrets.Store = jobsecrets.EMPTY  # the job secrets store (values in memory only)
    # The backend's machine prices (SPEC §11), refreshed in place by the pool's hourly loop; the
    # daemon hands the same book to every context it builds, so a reload keeps what was read.
    prices: PriceBook = field(default_factory=PriceBook)

    @classmethod
    def of(cls, config: Config, queue: Queue, github: GitHubApp | None = None, backend: Backend | None = None,
           defaults: Defaults | None = None, links: Links | None = None,
           page_store: Store | None = None, secrets: jobsecrets.Store = jobsecrets.EMPTY,
           prices: PriceBook | None = None) -> "Context":
        return cls(config=config, queue=queue, runs=RunState(queue), github_app=github, backend_impl=backend,
                   defaults=defaults or Defaults.from_config(config.jobs), links=links, page_store=page_store,
                   secrets=secrets, prices=prices or PriceBook())

    def page_url(self, repo: str, sha: str, run: str, attempt: int) -> str | None:
        """The run's page, for its check run's details_url; None without server.public_url."""
        return self.links.url(repo, sha, run, attempt) if self.links is not None else None

    @property
    def masker(self) -> masking.Masker:
        """Masks every job secret value in text bound for a log, GitHub or a page (SPEC §10)."""
        return masking.masker_for(self.secrets.masked_values())

    @property
    def redis(self) -> aioredis.Redis:
        return self.queue.redis

    @property
    def github(self) -> GitHubApp:
        """The GitHub App client; a Permanent error (dead letter, no retries) when not configured."""
        if self.github_app is None:
            raise Permanent("GitHub App credentials are not configured (github.app_id and the private key)")
        return self.github_app

    @property
    def backend(self) -> Backend:
        if self.backend_impl is None:
            raise Permanent("no job backend: this daemon runs no workers (workers.count = 0)")
        return self.backend_impl


class Current:
    """The one holder of the context in force; the daemon replaces `ctx` whole on SIGHUP."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx


@dataclass
class Liveness:
    """The pool's liveness, read by /healthz: owned and written by the pool (and the daemon's drain)."""
    draining: bool = False            # SIGTERM received: webhooks get 503, workers stop taking
    loop_lag: float = 0.0             # seconds, measured by the pool's heartbeat
    problem: Callable[[], str | None] = lambda: None  # workers or loops down for too long

    def health(self) -> str | None:
        return self.problem()
