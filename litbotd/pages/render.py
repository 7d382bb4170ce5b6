"""HTML out: Jinja2 through aiohttp-jinja2 with autoescape on, and the security headers every page
sends (SPEC §9): `Content-Security-Policy: default-src 'self'` (no inline script or style: the
styles are files under litbotd/static/), no sniffing, no framing, no referrer (a run page's link
key must not leave in a Referer), and no caching of pages that show live state.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import aiohttp_jinja2
import jinja2
from aiohttp import web

CSP = "default-src 'self'"
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
           "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
STATIC = Path(__file__).resolve().parent.parent / "static"


def setup(app: web.Application) -> None:
    """Jinja2 (autoescape on for every template) and /static/, once per app."""
    if aiohttp_jinja2.APP_KEY not in app:
        # the same environment as the run pages' (pages/app.py): async, for the page that streams
        aiohttp_jinja2.setup(app, loader=jinja2.PackageLoader("litbotd", "templates"),
                             autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
                             enable_async=True)
    if not any(r.canonical.rstrip("/") == "/static" for r in app.router.resources()):
        app.router.add_static("/static/", STATIC, name="static", show_index=False, follow_symlinks=False,
                              append_version=False)


R = TypeVar("R", bound=web.StreamResponse)


def secure(resp: R) -> R:
    for k, v in HEADERS.items():
        resp.headers.setdefault(k, v)
    return resp


async def page(request: web.Request, template: str, context: dict[str, Any], status: int = 200) -> web.Response:
    if aiohttp_jinja2.get_env(request.app).is_async:
        resp = await aiohttp_jinja2.render_template_async(template, request, context, status=status)
    else:
        resp = aiohttp_jinja2.render_template(template, request, context, status=status)
    return secure(resp)


async def message_page(request: web.Request, status: int, title: str, text: str) -> web.Response:
    """A short page saying why (a refusal, a stale sign-in), escaped like every other."""
    return await page(request, "message.html", {"title": title, "text": text}, status=status)
