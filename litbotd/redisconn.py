"""Reaching Redis: the one client per process, following Sentinel, and what counts as an outage.

Every Redis adapter (queue, runstate, ghstate, locks) and every loop imports REDIS_UNAVAILABLE
from here; the pool asks `Primary.moved` each heartbeat to follow a Sentinel failover.
"""
from __future__ import annotations

import urllib.parse
from typing import Any, Sequence

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.sentinel import Sentinel

from . import logs
from .config import RedisConfig

log = logs.get("litbotd.redis")

# The one answer to "is Redis unavailable right now?" for every loop, worker and command: any error
# Redis can give — a dropped connection, a timeout, and the server's own refusals during trouble
# (OOM at maxmemory, READONLY while a replica is promoted, LOADING, MASTERDOWN, BUSY) — is an
# outage to wait out, never a reason for a worker or loop to end.
REDIS_UNAVAILABLE: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError)


def connect(url: str, sentinels: Sequence[str] = (), master: str = "mymaster") -> aioredis.Redis:
    """One client per process; redis-py pools the connections (each blocked BLMOVE holds one).
    With `sentinels`, every new connection asks Sentinel for the current primary, and a connection
    to a demoted primary is dropped (redis-py turns its READONLY into a ConnectionError), so the
    next attempt follows a failover. url's username, password and db still apply."""
    opts: dict[str, Any] = dict(decode_responses=True, socket_connect_timeout=5, socket_keepalive=True,
                                health_check_interval=30)
    if not sentinels:
        return aioredis.Redis.from_url(url, **opts)
    u = urllib.parse.urlsplit(url)
    db = u.path.strip("/")
    nodes = [(h, int(p)) for h, _, p in (a.rpartition(":") for a in sentinels)]
    sentinel = Sentinel(nodes, sentinel_kwargs={"socket_connect_timeout": 2, "socket_timeout": 2}, **opts)
    return sentinel.master_for(master, db=int(db) if db.isdigit() else 0,
                              username=urllib.parse.unquote(u.username) if u.username else None,
                              password=urllib.parse.unquote(u.password) if u.password else None, **opts)


def connect_config(rcfg: RedisConfig) -> aioredis.Redis:
    """connect() for a [redis] section."""
    return connect(rcfg.url, rcfg.sentinels, rcfg.sentinel_master)


class Primary:
    """Where the Sentinel primary was when last asked."""

    def __init__(self) -> None:
        self.address: Any = None

    async def moved(self, redis: aioredis.Redis) -> bool:
        """With Sentinel, ask for the primary. When it moved, drop every connection (the demoted
        primary may accept writes until Sentinel reconfigures it, and they would be lost) and
        answer True: the caller's workers look in their processing lists on the new primary."""
        get = getattr(redis.connection_pool, "get_master_address", None)  # a SentinelConnectionPool's
        if get is None:
            return False
        addr = await get()
        moved = self.address is not None and addr != self.address
        if moved:
            log.warning("redis primary moved (Sentinel failover): reconnecting",
                        old=f"{self.address[0]}:{self.address[1]}", new=f"{addr[0]}:{addr[1]}")
            await redis.connection_pool.disconnect(inuse_connections=True)
        self.address = addr
        return moved
