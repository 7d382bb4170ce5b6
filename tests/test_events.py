"""events.tasks_for: real GitHub payloads (tests/data/webhooks/) → the tasks they cause."""
from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from litbotd.events import COMMAND_MAX, PayloadError, tasks_for
from litbotd.tasks import Task, derive_id

WEBHOOKS = Path(__file__).parent / "data" / "webhooks"
DELIVERY = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
SHA = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"


@cache
def _load(name: str) -> str:
    return (WEBHOOKS / f"{name}.json").read_text()


def payload(name: str) -> dict[str, Any]:
    return json.loads(_load(name))


def one(event: str, data: dict[str, Any]) -> Task:
    tasks, reason = tasks_for(event, data, DELIVERY, command_prefix="/litci")
    assert len(tasks) == 1, reason
    task = tasks[0]
    assert task.id == derive_id(DELIVERY, task.kind)
    # The task holds what later phases need, never the whole payload.
    assert len(task.to_json()) < 2000
    return task


def pr_comment(body: str) -> dict[str, Any]:
    """The examples package has no comment on a pull request: make one from an issue comment."""
    data = payload("issue_comment.created.4")
    data["issue"]["pull_request"] = {"url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/1"}
    data["comment"]["body"] = body
    return data


BASE = {"delivery": DELIVERY, "installation": 1, "repo": "Codertocat/Hello-World"}


@pytest.mark.parametrize("name,action", [
    ("pull_request.opened.4", "opened"),
    ("pull_request.synchronize.1", "synchronize"),
    ("pull_request.reopened.2", "reopened"),
])
def test_pull_request_runs_workflows(name: str, action: str) -> None:
    task = one("pull_request", payload(name))
    assert task.kind == "new_event"
    assert task.payload == {
        **BASE, "event": "pull_request", "action": action, "pr": 2, "sha": SHA, "base_ref": "master",
        "head_repo": "Codertocat/Hello-World", "fork": False, "author_association": "OWNER",
        "author": "Codertocat", "private": False,
    }


def test_pull_request_from_a_fork() -> None:
    data = payload("pull_request.opened.4")
    data["pull_request"]["head"]["repo"]["full_name"] = "mallory/Hello-World"
    data["pull_request"]["author_association"] = "NONE"
    task = one("pull_request", data)
    assert (task.payload["fork"], task.payload["head_repo"], task.payload["author_association"]) == \
        (True, "mallory/Hello-World", "NONE")


def test_pull_request_whose_head_repo_was_deleted_counts_as_a_fork() -> None:
    data = payload("pull_request.synchronize.1")
    data["pull_request"]["head"]["repo"] = None
    task = one("pull_request", data)
    assert task.payload["head_repo"] is None
    assert task.payload["fork"] is True


def test_pull_request_closed_cancels() -> None:
    task = one("pull_request", payload("pull_request.closed.2"))
    assert task.kind == "cancel"
    assert task.payload == {**BASE, "event": "pull_request", "action": "closed", "pr": 2, "sha": SHA,
                            "reason": "closed"}


def test_check_run_rerequested_reruns_that_run() -> None:
    task = one("check_run", payload("check_run.rerequested.7"))
    assert task.kind == "rerun"
    assert task.payload == {
        "delivery": DELIVERY, "installation": 1, "repo": "github/hello-world", "event": "check_run",
        "action": "rerequested", "sha": "d6fde92930d4715a2b49857d24b940956b26d2d3", "check_run_id": 4,
        "external_id": "", "check_name": "randscape", "pr": None, "sender": "octocat",
    }


def test_check_run_rerequested_names_its_pull_request() -> None:
    data = payload("check_run.rerequested.7")
    data["check_run"]["pull_requests"] = [{"number": 7, "id": 1}, {"number": 9, "id": 2}]
    assert one("check_run", data).payload["pr"] == 7


def test_check_suite_rerequested_reruns_the_sha() -> None:
    task = one("check_suite", payload("check_suite.rerequested.7"))
    assert task.kind == "rerun"
    assert task.payload == {
        "delivery": DELIVERY, "installation": 957387, "repo": "Codertocat/Hello-World", "event": "check_suite",
        "action": "rerequested", "sha": SHA, "check_run_id": None, "pr": 2, "sender": "octocoders-linter[bot]",
    }


