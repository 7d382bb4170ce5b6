"""Who may see what on the run pages and the dashboard (SPEC §9): the decisions, pure.

The I/O around them (the OAuth calls, the permission cache in Redis, the session cookie) is in
pages/oauth.py; these functions only decide, so they are tested as tables.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import urllib.parse
from dataclasses import dataclass

PERMISSION_TTL = 300.0        # a user's permission on a repository is asked again after 5 minutes
READ_PERMISSIONS = frozenset({"read", "triage", "write", "maintain", "admin"})
SESSION_MAX_AGE = 12 * 3600   # seconds a signed-in session lasts
STATE_BYTES = 24              # the OAuth `state`: random, kept in the session, checked once
CSRF_BYTES = 24
LOGIN_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$")  # a GitHub login


def web_url(api_url: str) -> str:
    """Where GitHub's OAuth web flow lives for an API URL: github.com for api.github.com, the host
    itself for GitHub Enterprise Server (`https://HOST/api/v3`), else the URL as given (a stand-in)."""
    base = api_url.rstrip("/")
    parts = urllib.parse.urlsplit(base)
    if parts.netloc == "api.github.com":
        return f"{parts.scheme}://github.com"
    if parts.path.endswith("/api/v3"):
        return base[: -len("/api/v3")]
    return base


def authorize_url(web: str, client_id: str, redirect_uri: str, state: str) -> str:
    q = urllib.parse.urlencode({"client_id": client_id, "redirect_uri": redirect_uri, "state": state,
                                "allow_signup": "false"})
    return f"{web}/login/oauth/authorize?{q}"


def redirect_uri(public_url: str) -> str:
    return public_url.rstrip("/") + "/auth/callback"


def safe_next(target: str | None) -> str:
    """Where to go after signing in: only a path of this site (never `//host`, a scheme, a
    backslash trick or a control character); anything else goes to /dashboard."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/dashboard"
    if any(ord(c) < 0x20 or c == "\\" for c in target) or len(target) > 2000:
        return "/dashboard"
    parts = urllib.parse.urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/dashboard"
    return target


def new_token(n: int = CSRF_BYTES) -> str:
    return secrets.token_urlsafe(n)


def same_token(expected: str | None, given: str | None) -> bool:
    """A CSRF token or OAuth state: both present and equal, compared in constant time."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer …` header, or None."""
    scheme, _, token = (header or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def cookie_secure(public_url: str) -> bool:
    """Session cookies are `Secure` when the pages are served over https (SPEC §9)."""
    return public_url.lower().startswith("https://")


def may_read(permission: str | None, role_name: str | None = None) -> bool:
    """GitHub's collaborator permission (admin/write/read/none) or role name grants reading."""
    return (permission or "").lower() in READ_PERMISSIONS or (role_name or "").lower() in READ_PERMISSIONS


def fresh(at: float | None, now: float, ttl: float = PERMISSION_TTL) -> bool:
    """A cached answer from time `at` may be used at `now` (not from the future: a clock step)."""
    return at is not None and 0 <= now - at < ttl


# -- run pages with server.auth = "github" ---------------------------------------------------------
OPEN = "open"          # show the page
SIGN_IN = "sign_in"    # send the visitor to GitHub to sign in
DENY = "deny"          # the same 404 as an unknown run
ASK = "ask"            # ask GitHub for the user's permission (then decide again)


def run_page_access(public: bool | None, login: str | None, permission: str | None) -> str:
    """`public`: the repository is public (None: not known yet, ask). `permission`: the signed-in
    user's permission from GitHub or the cache (None: not known)."""
    if public is None:
        return ASK
    if public:
        return OPEN
    if login is None:
        return SIGN_IN
    if permission is None:
        return ASK
    return OPEN if may_read(permission) else DENY


# -- the dashboard ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Viewer:
    """Who is looking at the dashboard, for its log lines (`by=`)."""
    who: str               # "github:<login>" or "admin-token"
    via_cookie: bool       # a session cookie (a browser's ambient credential): actions need the CSRF token


def token_mark(admin_token: str) -> str:
    """What a session keeps after the admin token was typed: not the token, a digest of it, so a
    new token (the credential rotated) ends the sessions opened with the old one."""
    return hashlib.sha256(b"litbotd admin session\0" + admin_token.encode()).hexdigest()[:32]


def dashboard_viewer(auth: str, login: str | None, admin_users: tuple[str, ...], bearer_token: str | None,
                     admin_token: str, session_mark: str | None) -> Viewer | None:
    """The dashboard opens for a user in server.admin_users signed in with GitHub (server.auth =
    "github"), for a request bearing the admin token, or for a session that was given the admin
    token on the sign-in form (`session_mark`). None: not allowed."""
    if admin_token and bearer_token is not None and hmac.compare_digest(bearer_token.encode(), admin_token.encode()):
        return Viewer("admin-token", via_cookie=False)
    if auth == "github" and login and login.lower() in {u.lower() for u in admin_users}:
        return Viewer(f"github:{login}", via_cookie=True)
    if admin_token and session_mark and hmac.compare_digest(session_mark.encode(), token_mark(admin_token).encode()):
        return Viewer("admin-token", via_cookie=True)
    return None


def token_matches(admin_token: str, given: str | None) -> bool:
    """The admin token typed on the sign-in form (constant time; never with no token configured)."""
    return bool(admin_token) and given is not None and hmac.compare_digest(given.encode(), admin_token.encode())
