"""A verified webhook → the tasks it causes (SPEC §5). Pure: no I/O, no clock beyond Task defaults.

Only what later phases need goes into a task, never the whole payload: the queue stays readable
and small, and a 25 MB payload does not become a 25 MB task.
"""
from __future__ import annotations

import functools
import re
from typing import Any

from .paths import push_base
from .tasks import Task, derive_id

COMMAND_MAX = 1000  # characters of the command line kept in a task
PR_ACTIONS = ("opened", "synchronize", "reopened")
LOGGED_EVENTS = ("installation", "installation_repositories")
# What reaches a URL path must look like what GitHub sends (SPEC §8): a commit SHA is 40 hex digits;
# an owner is a login (letters, digits, hyphens, at most 39); a repository name is letters, digits,
# `.`, `_`, `-` (at most 100), never `.` or `..`.
SHA_RE = re.compile(r"[0-9a-f]{40}")
FULL_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/(?!\.\.?$)[A-Za-z0-9._-]{1,100}")
ZERO_SHA = "0" * 40
BRANCH_PREFIX = "refs/heads/"


class PayloadError(ValueError):
    """A payload without a field litbotd needs, or with a field of the wrong type; names the field."""


@functools.cache
def _split(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


def _get(payload: dict[str, Any], path: str, kind: type, *, nullable: bool = False) -> Any:
    """The value at a dotted path, checked against `kind`; PayloadError names the path otherwise."""
    node: Any = payload
    parts = _split(path)
    for i, part in enumerate(parts):
        if not isinstance(node, dict):
            raise PayloadError(f"payload field {'.'.join(parts[:i])}: expected an object")
        try:
            node = node[part]
        except KeyError:
            raise PayloadError(f"payload field {'.'.join(parts[:i + 1])}: missing") from None
    if node is None and nullable:
        return None
    # bool is an int subclass: an id of `true` is as wrong as a string.
    if not isinstance(node, kind) or (node is True or node is False) and kind is not bool:
        raise PayloadError(f"payload field {path}: expected {kind.__name__}, got {type(node).__name__}")
    return node


def _positive(payload: dict[str, Any], path: str) -> int:
    """An id or number: GitHub's are positive integers (SPEC §8); 0 or -5 is never one of them."""
    value = _get(payload, path, int)
    if value <= 0:
        raise PayloadError(f"payload field {path}: expected a positive integer, got {value}")
    return value


def _sha(payload: dict[str, Any], path: str) -> str:
    value = _get(payload, path, str)
    if not SHA_RE.fullmatch(value):
        raise PayloadError(f"payload field {path}: expected a commit SHA (40 hex digits), got {_shown(value)}")
    return value


def _opt_sha(payload: dict[str, Any], path: str) -> str | None:
    """A commit SHA that may be absent or null (None then); a present one must look like one."""
    node: Any = payload
    for part in _split(path):
        node = node.get(part) if isinstance(node, dict) else None
    return None if node is None else _sha(payload, path)


def _full_name(payload: dict[str, Any], path: str) -> str:
    value = _get(payload, path, str)
    if not FULL_NAME_RE.fullmatch(value):
        raise PayloadError(f"payload field {path}: expected owner/name, got {_shown(value)}")
    return value


def _shown(value: str) -> str:
    """A bad value in an error message: quoted, and cut short (it may be 10,000 characters)."""
    return repr(value[:60] + "…") if len(value) > 60 else repr(value)


def _first_pr(items: Any, path: str) -> int | None:
    if not isinstance(items, list):
        raise PayloadError(f"payload field {path}: expected list, got {type(items).__name__}")
    if not items:
        return None
    try:
        return _positive({"pr": items[0]}, "pr.number")
    except PayloadError as e:
        raise PayloadError(str(e).replace("payload field pr.", f"payload field {path}[0].")) from None


def tasks_for(event: str, payload: dict[str, Any], delivery: str, *,
              command_prefix: str) -> tuple[list[Task], str]:
    """The tasks a verified delivery causes, and why; an empty list for everything not queued.

    Raises PayloadError (a ValueError) naming the field when a payload lacks what its event needs.
    """
    if not isinstance(payload, dict):
        raise PayloadError("payload: expected a JSON object")
    action = payload.get("action")
    if event == "ping":
        return [], "ping"
    if event in LOGGED_EVENTS:
        return [], "logged"
    if payload.get("installation") is None:
        return [], "not an App delivery (no installation)"

    def task(kind: str, **fields: Any) -> list[Task]:
        base = {
            "delivery": delivery,
            "installation": _positive(payload, "installation.id"),
            "repo": _full_name(payload, "repository.full_name"),
            "event": event,
            "action": action,
        }
        return [Task(kind=kind, payload={**base, **fields}, id=derive_id(delivery, kind))]

    if event == "pull_request":
        if action in PR_ACTIONS:
            head_repo = _get(payload, "pull_request.head.repo", dict, nullable=True)
            head_name = None if head_repo is None else _full_name(payload, "pull_request.head.repo.full_name")
            base_name = _full_name(payload, "pull_request.base.repo.full_name")
            return task(
                "new_event",
                pr=_positive(payload, "pull_request.number"),
                sha=_sha(payload, "pull_request.head.sha"),
                base_ref=_get(payload, "pull_request.base.ref", str),
                head_repo=head_name,
                # A deleted head repository can only have been a fork: treat it as untrusted.
                fork=head_name != base_name,
                author_association=_get(payload, "pull_request.author_association", str),
                author=_get(payload, "pull_request.user.login", str),
                private=_get(payload, "repository.private", bool),
            ), f"pull_request {action}"
        if action == "closed":
            return task(
                "cancel",
                pr=_positive(payload, "pull_request.number"),
                sha=_sha(payload, "pull_request.head.sha"),
                reason="closed",
            ), "pull_request closed"
        return [], f"pull_request action {action!r} is not handled"

    if event in ("check_run", "check_suite"):
        if action != "rerequested":
            return [], f"{event} action {action!r} is not handled"
        sha = _sha(payload, f"{event}.head_sha")
        # A check run re-runs alone; a check suite re-runs every run of its commit.
        which = {"check_run_id": _positive(payload, "check_run.id"),
                 "external_id": _get(payload, "check_run.external_id", str, nullable=True),
                 "check_name": _get(payload, "check_run.name", str)} if event == "check_run" else {"check_run_id": None}
        return task(
            "rerun", sha=sha, **which,
            pr=_first_pr(_get(payload, f"{event}.pull_requests", list), f"{event}.pull_requests"),
            sender=_get(payload, "sender.login", str),
        ), f"{event} rerequested"

    if event == "issue_comment":
        if action != "created":
            return [], f"issue_comment action {action!r} is not handled"
        if _get(payload, "issue", dict).get("pull_request") is None:
            return [], "comment on an issue, not a pull request"
        body = _get(payload, "comment.body", str, nullable=True) or ""
        lines = body.strip().splitlines()
        line = lines[0].strip() if lines else ""
        # "/litci run" and "/litci" are commands; "/litcifoo" or a quote of the prefix mid-text are not.
        if line.split(maxsplit=1)[:1] != [command_prefix]:
            return [], f"comment is not a {command_prefix} command"
        return task(
            "command",
            pr=_positive(payload, "issue.number"),
            comment_id=_positive(payload, "comment.id"),
            body=line[:COMMAND_MAX],
            user=_get(payload, "comment.user.login", str),
            author_association=_get(payload, "comment.author_association", str),
        ), "command"

    if event == "merge_group":
        # The queue's commit is tested like a PR to its base branch; no PR, so no comment.
        if action == "checks_requested":
            return task(
                "new_commit",
                sha=_sha(payload, "merge_group.head_sha"),
                branch=_get(payload, "merge_group.base_ref", str).removeprefix(BRANCH_PREFIX),
                pr=None,
                private=_get(payload, "repository.private", bool),
                # paths / paths-ignore compare the queue's base..head (SPEC §4)
                compare_base=_opt_sha(payload, "merge_group.base_sha"),
                compare_why="" if _opt_sha(payload, "merge_group.base_sha") else "the merge group names no base commit",
            ), "merge_group checks_requested"
        if action == "destroyed":
            reason = payload.get("reason")
            why = reason if isinstance(reason, str) else "destroyed"
            return task(
                "cancel",
                sha=_sha(payload, "merge_group.head_sha"),
                pr=None,
                reason=f"the merge group was {why[:40]}",
            ), "merge_group destroyed"
        return [], f"merge_group action {action!r} is not handled"

    if event == "push":
        ref = _get(payload, "ref", str)
        if not ref.startswith(BRANCH_PREFIX):
            return [], "push of a tag or other ref, not a branch"
        if payload.get("deleted") is True or payload.get("after") == ZERO_SHA:
            return [], "push deleted the branch"
        base, why = push_base(_opt_sha(payload, "before"), payload.get("forced") is True,
                              payload.get("created") is True)
        return task(
            "new_commit",
            sha=_sha(payload, "after"),
            branch=ref.removeprefix(BRANCH_PREFIX),
            pr=None,
            private=_get(payload, "repository.private", bool),
            compare_base=base,   # paths / paths-ignore compare before..after (SPEC §4)
            compare_why=why,
        ), "push"

    return [], f"event {event!r} is not handled"