def test_command_comment_on_a_pull_request() -> None:
    task = one("issue_comment", pr_comment("  /litci run lint tests\nplease, and thanks\n"))
    assert task.kind == "command"
    assert task.payload == {
        **BASE, "event": "issue_comment", "action": "created", "pr": 1, "comment_id": 492700400,
        "body": "/litci run lint tests", "user": "Codertocat", "author_association": "OWNER",
    }


def test_command_line_is_capped() -> None:
    task = one("issue_comment", pr_comment("/litci run " + "x" * 5000))
    assert len(task.payload["body"]) == COMMAND_MAX


@pytest.mark.parametrize("body,why", [
    ("You are totally right! I'll get this fixed right away.", "not a /litci command"),
    ("/litcifoo run", "not a /litci command"),
    ("please /litci run", "not a /litci command"),
    ("", "not a /litci command"),
])
def test_other_pr_comments_are_not_commands(body: str, why: str) -> None:
    tasks, reason = tasks_for("issue_comment", pr_comment(body), DELIVERY, command_prefix="/litci")
    assert (tasks, why in reason) == ([], True)


def test_prefix_comes_from_the_config() -> None:
    tasks, _ = tasks_for("issue_comment", pr_comment("/ci run"), DELIVERY, command_prefix="/ci")
    assert [t.payload["body"] for t in tasks] == ["/ci run"]


@pytest.mark.parametrize("event,data,reason", [
    ("issue_comment", "issue_comment.created.4", "comment on an issue, not a pull request"),
    ("issue_comment", "issue_comment.created.5", "not an App delivery (no installation)"),
    ("pull_request", "pull_request.labeled.2", "pull_request action 'labeled' is not handled"),
    ("installation", "installation.created.1", "logged"),
    ("installation_repositories", "installation_repositories.added.0", "logged"),
    ("ping", "ping.3", "ping"),
    ("release", "pull_request.opened.4", "event 'release' is not handled"),
])
def test_not_queued(event: str, data: str, reason: str) -> None:
    assert tasks_for(event, payload(data), DELIVERY, command_prefix="/litci") == ([], reason)


def test_no_installation_wins_over_a_queueable_action() -> None:
    data = payload("pull_request.opened.4")
    del data["installation"]
    assert tasks_for("pull_request", data, DELIVERY, command_prefix="/litci") == \
        ([], "not an App delivery (no installation)")


def test_edited_comment_is_not_a_command() -> None:
    data = pr_comment("/litci run")
    data["action"] = "edited"
    assert tasks_for("issue_comment", data, DELIVERY, command_prefix="/litci")[0] == []


