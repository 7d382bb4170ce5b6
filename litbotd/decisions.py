"""The task state machine's decisions, as pure functions (no Redis, no HTTP).

lifecycle/ gathers the facts (job status, clocks, run state), asks these functions what to do,
and does it.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

# GitHub's conclusions (SPEC §5).
SUCCESS, FAILURE, TIMED_OUT, CANCELLED, NEUTRAL, ACTION_REQUIRED = (
    "success", "failure", "timed_out", "cancelled", "neutral", "action_required")
WRITE_PERMISSIONS = frozenset({"admin", "maintain", "write"})


def job_name(repo: str, sha: str, run_key: str, attempt: int, try_n: int = 1) -> str:
    """Deterministic, so a crash between starting a job and recording it finds the same job.
    Each infrastructure retry (`try_n` > 1, SPEC §11) of an attempt is a job of its own name."""
    extra = f"\ntry {try_n}" if try_n > 1 else ""
    digest = hashlib.sha256(f"{repo}\n{sha}\n{run_key}\n{attempt}{extra}".encode()).hexdigest()[:20]
    return f"litci-{digest}"


def external_id(run_key: str, attempt: int) -> str:
    """The check run's external_id: how a re-executed task finds the check run it already created."""
    return f"{run_key}/{attempt}"


def parse_external_id(value: str | None) -> tuple[str, int] | None:
    if not value or "/" not in value:
        return None
    key, _, attempt = value.rpartition("/")
    return (key, int(attempt)) if attempt.isdigit() else None


def next_poll(current: float, first: float, cap: float, state: str = "pending",
              reports_end: bool = False) -> float:
    """The wait before the next wait_job poll. A running job is read every poll_interval (`first`):
    its end is what the PR waits for. A pending one backs off to poll_interval_max (`cap`), and so
    does every poll of a backend that reports its jobs' ends itself (local): there the poll is only
    the safety net."""
    if state in ("running", "stopping") and not reports_end:
        return first
    return min(cap, max(first, current * 1.5))


@dataclass(frozen=True)
class WaitDecision:
    action: str          # "poll" | "results" | "stop"
    conclusion: str | None = None
    message: str = ""


def decide_wait(state: str, now: float, queued_at: float, running_since: float | None,
                timeout: float, queue_timeout: float, grace: float,
                unknown_since: float | None = None) -> WaitDecision:
    """What a wait_job poll does with the job's state.

    The job enforces its own timeout (bootstrap kills the script); the bot enforces it again
    after a grace, for a job whose platform never reports back. A state the backend reports but
    litbotd does not know ("unknown", since `unknown_since`) counts as still running, never as
    pending, for at most queue_timeout (SPEC §11)."""
    if state in ("succeeded", "failed", "stopped"):
        return WaitDecision("results")
    if state == "pending" and now - queued_at > queue_timeout:
        return WaitDecision("stop", TIMED_OUT, f"the job stayed pending longer than {_mins(queue_timeout)} (queue_timeout)")
    if state == "unknown" and now - (unknown_since if unknown_since is not None else now) > queue_timeout:
        return WaitDecision("stop", NEUTRAL, "the backend reported a state litbotd does not know for longer than "
                                             f"{_mins(queue_timeout)} (queue_timeout)")
    if state in ("running", "stopping", "unknown") and running_since is not None and now - running_since > timeout + grace:
        return WaitDecision("stop", TIMED_OUT, f"the job ran longer than its timeout of {_mins(timeout)}")
    return WaitDecision("poll")


def conclusion_for(state: str, exit_code: int | None, timed_out: bool, cancel_requested: bool = False) -> str:
    """A final job state → the check run's conclusion (SPEC §5). A cancel is recorded by the
    cancel itself (runstate's atomic transition), never derived from the job's state; but a job
    found stopped after its run's cancel was requested is that cancel, seen first by the poll
    (the cancel stops the machines before it records the conclusions)."""
    if timed_out:
        return TIMED_OUT
    if state == "succeeded" and exit_code in (0, None):
        return SUCCESS
    if state == "failed" or (exit_code not in (None, 0)):
        return FAILURE
    if cancel_requested:
        return CANCELLED
    return NEUTRAL  # stopped by someone else, or unknown: we cannot say how it went


