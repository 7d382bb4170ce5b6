"""outcomes.outcome_for: retry or dead letter, as a table. No Redis, no handler run."""
from __future__ import annotations

import random

import pytest

from litbotd.config import WorkersConfig
from litbotd.outcomes import Decision, Outcome, outcome_for
from litbotd.tasks import Permanent, Task
from litbotd.worker import TaskTimeout

NOW = 1_000.0
CFG = WorkersConfig(max_attempts=5, retry_backoff=2.0, retry_backoff_max=300.0)


class _NoJitter(random.Random):
    def random(self) -> float:
        return 1.0


def _task(attempt: int) -> Task:
    return Task(kind="start_job", payload={}, attempt=attempt)


ROWS = [
    ("returned", 0, None, CFG, Decision(Outcome.DONE, 0)),
    ("returned on a later attempt", 2, None, CFG, Decision(Outcome.DONE, 2)),
    ("first failure: retry after retry_backoff", 0, RuntimeError("x"), CFG, Decision(Outcome.RETRY, 1, 2.0, NOW + 2.0)),
    ("fourth failure: doubled three times", 3, ConnectionError("x"), CFG,
     Decision(Outcome.RETRY, 4, 16.0, NOW + 16.0)),
    ("a timeout is retried", 1, TaskTimeout("slow"), CFG, Decision(Outcome.RETRY, 2, 4.0, NOW + 4.0)),
    ("attempts spent: dead", 4, RuntimeError("x"), CFG, Decision(Outcome.DEAD, 5)),
    ("permanent: dead at once", 0, Permanent("no handler"), CFG, Decision(Outcome.DEAD, 1)),
    ("a single attempt allowed", 0, RuntimeError("x"), WorkersConfig(max_attempts=1), Decision(Outcome.DEAD, 1)),
    ("the backoff is capped by retry_backoff_max", 9, RuntimeError("x"),
     WorkersConfig(max_attempts=20, retry_backoff=2.0, retry_backoff_max=300.0),
     Decision(Outcome.RETRY, 10, 300.0, NOW + 300.0)),
]


@pytest.mark.parametrize("attempt,error,cfg,expected", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_outcome_for(attempt: int, error: BaseException | None, cfg: WorkersConfig, expected: Decision) -> None:
    assert outcome_for(_task(attempt), error, cfg, NOW, _NoJitter()) == expected


def test_retry_delay_is_jittered_within_the_doubling() -> None:
    delays = {outcome_for(_task(1), RuntimeError("x"), CFG, NOW).delay for _ in range(100)}
    assert all(2.0 <= d <= 4.0 for d in delays) and len(delays) > 1


def test_metric_labels_stay_the_strings_dashboards_use() -> None:
    assert [o.value for o in Outcome] == ["done", "retry", "dead", "lost"]
    assert f"{Outcome.RETRY}" == "retry"
