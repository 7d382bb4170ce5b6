"""A fenced claim in Redis: one holder at a time, kept alive while it works, and a fencing number
that lets the holder record its result only if nobody has taken the claim since.

    <key>        the claim: SET NX PX ttl, value = the holder's fencing number
    <key>:fence  a counter, incremented by every successful claim

The holder renews the claim every ttl/3 from the event loop for as long as it works, however long
GitHub takes to answer; the time to live only matters when the holder's process is gone. Anyone who
finds the claim taken does not wait for it: it comes back later (nothing blocks on a lock).
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator

import redis.asyncio as aioredis

from . import logs
from .redisconn import REDIS_UNAVAILABLE

log = logs.get("litbotd.locks")

# KEYS: claim, fence. ARGV: ttl ms. The new fencing number, or 0 when the claim is taken.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local n = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], n, 'PX', ARGV[1])
return n
"""
# KEYS: claim. ARGV: fencing number, ttl ms.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: fence, target hash. ARGV: fencing number, ttl s, field, value, ... Written only while no
# later claim exists (the fence still holds our number), in the same step as the check.
_COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""


class FencedLock:
    def __init__(self, redis: aioredis.Redis, key: str, ttl: float) -> None:
        self.redis = redis
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._commit = redis.register_script(_COMMIT)
        self.key = key
        self.fence_key = f"{key}:fence"
        self.ttl_ms = max(1, int(ttl * 1000))

    async def acquire(self) -> int | None:
        """The claim's fencing number, or None when someone else holds it."""
        n = int(await self._acquire(keys=[self.key, self.fence_key], args=[self.ttl_ms]))
        return n or None

    async def renew(self, fence: int) -> bool:
        return bool(await self._renew(keys=[self.key], args=[fence, self.ttl_ms]))

    async def release(self, fence: int) -> None:
        await self._release(keys=[self.key], args=[fence])

    async def commit(self, fence: int, hash_key: str, ttl: int, **fields: Any) -> bool:
        """Set `fields` in `hash_key` if no later claim was made; False (nothing written) otherwise."""
        args: list[Any] = [fence, ttl]
        for k, v in fields.items():
            args += [k, v]
        return bool(await self._commit(keys=[self.fence_key, hash_key], args=args))

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[int | None]:
        """Claim, keep the claim alive while the body runs, release it. Yields None (and holds
        nothing) when the claim is taken."""
        fence = await self.acquire()
        if fence is None:
            yield None
            return
        keeper = asyncio.create_task(self._keep(fence))
        try:
            yield fence
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            await self.release(fence)

    async def _keep(self, fence: int) -> None:
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            try:
                if not await self.renew(fence):
                    log.warning("claim lost while held (it expired); the fence refuses our result", claim=self.key)
                    return
            except REDIS_UNAVAILABLE as e:  # Redis briefly away: try again at the next beat
                log.warning("could not renew a claim", claim=self.key, error=type(e).__name__)
