"""server.auth = "github" (SPEC §9) on loopback: GitHub's web flow against the stand-in (authorize,
access_token, GET /user), the session cookie, and who may read a run page of a repository
(the collaborator permission through the installation, cached 5 minutes; public repositories
open for anyone). The edge cases: a bad or missing state, a replayed code, a wrong client secret,
no permission, an expired cache entry, an open redirect."""
from __future__ import annotations

import re
import urllib.parse

import pytest
from aiohttp import web

from helpers.pages_stack import CLIENT_SECRET, Stack
from litbotd.pages import authz, oauth


def probe(app: web.Application, stack: Stack) -> None:
    """A stand-in for the run page: /probe/{owner}/{repo} answers 200 when the visitor may read it."""
    async def handler(request: web.Request) -> web.Response:
        repo = f"{request.match_info['owner']}/{request.match_info['repo']}"
        if await oauth.github_can_view(request, repo):
            return web.Response(text="the run page")
        return web.Response(status=404, text="Not found")
    app.router.add_get("/probe/{owner}/{repo}", handler)


@pytest.fixture
async def stack(aredis):
    s = Stack()
    s.gh.add_repo("o/private", {"main": {}}, private=True)
    s.gh.add_repo("o/public", {"main": {}}, private=False)
    s.gh.set_permission("o/private", "alice", "triage")   # GitHub maps triage to "read"
    await s.start(aredis, extra=probe)
    yield s
    assert not s.gh.violations, s.gh.violations
    await s.close()


async def sign_in(stack: Stack, login: str, next_path: str = "/dashboard"):
    stack.gh.sign_in(login)
    return await stack.client.get("/auth/login?" + urllib.parse.urlencode({"next": next_path}))


async def test_a_private_repository_sends_a_visitor_to_sign_in_and_back(stack: Stack) -> None:
    c = stack.client
    resp = await c.get("/probe/o/private", allow_redirects=False)
    where = urllib.parse.urlsplit(resp.headers["Location"])
    assert resp.status == 302 and where.path == "/auth/login"
    assert urllib.parse.parse_qs(where.query) == {"next": ["/probe/o/private"]}
    resp = await c.get(resp.headers["Location"], allow_redirects=False)
    auth = urllib.parse.urlsplit(resp.headers["Location"])
    q = urllib.parse.parse_qs(auth.query)
    assert auth.path == "/login/oauth/authorize" and q["client_id"] == ["Iv1.litbotdtest"]
    assert q["redirect_uri"] == [f"{stack.current.config.server.public_url}/auth/callback"] and len(q["state"][0]) >= 32
    assert CLIENT_SECRET not in resp.headers["Location"]
    stack.gh.sign_in("alice")
    resp = await c.get(resp.headers["Location"])   # GitHub → /auth/callback → the page asked for
    assert resp.status == 200 and await resp.text() == "the run page"
    assert str(resp.url).endswith("/probe/o/private")
    # the permission was asked through the installation, with an installation token
    assert stack.gh.count("GET", r"/repos/o/private/collaborators/alice/permission") == 1
    assert stack.gh.count("GET", r"^/user$") == 1


async def test_a_user_without_permission_gets_the_same_404(stack: Stack) -> None:
    resp = await sign_in(stack, "bob", "/probe/o/private")
    assert resp.status == 404 and await resp.text() == "Not found"
    unknown = await stack.client.get("/probe/o/nosuch")
    assert unknown.status == 404 and await unknown.text() == "Not found"


async def test_public_repositories_open_for_anyone(stack: Stack) -> None:
    resp = await stack.client.get("/probe/o/public", allow_redirects=False)
    assert resp.status == 200
    await sign_in(stack, "bob")
    assert (await stack.client.get("/probe/o/public")).status == 200
    assert stack.gh.count("GET", r"/collaborators/") == 0   # nobody's permission was needed


async def test_the_permission_is_cached_five_minutes(stack: Stack) -> None:
    await sign_in(stack, "alice")
    c = stack.client
    assert (await c.get("/probe/o/private")).status == 200
    asks = stack.gh.count("GET", r"/collaborators/alice/permission")
    stack.gh.set_permission("o/private", "alice", "none")        # revoked on GitHub
    stack.clock.now += authz.PERMISSION_TTL - 5
    assert (await c.get("/probe/o/private")).status == 200       # still cached
    assert stack.gh.count("GET", r"/collaborators/alice/permission") == asks
    stack.clock.now += 10                                        # the entry is 5 minutes old: asked again
    assert (await c.get("/probe/o/private")).status == 404
    assert stack.gh.count("GET", r"/collaborators/alice/permission") == asks + 1
    # the cache lives in Redis, bounded by its own expiry as well
    keys = [k async for k in stack.current.queue.redis.scan_iter("pg:access:*")]
    assert sorted(keys) == ["pg:access:perm:o/private:alice", "pg:access:repo:o/private"]
    assert 0 < await stack.current.queue.redis.ttl("pg:access:perm:o/private:alice") <= authz.PERMISSION_TTL


