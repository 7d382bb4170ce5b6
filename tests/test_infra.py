"""infra.py's tables: a backend's record → state and kind of failure; the retry decision (SPEC §11)."""
from __future__ import annotations

import pytest

from litbotd import infra
from litbotd.infra import BUDGET, CAPACITY, IMAGE, LOST, PLATFORM, PREEMPTED, Retry, Verdict


@pytest.mark.parametrize("text, kind", [
    ('Back-off pulling image "acme/nope:1"', IMAGE),
    ("ErrImagePull", IMAGE),
    ("pull access denied for acme/private, repository does not exist", IMAGE),
    ("manifest unknown", IMAGE),
    ("InsufficientInstanceCapacity: no L4 in us-east-1a", CAPACITY),
    ("out of capacity", CAPACITY),
    ("0/12 nodes are available: Unschedulable", CAPACITY),
    ("GPU quota exceeded", CAPACITY),
    ("Spot instance interruption", PREEMPTED),
    ("the machine was preempted", PREEMPTED),
    ("node lost: no heartbeat", LOST),
    ("instance terminated unexpectedly", LOST),
    ("teamspace budget exceeded", BUDGET),
    ("insufficient credits", BUDGET),
    ("", None),
    ("exit status 1", None),
])
def test_kind_of_message(text: str, kind: str | None) -> None:
    assert infra.kind_of_message(text) == kind


PRE = "preempted: the interruptible machine was reclaimed before the script finished"
NO_REASON = "machine lost: the job ended before the script finished, and Lightning gave no reason"


@pytest.mark.parametrize("state, facts, expected", [
    ("pending", {}, Verdict("pending")),
    ("creating", {"message": "waiting for capacity"}, Verdict("pending", message="Lightning: waiting for capacity")),
    ("running", {}, Verdict("running")),
    ("restarting", {"restart_count": 2}, Verdict("running", message="restarted by Lightning 2 times")),
    ("running", {"interruption_notice": True}, Verdict("running")),  # a notice alone ends nothing
    ("stopping", {}, Verdict("stopping")),
    ("fail", {}, Verdict("stopping")),
    ("completed", {"interruption_notice": True}, Verdict("succeeded", 0, "exit code 0")),
    ("stopped", {}, Verdict("stopped", message="stopped")),
    ("deleted", {}, Verdict("stopped", message="stopped")),
    ("stopped", {"message": "stopped by user alice"}, Verdict("stopped", message="stopped (Lightning: stopped by user alice)")),
    ("stopped", {"interruption_notice": True}, Verdict("failed", message=PRE, infra=PREEMPTED)),
    ("stopped", {"message": "budget exceeded"}, Verdict("failed", message="stopped by a budget (Lightning: budget exceeded)",
                                                        infra=BUDGET)),
    ("failed", {}, Verdict("failed", needs_log=True)),
    # the log read: the script's own result line decides, whatever else happened
    ("failed", {"result": ("exit", 3, ""), "log_read": True, "interruption_notice": True}, Verdict("failed", 3, "exit code 3")),
    ("failed", {"result": ("timeout", None, "60"), "log_read": True}, Verdict("failed", None, "timed out after 60s", timed_out=True)),
    ("failed", {"result": ("error", None, "HTTP 404"), "log_read": True}, Verdict("failed", None, "failed to start: HTTP 404")),
    ("failed", {"result": ("exit", 0, ""), "log_read": True}, Verdict("failed", message=NO_REASON, infra=LOST)),
    ("failed", {"result": ("stopped", None, ""), "log_read": True}, Verdict("failed", message=NO_REASON, infra=LOST)),
    ("failed", {"log_read": True}, Verdict("failed", message=NO_REASON, infra=LOST)),
    ("failed", {"log_read": True, "interruption_notice": True}, Verdict("failed", message=PRE, infra=PREEMPTED)),
    ("failed", {"log_read": True, "message": "ErrImagePull", "server_error": "ErrImagePull"},
     Verdict("failed", message="image could not be pulled (Lightning: ErrImagePull)", infra=IMAGE)),
    ("failed", {"log_read": True, "message": "no capacity", "server_error": "quota"},
     Verdict("failed", message="no capacity (Lightning: no capacity; quota)", infra=CAPACITY)),
    ("failed", {"log_read": True, "server_error": "internal error 0x1f"},
     Verdict("failed", message="failed on the platform (Lightning: internal error 0x1f)", infra=PLATFORM)),
    # Lightning restarted the job itself (it should not: max_run_attempts=1): the result says so
    ("completed", {"restart_count": 1}, Verdict("succeeded", 0, "exit code 0 (restarted by Lightning 1 time)")),
    ("failed", {"restart_count": 2, "result": ("exit", 1, ""), "log_read": True},
     Verdict("failed", 1, "exit code 1 (restarted by Lightning 2 times)")),
    ("failed", {"restart_count": 2}, Verdict("failed", needs_log=True)),
    ("quarantined", {}, Verdict("unknown", message="Lightning reports the job state 'quarantined', which litbotd does not know")),
    ("", {}, Verdict("unknown", message="Lightning reports the job state '', which litbotd does not know")),
])
def test_lightning_verdict(state: str, facts: dict, expected: Verdict) -> None:
    assert infra.lightning_verdict(state, **facts) == expected


