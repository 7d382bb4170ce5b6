"""Infrastructure failures told apart from test failures, and the retry decision (SPEC §11). Pure.

Three questions, each one function:
- `lightning_verdict`: what a Lightning job record says (its raw state, the server's `message` /
  `serverError`, `interruptionNoticeReceived`, `restartCount`, and the script's result line when
  the log was read) → a backend state, and the kind of infrastructure failure if it was one;
- `classify`: a job's status → "running" | "success" | "test_failure" | "timed_out" | "infra" |
  "stopped" | "unknown" | "error" (failed, but neither the script's own exit nor the platform:
  the bootstrap could not fetch the code);
- `decide_retry`: whether a finished try is tried again, and on what kind of machine.

A test failure — the script's own non-zero exit — is never retried: only the infrastructure is.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

PREEMPTED, LOST, IMAGE, CAPACITY, BUDGET, PLATFORM = (
    "preempted", "machine_lost", "image_pull", "capacity", "budget", "platform")
KINDS = {
    PREEMPTED: "preempted",
    LOST: "machine lost",
    IMAGE: "image could not be pulled",
    CAPACITY: "no capacity",
    BUDGET: "stopped by a budget",
    PLATFORM: "failed on the platform",
}
# A budget stop would only stop again: it is the infrastructure, but not retried.
RETRIED = frozenset({PREEMPTED, LOST, IMAGE, CAPACITY, PLATFORM})

# The server's own words → the kind, first match wins. Lightning's messages are free text (the
# cloud's and Kubernetes' reasons passed on), so these are the phrases those use.
_MESSAGE_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (BUDGET, re.compile(r"budget|spending limit|insufficient (?:funds|credits?|balance)|out of credits"
                        r"|payment|billing", re.IGNORECASE)),
    (IMAGE, re.compile(r"imagepull|errimage|pull(?:ing)? (?:the )?image|image pull|pull access denied"
                       r"|manifest (?:unknown|not found)|repository does not exist|image .*not found"
                       r"|invalidimagename", re.IGNORECASE)),
    (CAPACITY, re.compile(r"capacity|insufficientinstance|no (?:available )?(?:machines?|instances?|nodes?)"
                          r"|not enough (?:gpus?|resources)|quota|unschedulable|zone .*exhausted", re.IGNORECASE)),
    (PREEMPTED, re.compile(r"preempt|spot|interrupt|reclaim", re.IGNORECASE)),
    (LOST, re.compile(r"machine (?:was )?lost|node (?:was )?lost|lost contact|unreachable|not ready"
                      r"|terminated unexpectedly|instance (?:was )?terminated|heartbeat|evicted|hardware",
                      re.IGNORECASE)),
)

# Lightning's raw job states (lightning_sdk JobApiV2.v2_job_state_*). The SDK maps any other
# state to "Pending"; here another state is "unknown", never pending.
_PENDING = frozenset({"pending", "creating"})
_RUNNING = frozenset({"running", "restarting"})
# The workload has exited but the platform has not settled its logs and result yet.
_STOPPING = frozenset({"stopping", "stop", "delete", "complete", "fail"})
_STOPPED = frozenset({"stopped", "deleted"})
LIGHTNING_STATES = _PENDING | _RUNNING | _STOPPING | _STOPPED | {"completed", "failed"}


def kind_of_message(text: str) -> str | None:
    """The kind of infrastructure failure a backend's message describes, or None."""
    for kind, pattern in _MESSAGE_KINDS:
        if pattern.search(text or ""):
            return kind
    return None


def server_text(message: str, server_error: str) -> str:
    """The backend's own reason, one line: its message and server error, each once."""
    parts: list[str] = []
    for p in (message, server_error):
        p = " ".join((p or "").split())
        if p and p not in parts:
            parts.append(p)
    return "; ".join(parts)


@dataclass(frozen=True)
class Verdict:
    state: str               # a JobStatus state
    exit_code: int | None = None
    message: str = ""
    timed_out: bool = False
    infra: str = ""          # a KINDS key when the infrastructure failed
    needs_log: bool = False  # decided only by the script's result line: read the log and ask again


def lightning_verdict(state: str, *, message: str = "", server_error: str = "", interruption_notice: bool = False,
                      restart_count: int = 0, result: tuple[str, int | None, str] | None = None,
                      log_read: bool = False) -> Verdict:
    """A Lightning job record → its status. `result` is the bootstrap's result line (kind, exit
    code, detail) once the log has been read (`log_read`); it decides a failed job: a result line
    consistent with a failure is the script's own, anything else is the infrastructure's."""
    v = _lightning_verdict(state, server_text(message, server_error), interruption_notice, restart_count,
                           result, log_read)
    if restart_count and v.state in ("succeeded", "failed", "stopped") and not v.needs_log:
        # max_run_attempts=1 should keep Lightning from restarting a job; should it anyway, say so.
        v = replace(v, message=f"{v.message} ({_restarts(restart_count)})")
    return v


