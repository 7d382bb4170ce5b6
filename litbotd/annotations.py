"""GitHub Actions workflow commands in a job's log → check-run annotations (SPEC §4). Pure.

    ::error file=src/app.py,line=3,endLine=4,col=1,endColumn=9,title=Bad input::the message
    ::warning …        ::notice …

`error` becomes level failure, `warning` warning, `notice` notice. Properties carry GitHub's
escapes (%25 %0D %0A %3A %2C), the message %25 %0D %0A. A command without `file` has no place on
the diff: it goes to the check's output text instead. `::stop-commands::TOKEN` … `::TOKEN::`
pauses command processing, as on GitHub Actions, so a log that echoes a file full of `::` lines
does not annotate.

The job's bootstrap adds its own lines: `litci-workspace: DIR` (where the code was unpacked, so
absolute paths under it become repository paths) and `litci-tests: N passed, N failed, N skipped,
N errors` (the counts of the JUnit reports it read and printed as `::error` commands).

Bounds, whatever the log holds: lines over MAX_LINE_CHARS are skipped unparsed, messages and
titles are cut to GitHub's sizes, at most MAX_ANNOTATIONS per run (failures kept first, then
warnings, then notices), paths that leave the repository are dropped.
"""
from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .report import strip_ansi

LEVELS = {"error": "failure", "warning": "warning", "notice": "notice"}
_RANK = {"failure": 0, "warning": 1, "notice": 2}
MAX_ANNOTATIONS = 1000       # per run
MAX_PER_REQUEST = 50         # GitHub's limit per check-run create/update request
MAX_MESSAGES = 100           # commands without a file, listed in the output text
MAX_LINE_CHARS = 128 * 1024  # a longer log line is not parsed
MAX_MESSAGE_CHARS = 8000     # GitHub allows 64 KB; a diff annotation longer than this is unreadable
MAX_TITLE_CHARS = 255        # GitHub's limit
MAX_PATH_CHARS = 1024
MAX_NUMBER = 10 ** 7         # a line or column beyond this is nonsense: ignored
SCAN_LINES = 20_000          # the log's last lines read for annotations (the job prints its own last)

# One blank before the properties, then no ':' in them (escaped as %3A): linear on any input.
_COMMAND = re.compile(r"::(error|warning|notice)(?:[ \t]([^:]*))?::(.*)\Z", re.DOTALL)
_STOP = re.compile(r"::stop-commands::(.+)\Z")
_WORKSPACE = re.compile(r"litci-workspace: (/.*)\Z")
_TESTS = re.compile(r"litci-tests: (\d{1,9}) passed, (\d{1,9}) failed, (\d{1,9}) skipped, (\d{1,9}) errors\b")
_PROP_ESCAPES = {"%25": "%", "%0D": "\r", "%0A": "\n", "%3A": ":", "%2C": ","}
_PROP_ESCAPE = re.compile("|".join(_PROP_ESCAPES), re.IGNORECASE)
_DATA_ESCAPE = re.compile("%25|%0D|%0A", re.IGNORECASE)
_PROPS = ("file", "line", "endLine", "col", "endColumn", "title")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class Annotation:
    level: str                  # "failure" | "warning" | "notice"
    message: str
    path: str | None = None     # repository-relative; None: not on the diff
    start_line: int | None = None
    end_line: int | None = None
    start_column: int | None = None
    end_column: int | None = None
    title: str | None = None

    def as_note(self) -> str:
        """"error: Title: message", for a command listed in the output text."""
        command = next(k for k, v in LEVELS.items() if v == self.level)
        return f"{command}: {self.title + ': ' if self.title else ''}{self.message}"

    def to_api(self) -> dict[str, Any]:
        """One item of a check run's `output.annotations` (needs a path)."""
        start = self.start_line or 1
        end = max(start, self.end_line or start)
        out: dict[str, Any] = {"path": self.path, "start_line": start, "end_line": end,
                               "annotation_level": self.level, "message": self.message or self.level}
        # GitHub takes columns only on a single line.
        if start == end and self.start_column:
            out["start_column"] = self.start_column
            if self.end_column and self.end_column >= self.start_column:
                out["end_column"] = self.end_column
        if self.title:
            out["title"] = self.title
        return out


@dataclass(frozen=True)
class Scan:
    annotations: list[Annotation]   # on the diff, at most MAX_ANNOTATIONS, in send order
    messages: list[Annotation]      # without a file: for the output text, at most MAX_MESSAGES
    dropped: int                    # over the cap, or at a path outside the repository
    tests: tuple[int, int, int, int] | None  # passed, failed, skipped, errors (from the job's reports)

    @property
    def tests_text(self) -> str:
        if self.tests is None:
            return ""
        p, f, s, e = self.tests
        return f"{p} passed, {f} failed, {s} skipped, {e} errors"


