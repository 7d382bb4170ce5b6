"""The phases' pure decisions: no Redis, no HTTP."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from litbotd import decisions
from litbotd import decisions as d


def test_job_name_is_deterministic_and_distinct_per_attempt():
    a = d.job_name("o/r", "a" * 40, "ci-3-11-1a2b3c4d", 1)
    assert a == d.job_name("o/r", "a" * 40, "ci-3-11-1a2b3c4d", 1)
    assert a != d.job_name("o/r", "a" * 40, "ci-3-11-1a2b3c4d", 2)
    assert a != d.job_name("o/other", "a" * 40, "ci-3-11-1a2b3c4d", 1)
    # infrastructure retries (SPEC §11): a name per try, try 1 keeps the attempt's name
    assert d.job_name("o/r", "a" * 40, "ci-3-11-1a2b3c4d", 1, 1) == a
    tries = {d.job_name("o/r", "a" * 40, "ci-3-11-1a2b3c4d", 1, n) for n in (1, 2, 3)}
    assert len(tries) == 3 and d.job_name("o/r", "a" * 40, "ci-3-11-1a2b3c4d", 1, 2) in tries
    assert all(n.startswith("litci-") and len(n) <= 60 for n in tries)
    assert a.startswith("litci-") and len(a) <= 60 and a.replace("-", "").isalnum()


def test_external_id_round_trip():
    assert d.parse_external_id(d.external_id("ci-x-1234", 3)) == ("ci-x-1234", 3)
    assert d.parse_external_id("fork-approval") is None
    assert d.parse_external_id(None) is None
    assert d.parse_external_id("key/notanumber") is None


@given(st.floats(0.1, 100), st.floats(0.1, 50), st.floats(50, 500))
def test_next_poll_backs_off_within_bounds(current, first, cap):
    nxt = d.next_poll(current, first, cap)
    assert first <= nxt <= cap
    assert nxt >= min(cap, current)


def test_decide_wait():
    now = 10_000.0
    assert d.decide_wait("succeeded", now, 0, None, 60, 600, 30).action == "results"
    assert d.decide_wait("failed", now, 0, None, 60, 600, 30).action == "results"
    assert d.decide_wait("pending", now, now - 10, None, 60, 600, 30).action == "poll"
    pending_too_long = d.decide_wait("pending", now, now - 601, None, 60, 600, 30)
    assert (pending_too_long.action, pending_too_long.conclusion) == ("stop", d.TIMED_OUT)
    assert "queue_timeout" in pending_too_long.message
    assert d.decide_wait("running", now, 0, now - 80, 60, 600, 30).action == "poll"  # within the grace
    too_long = d.decide_wait("running", now, 0, now - 91, 60, 600, 30)
    assert (too_long.action, too_long.conclusion) == ("stop", d.TIMED_OUT)
    assert "1 min" in too_long.message


def test_decide_wait_unknown_state_counts_as_running_up_to_queue_timeout():
    """SPEC §11: a state litbotd does not know is never pending, and never waited on for good."""
    now = 10_000.0
    assert d.decide_wait("unknown", now, now - 5000, None, 60, 600, 30, unknown_since=now - 10).action == "poll"
    assert d.decide_wait("unknown", now, now - 5000, None, 60, 600, 30, unknown_since=None).action == "poll"
    gave_up = d.decide_wait("unknown", now, 0, None, 3600, 600, 30, unknown_since=now - 601)
    assert (gave_up.action, gave_up.conclusion) == ("stop", d.NEUTRAL)
    assert "does not know" in gave_up.message and "queue_timeout" in gave_up.message and "pending" not in gave_up.message
    ran_too_long = d.decide_wait("unknown", now, 0, now - 91, 60, 600, 30, unknown_since=now - 5)
    assert (ran_too_long.action, ran_too_long.conclusion) == ("stop", d.TIMED_OUT)


def test_conclusions():
    assert d.conclusion_for("succeeded", 0, False) == d.SUCCESS
    assert d.conclusion_for("failed", 1, False) == d.FAILURE
    assert d.conclusion_for("failed", None, False) == d.FAILURE
    assert d.conclusion_for("failed", 124, True) == d.TIMED_OUT
    assert d.conclusion_for("stopped", None, False) == d.NEUTRAL
    assert d.conclusion_for("unknown", None, False) == d.NEUTRAL
    # A job the poll finds stopped after its run's cancel was asked for is that cancel.
    assert d.conclusion_for("stopped", None, False, cancel_requested=True) == d.CANCELLED
    assert d.conclusion_for("failed", 1, False, cancel_requested=True) == d.FAILURE  # a real result wins


def test_parse_command():
    assert d.parse_command("/litci run", "/litci") == d.Command("run", (), "/litci run")
    assert d.parse_command('/litci run "PR checks (3.11)" lint\nthanks', "/litci").names == ("PR checks (3.11)", "lint")
    assert d.parse_command("  /litci cancel  ", "/litci").verb == "cancel"
    assert d.parse_command("/litci ok-to-test", "/litci").verb == "ok-to-test"
    assert d.parse_command("/litci frobnicate", "/litci").verb == "unknown"
    assert d.parse_command("/litci cancel now", "/litci").verb == "unknown"
    assert d.parse_command("/litcix run", "/litci") is None
    assert d.parse_command("please /litci run", "/litci") is None
    assert d.parse_command("", "/litci") is None


def test_permissions_and_trust():
    assert d.may_command("write", None) and d.may_command("admin", "admin") and d.may_command("read", "maintain")
    assert not d.may_command("read", "triage") and not d.may_command(None, None)
    trusted = ("OWNER", "MEMBER", "COLLABORATOR")
    assert d.is_trusted(False, "NONE", trusted)           # not a fork
    assert d.is_trusted(True, "member", trusted)
    assert not d.is_trusted(True, "FIRST_TIME_CONTRIBUTOR", trusted)


def test_select_runs():
    names = {"k1": "PR checks (3.11)", "k2": "PR checks (3.12)", "k3": "lint"}
    assert d.select_runs(names, ()) == (["k1", "k2", "k3"], [])
    assert d.select_runs(names, ("pr checks",)) == (["k1", "k2"], [])
    assert d.select_runs(names, ("PR checks (3.12)", "LINT")) == (["k2", "k3"], [])
    assert d.select_runs(names, ("docs",)) == ([], ["docs"])


def test_a_run_starts_only_while_nothing_ended_or_cancelled_it() -> None:
    assert decisions.may_start({"status": "queued"})
    assert not decisions.may_start({"status": "queued", "cancel_reason": "closed"})
    assert not decisions.may_start({"status": "completed", "conclusion": "cancelled"})
    assert decisions.may_start({"status": "in_progress", "try": "2"}, 2)
    assert not decisions.may_start({"status": "in_progress", "try": "3"}, 2)  # a stale start of an earlier try
    assert not decisions.may_start({"status": "in_progress", "try": "2"})


def test_token_only_when_the_repository_may_be_private() -> None:
    assert decisions.needs_token(True) and decisions.needs_token(None) and not decisions.needs_token(False)


def test_reopen_restarts_only_cancelled_runs() -> None:
    assert decisions.restart_on_reopen("cancelled")
    assert not decisions.restart_on_reopen("success") and not decisions.restart_on_reopen(None)


def test_cancel_skips_reported_runs_and_results_that_won() -> None:
    assert decisions.cancel_skips({"reported": "1", "conclusion": "cancelled"})
    assert decisions.cancel_skips({"conclusion": "success"})
    assert not decisions.cancel_skips({"status": "in_progress"})
    assert not decisions.cancel_skips({"conclusion": "cancelled"})  # reported by nobody yet


def test_dead_task_conclusion() -> None:
    assert decisions.dead_task_conclusion("start_job", 5, "boom") == ("failure", "the job failed to start: boom")
    assert decisions.dead_task_conclusion("results", 5, "boom") == ("neutral", "litbotd gave up after 5 attempts: boom")
    assert decisions.dead_task_conclusion("comment", 5, "boom") is None


@pytest.mark.parametrize("state,reports_end,current,expected", [
    ("running", False, 10, 10),     # Lightning, running: every poll_interval, never slower
    ("running", False, 30, 10),     # back from a pending backoff to the running rate
    ("stopping", False, 20, 10),
    ("pending", False, 10, 15),     # pending: backs off ...
    ("pending", False, 25, 30),     # ... up to poll_interval_max
    ("running", True, 10, 15),      # local: the job reports its end; the poll is the safety net
    ("running", True, 30, 30),
])
def test_next_poll_reads_a_running_job_every_poll_interval(state, reports_end, current, expected):
    assert d.next_poll(current, 10, 30, state, reports_end) == expected


def test_parse_approve_cost():
    assert d.parse_command("/litci approve-cost", "/litci") == d.Command("approve-cost", (), "/litci approve-cost")
    assert d.parse_command("/litci approve-cost now", "/litci").verb == "unknown"
    assert d.parse_command("/litci approve-costs", "/litci").verb == "unknown"


def test_needs_gate_holds_a_waiting_run() -> None:
    from litbotd.decisions import needs_met

    assert needs_met({"status": "queued"}) and needs_met({})
    assert not needs_met({"status": "queued", "waiting": "waiting for lint"})
