"""What becomes of a task once its handler ran: done, retried later, or dead (SPEC §6). Pure.

`outcome_for` is the one place that decides retry against dead letter (saq's `Job.retryable`,
as a function): the worker runs the handler, asks, and commits what it is told. LOST is not
decided here: it is what the finish reports when the task's lease lapsed while it ran.
"""
from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from .backoff import backoff
from .config import WorkersConfig
from .tasks import Permanent, Task


class Outcome(enum.StrEnum):
    """A task's outcome; the value is the `outcome` label of litbotd_tasks_total (kept as it was)."""
    DONE = "done"    # the handler returned: its successors are committed
    RETRY = "retry"  # it failed and runs again after a backoff
    DEAD = "dead"    # given up: to the dead letter, with its on_dead successors
    LOST = "lost"    # its lease lapsed while it ran: requeued elsewhere, its successors dropped


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    attempt: int = 0      # attempts made, this one counted (RETRY, DEAD)
    delay: float = 0.0    # RETRY: seconds until it runs again
    run_at: float = 0.0   # RETRY: when


def outcome_for(task: Task, error: BaseException | None, config: WorkersConfig, now: float,
                rng: random.Random | None = None) -> Decision:
    """The outcome of one run of `task` that raised `error` (None: it returned). A Permanent
    error (retrying cannot help: e.g. a gone repository) is dead at once; any other is retried
    with the one backoff until workers.max_attempts are spent. (A task that cannot run at all, an
    unknown kind or a payload its schema refuses, never reaches a handler: the worker sends it
    to the dead letter as DEAD before.)"""
    if error is None:
        return Decision(Outcome.DONE, task.attempt)
    attempt = task.attempt + 1
    if isinstance(error, Permanent) or attempt >= config.max_attempts:
        return Decision(Outcome.DEAD, attempt)
    delay = backoff(attempt, config.retry_backoff, config.retry_backoff_max, rng)
    return Decision(Outcome.RETRY, attempt, delay, now + delay)
