"""What reporting looks like (SPEC §5 "Reporting"): check-run output and the PR summary comment.

Pure: everything here renders text from values. GitHub measures its 65,535 limit of each
check-run output field in UTF-8 bytes (github/docs#35252), so every cap below counts bytes;
a text within the byte cap is within the character cap too.

Anything that comes from a repository (check names, images, messages, logs) is put in code spans
or fenced blocks, so it cannot inject Markdown, HTML or @-mentions, nor break the table.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .masking import ANSI_RE
from .workflows import ROOT_FILES, WORKFLOW_DIR, WORKFLOW_EXTS

MAX_OUTPUT_CHARS = 65_535
MAX_COMMENT_CHARS = 65_536            # GitHub's limit of an issue comment body
MARKER = "<!-- litbotd:summary -->"
MAX_NOTES_CHARS = 16_000              # workflow commands without a file, listed before the log tail

# CSI (colours, cursor moves), OSC (titles, hyperlinks), nF sequences, other ESC pairs, the
# 8-bit CSI: the one definition, in masking.py (which also matches secrets across them).
_ANSI = ANSI_RE
# Control characters that are neither newline nor tab (after ANSI codes are gone).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_BACKTICKS = re.compile(r"`+")

_TITLES = {
    "success": "Passed",
    "failure": "Failed",
    "timed_out": "Timed out",
    "cancelled": "Cancelled",
    "neutral": "Finished, outcome unknown",
    "action_required": "Action required",
    "skipped": "Skipped",
    "stale": "Stale",
}
_EMOJI = {
    "queued": "⏳",
    "in_progress": "🔄",
    "success": "✅",
    "failure": "❌",
    "timed_out": "⏱️",
    "cancelled": "🚫",
    "neutral": "⚪",
    "action_required": "⚠️",
    "skipped": "⏭️",
    "stale": "⚪",
}
# Order of the counts line: what needs attention first.
_COUNT_ORDER = ("failure", "timed_out", "action_required", "cancelled", "neutral", "skipped", "stale",
                "in_progress", "queued", "success")
_COUNT_WORDS = {"failure": "failed", "timed_out": "timed out", "action_required": "awaiting action",
                "cancelled": "cancelled", "neutral": "unknown", "skipped": "skipped", "stale": "stale",
                "in_progress": "running", "queued": "queued", "success": "passed"}


@dataclass(frozen=True)
class RunReport:
    """Everything needed to render one run's check run and its row in the summary comment."""
    check_name: str
    status: str                # "queued" | "in_progress" | "completed"
    conclusion: str | None     # None until completed; then "success" | "failure" | "timed_out" |
                               # "cancelled" | "neutral" | "action_required"
    machine: str
    image: str
    attempt: int               # 1-based
    started_at: float | None   # epoch seconds
    finished_at: float | None
    details_url: str | None
    message: str = ""          # why: "superseded by abc1234", "job failed to start: …", "exit code 1"
    log_tail: str = ""
    tests: str = ""            # "3 passed, 2 failed, 0 skipped, 0 errors" from the job's JUnit reports
    annotations: int = 0       # annotations placed on the diff
    notes: tuple[str, ...] = ()  # workflow commands without a file: "error: title: message"
    cost: float | None = None  # USD: what it cost once ended (spent), else the most it may cost
    cost_projected: bool = False  # `cost` is the projection (price × timeout), not yet spent
    price: float | None = None  # USD per hour of its machine, when priced
    approved_by: str = ""      # the writer whose /litci approve-cost let it start
    waiting: str = ""          # queued behind its needs: "waiting for lint"
    note: str = ""             # why a filter was not applied ("paths: src/** not applied: …")
    flaky: bool = False        # an earlier attempt on this commit failed, this one passed
    # SPEC §11: tries of this attempt when the infrastructure failed it, and how each ended:
    # ("attempt 1 of 3: preempted: …", …); try_n of tries_total is the one shown.
    tries: tuple[str, ...] = ()
    try_n: int = 1
    tries_total: int = 1
    secrets: tuple[str, ...] = ()        # names of the job secrets the run received (never values)
    secret_notes: tuple[str, ...] = ()   # one line per named secret it did not get, and why

    @property
    def state(self) -> str:
        """One word for the row: the conclusion once completed, else the status."""
        return (self.conclusion or "neutral") if self.status == "completed" else self.status

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, self.finished_at - self.started_at)


