"""The pages' routes on the daemon's aiohttp app: `add_routes(app, pages)`, called where the web
app is built. Every response of the app gets the security headers (CSP `default-src 'self'`: the
pages' script and styles are static files served here, nothing inline)."""
from __future__ import annotations

from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from . import runpage
from .ctx import PAGES, Pages

PACKAGE = Path(__file__).resolve().parent.parent
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",   # a run page's URL is its key: never sent to another site
    "X-Frame-Options": "DENY",
}
RUN = "/runs/{owner}/{name}/{sha}/{run}/{attempt}/{mac}/"


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


async def _not_found(request: web.Request) -> web.Response:
    return runpage.not_found(request)


def add_routes(app: web.Application, pages: Pages) -> None:
    app[PAGES] = pages
    if aiohttp_jinja2.APP_KEY not in app:  # one environment for every page: async (the run page streams)
        aiohttp_jinja2.setup(app, loader=jinja2.PackageLoader("litbotd", "templates"),
                             autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
                             enable_async=True)
    app.on_response_prepare.append(_security_headers)
    if not any(r.canonical.rstrip("/") == "/static" for r in app.router.resources()):
        app.router.add_static("/static/", PACKAGE / "static", name="static", show_index=False,
                              follow_symlinks=False, append_version=False)
    app.router.add_get(RUN, runpage.page)
    app.router.add_get(RUN + "log.txt", runpage.raw_log)
    app.router.add_get(RUN + "lines", runpage.lines_json)
    app.router.add_get(RUN + "events", runpage.events)
    app.router.add_get("/runs/{tail:.*}", _not_found)  # anything else under /runs: the same 404