def _restarts(n: int) -> str:
    return f"restarted by Lightning {n} time{'s' if n != 1 else ''}"


def _lightning_verdict(state: str, said: str, interruption_notice: bool, restart_count: int,
                       result: tuple[str, int | None, str] | None, log_read: bool) -> Verdict:
    note = f"Lightning: {said}" if said else ""
    if state in _PENDING:
        return Verdict("pending", message=note)
    if state in _RUNNING:
        restarted = _restarts(restart_count) if restart_count else ""
        return Verdict("running", message="; ".join(p for p in (restarted, note) if p))
    if state in _STOPPING:
        return Verdict("stopping", message=note)
    if state == "completed":
        return Verdict("succeeded", 0, "exit code 0")
    if state in _STOPPED:
        kind = PREEMPTED if interruption_notice else kind_of_message(said)
        if kind is None:
            return Verdict("stopped", message=f"stopped ({note})" if note else "stopped")
        return _infra(kind, said)
    if state != "failed":
        return Verdict("unknown", message=f"Lightning reports the job state {state[:60]!r}, which litbotd does not know")
    if not log_read:
        return Verdict("failed", needs_log=True)
    if result is not None:
        kind_, code, detail = result
        # Failed means the bootstrap exited non-zero: a result line saying 0 or "stopped" cannot
        # be its own; trust only the ones consistent with a failure.
        if kind_ == "exit" and code:
            return Verdict("failed", code, f"exit code {code}")
        if kind_ == "timeout":
            return Verdict("failed", message=f"timed out after {detail}s", timed_out=True)
        if kind_ == "error":
            return Verdict("failed", message=f"failed to start: {detail}")
    # The script never finished: the platform ended it.
    kind = PREEMPTED if interruption_notice else (kind_of_message(said) or (PLATFORM if said else LOST))
    return _infra(kind, said)


def _infra(kind: str, said: str) -> Verdict:
    text = {
        PREEMPTED: "preempted: the interruptible machine was reclaimed before the script finished",
        LOST: "machine lost: the job ended before the script finished, and Lightning gave no reason",
    }.get(kind, KINDS[kind])
    return Verdict("failed", message=f"{text} (Lightning: {said})" if said else text, infra=kind)


def classify(state: str, exit_code: int | None, timed_out: bool, infra: str) -> str:
    """A job's status → what happened to the run (module docstring)."""
    if state in ("pending", "running", "stopping"):
        return "running"
    if state == "succeeded":
        return "success"
    if state == "stopped":
        return "stopped"
    if state != "failed":
        return "unknown"
    if timed_out:
        return "timed_out"
    if exit_code:
        return "test_failure"
    if infra:
        return "infra"
    return "error"


@dataclass(frozen=True)
class Retry:
    next_try: int
    interruptible: bool   # the next try's machine: on demand (False) on the last try


def decide_retry(*, state: str, exit_code: int | None, timed_out: bool, infra: str, try_n: int,
                 retries: int, interruptible: bool) -> Retry | None:
    """Try `try_n` (1-based) ended: try again when the infrastructure failed it, the kind is one
    worth retrying and `retries` (jobs.infra_retries) allows; the last try on demand."""
    if classify(state, exit_code, timed_out, infra) != "infra" or infra not in RETRIED or try_n > retries:
        return None
    last = try_n + 1 == retries + 1
    return Retry(try_n + 1, interruptible and not last)


def attempt_line(n: int, total: int, what: str) -> str:
    """One try as the check run shows it: "attempt 2 of 3: preempted"."""
    return f"attempt {n} of {total}: {what}"


def outcome_text(state: str, exit_code: int | None, timed_out: bool, infra: str) -> str:
    """A few words for a finished try: "passed", "exit code 1", "preempted"…"""
    c = classify(state, exit_code, timed_out, infra)
    if c == "infra":
        return KINDS.get(infra, infra)
    return {"success": "passed", "test_failure": f"exit code {exit_code}", "timed_out": "timed out",
            "stopped": "stopped", "running": "running", "unknown": "outcome unknown"}.get(c, "failed")


def final_message(message: str, try_n: int, total: int) -> str:
    """Why a run the infrastructure failed for the last time concluded `failure` (SPEC §11)."""
    tried = f" on attempt {try_n} of {total}" if total > 1 else ""
    return f"the infrastructure failed{tried}, not the tests: {message}"
