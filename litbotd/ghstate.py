"""What the GitHub client keeps in Redis, shared by every daemon (SPEC §5): installation tokens and
the pacing window of content-creating calls. Two small objects, each with its own keys:

    <prefix>:token:<installation>        the installation token, sealed (sealed.py), until it is
                                         TOKEN_MARGIN from expiry
    <prefix>:token:<installation>:lock   who mints it now (locks.FencedLock): the others wait
    <prefix>:pace:<installation>         sorted set: the time of each content-creating call
"""
from __future__ import annotations

import json
import secrets
import time
from typing import Callable

import redis.asyncio as aioredis

from .locks import FencedLock
from .sealed import seal, unseal

TOKEN_MARGIN = 5 * 60.0   # a token this close to expiry is replaced
TOKEN_LOCK_TTL = 10.0     # seconds a minting daemon may go silent before another one mints

# KEYS: the installation's window (sorted set, score = time of a call).
# ARGV: now, now - 60, now - 3600 (computed by the client: Lua's tostring keeps too few digits for
# epoch seconds), per minute, per hour, a unique member. Returns "ok" when the call may go (and
# records it), else the seconds to wait, rounded up to the millisecond, as a string (a Lua number
# would reach the client truncated to an integer).
_PACE = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local wait = 0
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[5]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  wait = tonumber(oldest[2]) + 3600 - now
else
  local since = '(' .. ARGV[2]
  if redis.call('ZCOUNT', KEYS[1], since, '+inf') >= tonumber(ARGV[4]) then
    local first = redis.call('ZRANGEBYSCORE', KEYS[1], since, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    wait = tonumber(first[2]) + 60 - now
  else
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[6])
    redis.call('EXPIRE', KEYS[1], 3601)
    return 'ok'
  end
end
return string.format('%.3f', math.max(math.ceil(wait * 1000) / 1000, 0.001))
"""


class TokenCache:
    """Installation tokens: in this process, and sealed in Redis for the other daemons."""

    def __init__(self, redis: aioredis.Redis, prefix: str, private_key: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.prefix = prefix
        self._pem = private_key  # seals the token: a Redis reader gets nothing usable
        self._clock = clock
        self._local: dict[int, tuple[str, float]] = {}

    def key(self, installation_id: int) -> str:
        return f"{self.prefix}:token:{installation_id}"

    def minting(self, installation_id: int) -> FencedLock:
        """The claim to mint this installation's token: one daemon mints, the others wait for it."""
        return FencedLock(self.redis, f"{self.key(installation_id)}:lock", TOKEN_LOCK_TTL)

    async def get(self, installation_id: int) -> str | None:
        """A token with more than TOKEN_MARGIN left, from this process or from Redis; else None."""
        cached = self._local.get(installation_id)
        if cached and cached[1] - TOKEN_MARGIN > self._clock():
            return cached[0]
        key = self.key(installation_id)
        raw = await self.redis.get(key)
        if raw is None:
            return None
        data = json.loads(raw)
        if data["expires_at"] - TOKEN_MARGIN <= self._clock():
            return None
        # None when sealed under another App key (rotated) or in the old clear form: mint anew
        token = unseal(self._pem, str(data.get("sealed", "")), key)
        if token is not None:
            self._local[installation_id] = (token, data["expires_at"])
        return token

    async def put(self, installation_id: int, token: str, expires_at: float) -> None:
        key = self.key(installation_id)
        ttl = max(1, int(expires_at - TOKEN_MARGIN - self._clock()))
        await self.redis.set(key, json.dumps({"sealed": seal(self._pem, token, key), "expires_at": expires_at}), ex=ttl)
        self._local[installation_id] = (token, expires_at)

    async def forget(self, installation_id: int) -> None:
        """A token GitHub refused (revoked, stale): gone here and for the other daemons."""
        self._local.pop(installation_id, None)
        await self.redis.delete(self.key(installation_id))


class Pacer:
    """A sliding window per installation, shared by every daemon: at most `per_minute` calls in any
    60 s and `per_hour` in any hour."""

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self.prefix = prefix
        self._pace = redis.register_script(_PACE)

    def key(self, installation_id: int) -> str:
        return f"{self.prefix}:pace:{installation_id}"

    async def admit(self, installation_id: int, now: float, per_minute: int, per_hour: int) -> float | None:
        """None when the call may go now (it is counted), else the seconds until it would fit."""
        verdict = await self._pace(keys=[self.key(installation_id)],
                                   args=[repr(now), repr(now - 60), repr(now - 3600), per_minute, per_hour,
                                         secrets.token_hex(8)])
        return None if verdict == "ok" else float(verdict)
