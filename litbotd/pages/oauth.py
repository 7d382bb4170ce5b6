"""GitHub sign-in for the run pages and the dashboard (SPEC §9, `server.auth = "github"`).

- The session is an encrypted, authenticated cookie (aiohttp-session's EncryptedCookieStorage,
  Fernet: AES + HMAC), `HttpOnly`, `SameSite=Lax`, `Secure` when `server.public_url` is https. Its
  key is derived from the App's private key (sealed.derive, its own `info`), so every daemon behind
  one public_url reads the others' cookies; without an App key, from the admin token; else random
  per process (sessions then end with the process).
- The web flow: `/auth/login?next=…` puts a random `state` in the session and sends the browser to
  GitHub's `/login/oauth/authorize`; `/auth/callback` checks the `state` (once, constant time),
  trades the code for a user token with the App's client id and secret, asks `GET /user` who it
  is, and keeps only the login in a fresh session. The user token is dropped at once: nothing is
  done as the user. The client secret and the token never reach a log line, a page or Redis.
- Who may read a private repository's run page is asked through the installation (the collaborator
  permission API) and cached for PERMISSION_TTL (5 minutes) in Redis, so that several daemons ask
  GitHub once per user and repository, and a revoked permission is honoured within 5 minutes
  everywhere. Whether the repository is public is cached the same way: public ones open for anyone.
"""
from __future__ import annotations

import json
import os
import time
import urllib.parse
from typing import Any, Callable, Protocol

import aiohttp
import aiohttp_session
from aiohttp import web
from aiohttp_session.cookie_storage import EncryptedCookieStorage

from .. import checks, logs, sealed
from ..config import Config
from ..github import USER_AGENT, GitHubApp, GitHubError
from ..queue import Queue
from . import authz, render

log = logs.get("litbotd.pages")

SESSION_COOKIE = "litbotd_session"
SESSION_INFO = b"litbotd session cookies v1"
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=20, connect=10)
ACCESS_KEY: web.AppKey["Access"] = web.AppKey("litbotd_access")
_SESSIONS: web.AppKey[bool] = web.AppKey("litbotd_sessions")
CTX_KEY: web.AppKey["CtxFn"] = web.AppKey("litbotd_pages_ctx")


class Ctx(Protocol):
    """What these pages read of the context in force (context.Context has all of it)."""
    @property
    def config(self) -> Config: ...
    @property
    def queue(self) -> Queue: ...
    @property
    def github_app(self) -> GitHubApp | None: ...


CtxFn = Callable[[], Ctx]


# -- sessions --------------------------------------------------------------------------------------
def session_key(cfg: Config) -> bytes:
    if cfg.github.private_key:
        return sealed.derive(cfg.github.private_key, SESSION_INFO)
    if cfg.server.admin_token:
        import hashlib
        return hashlib.sha256(SESSION_INFO + b"\0" + cfg.server.admin_token.encode()).digest()
    return os.urandom(32)


def setup_sessions(app: web.Application, cfg: Config) -> None:
    """The session middleware, once per web app (the key and the cookie flags are fixed at start)."""
    if app.get(_SESSIONS):
        return
    app[_SESSIONS] = True
    aiohttp_session.setup(app, EncryptedCookieStorage(
        session_key(cfg), cookie_name=SESSION_COOKIE, httponly=True, secure=authz.cookie_secure(cfg.server.public_url),
        samesite="Lax", max_age=authz.SESSION_MAX_AGE, path="/"))


async def signed_in(request: web.Request) -> str | None:
    """The GitHub login of this browser's session, or None."""
    session = await aiohttp_session.get_session(request)
    login = session.get("login")
    return login if isinstance(login, str) and authz.LOGIN_RE.match(login) else None


async def csrf_token(request: web.Request) -> str:
    """This session's CSRF token (made on first use), for the forms of the page being rendered."""
    session = await aiohttp_session.get_session(request)
    token = session.get("csrf")
    if not isinstance(token, str) or not token:
        token = authz.new_token()
        session["csrf"] = token
    return token