def _parent(data: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    """The mapping that holds the last key of a dotted path, and that key."""
    *parents, last = path.split(".")
    for p in parents:
        data = data[p]
    return data, last


def _drop(data: dict[str, Any], path: str) -> None:
    holder, key = _parent(data, path)
    del holder[key]


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    holder, key = _parent(data, path)
    holder[key] = value


@pytest.mark.parametrize("event,name,path", [
    ("pull_request", "pull_request.opened.4", "pull_request.head.sha"),
    ("pull_request", "pull_request.opened.4", "pull_request.number"),
    ("pull_request", "pull_request.opened.4", "pull_request.base.ref"),
    ("pull_request", "pull_request.opened.4", "pull_request.user"),
    ("pull_request", "pull_request.opened.4", "repository.full_name"),
    ("pull_request", "pull_request.opened.4", "installation.id"),
    ("pull_request", "pull_request.closed.2", "pull_request"),
    ("check_run", "check_run.rerequested.7", "check_run.head_sha"),
    ("check_suite", "check_suite.rerequested.7", "check_suite.pull_requests"),
    ("check_suite", "check_suite.rerequested.7", "sender"),
])
def test_missing_field_is_named(event: str, name: str, path: str) -> None:
    data = payload(name)
    _drop(data, path)
    with pytest.raises(PayloadError, match=rf"payload field {path.replace('.', '[.]')}\b.*missing"):
        tasks_for(event, data, DELIVERY, command_prefix="/litci")


@pytest.mark.parametrize("path,value,expected", [
    ("pull_request.number", "2", "pull_request.number: expected int, got str"),
    ("pull_request.number", True, "pull_request.number: expected int, got bool"),
    ("pull_request.head", [], "pull_request.head: expected an object"),
    ("repository.private", None, "repository.private: expected bool, got NoneType"),
    ("installation", 5, "installation: expected an object"),
])
def test_wrong_type_is_named(path: str, value: Any, expected: str) -> None:
    data = payload("pull_request.opened.4")
    _set(data, path, value)
    with pytest.raises(ValueError, match=expected.replace(".", "[.]")):
        tasks_for("pull_request", data, DELIVERY, command_prefix="/litci")


@pytest.mark.parametrize("event,name,path,value", [
    ("pull_request", "pull_request.opened.4", "pull_request.number", 0),
    ("pull_request", "pull_request.opened.4", "pull_request.number", -5),
    ("pull_request", "pull_request.closed.2", "pull_request.number", -1),
    ("pull_request", "pull_request.opened.4", "installation.id", 0),
    ("check_run", "check_run.rerequested.7", "check_run.id", -3),
])
def test_numbers_and_ids_must_be_positive(event: str, name: str, path: str, value: int) -> None:
    """SPEC §8: GitHub's numbers and ids are positive; a signed payload saying -5 is refused, naming the field."""
    data = payload(name)
    _set(data, path, value)
    with pytest.raises(PayloadError, match=rf"payload field {path.replace('.', '[.]')}: expected a positive integer"):
        tasks_for(event, data, DELIVERY, command_prefix="/litci")


def test_comment_on_issue_minus_five_is_refused() -> None:
    data = pr_comment("/litci run")
    data["issue"]["number"] = -5
    with pytest.raises(PayloadError, match=r"issue[.]number: expected a positive integer"):
        tasks_for("issue_comment", data, DELIVERY, command_prefix="/litci")


def test_check_suite_pull_request_number_must_be_positive() -> None:
    data = payload("check_suite.rerequested.7")
    data["check_suite"]["pull_requests"] = [{"number": 0}]
    with pytest.raises(PayloadError, match=r"check_suite[.]pull_requests\[0\][.]number: expected a positive"):
        tasks_for("check_suite", data, DELIVERY, command_prefix="/litci")


def test_command_missing_comment_user_is_named() -> None:
    data = pr_comment("/litci run")
    del data["comment"]["user"]
    with pytest.raises(PayloadError, match="comment[.]user"):
        tasks_for("issue_comment", data, DELIVERY, command_prefix="/litci")


def test_payload_is_not_modified() -> None:
    data = payload("pull_request.opened.4")
    before = copy.deepcopy(data)
    one("pull_request", data)
    assert data == before


@pytest.mark.parametrize("event,name,path,value", [
    ("pull_request", "pull_request.opened.4", "pull_request.head.sha", "../../../etc/passwd"),
    ("pull_request", "pull_request.opened.4", "pull_request.head.sha", "a" * 10_000),
    ("pull_request", "pull_request.opened.4", "pull_request.head.sha", SHA.upper()),
    ("pull_request", "pull_request.closed.2", "pull_request.head.sha", SHA[:39]),
    ("pull_request", "pull_request.opened.4", "repository.full_name", "acme/widgets/../../app"),
    ("pull_request", "pull_request.opened.4", "repository.full_name", "acme/.."),
    ("pull_request", "pull_request.opened.4", "repository.full_name", "acme"),
    ("pull_request", "pull_request.opened.4", "repository.full_name", "ac me/widgets"),
    ("pull_request", "pull_request.opened.4", "pull_request.base.repo.full_name", "a/b?x=1"),
    ("check_run", "check_run.rerequested.7", "check_run.head_sha", "HEAD"),
    ("check_suite", "check_suite.rerequested.7", "check_suite.head_sha", "0" * 41),
])
def test_values_that_would_reach_a_url_path_are_checked(event: str, name: str, path: str, value: str) -> None:
    """SPEC §8: a signed payload whose SHA or full_name is malformed is refused, naming the field,
    and the message does not echo a 10,000-character value."""
    data = payload(name)
    _set(data, path, value)
    with pytest.raises(PayloadError, match=rf"payload field {path.replace('.', '[.]')}: expected") as e:
        tasks_for(event, data, DELIVERY, command_prefix="/litci")
    assert len(str(e.value)) < 200


def test_github_names_with_dots_dashes_and_underscores_pass() -> None:
    data = payload("pull_request.opened.4")
    for path in ("repository.full_name", "pull_request.base.repo.full_name", "pull_request.head.repo.full_name"):
        _set(data, path, "my-org2/some_repo.js-1")
    assert one("pull_request", data).payload["repo"] == "my-org2/some_repo.js-1"
