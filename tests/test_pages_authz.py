"""The access decisions of the run pages and the dashboard (litbotd/pages/authz.py), as tables."""
from __future__ import annotations

import pytest

from litbotd.pages import authz
from litbotd.pages.authz import ASK, DENY, OPEN, SIGN_IN


@pytest.mark.parametrize("api, web", [
    ("https://api.github.com", "https://github.com"),
    ("https://api.github.com/", "https://github.com"),
    ("https://ghe.example.com/api/v3", "https://ghe.example.com"),
    ("https://ghe.example.com/api/v3/", "https://ghe.example.com"),
    ("http://127.0.0.1:4567", "http://127.0.0.1:4567"),
])
def test_where_the_web_flow_lives(api: str, web: str) -> None:
    assert authz.web_url(api) == web


@pytest.mark.parametrize("target, safe", [
    ("/runs/o/r/abc#L12", "/runs/o/r/abc#L12"),
    ("/dashboard?x=1", "/dashboard?x=1"),
    (None, "/dashboard"), ("", "/dashboard"),
    ("//evil.example/", "/dashboard"), ("/\\evil.example", "/dashboard"), ("https://evil.example/", "/dashboard"),
    ("evil.example", "/dashboard"), ("/a\r\nSet-Cookie: x", "/dashboard"), ("/a\\b", "/dashboard"),
    ("/" + "a" * 3000, "/dashboard"), ("javascript:alert(1)", "/dashboard"),
])
def test_only_a_path_of_this_site_after_sign_in(target, safe) -> None:
    assert authz.safe_next(target) == safe


@pytest.mark.parametrize("public, login, permission, decision", [
    (None, None, None, ASK),            # visibility not known yet
    (True, None, None, OPEN),           # public: anyone, signed in or not
    (True, "bob", "none", OPEN),
    (False, None, None, SIGN_IN),
    (False, "alice", None, ASK),
    (False, "alice", "read", OPEN), (False, "alice", "triage", OPEN), (False, "alice", "write", OPEN),
    (False, "alice", "maintain", OPEN), (False, "alice", "admin", OPEN),
    (False, "bob", "none", DENY), (False, "bob", "", DENY), (False, "bob", "pull?", DENY),
])
def test_run_page_access(public, login, permission, decision) -> None:
    assert authz.run_page_access(public, login, permission) == decision


@pytest.mark.parametrize("at, now, fresh", [
    (None, 100.0, False), (100.0, 100.0, True), (100.0, 399.9, True), (100.0, 400.0, False),
    (100.0, 99.0, False),   # from the future (a clock step back): ask again
])
def test_a_cached_answer_lasts_five_minutes(at, now, fresh) -> None:
    assert authz.fresh(at, now) is fresh


TOKEN = "t0ken"
MARK = authz.token_mark(TOKEN)


@pytest.mark.parametrize("auth, login, admins, bearer, token, mark, who", [
    ("github", "alice", ("alice",), None, "", None, "github:alice"),
    ("github", "ALICE", ("alice",), None, "", None, "github:ALICE"),     # logins are case-insensitive
    ("github", "bob", ("alice",), None, "", None, None),
    ("link", "alice", ("alice",), None, "", None, None),                # admin_users need GitHub sign-in
    ("link", None, (), TOKEN, TOKEN, None, "admin-token"),
    ("link", None, (), "t0ke", TOKEN, None, None),
    ("link", None, (), "", "", None, None),                              # no token configured: never
    ("link", None, (), None, TOKEN, MARK, "admin-token"),
    ("link", None, (), None, "rotated", MARK, None),                     # a rotated token ends the session
    ("link", None, (), None, "", authz.token_mark(""), None),
])
def test_who_may_read_the_dashboard(auth, login, admins, bearer, token, mark, who) -> None:
    v = authz.dashboard_viewer(auth, login, admins, bearer, token, mark)
    assert (v.who if v else None) == who
    if v is not None:
        assert v.via_cookie is (bearer is None)   # a bearer request needs no CSRF token


@pytest.mark.parametrize("expected, given, ok", [
    ("abc", "abc", True), ("abc", "abd", False), ("abc", "", False), ("", "", False), (None, None, False),
    ("abc", None, False), ("abc", "abcd", False),
])
def test_csrf_and_state_tokens(expected, given, ok) -> None:
    assert authz.same_token(expected, given) is ok


@pytest.mark.parametrize("header, token", [
    ("Bearer abc", "abc"), ("bearer abc ", "abc"), ("Basic abc", None), ("Bearer", None), (None, None), ("", None),
])
def test_bearer(header, token) -> None:
    assert authz.bearer(header) == token


def test_cookie_secure_follows_the_public_url() -> None:
    assert authz.cookie_secure("https://ci.example.com") and authz.cookie_secure("HTTPS://x")
    assert not authz.cookie_secure("http://127.0.0.1:8080") and not authz.cookie_secure("")
