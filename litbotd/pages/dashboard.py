"""/dashboard (SPEC §9): the queue, the workers, the last 100 runs and the dead letter, with retry
and purge.

Reading it needs a user of `server.admin_users` signed in with GitHub (`server.auth = "github"`),
or the admin token (the credential `litbotd-admin-token`): sent as `Authorization: Bearer …` by a
script, or typed once on the sign-in form by a browser (the session then keeps a digest of it).
Every action is a POST; one from a browser session carries the session's CSRF token (a bearer
request carries no ambient credential, so it needs none), and each is logged with who did it.

The figures come from the same functions `litbotd status` and `litbotd dead` use
(`Queue.status`, `Queue.dead_tasks`, `Queue.dead_retry`, `Queue.dead_purge`; opsview shapes them),
so the page and the command never disagree. Sections other issues add — spend per repository
today (§11), flaky runs per repository — are optional providers given to `add_routes`.
"""
from __future__ import annotations

import time
from typing import Awaitable, Callable, Sequence

import aiohttp_session
from aiohttp import web

from .. import logs, opsview
from .. import spend as spend_ledger
from ..config import Config
from ..runstate import RunRef, RunState, flaky_stats
from . import authz, dashview, oauth, render

log = logs.get("litbotd.pages")

RunUrl = Callable[[oauth.Ctx, RunRef], "str | None"]
SpendFn = Callable[[oauth.Ctx], Awaitable[Sequence[dashview.SpendRow]]]
FlakyFn = Callable[[oauth.Ctx], Awaitable[Sequence[dashview.FlakyRow]]]
MAX_FORM = 4096


def _no_url(ctx: oauth.Ctx, ref: RunRef) -> str | None:
    return None


def wanted(cfg: Config) -> bool:
    """The dashboard is served where the pages are (server.public_url) or an admin token is set."""
    return bool(cfg.server.public_url or cfg.server.admin_token)


async def flaky_rows(ctx: oauth.Ctx) -> list[dashview.FlakyRow]:
    """Flaky runs per repository over 30 days: the figures `litbotd status` prints (runstate.flaky_stats)."""
    return [dashview.FlakyRow(repo, f.flaky, f.runs)
            for repo, f in opsview.top_flaky(await flaky_stats(ctx.queue))[:dashview.SHOWN_FLAKY]]


async def spend_rows(ctx: oauth.Ctx) -> list[dashview.SpendRow]:
    """Spend per repository today (UTC): the ledger `litbotd status` prints (spend.spend_today)."""
    return [dashview.SpendRow(repo, usd) for repo, usd in (await spend_ledger.spend_today(ctx.queue)).items()]


def add_to(app: web.Application, current: oauth.CtxFn, *, run_url: RunUrl = _no_url,
           spend: SpendFn | None = spend_rows, flaky: FlakyFn | None = flaky_rows) -> None:
    """Everything this module and GitHub sign-in serve, on the daemon's web app."""
    oauth.add_routes(app, current)
    add_routes(app, current, run_url=run_url, spend=spend, flaky=flaky)


