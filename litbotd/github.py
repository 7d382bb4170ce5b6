"""The GitHub App client: App JWT, installation tokens, retries, rate limits, pacing (SPEC §5).

A thin I/O adapter. It speaks HTTP with aiohttp directly and borrows gidgethub's sans-I/O pieces
(`gidgethub.apps.get_jwt` for the App JWT, `gidgethub.sansio.create_headers` for the request
headers). gidgethub's own `GitHubAPI` is not used: it raises on the first 403/429/5xx and has no
hook for waiting and retrying. What a response means is decided by one pure function, `classify`
(Ok, Wait(seconds), Reauthenticate or Fail, like gidgethub's `sansio.decipher_response`), and
`request` is the short loop that acts on it: pace, send, classify, wait or re-authenticate.

- Installation tokens are cached in the process and in Redis (ghstate.TokenCache,
  `<queue>:token:<id>`), until five minutes before they expire, so that several daemons share one
  token. The token is minted under a Redis claim (locks.FencedLock): concurrent callers mint once,
  the others wait for the cached copy. In Redis the token is sealed (AES-GCM, key derived from the
  App private key: sealed.py).
- 5xx, connection errors and timeouts are retried with exponential backoff and jitter
  (`MAX_ATTEMPTS` in all). 403/429 rate limits wait as GitHub says: `Retry-After`, else until
  `x-ratelimit-reset` when `x-ratelimit-remaining` is 0, else (secondary limit) at least a minute,
  doubling; no single wait is longer than `MAX_WAIT`.
- Content-creating calls (POST/PATCH/PUT/DELETE with an installation token) pass a sliding-window
  pacer kept in Redis (ghstate.Pacer, `<queue>:pace:<id>`), shared by every daemon: at most `PACE_PER_MINUTE` in
  any 60 s and `PACE_PER_HOUR` in any hour per installation. A burst below the budget goes out at
  once; a call over it waits until the oldest call in the window leaves it.
- Tokens, JWTs and keys never reach a URL, a log line or an exception message.
"""
from __future__ import annotations

import asyncio
import json
import random
import re
import time
import urllib.parse
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, AsyncGenerator, Awaitable, Callable

import aiohttp
import redis.asyncio as aioredis
from gidgethub import apps, sansio

from . import logs, metrics
from .backoff import backoff
from .config import GithubConfig
from .ghstate import Pacer, TokenCache

log = logs.get("litbotd.github")

USER_AGENT = "litbotd"
API_VERSION = "2022-11-28"
TIMEOUT = aiohttp.ClientTimeout(total=120, connect=10, sock_read=60)
MAX_ATTEMPTS = 5          # per call, for 5xx/connection errors and, separately, for rate-limit waits
BACKOFF_BASE = 1.0        # seconds; doubles per attempt, with jitter
BACKOFF_MAX = 30.0
MAX_WAIT = 15 * 60.0      # the longest single wait for a rate limit
SECONDARY_WAIT = 60.0     # GitHub: without Retry-After, wait at least a minute
PACE_PER_MINUTE = 80
PACE_PER_HOUR = 500
CONTENT_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})
# Results first (SPEC §5): the share of the pacing budget a write of each priority may fill. A
# lower-priority write finds the window full earlier, so what is left stays free for the writes
# above it: a run's conclusion, then check-run creation, then in_progress, then the PR comment.
PRIORITY_SHARE = {"conclusion": 1.0, "create": 0.9, "progress": 0.75, "comment": 0.5}

_NEXT_RE = re.compile(r'<([^>]+)>\s*;\s*rel="next"')