# ---------------------------------------------------------------------------------------------
# Text helpers

def strip_ansi(text: str) -> str:
    """`text` without ANSI escape sequences (colours, cursor moves, OSC titles and links)."""
    return _ANSI.sub("", text)


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _clip_end(text: str, max_bytes: int, mark: str = "…") -> str:
    """`text` cut at the end to at most `max_bytes` UTF-8 bytes, `mark` showing the cut."""
    if _utf8_len(text) <= max_bytes:
        return text
    if _utf8_len(mark) > max_bytes:
        mark = ""
    room = max(0, max_bytes - _utf8_len(mark))
    return text.encode("utf-8", "surrogatepass")[:room].decode("utf-8", "ignore") + mark


def _clip_front(text: str, max_bytes: int) -> str:
    """The last `max_bytes` UTF-8 bytes of `text`, on a character boundary."""
    data = text.encode("utf-8", "surrogatepass")
    return data[len(data) - max_bytes:].decode("utf-8", "ignore") if len(data) > max_bytes else text


def _terminal_lines(text: str) -> list[str]:
    """Lines as a terminal would show them: ANSI codes stripped, `\\r` redraws (progress bars)
    keep only their last state, other control characters dropped."""
    text = strip_ansi(text).replace("\r\n", "\n")
    lines = []
    for line in text.split("\n"):
        if "\r" in line:
            line = next((part for part in reversed(line.split("\r")) if part), "")
        lines.append(_CONTROL.sub("", line))
    if lines and lines[-1] == "":
        lines.pop()  # the final newline does not start another line
    return lines


def _omitted(n: int) -> str:
    return f"… {n} earlier line{'s' if n != 1 else ''} omitted"


def tail(text: str, max_lines: int, max_chars: int = MAX_OUTPUT_CHARS - 1000) -> str:
    """The last `max_lines` lines of a log, ANSI stripped, at most `max_chars` long (counted in
    UTF-8 bytes, so in characters too), cut from the front. When lines were cut, the first line
    says "… N earlier lines omitted"; a last line longer than the whole budget keeps its end."""
    lines = _terminal_lines(text)
    start = max(0, len(lines) - max(0, max_lines))      # the first line kept
    size = sum(_utf8_len(line) + 1 for line in lines[start:]) - 1  # joined with newlines
    while start < len(lines) and size + (_utf8_len(_omitted(start)) + 1 if start else 0) > max_chars:
        size -= _utf8_len(lines[start]) + 1
        start += 1
    if start < len(lines) or not lines:
        return "\n".join(([_omitted(start)] if start else []) + lines[start:])
    if max_lines > 0:
        # Not even the last line fits whole: keep its end after the note.
        head = _omitted(len(lines) - 1) + "\n…"
        room = max_chars - _utf8_len(head)
        if room > 0:
            return head + _clip_front(lines[-1], room)
    return _clip_end(_omitted(len(lines)), max_chars)


def duration_text(seconds: float | None) -> str:
    """"42s", "1m 05s", "2h 03m"; "—" when unknown."""
    if seconds is None:
        return "—"
    total = max(0, round(seconds))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m {total % 60:02d}s"
    return f"{total // 3600}h {total % 3600 // 60:02d}m"


def cost_text(cost: float | None, projected: bool = False) -> str:
    """"$1.23", "≤ $4.00" (projected: at most), "—" when unknown or unpriced."""
    if cost is None:
        return "—"
    return f"≤ ${cost:,.2f}" if projected else f"${cost:,.2f}"