def add_routes(app: web.Application, current: oauth.CtxFn, *, run_url: RunUrl = _no_url,
               spend: SpendFn | None = None, flaky: FlakyFn | None = None,
               clock: Callable[[], float] = time.time) -> None:
    """GET /dashboard, POST /dashboard/login, /dashboard/logout, /dashboard/dead/retry, /dashboard/dead/purge."""
    oauth.setup_sessions(app, current().config)
    render.setup(app)

    async def viewer(request: web.Request) -> authz.Viewer | None:
        c = current().config
        session = await aiohttp_session.get_session(request)
        mark = session.get("admin")
        return authz.dashboard_viewer(c.server.auth, await oauth.signed_in(request), c.server.admin_users,
                                      authz.bearer(request.headers.get("Authorization")), c.server.admin_token,
                                      mark if isinstance(mark, str) else None)

    async def sign_in_page(request: web.Request, status: int, refused: str = "") -> web.Response:
        c = current().config
        return await render.page(request, "dashboard_signin.html", {
            "github": c.server.auth == "github", "github_login": oauth.login_path("/dashboard"),
            "login": await oauth.signed_in(request), "csrf": await oauth.csrf_token(request), "refused": refused,
        }, status=status)

    async def show(request: web.Request) -> web.StreamResponse:
        who = await viewer(request)
        if who is None:
            return await sign_in_page(request, 401)
        ctx = current()
        q = ctx.queue
        st = await q.status(clock())
        recent = await RunState(q).recent(dashview.SHOWN_RUNS)
        dead = [opsview.dead_row(raw, task) for raw, task in (await q.dead_tasks())[:dashview.SHOWN_DEAD]]
        view = dashview.build(st, recent, dead, lambda ref: run_url(ctx, ref), clock(),
                              spend=await spend(ctx) if spend else None, flaky=await flaky(ctx) if flaky else None)
        session = await aiohttp_session.get_session(request)
        flash = session.pop("flash", "")
        return await render.page(request, "dashboard.html", {
            "d": view, "viewer": who, "csrf": await oauth.csrf_token(request) if who.via_cookie else "",
            "flash": flash if isinstance(flash, str) else "",
        })

    async def form_of(request: web.Request) -> dict[str, str]:
        if request.content_length is not None and request.content_length > MAX_FORM:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_FORM, actual_size=request.content_length)
        return {k: str(v) for k, v in (await request.post()).items()}

    async def action(request: web.Request) -> tuple[authz.Viewer, dict[str, str]] | web.Response:
        """The viewer and the form of a POST that may act, or the refusal to send back."""
        form = await form_of(request)
        who = await viewer(request)
        if who is None:
            log.warning("dashboard action refused: not signed in", path=request.path)
            return await render.message_page(request, 403, "Refused", "Sign in to the dashboard first.")
        if who.via_cookie and not await oauth.check_csrf(request, form.get("csrf")):
            log.warning("dashboard action refused: bad CSRF token", path=request.path, by=who.who)
            return await render.message_page(request, 403, "Refused",
                                             "The form was stale; reload the dashboard and try again.")
        return who, form

    async def done(request: web.Request, who: authz.Viewer, text: str) -> web.StreamResponse:
        if who.via_cookie:
            (await aiohttp_session.get_session(request))["flash"] = text
            raise web.HTTPSeeOther("/dashboard")
        return render.secure(web.json_response({"ok": True, "message": text}))

    async def retry(request: web.Request) -> web.StreamResponse:
        got = await action(request)
        if isinstance(got, web.Response):
            return got
        who, form = got
        task_id = None if form.get("all") == "1" else form.get("id", "")[:200]
        if task_id == "":
            return await render.message_page(request, 400, "Nothing to retry", "Name a task, or retry all.")
        n = await current().queue.dead_retry(task_id)
        log.info("dashboard: dead letter retried", by=who.who, task=task_id or "all", requeued=n)
        return await done(request, who, f"requeued {n} task(s)" if n or task_id is None
                          else f"no dead task with id {task_id}")

    async def purge(request: web.Request) -> web.StreamResponse:
        got = await action(request)
        if isinstance(got, web.Response):
            return got
        who, _ = got
        n = await current().queue.dead_purge()
        log.info("dashboard: dead letter purged", by=who.who, purged=n)
        return await done(request, who, f"purged {n} task(s)")

    async def token_login(request: web.Request) -> web.StreamResponse:
        form = await form_of(request)
        if not await oauth.check_csrf(request, form.get("csrf")):
            return await sign_in_page(request, 403, "The form was stale; try again.")
        c = current().config
        if not authz.token_matches(c.server.admin_token, form.get("token")):
            log.warning("dashboard sign-in refused: wrong admin token", peer=request.remote or "-")
            return await sign_in_page(request, 403, "That is not the admin token.")
        session = await aiohttp_session.new_session(request)   # a fresh session: no fixation
        session["admin"] = authz.token_mark(c.server.admin_token)
        session["csrf"] = authz.new_token()
        log.info("dashboard: signed in with the admin token", peer=request.remote or "-")
        raise web.HTTPSeeOther("/dashboard")

    async def logout(request: web.Request) -> web.StreamResponse:
        got = await action(request)
        if isinstance(got, web.Response):
            return got
        who, _ = got
        (await aiohttp_session.get_session(request)).invalidate()
        log.info("dashboard: signed out", by=who.who)
        raise web.HTTPSeeOther("/dashboard")

    app.router.add_get("/dashboard", show)
    app.router.add_post("/dashboard/login", token_login)
    app.router.add_post("/dashboard/logout", logout)
    app.router.add_post("/dashboard/dead/retry", retry)
    app.router.add_post("/dashboard/dead/purge", purge)