def may_start(run_state: dict[str, str], try_n: int = 1) -> bool:
    """A run starts its job only while nothing has ended it or asked it to stop, and only for the
    infrastructure try in force (a stale start of an earlier try starts nothing)."""
    return (not run_state.get("conclusion") and not run_state.get("cancel_reason")
            and int(run_state.get("try") or 1) == try_n)


def needs_met(run_state: dict[str, str]) -> bool:
    """The `needs` gate of start_job: a run waiting for the runs it needs does not start (the
    `needs` phase releases it, ordering.release)."""
    return not run_state.get("waiting")


def needs_token(private: bool | None) -> bool:
    """Public repositories need no token; when we don't know (a re-run), mint one to be safe."""
    return private is not False


def restart_on_reopen(last_conclusion: str | None) -> bool:
    """Reopening a PR starts again the runs that closing it cancelled, and only those."""
    return last_conclusion == CANCELLED


def cancel_skips(run_state: dict[str, str]) -> bool:
    """A cancel leaves alone a run already reported, or one whose result won the race (results
    reports that one)."""
    return bool(run_state.get("reported")) or run_state.get("conclusion") not in (None, CANCELLED)


def dead_task_conclusion(kind: str, attempts: int, error: str) -> tuple[str, str] | None:
    """The conclusion and message of a run whose task was given up on; None for tasks that are
    not about one run."""
    if kind == "start_job":
        return FAILURE, f"the job failed to start: {error}"
    if kind in ("wait_job", "results"):
        return NEUTRAL, f"litbotd gave up after {attempts} attempts: {error}"
    return None


def _mins(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


@dataclass(frozen=True)
class Command:
    verb: str                 # "run" | "cancel" | "ok-to-test" | "approve-cost" | "unknown"
    names: tuple[str, ...] = ()
    text: str = ""


_VERBS = ("run", "cancel", "ok-to-test", "approve-cost")


def parse_command(body: str, prefix: str) -> Command | None:
    """`/litci run [NAME…]`, `/litci cancel`, `/litci ok-to-test`, `/litci approve-cost`; None when
    not addressed to us.
    Names may be quoted to hold spaces: /litci run "PR checks (3.11)"."""
    line = body.strip().splitlines()[0].strip() if body.strip() else ""
    if not line.startswith(prefix) or (len(line) > len(prefix) and not line[len(prefix)].isspace()):
        return None
    rest = line[len(prefix):].strip()
    verb, _, args = rest.partition(" ")
    if verb not in _VERBS:
        return Command("unknown", text=line)
    names = tuple(m.group(1) or m.group(2) for m in re.finditer(r'"([^"]+)"|(\S+)', args))
    if verb != "run" and names:
        return Command("unknown", text=line)
    return Command(verb, names, line)


def may_command(permission: str | None, role_name: str | None) -> bool:
    return (permission or "").lower() in WRITE_PERMISSIONS or (role_name or "").lower() in WRITE_PERMISSIONS


def is_trusted(fork: bool, association: str, trusted: tuple[str, ...]) -> bool:
    """Fork safety: a fork PR by someone outside `trusted_associations` starts nothing unapproved."""
    return not fork or association.upper() in {a.upper() for a in trusted}


def select_runs(check_names: dict[str, str], names: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Runs named by `/litci run NAME…`: a name matches a check name exactly or its workflow prefix
    ("PR checks" selects every "PR checks (…)"), case-insensitively. Returns (run keys, unknown names)."""
    if not names:
        return sorted(check_names), []
    picked: set[str] = set()
    unknown = []
    for name in names:
        n = name.lower()
        hits = [k for k, c in check_names.items() if c.lower() == n or c.lower().startswith(n + " (")]
        if hits:
            picked.update(hits)
        else:
            unknown.append(name)
    return sorted(picked), unknown
