"""What handlers and the HTTP layer share in one process: the config in force and the adapters."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import redis.asyncio as aioredis

from .config import Config
from .queue import Queue

if TYPE_CHECKING:
    from .backends.base import Backend
    from .github import GitHubApp


@dataclass
class Services:
    config: Config                    # replaced on SIGHUP; read it afresh, don't keep a copy
    redis: aioredis.Redis
    queue: Queue
    github: "GitHubApp | None" = None
    backend: "Backend | None" = None
    draining: bool = False            # SIGTERM received: webhooks get 503, workers stop taking
    loop_lag: float = 0.0             # seconds, measured by the daemon's heartbeat
    health: Callable[[], str | None] | None = None  # the worker pool's liveness problem, if any