def _code(text: str) -> str:
    """`text` as an inline code span, on one line, fenced with more backticks than it holds."""
    text = " ".join(text.split())
    if not text:
        return ""
    fence = "`" * (max((len(m) for m in _BACKTICKS.findall(text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _cell(text: str, max_bytes: int = 1000) -> str:
    """A code span for a table cell: pipes escaped (GitHub unescapes `\\|` in tables, code spans
    too), long values cut so one cell cannot eat the whole budget; "—" when empty."""
    return _code(_clip_end(text, max_bytes)).replace("|", "\\|") or "—"


def _fenced(text: str, info: str = "") -> str:
    """A fenced code block that `text` cannot close early."""
    longest = max((len(m) for m in _BACKTICKS.findall(text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text}\n{fence}"


def _link(url: str | None, label: str) -> str:
    """A Markdown link to an http(s) URL, or "" for anything else."""
    if not url or not re.match(r"https?://", url):
        return ""
    safe = "".join(c if c.isascii() and c.isprintable() and c not in " ()<>|" else
                   "".join(f"%{b:02X}" for b in c.encode()) for c in url)
    return f"[{label}]({safe})"


def _outcome(r: RunReport) -> str:
    if r.status == "queued":
        return r.waiting[:1].upper() + r.waiting[1:] if r.waiting else "Queued"
    if r.status == "in_progress":
        return "Running"
    return _TITLES.get(r.conclusion or "neutral", (r.conclusion or "neutral").replace("_", " ").capitalize())


# ---------------------------------------------------------------------------------------------
# Check runs

def check_output(r: RunReport) -> dict[str, str]:
    """The `output` of one run's check run: title (the outcome), summary (machine, image, duration,
    attempt, why), text (the log tail, fenced). Each field within GitHub's limit."""
    outcome = _outcome(r)
    duration = r.duration
    if r.status == "in_progress":
        title = f"Running on {r.machine}"
    elif r.status == "completed" and duration is not None:
        title = f"{outcome} {'in' if r.conclusion == 'success' else 'after'} {duration_text(duration)}"
    else:
        title = outcome
    if r.attempt > 1:
        title += f" (attempt {r.attempt})"
    if r.try_n > 1:
        title += f" · attempt {r.try_n} of {r.tries_total}"

    lines = [f"**{outcome}**" + (f": {_code(_clip_end(r.message, 2000))}" if r.message.strip() else ""), "",
             "| Machine | Image | Duration | Attempt | Cost |", "|---|---|---|---|---|",
             f"| {_cell(r.machine)} | {_cell(r.image)} | {duration_text(duration)} | {_attempt_cell(r)} | "
             f"{cost_text(r.cost, r.cost_projected)} |"]
    if r.cost is not None and r.price:
        lines += ["", f"**Cost:** {cost_text(r.cost, r.cost_projected)} at ${r.price:,.2f}/h"
                  + (" (projected: price × timeout)" if r.cost_projected else "")]
    if r.approved_by:
        lines += ["", f"**Cost approved by** {_code('@' + r.approved_by)} (`approve-cost`)"]
    if r.conclusion == "skipped":
        lines += ["", "No job started for this run: no machine time was spent."]
    if r.note:
        lines += ["", f"**Filters not applied:** {_code(_clip_end(r.note, 2000))}"]
    if r.flaky:
        lines += ["", "**Flaky:** an earlier attempt on this commit failed; this one passed."]
    if link := _link(r.details_url, "Job details"):
        lines += ["", link]
    if r.tries:
        lines += ["", "**Attempts** (the infrastructure failed the earlier ones; they were tried again):", ""]
        lines += [f"- {_code(_clip_end(t, 2000))}" for t in r.tries[-20:]]
    if r.tests:
        lines += ["", f"**Tests:** {_code(r.tests)}"]
    if r.annotations:
        lines += ["", f"**Annotations:** {r.annotations}, on the lines they name"]
    if r.secrets:
        lines += ["", f"**Secrets:** {', '.join(_code(n) for n in r.secrets)}"]
    if r.secret_notes:
        lines += [""] + [f"- {_code(_clip_end(n, 1000))}" for n in r.secret_notes[:100]]
    summary = _clip_end("\n".join(lines), MAX_OUTPUT_CHARS)

    text = ""
    if r.notes:
        body = _clip_end("\n".join(_terminal_lines("\n".join(r.notes))), MAX_NOTES_CHARS)
        text = "**Messages**\n\n" + _fenced(re.sub(r"`{16,}", "`" * 15, body), "text") + "\n\n"
    if r.log_tail:
        body = tail(r.log_tail, max_lines=10 ** 9, max_chars=MAX_OUTPUT_CHARS - 200 - _utf8_len(text))
        # Shorten freak backtick runs so the fence that must outgrow them fits the 200 spare bytes.
        text += _fenced(re.sub(r"`{16,}", "`" * 15, body), "text")
    return {"title": _clip_end(title, 1000), "summary": summary, "text": text}


def _attempt_cell(r: RunReport) -> str:
    """The re-run attempt, and the infrastructure try within it once there was a retry."""
    if r.try_n <= 1:
        return str(r.attempt)
    tries = f"{r.try_n} of {r.tries_total}"
    return tries if r.attempt == 1 else f"{r.attempt} (try {tries})"


def error_check_output(file: str, line: int | None, message: str) -> dict[str, str]:
    """A completed `failure` check for a workflow file that does not parse or fails the schema."""
    where = f"{file}:{line}" if line else file
    summary = "\n".join([
        f"The workflow file {_code(file)} is invalid" + (f" (line {line})" if line else "")
        + ", so nothing from it runs.", "",
        _fenced(_clip_end(f"{where}: {message}", MAX_OUTPUT_CHARS - 500)), "",
        "Fix the file and push again; `litbotd lint` checks a checkout locally.",
    ])
    return {"title": _clip_end(f"Invalid workflow file: {file}", 1000),
            "summary": _clip_end(summary, MAX_OUTPUT_CHARS), "text": ""}


def no_workflows_output() -> dict[str, str]:
    """A `neutral` check when the repository has no workflow file."""
    summary = "\n".join([
        "Nothing to run: no workflow file was found at this commit. litbotd reads",
        "",
        f"- `{ROOT_FILES[0]}` (or `{ROOT_FILES[1]}`) at the repository root, and",
        f"- every `*{'` / `*'.join(WORKFLOW_EXTS)}` in `{WORKFLOW_DIR}`.",
        "",
        "A minimal workflow:",
        "",
        _fenced('name: "PR checks"\nimage: "python:3.11-slim"\nrun: |\n  pip install -r requirements.txt\n'
                "  pytest -q", "yaml"),
    ])
    return {"title": "No workflow files found", "summary": summary, "text": ""}


def limit_held_output(prefix: str, reason: str, r: RunReport) -> dict[str, str]:
    """The `action_required` check of a run a [limits] cap (or an approved fork's machine
    restriction) keeps from starting: the figures, and the command that starts it."""
    command = _code(f"{prefix} approve-cost")
    summary = "\n".join([
        f"**Not started:** {_clip_end(reason, 4000)}", "",
        "| Machine | Image | Projected cost |", "|---|---|---|",
        f"| {_cell(r.machine)} | {_cell(r.image)} | {cost_text(r.cost, True)} |", "",
        f"Someone with write access may reply {command} to start this commit's runs anyway"
        " (the approval is recorded with their name); a new push needs a new approval.",
    ])
    return {"title": "Approval required: over a spend limit" if "limits.per_" in reason
            else "Approval required: machine not allowed for a fork",
            "summary": _clip_end(summary, MAX_OUTPUT_CHARS), "text": ""}


def waiting_output(reason: str, r: RunReport) -> dict[str, str]:
    """The `queued` check of a run waiting for a concurrency slot: what it waits for."""
    summary = "\n".join([f"**Queued:** {_clip_end(reason, 2000)}", "",
                         "It starts as soon as a running job on that machine or repository ends.", "",
                         "| Machine | Image | Projected cost |", "|---|---|---|",
                         f"| {_cell(r.machine)} | {_cell(r.image)} | {cost_text(r.cost, True)} |"])
    first = reason.split(" (limits.")[0]
    return {"title": _clip_end(first[:1].upper() + first[1:], 1000), "summary": summary, "text": ""}


def fork_approval_output(prefix: str, forks: str = "never") -> dict[str, str]:
    """The `action_required` check of a fork PR whose author is not trusted: nothing ran.
    `forks`: the `secrets.forks` setting, which decides whether the approved runs get job secrets."""
    command = _code(f"{prefix} ok-to-test")
    secrets = ("They get the job secrets their workflow names, for this commit only."
               if forks == "approved" else "They get no job secrets (`secrets.forks = \"never\"`).")
    summary = "\n".join([
        "This pull request comes from a fork, and its author is not yet trusted to run CI here,"
        " so nothing has run.",
        "",
        f"A maintainer may reply {command} to run the workflows on this commit. The workflow files"
        " are then read from the base branch; only the code under test comes from the pull request. "
        + secrets,
    ])
    return {"title": "Approval required to run CI", "summary": summary, "text": ""}


# ---------------------------------------------------------------------------------------------
# The summary comment

def _counts(rows: Sequence[RunReport]) -> str:
    tally: dict[str, int] = {}
    for r in rows:
        tally[r.state] = tally.get(r.state, 0) + 1
    known = [s for s in _COUNT_ORDER if s in tally] + sorted(s for s in tally if s not in _COUNT_ORDER)
    parts = [f"{_EMOJI.get(s, '•')} {tally[s]} {_COUNT_WORDS.get(s, s.replace('_', ' '))}" for s in known]
    return f"**{len(rows)} run{'s' if len(rows) != 1 else ''}**: " + " · ".join(parts)


def _row(r: RunReport) -> str:
    status = f"{_EMOJI.get(r.state, '•')} {_outcome(r)}"
    if r.attempt > 1 or r.flaky:
        status += f" ({', '.join(([f'attempt {r.attempt}'] if r.attempt > 1 else []) + (['flaky'] if r.flaky else []))})"
    return (f"| {status} | {_cell(r.check_name)} | {duration_text(r.duration)} | "
            f"{cost_text(r.cost, r.cost_projected)} | {_link(r.details_url, 'details') or '—'} |")


def summary_comment(repo: str, pr: int, sha: str, rows: Sequence[RunReport]) -> str:
    """The sticky PR comment: MARKER, then a table of the runs of the latest head SHA, sorted by
    check name, with a counts line. Rows that do not fit GitHub's comment limit are counted."""
    head = [MARKER, f"### litbotd: runs for {sha[:12]}", ""]
    # A blank line ends the table before the footer.
    foot = f"\n\n<sub>{_code(repo)} #{pr} · commit {sha[:12]} · updated as runs finish</sub>"
    if not rows:
        return "\n".join(head + ["No runs for this commit."]) + foot
    ordered = sorted(rows, key=lambda r: (r.check_name.casefold(), r.check_name))
    flaky = [r.check_name for r in ordered if r.flaky]
    if flaky:
        # Below the table but outside its budget: a long table is cut, this line never is.
        shown = ", ".join(_code(_clip_end(n, 200)) for n in flaky[:20])
        more = f" and {len(flaky) - 20} more" if len(flaky) > 20 else ""
        foot = (f"\n\n**Flaky** (failed, then passed on a re-run of this commit): {shown}{more}" + foot)
    spent = [r.cost for r in ordered if r.cost is not None and not r.cost_projected]
    counts = _counts(ordered) + (f" · spent {cost_text(sum(spent))}" if spent else "")
    head += [counts, "", "| Status | Check | Duration | Cost | Job |", "|---|---|---|---|---|"]

    budget = MAX_COMMENT_CHARS - _utf8_len("\n".join(head) + foot) - 200  # 200: the "not shown" line
    body: list[str] = []
    for r in ordered:
        row = _row(r)
        if _utf8_len(row) + 1 > budget:
            body.append(f"\n… {len(ordered) - len(body)} more runs not shown (see the checks tab)")
            break
        budget -= _utf8_len(row) + 1
        body.append(row)
    return "\n".join(head + body) + foot