def _unescape_prop(value: str) -> str:
    return _PROP_ESCAPE.sub(lambda m: _PROP_ESCAPES[m.group(0).upper()], value)


def _unescape_data(value: str) -> str:
    return _DATA_ESCAPE.sub(lambda m: _PROP_ESCAPES[m.group(0).upper()], value)


def _number(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit() or len(value.strip()) > 9:
        return None
    n = int(value)
    return n if 0 < n <= MAX_NUMBER else None


def _clean(text: str, limit: int) -> str:
    text = _CONTROL.sub("", text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def parse_command(line: str) -> Annotation | None:
    """One log line → the annotation its `::error|warning|notice` command asks for, else None.
    The path is as written (see repo_path); numbers that are not positive integers are ignored."""
    if len(line) > MAX_LINE_CHARS:
        return None
    m = _COMMAND.match(line.strip())
    if not m:
        return None
    props: dict[str, str] = {}
    for item in (m.group(2) or "").split(","):
        key, eq, value = item.partition("=")
        key = key.strip()
        if eq and key in _PROPS and key not in props:  # unknown keys ignored, the first of twins wins
            props[key] = _unescape_prop(value)
    title = _clean(" ".join(props["title"].split()), MAX_TITLE_CHARS) if props.get("title", "").strip() else None
    return Annotation(
        level=LEVELS[m.group(1)], message=_clean(_unescape_data(m.group(3)), MAX_MESSAGE_CHARS),
        path=props.get("file") or None, start_line=_number(props.get("line")),
        end_line=_number(props.get("endLine")), start_column=_number(props.get("col")),
        end_column=_number(props.get("endColumn")), title=title)


def repo_path(path: str, workspace: str | None = None) -> str | None:
    """A command's `file` as a path in the repository, or None when it leaves it (absolute paths
    only inside the job's workspace, no `..` above the root, no control characters)."""
    path = path.strip()
    if not path or len(path) > MAX_PATH_CHARS or _CONTROL.search(path) or "\r" in path or "\n" in path:
        return None
    if path.startswith("/"):
        root = (workspace or "").rstrip("/")
        if not root or not path.startswith(root + "/"):
            return None
        path = path[len(root) + 1:]
    path = posixpath.normpath(path)
    if path in (".", "") or path == ".." or path.startswith(("../", "/")):
        return None
    return path


def scan(log: str | Iterable[str], workspace: str | None = None) -> Scan:
    """Every workflow command of a job's log, resolved and capped (see the module's doc)."""
    lines = log.splitlines() if isinstance(log, str) else log
    found: list[Annotation] = []
    messages: list[Annotation] = []
    dropped = 0
    tests: tuple[int, int, int, int] | None = None
    stop_token: str | None = None
    for raw in lines:
        if len(raw) > MAX_LINE_CHARS:
            continue
        line = strip_ansi(raw).strip()
        if not line:
            continue
        if stop_token is not None:
            if line == f"::{stop_token}::":
                stop_token = None
            continue
        if line.startswith("::"):
            if m := _STOP.match(line):
                stop_token = m.group(1)
                continue
            a = parse_command(line)
            if a is None:
                continue
            if a.path is None:
                if len(messages) < MAX_MESSAGES:
                    messages.append(a)
                else:
                    dropped += 1
            else:
                found.append(a)
        elif line.startswith("litci-"):
            if m := _WORKSPACE.match(line):
                workspace = m.group(1)
            elif m := _TESTS.match(line):
                p, f, s, e = (int(g) for g in m.groups())
                tests = (p, f, s, e)
    placed = []
    for a in found:  # resolved at the end: the workspace line may come after the commands
        path = repo_path(a.path or "", workspace)
        if path is None:
            dropped += 1
        else:
            placed.append(Annotation(a.level, a.message, path, a.start_line, a.end_line, a.start_column,
                                     a.end_column, a.title))
    # Over the cap, failures are kept before warnings before notices; log order within a level.
    kept = sorted(placed, key=lambda a: _RANK[a.level])[:MAX_ANNOTATIONS]
    dropped += len(placed) - len(kept)
    return Scan(annotations=kept, messages=messages, dropped=dropped, tests=tests)


def tests_counts(line: str) -> tuple[int, int, int, int] | None:
    """The counts of a `litci-tests:` line (passed, failed, skipped, errors), else None."""
    m = _TESTS.match(line)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4))) if m else None


def batches(annotations: Sequence[Annotation], size: int = MAX_PER_REQUEST) -> list[list[dict[str, Any]]]:
    """The annotations as check-run requests' `output.annotations`, at most `size` per request."""
    items = [a.to_api() for a in annotations]
    return [items[i:i + size] for i in range(0, len(items), size)]