class GitHubError(Exception):
    """A GitHub API call that failed for good. `status` is the HTTP status, or 0 when no response
    came (connection error, timeout). The message never holds a token, JWT or key."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = logs.redact(message)
        super().__init__(self.message)


class Gone(Exception):
    """The installation or repository no longer exists (GitHub answered 404): retrying cannot help.
    Not a GitHubError, so that no `404 means "no such file"` handler mistakes it for one."""


class PaceDeferred(Exception):
    """A low-priority write the caller asked not to wait for: the pacing budget is spent for its
    priority, or (`limited`) GitHub answered with a rate limit. `wait` is how long until it would
    fit. The caller skips it or comes back later."""

    def __init__(self, wait: float, limited: bool = False) -> None:
        self.wait = wait
        self.limited = limited
        super().__init__(f"{'rate limited' if limited else 'pacing budget spent'} for now (fits in {wait:.1f}s)")


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _error_text(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("message", ""))
    if isinstance(body, bytes):
        return body[:200].decode("utf-8", "replace")
    return str(body)[:200]


def _decode(content: bytes, ctype: str, raw: bool) -> Any:
    """JSON parsed, text as str, anything else (tarballs, raw file contents) as bytes."""
    if not raw and "json" in ctype:
        try:
            return json.loads(content) if content else None
        except ValueError:
            pass
    if not raw and ctype.startswith("text/"):
        return content.decode("utf-8", "replace")
    return content


# -- what a response means: pure (gidgethub's sansio.decipher_response, with waiting) -----------------
@dataclass(frozen=True)
class Tries:
    """What one call has spent so far: classify's memory between two responses."""
    failures: int = 0          # 5xx answers and connection errors, each followed by a backoff
    limited: int = 0           # rate-limit waits
    can_reauth: bool = False   # an installation token that may be forgotten and minted again, once

    def after(self, verdict: Verdict) -> Tries:
        """The tries once `verdict` (a Wait or a Reauthenticate) has been acted on."""
        if isinstance(verdict, Wait):
            return replace(self, limited=self.limited + 1) if verdict.rate_limit else \
                replace(self, failures=self.failures + 1)
        if isinstance(verdict, Reauthenticate):
            return replace(self, can_reauth=False)
        return self


@dataclass(frozen=True)
class Ok:
    """A success (status < 400): the response is the answer."""


@dataclass(frozen=True)
class Wait:
    """Try again after `seconds`: GitHub was unreachable, failed (5xx) or rate-limited the call."""
    seconds: float
    why: str  # UNREACHABLE, SERVER_ERROR or RATE_LIMIT

    @property
    def rate_limit(self) -> bool:
        return self.why == RATE_LIMIT


@dataclass(frozen=True)
class Reauthenticate:
    """401 with a cached installation token: forget it, mint a new one, try again."""


@dataclass(frozen=True)
class Fail:
    """Give up: `reason` follows "METHOD path: " in the GitHubError."""
    reason: str


Verdict = Ok | Wait | Reauthenticate | Fail
UNREACHABLE, SERVER_ERROR, RATE_LIMIT = "unreachable", "server error", "rate limit"


def rate_limit_wait(status: int, headers: dict[str, str], body: Any, limited: int, now: float) -> float | None:
    """Seconds GitHub asks us to wait before retrying rate-limit number `limited` (1-based), or
    None if the response is not a rate limit."""
    if status not in (403, 429):
        return None
    if "retry-after" in headers:
        try:
            return float(headers["retry-after"])
        except ValueError:
            pass
    if headers.get("x-ratelimit-remaining") == "0" and "x-ratelimit-reset" in headers:
        return max(1.0, float(headers["x-ratelimit-reset"]) - now + 1)
    if status == 429 or "secondary rate limit" in _error_text(body).lower():
        return backoff(limited, SECONDARY_WAIT, MAX_WAIT, jitter=False)  # at least a minute, doubling
    return None  # a plain 403: a permission problem, not a limit


def classify(status: int, headers: dict[str, str], body: Any, attempt: Tries, now: float,
             rng: random.Random | None = None) -> Verdict:
    """What to do with one response to a call that has spent `attempt`. `status` 0: no response
    came (connection error, timeout), and `body` names the error. Pure: `now` is the clock's time,
    `rng` the backoff's jitter."""
    if 0 < status < 400:
        return Ok()
    told = rate_limit_wait(status, headers, body, attempt.limited + 1, now)
    if told is not None and attempt.limited + 1 < MAX_ATTEMPTS:
        return Wait(min(told, MAX_WAIT), RATE_LIMIT)
    if status == 401 and attempt.can_reauth:
        return Reauthenticate()
    if status == 0 or status >= 500:
        if attempt.failures + 1 < MAX_ATTEMPTS:
            return Wait(backoff(attempt.failures + 1, BACKOFF_BASE, BACKOFF_MAX, rng),
                        SERVER_ERROR if status else UNREACHABLE)
        if status == 0:
            return Fail(f"{body} after {attempt.failures + 1} attempts")
    return Fail(f"{status} {_error_text(body)}".rstrip())


