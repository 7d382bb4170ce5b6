"""events.tasks_for for the merge queue and branch pushes: the tasks they cause, and the ones they don't."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from litbotd.events import PayloadError, tasks_for
from litbotd.tasks import derive_id

WEBHOOKS = Path(__file__).parent / "data" / "webhooks"
DELIVERY = "0b989ba4-242f-11e5-81e1-c7b6966d2516"
QUEUE_SHA = "2ffea6db159f6b6c47a24e778fb9ef40cf6b1c7d"
AFTER = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"


def merge_group(action: str = "checks_requested", **extra: Any) -> dict[str, Any]:
    data = json.loads((WEBHOOKS / "merge_group.checks_requested.json").read_text())
    data["action"] = action
    data.update(extra)
    return data


def push(ref: str = "refs/heads/main", after: str = AFTER, **extra: Any) -> dict[str, Any]:
    """A push payload with the fields GitHub documents (ref, before, after, created, deleted, …)."""
    return {"ref": ref, "before": "6113728f27ae82c7b1a177c8d03f9e96e0adf246", "after": after, "created": False,
            "deleted": False, "forced": False, "base_ref": None, "commits": [], "head_commit": None,
            "repository": {"id": 186853002, "name": "Hello-World", "full_name": "Codertocat/Hello-World",
                           "private": False, "default_branch": "main"},
            "pusher": {"name": "Codertocat"}, "sender": {"login": "Codertocat"},
            "installation": {"id": 1}, **extra}


def tasks(event: str, data: dict[str, Any]):
    return tasks_for(event, data, DELIVERY, command_prefix="/litci")


def test_merge_group_checks_requested_plans_the_queue_commit() -> None:
    [task], reason = tasks("merge_group", merge_group())
    assert reason == "merge_group checks_requested"
    assert task.kind == "new_commit" and task.id == derive_id(DELIVERY, "new_commit")
    assert task.payload == {"delivery": DELIVERY, "installation": 1, "repo": "octo-org/octo-repo",
                            "event": "merge_group", "action": "checks_requested", "sha": QUEUE_SHA,
                            "branch": "main", "pr": None, "private": True,
                            "compare_base": "380387fbc80638b734a49e1be1c4dfec1c01b33c", "compare_why": ""}


def test_merge_group_destroyed_cancels_its_runs() -> None:
    [task], _ = tasks("merge_group", merge_group("destroyed", reason="dequeued"))
    assert task.kind == "cancel"
    assert (task.payload["sha"], task.payload["pr"], task.payload["reason"]) == (
        QUEUE_SHA, None, "the merge group was dequeued")


def test_a_branch_push_plans_the_pushed_commit() -> None:
    [task], reason = tasks("push", push("refs/heads/release/1.2"))
    assert reason == "push" and task.kind == "new_commit"
    assert (task.payload["sha"], task.payload["branch"], task.payload["event"], task.payload["private"]) == (
        AFTER, "release/1.2", "push", False)
    assert len(task.to_json()) < 1000  # the commits list never goes into the queue


@pytest.mark.parametrize("data, reason", [
    (push("refs/tags/v1.0"), "push of a tag or other ref, not a branch"),
    (push(deleted=True, after="0" * 40), "push deleted the branch"),
    (push(after="0" * 40), "push deleted the branch"),
])
def test_pushes_that_run_nothing(data: dict[str, Any], reason: str) -> None:
    assert tasks("push", data) == ([], reason)


@pytest.mark.parametrize("event, data, field", [
    ("push", push(after="not-a-sha"), "after"),
    ("push", push(after="../../etc"), "after"),
    ("merge_group", merge_group(merge_group={"head_sha": "X" * 40, "base_ref": "refs/heads/main"}),
     "merge_group.head_sha"),
])
def test_a_bad_sha_is_refused_by_name(event: str, data: dict[str, Any], field: str) -> None:
    with pytest.raises(PayloadError, match=f"payload field {field}: expected a commit SHA"):
        tasks(event, data)


def test_missing_fields_are_named() -> None:
    data = merge_group()
    del data["merge_group"]["base_ref"]
    with pytest.raises(PayloadError, match="merge_group.base_ref: missing"):
        tasks("merge_group", data)
    data = copy.deepcopy(push())
    del data["ref"]
    with pytest.raises(PayloadError, match="payload field ref: missing"):
        tasks("push", data)


@pytest.mark.parametrize("extra, base, why", [
    ({}, "6113728f27ae82c7b1a177c8d03f9e96e0adf246", ""),
    ({"forced": True}, None, "forced"),
    ({"created": True, "before": "0" * 40}, None, "created the branch"),
])
def test_a_push_carries_what_its_files_are_compared_with(extra: dict[str, Any], base: str | None, why: str) -> None:
    [task], _ = tasks("push", push(**extra))
    assert task.payload["compare_base"] == base and why in task.payload["compare_why"]
    assert bool(task.payload["compare_why"]) is (base is None)


def test_a_bad_before_is_refused_by_name() -> None:
    with pytest.raises(PayloadError, match="before"):
        tasks("push", push(before="../../x"))
