"""The tests' own helpers (tests/helpers/): the poll with a deadline and a daemon's ready line."""
from __future__ import annotations

import asyncio

import pytest

from helpers.daemon import _ready_fields
from helpers.wait import wait_until, wait_until_sync


async def test_wait_until_returns_the_truthy_value_sync_or_async_probe() -> None:
    seen = []

    def probe() -> list[int] | None:
        seen.append(1)
        return seen if len(seen) >= 3 else None

    assert await wait_until(probe, 5, "three probes", every=0.001) == [1, 1, 1]

    async def later() -> str:
        await asyncio.sleep(0)
        return "done"

    assert await wait_until(later, 5, "a coroutine") == "done"


async def test_wait_until_names_what_it_waited_for_and_the_last_value() -> None:
    with pytest.raises(AssertionError, match=r"timed out after 0.05s waiting for the moon \(last: 0\)"):
        await wait_until(lambda: 0, 0.05, "the moon", every=0.01)


def test_wait_until_sync_treats_ignored_errors_as_not_yet() -> None:
    calls = []

    def flaky() -> bool:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("restarting")
        return True

    def down() -> bool:
        raise ConnectionError("down")

    assert wait_until_sync(flaky, 5, "a restart", every=0.001, ignore=(ConnectionError,)) is True
    with pytest.raises(ConnectionError):  # not ignored: at once
        wait_until_sync(down, 5, "Redis")
    with pytest.raises(AssertionError, match=r"waiting for Redis \(last: ConnectionError\('down'\)\)"):
        wait_until_sync(down, 0.02, "Redis", every=0.005, ignore=(ConnectionError,))


@pytest.mark.parametrize("line,fields", [
    ("2026-12-03T13:00:00Z INFO    litbotd.daemon ready host=h instance=i pid=123 workers=2 listen=127.0.0.1:8080",
     (123, 8080)),
    ("2026-12-03T13:00:00Z INFO    litbotd.daemon ready host=h pid=77 workers=2 listen=off", (77, None)),
    ('{"ts": 1, "level": "info", "logger": "litbotd.daemon", "msg": "ready", "pid": 5, "listen": "127.0.0.1:9"}',
     (5, 9)),
    ("2026-12-03T13:00:00Z INFO    litbotd.pool workers ready pid=3", (None, None)),
    ('{"logger": "litbotd.worker", "msg": "ready", "pid": 5}', (None, None)),
    ("not a log line", (None, None)),
])
def test_a_daemons_ready_line_gives_its_pid_and_port(line: str, fields: tuple[int | None, int | None]) -> None:
    assert _ready_fields(line) == fields