class GitHubApp:
    def __init__(self, config: GithubConfig, tokens: TokenCache, pacer: Pacer, *,
                 sleep: Callable[[float], Awaitable[Any]] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        """`config` is the [github] section this client was built for (a reload that changes it
        builds a new client); `tokens` and `pacer` hold the state shared with other daemons.
        `sleep` and `clock` are injectable so tests can check waits without waiting."""
        self.config = config
        self.tokens = tokens
        self.pacer = pacer
        self._sleep = sleep or asyncio.sleep
        self._clock = clock or time.time
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def on_redis(cls, config: GithubConfig, redis: aioredis.Redis, prefix: str, *,
                 sleep: Callable[[float], Awaitable[Any]] | None = None,
                 clock: Callable[[], float] | None = None) -> "GitHubApp":
        """The client whose token cache and pacer live in Redis under `prefix` (the queue name)."""
        clock = clock or time.time
        return cls(config, TokenCache(redis, prefix, config.private_key, clock), Pacer(redis, prefix),
                   sleep=sleep, clock=clock)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=TIMEOUT)
        return self._session

    # -- authentication ---------------------------------------------------------------------------
    def jwt(self) -> str:
        """The App JWT (RS256; iat 60 s in the past, exp 10 minutes after iat)."""
        gh = self.config
        return apps.get_jwt(app_id=str(gh.app_id), private_key=gh.private_key)

    async def installation_token(self, installation_id: int) -> str:
        """A token for the installation, shared through Redis until 5 minutes before it expires."""
        while (token := await self.tokens.get(installation_id)) is None:
            async with self.tokens.minting(installation_id).held() as fence:
                if fence is None:
                    # Someone else is minting: poll for their token (their claim ends if they die).
                    await asyncio.sleep(0.05)
                    continue
                # Another daemon may have stored one between our read and our claim.
                if (token := await self.tokens.get(installation_id)) is None:
                    token, expires = await self._mint(installation_id, None)
                    await self.tokens.put(installation_id, token, expires)
                    log.info("minted an installation token", installation=installation_id)
                return token
        return token

    async def scoped_token(self, installation_id: int, repo: str) -> str:
        """A fresh token for one repository with contents:read only, for a job (SPEC §4). Not cached."""
        token, _ = await self._mint(installation_id, {"repositories": [repo.split("/")[-1]],
                                                      "permissions": {"contents": "read"}})
        return token

    async def _mint(self, installation_id: int, scope: dict[str, Any] | None) -> tuple[str, float]:
        try:
            body = await self.post(f"/app/installations/{installation_id}/access_tokens", None, data=scope)
        except GitHubError as e:
            if e.status == 404:
                raise Gone(f"installation {installation_id} no longer exists (the App was uninstalled)") from None
            raise
        return body["token"], _epoch(body["expires_at"])

    async def repository_gone(self, repo_path: str) -> bool:
        """After an unexpected 404 under a repository: is the repository itself gone, or the App
        no longer installed on it? Asked as the App, so a missing installation token can't hide it."""
        try:
            await self.get(f"{repo_path}/installation", None)
        except GitHubError as e:
            if e.status == 404:
                return True
            raise
        return False

    # -- requests ---------------------------------------------------------------------------------
    def _url(self, path: str) -> str:
        base = self.config.api_url.rstrip("/")
        if not path.startswith(("http://", "https://")):
            return base + "/" + path.lstrip("/")
        # Absolute URLs come from Link headers; a token must never go to another host.
        if urllib.parse.urlsplit(path)[:2] != urllib.parse.urlsplit(base)[:2]:
            raise GitHubError(0, f"refusing to call {urllib.parse.urlsplit(path).netloc}: not the GitHub API host")
        return path

    async def _wait_for_pace(self, installation_id: int, priority: str, defer: bool) -> None:
        share = PRIORITY_SHARE[priority]
        per_minute, per_hour = max(1, int(PACE_PER_MINUTE * share)), max(1, int(PACE_PER_HOUR * share))
        while True:
            wait = await self.pacer.admit(installation_id, self._clock(), per_minute, per_hour)
            if wait is None:
                metrics.GITHUB_WRITES.labels(priority, "sent").inc()
                return
            if defer:
                metrics.GITHUB_WRITES.labels(priority, "deferred").inc()
                raise PaceDeferred(wait)
            log.info("pacing content-creating GitHub calls", installation=installation_id, wait=round(wait, 2),
                     priority=priority)
            metrics.PACE_WAIT.observe(min(wait, MAX_WAIT))
            await self._sleep(min(wait, MAX_WAIT))

    async def request(self, method: str, path: str, installation_id: int | None, *, data: Any = None,
                      params: dict | None = None, accept: str = "application/vnd.github+json",
                      priority: str = "conclusion", defer: bool = False) -> tuple[int, dict[str, str], Any]:
        """One API call; `installation_id` None authenticates as the App (JWT). Returns
        (status, lower-cased headers, body): parsed JSON, else bytes for the raw media type,
        else text. Raises GitHubError for a status ≥ 400 once retries are spent. A content-creating
        call is paced by `priority` (PRIORITY_SHARE); with `defer`, PaceDeferred instead of waiting
        for the pacer or for a rate limit."""
        method = method.upper()
        url = self._url(path)
        where = urllib.parse.urlsplit(url).path  # for messages: never the query
        tries = Tries(can_reauth=installation_id is not None)  # a JWT is made afresh for every call
        while True:
            if method in CONTENT_METHODS and installation_id is not None:
                await self._wait_for_pace(installation_id, priority, defer)
            try:
                status, headers, body = await self._send(method, url, installation_id, data, params, accept)
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                status, headers, body = 0, {}, type(e).__name__  # no response: classify reads the error's name
            verdict = classify(status, headers, body, tries, self._clock())
            if isinstance(verdict, Ok):
                return status, headers, body
            if isinstance(verdict, Fail):
                raise GitHubError(status, f"{method} {where}: {verdict.reason}")
            if isinstance(verdict, Reauthenticate):  # a revoked or stale cached token: mint a new one
                assert installation_id is not None  # classify answers so only while tries.can_reauth
                await self.tokens.forget(installation_id)
            elif verdict.rate_limit and defer:  # a low-priority write does not sit out a rate limit
                log.info("GitHub rate limit: low-priority write postponed", method=method, path=where,
                         status=status, wait=round(verdict.seconds, 2))
                raise PaceDeferred(verdict.seconds, limited=True)
            else:
                seen = {"status": status} if status else {"error": body}
                spent = {"remaining": headers.get("x-ratelimit-remaining")} if verdict.rate_limit else \
                    {"attempt": tries.failures + 1}
                log.warning(f"GitHub {verdict.why}, waiting", method=method, path=where, **seen, **spent,
                            wait=round(verdict.seconds, 2))
                await self._sleep(verdict.seconds)
            tries = tries.after(verdict)

    async def _send(self, method: str, url: str, installation_id: int | None, data: Any, params: dict | None,
                    accept: str) -> tuple[int, dict[str, str], Any]:
        """One HTTP exchange: (status, lower-cased headers, decoded body)."""
        if installation_id is None:
            headers = sansio.create_headers(USER_AGENT, accept=accept, jwt=self.jwt())
        else:
            headers = sansio.create_headers(USER_AGENT, accept=accept,
                                            oauth_token=await self.installation_token(installation_id))
        headers["x-github-api-version"] = API_VERSION
        kw: dict[str, Any] = {"headers": headers, "params": params}
        if isinstance(data, (bytes, str)):
            kw["data"] = data
        elif data is not None:
            kw["json"] = data
        async with self._http().request(method, url, **kw) as resp:
            status = resp.status
            rheaders = {k.lower(): v for k, v in resp.headers.items()}
            content = await resp.read()
            ctype = resp.content_type
        if "x-ratelimit-remaining" in rheaders:
            metrics.RATELIMIT_REMAINING.set(int(rheaders["x-ratelimit-remaining"]))
        return status, rheaders, _decode(content, ctype, ".raw" in accept and status < 400)

    async def get(self, path: str, installation_id: int | None, **kw: Any) -> Any:
        return (await self.request("GET", path, installation_id, **kw))[2]

    async def post(self, path: str, installation_id: int | None, **kw: Any) -> Any:
        return (await self.request("POST", path, installation_id, **kw))[2]

    async def patch(self, path: str, installation_id: int | None, **kw: Any) -> Any:
        return (await self.request("PATCH", path, installation_id, **kw))[2]

    async def paginate(self, path: str, installation_id: int | None, params: dict | None = None) -> AsyncGenerator[Any, None]:
        """Every item of a listing, following Link rel="next" (page numbers or cursors alike).
        A listing wrapped in an object (`{"total_count": n, "check_runs": [...]}`) yields the list's items."""
        url: str | None = path
        while url is not None:
            _, headers, body = await self.request("GET", url, installation_id, params=params)
            if isinstance(body, dict):
                body = next((v for v in body.values() if isinstance(v, list)), [])
            for item in body:
                yield item
            m = _NEXT_RE.search(headers.get("link", ""))
            url, params = (m.group(1) if m else None), None  # the next link carries the query

