"""A finished local job is reported at once (SPEC §3 `poll_interval`: local jobs report their own end).

The job's runner announces its end as its last act (backends/localrun.py `announce_end`); the
backend hands the names over (`LocalBackend.ended`), and here the run's `wait_job`, waiting in the
delayed set for its next poll, is moved to the main list now. Its poll stays the safety net: a
daemon that was down when a job ended finds it at the next poll.

An end can arrive before the wait_job it should bring forward is in the delayed set (the poll that
saw the job running, or start_job, has not finished yet): the promotion is tried again a few times,
over about as long as one poll_interval.
"""
from __future__ import annotations

import time
from typing import Callable

from . import logs
from .backends.base import Backend
from .queue import Queue
from .tasks import Task

log = logs.get("litbotd.jobends")

RETRY_AFTER = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0)  # seconds, while no delayed wait_job is found


def waits_for(name: str) -> tuple[str, Callable[[Task], bool]]:
    """The ZSCAN glob and the predicate of the wait_job tasks of job `name` (tasks.py JSON has
    sorted keys, no spaces: `"job":"NAME"`; job names are [a-z0-9-], nothing to escape)."""
    return f'*"job":"{name}"*', lambda t: t.kind == "wait_job" and t.payload.get("job") == name


class JobEnds:
    """One per daemon: ended jobs in, their waiting wait_jobs brought forward."""

    def __init__(self) -> None:
        self.pending: dict[str, tuple[int, float]] = {}  # job -> (tries so far, when to try next)
        self.broken = False

    async def step(self, queue: Queue, backend: Backend | None, block: float) -> float | None:
        """One round: wait up to `block` seconds for ended jobs, then bring forward what is due.
        None when the backend does not report ends (the pool loop then waits its interval)."""
        if backend is None or not backend.reports_end or self.broken:
            return None
        now = time.monotonic()
        wait = min([block, *(max(0.0, due - now) for _, due in self.pending.values())])
        try:
            names = await backend.ended(wait)
        except Exception as e:  # the FIFO cannot be used here: polls report the jobs instead
            log.warning("local jobs' ends cannot be watched; their polls report them", error=logs.redact(str(e)))
            self.broken = True
            return None
        now = time.monotonic()
        for name in names:
            self.pending[name] = (0, now)
        for name, (tries, due) in list(self.pending.items()):
            if due > now:
                continue
            match, want = waits_for(name)
            if await queue.bring_forward(match, want):
                log.debug("job ended: its wait_job brought forward", job=name, tries=tries + 1)
                del self.pending[name]
            elif tries >= len(RETRY_AFTER):
                del self.pending[name]  # its poll, or the results already under way, report it
            else:
                self.pending[name] = (tries + 1, now + RETRY_AFTER[tries])
        return 0.0
