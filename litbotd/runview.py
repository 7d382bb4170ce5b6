"""What a run page shows, decided from the recorded run (SPEC §9). Pure.

The page shows the whole log from line 1 when it is short; a long one is shown tail first
(`PAGE_LINES` lines, at most `PAGE_BYTES`), with links to the earlier and later parts, so a 100 MB
log is never rendered whole. `?from=N` asks for the part that starts at line N.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping

PAGE_LINES = 5000
PAGE_BYTES = 2 * 1024 * 1024
MAX_FROM = 10 ** 9

_CONCLUSION_TEXT = {"success": "succeeded", "failure": "failed", "timed_out": "timed out", "cancelled": "cancelled",
                    "neutral": "neutral", "action_required": "waiting for approval", "skipped": "skipped"}


def status(state: Mapping[str, str]) -> tuple[str, str]:
    """(text, badge class) of a run's recorded state."""
    conclusion = state.get("conclusion")
    if conclusion:
        return _CONCLUSION_TEXT.get(conclusion, conclusion), conclusion if conclusion in _CONCLUSION_TEXT else "neutral"
    if state.get("cancel_reason"):
        return "cancelling", "cancelled"
    if state.get("status") == "in_progress":
        return "running", "running"
    return "queued", "queued"


def final(state: Mapping[str, str]) -> bool:
    return bool(state.get("conclusion"))


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f > 0 else None


def when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else ""


def took(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m {s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m"


@dataclass(frozen=True)
class Facts:
    repo: str
    sha: str
    attempt: int
    check_name: str
    status_text: str
    badge: str
    pr: int | None
    machine: str
    image: str
    backend: str
    started: str
    finished: str
    duration: str
    message: str
    retry_reason: str
    job_url: str
    cost: str


def facts(repo: str, sha: str, attempt: int, state: Mapping[str, str], spec: Mapping[str, Any],
          now: float | None = None) -> Facts:
    """The page's summary. `spec` holds check_name, machine, image, backend, pr (what the run was
    started with); `state` is the run's hash. Only what is listed here reaches the page."""
    text, badge = status(state)
    started, finished = _num(state.get("started_at")), _num(state.get("finished_at"))
    duration = ""
    if started and finished and finished >= started:
        duration = took(finished - started)
    elif started and not finished:
        duration = took(max(0.0, (now or time.time()) - started)) + " so far"
    url = state.get("url") or ""
    pr = spec.get("pr")
    retry = state.get("retry_reason") or ("re-run" if attempt > 1 else "")
    cost = state.get("spent") or ""  # the ledger's figure (spend.py), once the run ended
    return Facts(repo=repo, sha=sha, attempt=attempt, check_name=str(spec.get("check_name") or "run"),
                 status_text=text, badge=badge, pr=pr if isinstance(pr, int) else None,
                 machine=str(spec.get("machine") or ""), image=str(spec.get("image") or ""),
                 backend=str(spec.get("backend") or ""), started=when(started), finished=when(finished),
                 duration=duration, message=state.get("message") or "", retry_reason=retry,
                 job_url=url if url.startswith("https://") else "", cost=f"${float(cost):.2f}" if _isnum(cost) else "")


def _isnum(v: str) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Window:
    first: int        # the first line shown (1-based)
    count: int        # lines asked for
    earlier: int      # where the part before starts (== first when there is none)
    later: int        # the first line after this part, 0 when this part reaches the end


def window(total: int, requested: str | None, page_lines: int | None = None) -> Window:
    """Which lines a page shows: from `?from=` when given, else from line 1 for a short log and the
    tail for a long one."""
    page_lines = page_lines or PAGE_LINES
    first = 0
    if requested is not None and requested.isdigit() and len(requested) <= 10:
        first = min(int(requested), MAX_FROM)  # 0: the default
    if not first:
        first = 1 if total <= page_lines else total - page_lines + 1
    first = min(first, max(1, total))
    last = first + page_lines - 1
    return Window(first=first, count=page_lines, earlier=max(1, first - page_lines),
                  later=last + 1 if last < total else 0)


def line_href(line: int, win: Window) -> str:
    """An annotation's link: its anchor when the line is on this part, else the part around it."""
    if win.first <= line < win.first + win.count:
        return f"#L{line}"
    return f"?from={max(1, line - 50)}#L{line}"