@pytest.mark.parametrize("state, exit_code, timed_out, kind, expected", [
    ("pending", None, False, "", "running"),
    ("running", None, False, "", "running"),
    ("stopping", None, False, "", "running"),
    ("succeeded", 0, False, "", "success"),
    ("failed", 1, False, "", "test_failure"),
    ("failed", 137, False, "", "test_failure"),
    ("failed", None, True, "", "timed_out"),
    ("failed", None, False, PREEMPTED, "infra"),
    ("failed", None, False, "", "error"),
    ("stopped", None, False, "", "stopped"),
    ("unknown", None, False, "", "unknown"),
])
def test_classify(state: str, exit_code: int | None, timed_out: bool, kind: str, expected: str) -> None:
    assert infra.classify(state, exit_code, timed_out, kind) == expected


@pytest.mark.parametrize("kw, expected", [
    # retried while retries allow, the last try on demand when it asked for interruptible
    ({"infra": PREEMPTED, "try_n": 1, "retries": 2, "interruptible": True}, Retry(2, True)),
    ({"infra": PREEMPTED, "try_n": 2, "retries": 2, "interruptible": True}, Retry(3, False)),
    ({"infra": PREEMPTED, "try_n": 3, "retries": 2, "interruptible": True}, None),
    ({"infra": PREEMPTED, "try_n": 1, "retries": 1, "interruptible": True}, Retry(2, False)),
    ({"infra": LOST, "try_n": 1, "retries": 2, "interruptible": False}, Retry(2, False)),
    ({"infra": IMAGE, "try_n": 1, "retries": 2, "interruptible": False}, Retry(2, False)),
    ({"infra": CAPACITY, "try_n": 2, "retries": 5, "interruptible": True}, Retry(3, True)),
    ({"infra": PLATFORM, "try_n": 1, "retries": 2, "interruptible": False}, Retry(2, False)),
    ({"infra": PREEMPTED, "try_n": 1, "retries": 0, "interruptible": True}, None),   # infra_retries = 0
    ({"infra": BUDGET, "try_n": 1, "retries": 2, "interruptible": False}, None),      # would only stop again
    # never a test failure, a timeout, a stop, a success, a bootstrap error, an unknown state
    ({"exit_code": 1, "try_n": 1, "retries": 2, "interruptible": True}, None),
    ({"exit_code": 1, "infra": PREEMPTED, "try_n": 1, "retries": 2, "interruptible": True}, None),
    ({"timed_out": True, "infra": PREEMPTED, "try_n": 1, "retries": 2, "interruptible": True}, None),
    ({"state": "stopped", "try_n": 1, "retries": 2, "interruptible": True}, None),
    ({"state": "succeeded", "exit_code": 0, "try_n": 1, "retries": 2, "interruptible": True}, None),
    ({"try_n": 1, "retries": 2, "interruptible": True}, None),
    ({"state": "unknown", "infra": LOST, "try_n": 1, "retries": 2, "interruptible": True}, None),
])
def test_decide_retry(kw: dict, expected: Retry | None) -> None:
    args = {"state": "failed", "exit_code": None, "timed_out": False, "infra": "", **kw}
    assert infra.decide_retry(**args) == expected


def test_attempt_lines() -> None:
    assert infra.attempt_line(2, 3, "preempted") == "attempt 2 of 3: preempted"
    assert infra.outcome_text("failed", None, False, PREEMPTED) == "preempted"
    assert infra.outcome_text("failed", None, False, IMAGE) == "image could not be pulled"
    assert infra.outcome_text("succeeded", 0, False, "") == "passed"
    assert infra.outcome_text("failed", 2, False, "") == "exit code 2"
    assert infra.server_text("a  b", "a b") == "a b"
    assert infra.server_text("x", "y") == "x; y"

    assert infra.final_message("preempted: x", 3, 3) == "the infrastructure failed on attempt 3 of 3, not the tests: preempted: x"
    assert infra.final_message("no capacity", 1, 1) == "the infrastructure failed, not the tests: no capacity"
