"""`paths` / `paths-ignore` (SPEC §4): does a change touch a workflow? Pure: no I/O.

Patterns are .gitignore patterns, matched by pathspec (its `gitignore` flavour, the rules git
itself applies): `**` crosses folders, `*` and `?` stay within one, a pattern without a `/` (but a
trailing one) matches at any depth (`*.md` is every Markdown file), a leading `/` anchors at the
root, `docs/` is everything under docs, and a later `!pattern` takes back what an earlier one
matched. Hand-written globbing is what the issue warns against: git's rules have corner cases
(`a/**/b` matching `a/b`, escapes, trailing spaces) that pathspec has been getting right for years.

A workflow runs when at least one changed file is not matched by `paths-ignore` and (when `paths`
is given) is matched by `paths`. With only `paths-ignore`: it is skipped when every changed file
matches. A change GitHub cannot list in full (over its file limit, a force-push, a new branch)
runs everything (`Change.files is None`), and says why.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import pathspec

MAX_PATTERNS = 100
PULL_FILES_LIMIT = 3000     # GitHub's pulls files API lists at most this many files
COMPARE_FILES_LIMIT = 300   # and the compare API this many


@dataclass(frozen=True)
class PathFilter:
    paths: tuple[str, ...] | None = None
    ignore: tuple[str, ...] | None = None

    @property
    def active(self) -> bool:
        return self.paths is not None or self.ignore is not None

    def describe(self) -> str:
        """"paths: src/**, tests/**; paths-ignore: docs/**" (for summaries and lint)."""
        parts = []
        if self.paths is not None:
            parts.append(f"paths: {', '.join(self.paths)}")
        if self.ignore is not None:
            parts.append(f"paths-ignore: {', '.join(self.ignore)}")
        return "; ".join(parts)


@dataclass(frozen=True)
class Change:
    """The files a change touches, or None with the reason GitHub cannot list them in full."""
    files: tuple[str, ...] | None
    why: str = ""


def pattern_error(pattern: str) -> str | None:
    """Why a pattern is not a valid .gitignore pattern, or None."""
    try:
        _spec((pattern,))
    except (ValueError, TypeError) as e:  # pathspec's GitIgnorePatternError is a ValueError
        return f"invalid pattern {pattern!r}: {e}"
    return None


@functools.lru_cache(maxsize=512)
def _spec(patterns: tuple[str, ...]) -> pathspec.PathSpec:
    return pathspec.PathSpec.from_lines("gitignore", patterns)


def matches(patterns: tuple[str, ...], path: str) -> bool:
    return _spec(patterns).match_file(path)


def _files(n: int) -> str:
    return f"{n} changed file{'s' if n != 1 else ''}"


def decide(f: PathFilter, change: Change) -> str | None:
    """None when the workflow runs; else why it is skipped, naming the filter."""
    if not f.active or change.files is None:
        return None
    files = change.files
    kept = [p for p in files if f.ignore is None or not matches(f.ignore, p)]
    if f.paths is None:
        if kept:
            return None
        return (f"paths-ignore ({', '.join(f.ignore or ())}) matches every one of the {_files(len(files))}"
                if files else "no file changed, and paths-ignore is set")
    if any(matches(f.paths, p) for p in kept):
        return None
    if f.ignore is not None and len(kept) < len(files):
        return (f"no file of the {_files(len(files))} outside paths-ignore ({', '.join(f.ignore)})"
                f" matches paths ({', '.join(f.paths)})")
    return f"none of the {_files(len(files))} matches paths ({', '.join(f.paths)})"


def note(f: PathFilter, change: Change) -> str:
    """For a filtered workflow that runs because the change could not be listed: why."""
    if not f.active or change.files is not None:
        return ""
    return f"{f.describe()} not applied: {change.why}, so every workflow runs"


# -- what GitHub says a change is (pure parsing of its answers) ---------------------------------

def from_pull_files(entries: list[dict[str, object]], limit: int = PULL_FILES_LIMIT) -> Change:
    """The pulls files API's entries (every page). A rename touches both of its paths."""
    if len(entries) >= limit:
        return Change(None, f"GitHub lists at most {limit} files of a pull request, and this one has"
                            f" {len(entries)} or more")
    return Change(_names(entries))


def from_compare(body: dict[str, object], limit: int = COMPARE_FILES_LIMIT) -> Change:
    """The compare API's answer (its first page holds the files)."""
    entries = body.get("files")
    if not isinstance(entries, list):
        return Change(None, "GitHub's comparison of the two commits lists no files")
    if len(entries) >= limit:
        return Change(None, f"GitHub's comparison lists at most {limit} changed files, and this change"
                            f" has {len(entries)} or more")
    return Change(_names(entries))


def _names(entries: list[dict[str, object]]) -> tuple[str, ...]:
    out: set[str] = set()
    for e in entries:
        for k in ("filename", "previous_filename"):
            v = e.get(k)
            if isinstance(v, str) and v:
                out.add(v)
    return tuple(sorted(out))


ZERO_SHA = "0" * 40


def push_base(before: str | None, forced: bool, created: bool) -> tuple[str | None, str]:
    """The commit a push is compared with, or (None, why it cannot be)."""
    if created or not before or before == ZERO_SHA:
        return None, "the push created the branch, so there is no earlier commit to compare with"
    if forced:
        return None, "the push was forced, so its earlier commit is not an ancestor to compare with"
    return before, ""
