"""A run page with server.auth = "github" (SPEC §9), through the run pages' own routes and their
one access check (access.can_view): the link key first (a wrong one is the same 404, signed in or
not), then GitHub: a private repository's page sends a visitor to sign in and opens for a user
with read permission; a public repository's opens for anyone."""
from __future__ import annotations

import urllib.parse
from pathlib import Path

import pytest
from aiohttp import web

from helpers.pages_stack import Stack
from litbotd import runlink
from litbotd.logstore import Store
from litbotd.pages.app import add_routes
from litbotd.pages.ctx import Pages
from litbotd.runstate import RunRef, RunState
from litbotd.workflows import Run

KEY = b"K" * 32
SHA = "d" * 40
RUN = Run(workflow="ci", file=".litci.yaml", check_name="ci (3.11)", key="ci-3-11", cell={}, image="python:3.12-slim",
          machine="CPU", interruptible=False, timeout=600.0, env={}, script="echo hi")


class NoLogs:
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def log_file(self, name: str) -> str:
        return str(self.root / "log.txt")


@pytest.fixture
async def stack(aredis, tmp_path: Path):
    (tmp_path / "log.txt").write_text("hello from the job\n")

    def run_pages(app: web.Application, s: Stack) -> None:
        add_routes(app, Pages(config=lambda: s.current.config, queue=lambda: s.current.queue,
                              backend=lambda: NoLogs(tmp_path), store=Store(str(tmp_path / "runs")), link_key=KEY))

    s = Stack()
    s.gh.add_repo("acme/private", {"main": {}}, private=True)
    s.gh.add_repo("acme/public", {"main": {}}, private=False)
    s.gh.set_permission("acme/private", "alice", "read")
    await s.start(aredis, extra=run_pages)
    rs = RunState(s.current.queue)
    for repo in ("acme/private", "acme/public"):
        await rs.add_runs(repo, SHA, [RUN], pr=1, owner="t")
        await rs.update(RunRef(repo, SHA, RUN.key, 1), status="completed", conclusion="success", job="j")
    yield s
    assert not s.gh.violations, s.gh.violations
    await s.close()


def page(repo: str, key: bytes = KEY) -> str:
    return runlink.path(key, runlink.RunId(repo, SHA, RUN.key, 1))


async def test_a_private_runs_page_asks_for_sign_in_then_opens_for_a_reader(stack: Stack) -> None:
    c = stack.client
    resp = await c.get(page("acme/private"), allow_redirects=False)
    assert resp.status == 302
    where = urllib.parse.urlsplit(resp.headers["Location"])
    assert where.path == "/auth/login" and urllib.parse.parse_qs(where.query)["next"] == [page("acme/private")]
    stack.gh.sign_in("alice")
    resp = await c.get(resp.headers["Location"])          # GitHub, our callback, back to the page
    assert resp.status == 200 and "ci (3.11)" in await resp.text()
    assert str(resp.url).endswith(page("acme/private"))
    raw = await c.get(page("acme/private") + "log.txt")
    assert raw.status == 200 and "hello from the job" in await raw.text()


async def test_a_wrong_key_is_the_same_404_signed_in_or_not(stack: Stack) -> None:
    c = stack.client
    wrong = page("acme/private", b"W" * 32)
    anonymous = await c.get(wrong, allow_redirects=False)
    assert anonymous.status == 404                     # no sign-in offered: nothing says the run exists
    stack.gh.sign_in("alice")
    await c.get("/auth/login")
    signed = await c.get(wrong, allow_redirects=False)
    assert signed.status == 404 and await signed.text() == await anonymous.text()


async def test_no_permission_is_the_same_404_and_public_opens_for_anyone(stack: Stack) -> None:
    c = stack.client
    assert (await c.get(page("acme/public"), allow_redirects=False)).status == 200   # nobody signed in
    unknown = await c.get(page("acme/nosuch"), allow_redirects=False)
    stack.gh.sign_in("bob")
    await c.get("/auth/login")
    denied = await c.get(page("acme/private"), allow_redirects=False)
    assert denied.status == 404 and unknown.status == 404 and await denied.text() == await unknown.text()
    assert (await c.get(page("acme/public"))).status == 200
