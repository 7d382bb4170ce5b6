"""The one poll-with-a-deadline of the tests. `await wait_until(...)` in async tests,
`wait_until_sync(...)` in plain ones: the same arguments, the same message, the same loop.

    probe    called until it returns something truthy, which is returned; in wait_until it may be
             a coroutine function (its result is awaited)
    timeout  seconds; then AssertionError "timed out after Ns waiting for WHAT (last: ...)"
    what     what is awaited, for that message
    every    seconds between two probes
    ignore   exception types that mean "not yet" (e.g. redis ConnectionError while Redis restarts)
"""
from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Callable

DEFAULT_TIMEOUT = 20.0
DEFAULT_EVERY = 0.05


class _Deadline:
    def __init__(self, timeout: float, what: str) -> None:
        self.timeout, self.what = timeout, what
        self.end = time.monotonic() + timeout

    def settle(self, value: Any, error: BaseException | None) -> Any:
        """The value when truthy; AssertionError once the deadline passed; else None (poll again)."""
        if value:
            return value
        if time.monotonic() > self.end:
            last = error if error is not None else value
            raise AssertionError(f"timed out after {self.timeout:g}s waiting for {self.what} (last: {last!r})")
        return None


async def wait_until(probe: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT, what: str = "condition", *,
                     every: float = DEFAULT_EVERY, ignore: tuple[type[BaseException], ...] = ()) -> Any:
    deadline = _Deadline(timeout, what)
    while True:
        try:
            value, error = probe(), None
            if inspect.isawaitable(value):
                value = await value
        except ignore as e:
            value, error = None, e
        if got := deadline.settle(value, error):
            return got
        await asyncio.sleep(every)


def wait_until_sync(probe: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT, what: str = "condition", *,
                    every: float = DEFAULT_EVERY, ignore: tuple[type[BaseException], ...] = ()) -> Any:
    deadline = _Deadline(timeout, what)
    while True:
        try:
            value, error = probe(), None
        except ignore as e:
            value, error = None, e
        if got := deadline.settle(value, error):
            return got
        time.sleep(every)
