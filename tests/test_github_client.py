"""The GitHub App client against FakeGitHub: real HTTP on loopback, real Redis, the request checked
against GitHub's OpenAPI description and the App JWT verified with the test key pair."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator, Callable

import pytest

from conftest import DATA, RedisServer
from fake_github import PRIVATE_PEM, PUBLIC_PEM, SPEC, FakeGitHub
from helpers.net import free_port
from litbotd import configfile, github, metrics
from litbotd.context import Context
from litbotd.github import GitHubApp, GitHubError
from litbotd.queue import Queue, connect

APP_ID = 7
REPO = "octo/hello"
SHA = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"


class Clock:
    """A clock that only moves when the client sleeps: waits are recorded, never spent."""

    def __init__(self) -> None:
        self.t = time.time()
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)


@pytest.fixture
async def fake() -> AsyncIterator[FakeGitHub]:
    gh = FakeGitHub(app_id=APP_ID, public_key_pem=PUBLIC_PEM, spec_path=str(SPEC))
    await gh.start()
    gh.add_repo(REPO, {SHA: {"README.md": "hello\n", ".litci.yaml": "run: true\n"}})
    gh.add_pull(REPO, 1, head_sha=SHA)
    yield gh
    await gh.close()
    assert gh.violations == []  # every request the client made is one GitHub documents


def make_services(redis_url: str, api_url: str) -> Context:
    cfg = configfile.parse({"github": {"app_id": APP_ID, "private_key_file": str(DATA / "keys" / "app.pem"),
                                   "api_url": api_url},
                        "redis": {"url": redis_url}}, env={})
    r = connect(redis_url)
    return Context.of(cfg, Queue(r, cfg.redis.queue))


@pytest.fixture
async def make_app(redis_server: RedisServer, fake: FakeGitHub) -> AsyncIterator[Callable[..., GitHubApp]]:
    made: list[GitHubApp] = []

    def factory(clock: Clock | None = None, api_url: str | None = None) -> GitHubApp:
        clock = clock or Clock()
        services = make_services(redis_server.url, api_url or fake.url)
        app = GitHubApp.on_redis(services.config.github, services.redis, services.queue.name,
                                 sleep=clock.sleep, clock=clock)
        made.append(app)
        return app

    yield factory
    for app in made:
        await app.close()
        await app.tokens.redis.aclose()


# -- tokens -----------------------------------------------------------------------------------------
async def test_token_minted_once_and_shared_through_redis(fake: FakeGitHub, make_app) -> None:
    a, b = make_app(), make_app()
    ta, tb = await asyncio.gather(a.installation_token(1), b.installation_token(1))
    assert ta == tb
    assert fake.count("POST", r"^/app/installations/1/access_tokens$") == 1
    # A third daemon finds it in Redis; the token works.
    c = make_app()
    assert await c.installation_token(1) == ta
    pr = await c.get(f"/repos/{REPO}/pulls/1", 1)
    assert pr["head"]["sha"] == SHA
    assert fake.count("POST", r"/access_tokens$") == 1
    assert await c.tokens.redis.exists(c.tokens.key(1))
    # The gauge follows x-ratelimit-remaining of the last answer.
    assert metrics.REGISTRY.get_sample_value("litbotd_github_ratelimit_remaining") == 5000 - len(fake.requests)


async def test_token_in_redis_is_sealed_useless_to_a_redis_reader(fake: FakeGitHub, make_app) -> None:
    import json

    from cryptography.hazmat.primitives import serialization

    from litbotd.demo import throwaway_key
    from litbotd.sealed import unseal

    a = make_app()
    token = await a.installation_token(1)
    key = a.tokens.key(1)
    raw = await a.tokens.redis.get(key)
    assert token not in raw and token[4:] not in raw and "token" not in json.loads(raw)
    sealed = json.loads(raw)["sealed"]
    other_pem = throwaway_key()[0]
    assert unseal(other_pem, sealed, key) is None                      # another App's key
    assert unseal(PRIVATE_PEM, sealed, a.tokens.key(2)) is None  # moved to another key
    pkcs1 = serialization.load_pem_private_key(PRIVATE_PEM.encode(), None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()).decode()
    assert "RSA PRIVATE KEY" in pkcs1 and unseal(pkcs1, sealed, key) == token  # same key, other PEM form
    # A value in the old clear form (written before this version) is not trusted: a fresh token.
    await a.tokens.redis.set(key, json.dumps({"token": "ghs_planted", "expires_at": time.time() + 3600}))
    b = make_app()
    assert await b.installation_token(1) not in ("ghs_planted", token)
    assert fake.count("POST", r"/access_tokens$") == 2


async def test_token_refreshed_within_five_minutes_of_expiry(fake: FakeGitHub, make_app) -> None:
    clock = Clock()
    app = make_app(clock)
    first = await app.installation_token(1)
    clock.t += fake.token_ttl - 5 * 60 - 5   # still more than 5 minutes left
    assert await app.installation_token(1) == first
    assert fake.count("POST", r"/access_tokens$") == 1
    clock.t += 10                              # now less than 5 minutes left
    second = await app.installation_token(1)
    assert second != first
    assert fake.count("POST", r"/access_tokens$") == 2


async def test_scoped_token_is_fresh_and_limited_to_one_repo_contents_read(fake: FakeGitHub, make_app) -> None:
    app = make_app()
    installation = await app.installation_token(1)
    scoped = await app.scoped_token(1, REPO)
    again = await app.scoped_token(1, REPO)
    assert len({installation, scoped, again}) == 3   # never cached, never the shared token
    assert fake.tokens[scoped]["repositories"] == ["hello"]
    assert fake.tokens[scoped]["permissions"] == {"contents": "read"}
    assert fake.tokens[installation]["repositories"] is None


async def test_revoked_token_is_minted_again_once(fake: FakeGitHub, make_app) -> None:
    app = make_app()
    await app.installation_token(1)
    fake.tokens.clear()  # GitHub forgot it: the next call gets 401
    assert (await app.get(f"/repos/{REPO}/pulls/1", 1))["number"] == 1
    assert fake.count("POST", r"/access_tokens$") == 2


# -- retries and rate limits ------------------------------------------------------------------------
async def test_502_is_retried_with_backoff_and_has_one_effect(fake: FakeGitHub, make_app) -> None:
    clock = Clock()
    app = make_app(clock)
    fake.inject("POST", r"/check-runs$", 502)
    run = await app.post(f"/repos/{REPO}/check-runs", 1, data={"name": "tests", "head_sha": SHA})
    assert run["id"] == fake.check_runs[0]["id"]
    assert len(fake.check_runs) == 1
    assert fake.count("POST", r"/check-runs$") == 2
    assert len(clock.sleeps) == 1 and 0.5 <= clock.sleeps[0] <= 1.5


async def test_5xx_gives_up_after_bounded_attempts(fake: FakeGitHub, make_app) -> None:
    clock = Clock()
    app = make_app(clock)
    fake.inject("GET", r"/pulls/1$", 503, times=100)
    with pytest.raises(GitHubError) as e:
        await app.get(f"/repos/{REPO}/pulls/1", 1)
    assert e.value.status == 503
    assert fake.count("GET", r"/pulls/1$") == github.MAX_ATTEMPTS
    assert len(clock.sleeps) == github.MAX_ATTEMPTS - 1


@pytest.mark.parametrize("status,headers,body,expected", [
    (429, {"Retry-After": "7"}, None, (7, 7)),
    (403, {"Retry-After": "30"}, {"message": "You have exceeded a secondary rate limit."}, (30, 30)),
    (403, {}, {"message": "You have exceeded a secondary rate limit. Please wait a few minutes."}, (60, 60)),
    (403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "+120"}, {"message": "API rate limit exceeded"},
     (120, 122)),
], ids=["429-retry-after", "secondary-retry-after", "secondary-no-header", "primary"])
async def test_rate_limits_wait_as_told_then_retry(fake: FakeGitHub, make_app, status: int, headers: dict,
                                                   body: dict | None, expected: tuple[float, float]) -> None:
    clock = Clock()
    app = make_app(clock)
    await app.installation_token(1)
    if headers.get("x-ratelimit-reset", "").startswith("+"):
        headers = {**headers, "x-ratelimit-reset": str(int(clock.t) + int(headers["x-ratelimit-reset"]))}
    fake.inject("GET", r"/pulls/1$", status, headers=headers, body=body)
    pr = await app.get(f"/repos/{REPO}/pulls/1", 1)
    assert pr["number"] == 1
    assert fake.count("GET", r"/pulls/1$") == 2
    assert len(clock.sleeps) == 1 and expected[0] <= clock.sleeps[0] <= expected[1]


async def test_rate_limit_wait_is_capped(fake: FakeGitHub, make_app) -> None:
    clock = Clock()
    app = make_app(clock)
    fake.inject("GET", r"^/app$", 429, headers={"Retry-After": "86400"})
    assert (await app.get("/app", None))["id"] == APP_ID
    assert clock.sleeps == [github.MAX_WAIT]


async def test_plain_403_and_404_are_not_retried(fake: FakeGitHub, make_app) -> None:
    clock = Clock()
    app = make_app(clock)
    fake.inject("GET", r"/pulls/1$", 403, body={"message": "Resource not accessible by integration"})
    with pytest.raises(GitHubError) as e:
        await app.get(f"/repos/{REPO}/pulls/1", 1)
    assert e.value.status == 403
    with pytest.raises(GitHubError) as e:
        await app.get(f"/repos/{REPO}/pulls/99", 1)
    assert e.value.status == 404
    assert clock.sleeps == []
    assert fake.count("GET", r"/pulls/") == 2


async def test_connection_refused_is_retried_then_raised(make_app) -> None:
    clock = Clock()
    app = make_app(clock, api_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(GitHubError) as e:
        await app.get("/app", None)
    assert e.value.status == 0
    assert len(clock.sleeps) == github.MAX_ATTEMPTS - 1
    assert "eyJ" not in str(e.value)


async def test_link_to_another_host_is_refused(fake: FakeGitHub, make_app) -> None:
    app = make_app()
    with pytest.raises(GitHubError, match="not the GitHub API host"):
        await app.get("http://127.0.0.2:1/steal", 1)
    assert fake.count("POST", r"/access_tokens$") == 0


# -- pagination -------------------------------------------------------------------------------------
async def test_paginate_follows_page_and_cursor_links(fake: FakeGitHub, make_app) -> None:
    app = make_app()
    for i in range(7):
        await app.post(f"/repos/{REPO}/issues/1/comments", 1, data={"body": f"c{i}"})
    bodies = [c["body"] async for c in app.paginate(f"/repos/{REPO}/issues/1/comments", 1, {"per_page": 3})]
    assert bodies == [f"c{i}" for i in range(7)]
    assert fake.count("GET", r"/issues/1/comments$") == 3
    # Cursor pagination (deliveries, newest first).
    guids = [fake.add_delivery(f"g{i}", age=100 - i)["guid"] for i in range(5)]
    got = [d["guid"] async for d in app.paginate("/app/hook/deliveries", None, {"per_page": 2})]
    assert got == guids[::-1]
    assert fake.count("GET", r"^/app/hook/deliveries$") == 3
    # A listing wrapped in an object yields the list's items.
    for name in ("a", "b", "c"):
        await app.post(f"/repos/{REPO}/check-runs", 1, data={"name": name, "head_sha": SHA})
    names = [r["name"] async for r in app.paginate(f"/repos/{REPO}/commits/{SHA}/check-runs", 1, {"per_page": 2})]
    assert sorted(names) == ["a", "b", "c"]


# -- pacing -----------------------------------------------------------------------------------------
async def test_burst_of_content_creating_calls_stays_under_80_per_minute(fake: FakeGitHub, make_app) -> None:
    clock = Clock()
    app = make_app(clock)
    t0 = clock.t
    sent: list[float] = []
    for i in range(100):
        await app.post(f"/repos/{REPO}/statuses/{SHA}", 1, data={"state": "pending", "context": f"c{i}"})
        sent.append(clock.t)  # the clock moves only in sleeps, so this is when the call went out
    assert len(fake.statuses) == 100
    assert sent[github.PACE_PER_MINUTE - 1] == t0            # a burst within the budget is not slowed
    assert all(sent[i + 80] - sent[i] >= 60 for i in range(len(sent) - 80))
    assert sent[-1] - t0 < 61                                  # and waits no longer than needed
    waited = len(clock.sleeps)
    await app.get(f"/repos/{REPO}/pulls/1", 1)                 # reads are not paced
    assert len(clock.sleeps) == waited


async def test_pacing_budget_is_shared_by_daemons_and_hourly(fake: FakeGitHub, make_app,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(github, "PACE_PER_MINUTE", 3)
    monkeypatch.setattr(github, "PACE_PER_HOUR", 5)
    clock = Clock()
    a, b = make_app(clock), make_app(clock)
    t0 = clock.t
    sent = []
    for app in (a, a, a, b, b, b):
        await app.post(f"/repos/{REPO}/statuses/{SHA}", 1, data={"state": "success"})
        sent.append(clock.t - t0)
    assert sent[:3] == [0, 0, 0]
    assert 60 <= sent[3] == sent[4] < 61      # b waits for a's calls to leave the minute
    assert 3600 <= sent[5] < 3601             # the sixth waits for the first to leave the hour


async def test_pacing_keeps_the_budget_for_results(fake: FakeGitHub, make_app) -> None:
    """Results first: once half the minute's budget is used, comment writes are refused (deferred,
    not waited for), in_progress updates still go up to three quarters, conclusions up to the whole."""
    clock = Clock()
    app = make_app(clock)
    post = lambda **kw: app.post(f"/repos/{REPO}/statuses/{SHA}", 1, data={"state": "success"}, **kw)  # noqa: E731
    for _ in range(github.PACE_PER_MINUTE // 2):
        await post(priority="comment", defer=True)
    with pytest.raises(github.PaceDeferred) as e:
        await post(priority="comment", defer=True)
    assert 0 < e.value.wait <= 60
    for _ in range(github.PACE_PER_MINUTE * 3 // 4 - github.PACE_PER_MINUTE // 2):
        await post(priority="progress", defer=True)
    with pytest.raises(github.PaceDeferred):
        await post(priority="progress", defer=True)
    for _ in range(github.PACE_PER_MINUTE - github.PACE_PER_MINUTE * 3 // 4):
        await post()  # a conclusion: the default priority
    assert clock.sleeps == []  # nobody waited so far
    await post()
    assert len(clock.sleeps) == 1 and 0 < clock.sleeps[0] <= 60  # over the whole budget even a result waits
    assert len(fake.statuses) == github.PACE_PER_MINUTE + 1


async def test_a_deferrable_write_does_not_sit_out_a_rate_limit(fake: FakeGitHub, make_app) -> None:
    """A comment write (defer=True) answered 429 + Retry-After is handed back to its caller at once,
    with the wait GitHub asked for; a result write waits and retries as before."""
    clock = Clock()
    app = make_app(clock)
    fake.inject("POST", r"/issues/1/comments$", 429, headers={"Retry-After": "42"})
    with pytest.raises(github.PaceDeferred) as e:
        await app.post(f"/repos/{REPO}/issues/1/comments", 1, data={"body": "x"}, priority="comment", defer=True)
    assert (e.value.wait, e.value.limited, clock.sleeps) == (42.0, True, [])
    fake.inject("POST", r"/issues/1/comments$", 429, headers={"Retry-After": "42"})
    await app.post(f"/repos/{REPO}/issues/1/comments", 1, data={"body": "y"})
    assert clock.sleeps == [42.0] and [c["body"] for c in fake.comments] == ["y"]


# -- secrets ----------------------------------------------------------------------------------------
async def test_no_token_jwt_or_key_in_errors_or_logs(fake: FakeGitHub, make_app, caplog: pytest.LogCaptureFixture,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    app = make_app()
    token = await app.installation_token(1)
    jwt = app.jwt()
    fake.inject("GET", r"/pulls/1$", 502)
    fake.inject("GET", r"/pulls/1$", 429, headers={"Retry-After": "1"})
    # GitHub echoing a credential back must not carry it into our exception.
    fake.inject("GET", r"/pulls/1$", 422, body={"message": f"bad {token} {jwt}"})
    with pytest.raises(GitHubError) as e:
        await app.get(f"/repos/{REPO}/pulls/1", 1)
    down = make_app(api_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(GitHubError) as e2:
        await down.get("/app", None)
    key_lines = [line for line in PRIVATE_PEM.splitlines() if "-----" not in line]
    text = str(e.value) + e.value.message + str(e2.value) + "".join(
        f"{r.getMessage()} {getattr(r, 'kv', '')}" for r in caplog.records)
    out = capsys.readouterr()
    text += out.out + out.err
    assert caplog.records, "the retries should have been logged"
    for secret in (token, jwt, *key_lines):
        assert secret not in text
    assert "***" in e.value.message


# -- check-run annotations ---------------------------------------------------------------------------
async def test_annotations_go_in_batches_and_a_refused_batch_is_skipped(fake: FakeGitHub, make_app) -> None:
    from litbotd import checks
    from litbotd.annotations import Annotation, batches

    app = make_app()
    check_id = await checks.find_or_create_check(app, 1, REPO, SHA, "ci", "ci/1", status="completed",
                                                 conclusion="failure", output={"title": "t", "summary": "s"})
    items = batches([Annotation("notice", f"n{i}", "README.md", 1) for i in range(120)])
    fake.inject("PATCH", rf"/check-runs/{check_id}$", 422, body={"message": "Validation Failed"})
    taken = await checks.add_annotations(app, 1, REPO, check_id, {"title": "t", "summary": "s"}, items)
    assert taken == 70  # the first batch of 50 was refused; the other two went through
    assert await checks.annotations_sent(app, 1, REPO, check_id) == 70
    assert fake.count("PATCH", rf"/check-runs/{check_id}$") == 3