async def check_csrf(request: web.Request, given: str | None) -> bool:
    session = await aiohttp_session.get_session(request)
    return authz.same_token(session.get("csrf"), given)


# -- the permission cache --------------------------------------------------------------------------
class Access:
    """Is a repository public; what permission has a user on it: asked through the App's
    installation, cached PERMISSION_TTL in Redis (`<queue>:access:repo:<repo>`,
    `<queue>:access:perm:<repo>:<login>`: JSON with the time it was asked)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.asked = 0   # calls to GitHub, for the tests

    @staticmethod
    def _key(q: Queue, *parts: str) -> str:
        return q.key("access", *parts)

    async def _cached(self, q: Queue, key: str) -> dict[str, Any] | None:
        raw = await q.redis.get(key)
        try:
            entry = json.loads(raw) if raw else None
        except ValueError:
            return None
        if not isinstance(entry, dict) or not authz.fresh(entry.get("at"), self.clock()):
            return None
        return entry

    async def _store(self, q: Queue, key: str, entry: dict[str, Any]) -> None:
        await q.redis.set(key, json.dumps({**entry, "at": self.clock()}), ex=int(authz.PERMISSION_TTL))

    async def repository(self, ctx: Ctx, repo: str) -> tuple[int, bool] | None:
        """(installation id, public) or None when the App is not installed on it."""
        key = self._key(ctx.queue, "repo", repo.lower())
        entry = await self._cached(ctx.queue, key)
        if entry is None:
            gh = ctx.github_app
            if gh is None:
                return None
            self.asked += 1
            got = await checks.repository_access(gh, repo)
            entry = {"inst": got[0], "public": got[1]} if got else {"inst": None, "public": False}
            await self._store(ctx.queue, key, entry)
        return None if entry.get("inst") is None else (int(entry["inst"]), bool(entry["public"]))

    async def permission(self, ctx: Ctx, repo: str, inst: int, login: str) -> str:
        key = self._key(ctx.queue, "perm", repo.lower(), login.lower())
        entry = await self._cached(ctx.queue, key)
        if entry is None:
            gh = ctx.github_app
            if gh is None:
                return "none"
            self.asked += 1
            perm, role = await checks.permission(gh, inst, repo, login)
            entry = {"perm": perm if authz.may_read(perm, role) else (perm or "none")}
            await self._store(ctx.queue, key, entry)
        return str(entry.get("perm") or "none")


async def github_can_view(request: web.Request, repo: str, ctx: Ctx | None = None) -> bool:
    """server.auth = "github": True to show a run page of `repo`; raises a redirect to sign in
    for a visitor without a session on a private repository; False (the same 404 as an unknown
    run) for a user without read permission or a repository the App is not installed on."""
    access = request.app[ACCESS_KEY]
    ctx = ctx or request.app[CTX_KEY]()
    try:
        facts = await access.repository(ctx, repo)
        if facts is None:
            return False
        inst, public = facts
        login = await signed_in(request)
        decision = authz.run_page_access(public, login, None)
        if decision == authz.ASK and login is not None:
            decision = authz.run_page_access(public, login, await access.permission(ctx, repo, inst, login))
    except GitHubError as e:
        log.warning("run page: cannot ask GitHub who may read it", repo=repo, status=e.status)
        raise web.HTTPServiceUnavailable(text="GitHub did not answer; try again in a minute.") from None
    if decision == authz.SIGN_IN:
        raise web.HTTPFound(login_path(request.path_qs))
    return decision == authz.OPEN


def login_path(next_path: str) -> str:
    return "/auth/login?" + urllib.parse.urlencode({"next": authz.safe_next(next_path)})


# -- the web flow ----------------------------------------------------------------------------------
def add_routes(app: web.Application, current: CtxFn, *, clock: Callable[[], float] = time.time) -> None:
    """/auth/login, /auth/callback, /auth/logout, and the session middleware."""
    cfg = current().config
    setup_sessions(app, cfg)
    render.setup(app)
    app[ACCESS_KEY] = Access(clock)
    app[CTX_KEY] = current

    async def login(request: web.Request) -> web.StreamResponse:
        ctx = current()
        c = ctx.config
        if c.server.auth != "github":
            return await render.message_page(request, 404, "Not found", "Nothing here.")
        state = authz.new_token(authz.STATE_BYTES)
        session = await aiohttp_session.new_session(request)   # a fresh session: no fixation
        session["oauth_state"] = state
        session["oauth_next"] = authz.safe_next(request.query.get("next"))
        url = authz.authorize_url(authz.web_url(c.github.api_url), c.github.client_id,
                                  authz.redirect_uri(c.server.public_url), state)
        raise web.HTTPFound(url)

    async def callback(request: web.Request) -> web.StreamResponse:
        ctx = current()
        c = ctx.config
        if c.server.auth != "github":
            return await render.message_page(request, 404, "Not found", "Nothing here.")
        session = await aiohttp_session.get_session(request)
        expected, after = session.pop("oauth_state", None), session.pop("oauth_next", "/dashboard")
        if not authz.same_token(expected, request.query.get("state")):
            log.warning("sign-in refused: the OAuth state does not match", why="state")
            return await render.message_page(request, 400, "Sign-in expired",
                                             "This sign-in link is stale or was not started here. "
                                             "Open the page again to sign in.")
        code = request.query.get("code", "")
        if not code or len(code) > 256:
            return await render.message_page(request, 400, "Sign-in refused", "GitHub did not send a sign-in code.")
        try:
            user = await _user_for_code(c, code)
        except _SignInFailed as e:
            log.warning("sign-in refused by GitHub", why=e.why)
            return await render.message_page(request, 401, "Sign-in refused",
                                             "GitHub did not confirm the sign-in. Try again.")
        fresh = await aiohttp_session.new_session(request)
        fresh["login"] = user
        fresh["csrf"] = authz.new_token()
        log.info("signed in with GitHub", user=user)
        raise web.HTTPFound(authz.safe_next(after if isinstance(after, str) else None))

    async def logout(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        if not await check_csrf(request, str(form.get("csrf", ""))):
            return await render.message_page(request, 403, "Refused",
                                             "The form was stale; reload the page and try again.")
        user = await signed_in(request)
        (await aiohttp_session.get_session(request)).invalidate()
        log.info("signed out", user=user or "-")
        raise web.HTTPSeeOther("/dashboard")

    app.router.add_get("/auth/login", login)
    app.router.add_get("/auth/callback", callback)
    app.router.add_post("/auth/logout", logout)


class _SignInFailed(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


async def _user_for_code(c: Config, code: str) -> str:
    """Trade the code for a user token, ask GitHub whose it is, and forget the token."""
    web_base = authz.web_url(c.github.api_url)
    form = {"client_id": c.github.client_id, "client_secret": c.github.client_secret, "code": code,
            "redirect_uri": authz.redirect_uri(c.server.public_url)}
    try:
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT, headers={"User-Agent": USER_AGENT}) as http:
            async with http.post(f"{web_base}/login/oauth/access_token", data=form,
                                 headers={"Accept": "application/json"}) as resp:
                body = await resp.json(content_type=None) if resp.status == 200 else None
            token = body.get("access_token") if isinstance(body, dict) else None
            if not isinstance(token, str) or not token:
                err = body.get("error") if isinstance(body, dict) else None
                raise _SignInFailed(str(err or "no access token")[:60])
            async with http.get(c.github.api_url.rstrip("/") + "/user",
                                headers={"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
                                         "X-GitHub-Api-Version": "2022-11-28"}) as resp:
                me = await resp.json(content_type=None) if resp.status == 200 else None
                status = resp.status
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        raise _SignInFailed(type(e).__name__) from None
    login = me.get("login") if isinstance(me, dict) else None
    if not isinstance(login, str) or not authz.LOGIN_RE.match(login):
        raise _SignInFailed(f"GET /user answered {status}")
    return login
