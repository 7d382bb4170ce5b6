"""The redelivery sweeper against FakeGitHub and a real Redis, with several daemons at once."""
from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable

import pytest

from conftest import DATA, RedisServer
from fake_github import FakeGitHub
from litbotd import configfile
from litbotd.context import Context
from litbotd.github import GitHubApp
from litbotd.queue import Queue, connect
from litbotd.redeliver import redeliver_once

APP_ID = 7
WINDOW = 3600.0
ATTEMPTS = r"^/app/hook/deliveries/\d+/attempts$"


@pytest.fixture
async def fake() -> AsyncIterator[FakeGitHub]:
    gh = FakeGitHub(app_id=APP_ID, public_key_pem=(DATA / "keys" / "app.pub.pem").read_text(),
                    spec_path=str(DATA / "rest-subset.json"))
    await gh.start()
    yield gh
    await gh.close()
    assert gh.violations == []


@pytest.fixture
async def daemon(redis_server: RedisServer, fake: FakeGitHub) -> AsyncIterator[Callable[[], Context]]:
    """Each call: the Context of one more daemon (own Redis client, own GitHubApp)."""
    made: list[Context] = []

    def factory() -> Context:
        cfg = configfile.parse({"github": {"app_id": APP_ID, "private_key_file": str(DATA / "keys" / "app.pem"),
                                       "api_url": fake.url, "redeliver_window": "1h"},
                            "redis": {"url": redis_server.url}}, env={})
        r = connect(redis_server.url)
        q = Queue(r, cfg.redis.queue)
        s = Context.of(cfg, q, github=GitHubApp.on_redis(cfg.github, r, q.name))
        made.append(s)
        return s

    yield factory
    for s in made:
        await s.github.close()
        await s.redis.aclose()


async def sweep_concurrently(*daemons: Context) -> int:
    return sum(await asyncio.gather(*(redeliver_once(s) for s in daemons)))


async def test_failed_unaccepted_delivery_is_redelivered_exactly_once(fake: FakeGitHub, daemon) -> None:
    fake.redelivery_status_code = 502  # the redelivery fails too: only the claim stops a second ask
    failed = fake.add_delivery("guid-1", status_code=502, age=60)
    fake.add_delivery("guid-ok", status_code=200, age=30)
    a, b = daemon(), daemon()
    assert await sweep_concurrently(a, b) == 1
    assert fake.count("POST", ATTEMPTS) == 1
    assert fake.count("POST", rf"^/app/hook/deliveries/{failed['id']}/attempts$") == 1
    assert await sweep_concurrently(a, b, daemon()) == 0
    assert fake.count("POST", ATTEMPTS) == 1


async def test_connection_failure_counts_as_failed(fake: FakeGitHub, daemon) -> None:
    fake.add_delivery("guid-down", status_code=0, age=10)
    assert await redeliver_once(daemon()) == 1
    assert [d["redelivery"] for d in fake.deliveries if d["guid"] == "guid-down"] == [False, True]


async def test_accepted_delivery_is_not_redelivered(fake: FakeGitHub, daemon) -> None:
    s = daemon()
    fake.add_delivery("guid-seen", status_code=502, age=10)  # we queued it, but GitHub timed out waiting
    assert await s.queue.enqueue_delivery("guid-seen", [])
    assert await redeliver_once(s) == 0
    assert fake.count("POST", ATTEMPTS) == 0


async def test_deliveries_older_than_the_window_are_left_and_not_paged_through(fake: FakeGitHub, daemon) -> None:
    for _ in range(150):
        fake.add_delivery(status_code=500, age=WINDOW + 600)
    fake.add_delivery("guid-recent", status_code=500, age=10)
    assert await redeliver_once(daemon()) == 1
    assert [d["guid"] for d in fake.deliveries if d["redelivery"]] == ["guid-recent"]
    assert fake.count("GET", r"^/app/hook/deliveries$") == 1  # stopped at the first old one


async def test_guid_that_later_succeeded_needs_nothing(fake: FakeGitHub, daemon) -> None:
    fake.add_delivery("guid-2", status_code=503, age=300)
    fake.add_delivery("guid-2", status_code=200, age=200, redelivery=True)
    fake.add_delivery("guid-2", status_code=502, age=100, redelivery=True)  # a later retry failing changes nothing
    assert await redeliver_once(daemon()) == 0
    assert fake.count("POST", ATTEMPTS) == 0


async def test_failed_redelivery_request_is_tried_again_next_round(fake: FakeGitHub, daemon) -> None:
    fake.add_delivery("guid-3", status_code=502, age=10)
    fake.inject("POST", ATTEMPTS, 422, body={"message": "Validation Failed"})
    s = daemon()
    assert await redeliver_once(s) == 0
    assert await redeliver_once(s) == 1
    assert fake.count("POST", ATTEMPTS) == 2
