"""Who may open a run page (SPEC §9). ONE check, `can_view`, for every route of a run page.

`server.auth = "link"`: the URL's key segment must be the HMAC of the run's identity under the
daemon's link key (runlink.py). A wrong key answers exactly like an unknown run: 404.

`"github"`: the same key (the URL is the check run's details_url either way), and then GitHub's
say: a public repository opens for anyone, a private one for a signed-in user with read permission
(oauth.github_can_view: a visitor without a session is sent to sign in, a user without permission
gets the same 404).
"""
from __future__ import annotations

from aiohttp import web

from .. import runlink
from . import oauth
from .ctx import PAGES


async def can_view(request: web.Request, run: runlink.RunId) -> bool:
    pages = request.app[PAGES]
    auth = pages.config().server.auth
    if auth in ("link", "github") and not runlink.verify(pages.link_key, run, request.match_info.get("mac", "")):
        return False
    if auth == "link":
        return True
    if auth == "github":
        return await oauth.github_can_view(request, run.repo)
    return False  # another mode this build does not know: nobody
