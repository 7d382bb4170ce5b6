"""Who may open a run page (SPEC §9). ONE check, `can_view`, for every route of a run page.

`server.auth = "link"`: the URL's key segment must be the HMAC of the run's identity under the
daemon's link key (runlink.py). A wrong key answers exactly like an unknown run: 404.
"""
from __future__ import annotations

from aiohttp import web

from .. import runlink
from .ctx import PAGES


async def can_view(request: web.Request, run: runlink.RunId) -> bool:
    pages = request.app[PAGES]
    if pages.config().server.auth == "link":
        return runlink.verify(pages.link_key, run, request.match_info.get("mac", ""))
    return False  # another mode this build does not know: nobody