async def test_a_bad_or_missing_state_signs_nobody_in(stack: Stack) -> None:
    c = stack.client
    resp = await c.get("/auth/login?next=/probe/o/private", allow_redirects=False)
    authorize = resp.headers["Location"]
    stack.gh.sign_in("alice")
    resp = await c.get(authorize.replace("state=", "state=x"), allow_redirects=False)  # GitHub echoes our state
    back = resp.headers["Location"]
    assert "/auth/callback?" in back
    resp = await c.get(back)
    assert resp.status == 400 and "Sign-in expired" in await resp.text()
    assert (await c.get("/probe/o/private", allow_redirects=False)).status == 302   # still signed out
    # A callback with no login started in this browser (someone else's code and state): refused.
    resp = await c.get("/auth/callback?code=abc&state=def")
    assert resp.status == 400
    # Nothing was traded for a token in either case.
    assert stack.gh.count("POST", r"/login/oauth/access_token") == 0


async def test_a_replayed_code_or_a_wrong_client_secret_is_refused(stack: Stack) -> None:
    c = stack.client
    resp = await c.get("/auth/login", allow_redirects=False)
    stack.gh.sign_in("alice")
    resp = await c.get(resp.headers["Location"], allow_redirects=False)
    callback = resp.headers["Location"]
    state = urllib.parse.parse_qs(urllib.parse.urlsplit(callback).query)["state"][0]
    code = urllib.parse.parse_qs(urllib.parse.urlsplit(callback).query)["code"][0]
    stack.gh.oauth_codes[code]["expires_at"] = 0      # GitHub's codes last 10 minutes
    resp = await c.get(callback)
    assert resp.status == 401 and "Sign-in refused" in await resp.text()
    # wrong client secret: GitHub answers 200 with an error, and nobody is signed in
    stack.gh.oauth_clients["Iv1.litbotdtest"] = "another secret"
    resp = await sign_in(stack, "alice")
    assert resp.status == 401
    assert (await c.get("/probe/o/private", allow_redirects=False)).status == 302
    assert state


@pytest.mark.parametrize("target, lands", [
    ("/probe/o/public", "/probe/o/public"),
    ("//evil.example/x", "/dashboard"),
    ("https://evil.example/", "/dashboard"),
    ("/\\evil.example", "/dashboard"),
])
async def test_after_sign_in_only_a_path_of_this_site(stack: Stack, target: str, lands: str) -> None:
    stack.gh.sign_in("alice")
    resp = await stack.client.get("/auth/login?" + urllib.parse.urlencode({"next": target}), allow_redirects=False)
    resp = await stack.client.get(resp.headers["Location"], allow_redirects=False)   # GitHub
    resp = await stack.client.get(resp.headers["Location"], allow_redirects=False)   # our callback
    assert resp.status == 302 and resp.headers["Location"] == lands


async def test_the_session_cookie_flags(aredis) -> None:
    for https in (False, True):
        s = await Stack().start(aredis, https=https)
        try:
            resp = await s.client.get("/auth/login", allow_redirects=False)
            cookie = resp.headers["Set-Cookie"]
            assert cookie.startswith(oauth.SESSION_COOKIE + "=")
            assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
            assert ("Secure" in cookie) is https
            # signed and encrypted: the state is not readable in the cookie, and a changed cookie is no session
            assert not re.search(r"oauth_state", cookie)
        finally:
            await s.close()


async def test_a_tampered_cookie_is_no_session(stack: Stack) -> None:
    await sign_in(stack, "alice")
    c = stack.client
    assert (await c.get("/probe/o/private")).status == 200
    jar = c.session.cookie_jar
    value = next(m.value for m in jar if m.key == oauth.SESSION_COOKIE)
    jar.clear()
    cookie = {"Cookie": f"{oauth.SESSION_COOKIE}={value}"}
    assert (await c.get("/probe/o/private", headers=cookie)).status == 200   # the cookie itself is the session
    tampered = value[:-6] + ("A" * 6 if not value.endswith("A" * 6) else "B" * 6)
    resp = await c.get("/probe/o/private", headers={"Cookie": f"{oauth.SESSION_COOKIE}={tampered}"},
                       allow_redirects=False)
    assert resp.status == 302
