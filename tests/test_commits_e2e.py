"""The merge queue, branch pushes and annotations end to end: real redis-server, the GitHub stand-in
(every request validated against GitHub's OpenAPI description), the local job backend, the daemon
in this process."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from fake_github import INSTALLATION, REPO
from helpers.configs import config_data
from helpers.e2e import InProcessDaemon, pr_payload, sha_of
from helpers.wait import wait_until
from litbotd import decisions, workflows
from litbotd.tasks import Task

DATA = Path(__file__).parent / "data"

PR_CHECKS = """\
name: ci
trigger:
  pull_request: {branches: [main]}
  push: {branches: [main, 'release/*']}
parametrize:
  matrix: {py: ["3.10", "3.11"]}
run: |
  echo "cell $py"
  test "$py" != "3.11"
"""
NOT_IN_QUEUE = "name: slow-nightly\ntrigger: {pull_request: {branches: [main]}, merge_group: false}\nrun: echo never\n"
OTHER_BASE = "name: release-only\ntrigger: {pull_request: {branches: ['release/*']}}\nrun: echo never\n"
QUEUE_TREE = {".lightning/workflows/ci.yaml": PR_CHECKS, ".lightning/workflows/nightly.yaml": NOT_IN_QUEUE,
              ".lightning/workflows/release.yaml": OTHER_BASE}
EXPECTED = {"ci (3.10)": "success", "ci (3.11)": "failure"}


def merge_group_payload(action: str, sha: str, base: str = "main", **extra: Any) -> dict[str, Any]:
    """The sample payload (tests/data/webhooks/) pointed at the test repository."""
    data = json.loads((DATA / "webhooks" / "merge_group.checks_requested.json").read_text())
    data["action"] = action
    data["merge_group"].update(head_sha=sha, base_ref=f"refs/heads/{base}",
                               head_ref=f"refs/heads/gh-readonly-queue/{base}/pr-7-{sha}")
    data["repository"].update(full_name=REPO, name=REPO.split("/")[1])
    data["installation"]["id"] = INSTALLATION
    data.update(extra)
    return data


def push_payload(branch: str, after: str) -> dict[str, Any]:
    return {"ref": f"refs/heads/{branch}", "before": sha_of("before"), "after": after, "created": False,
            "deleted": False, "forced": False, "base_ref": None, "commits": [], "head_commit": None,
            "repository": {"full_name": REPO, "name": REPO.split("/")[1], "private": True},
            "pusher": {"name": "octocat"}, "sender": {"login": "octocat"}, "installation": {"id": INSTALLATION}}


def _job_dirs(workdir: Path) -> int:
    return len([p for p in workdir.glob("litci-*") if p.is_dir()])


async def test_merge_group_runs_the_pr_checks_on_the_queue_commit(redis_server, world, tmp_path):
    sha = sha_of("queue-commit")
    await world.start({sha: QUEUE_TREE})
    jobs = tmp_path / "jobs"
    async with InProcessDaemon(config_data(redis_server.url, world.url, jobs)) as d:
        assert await d.send("merge_group", merge_group_payload("checks_requested", sha)) == 202
        # GitHub may deliver the event twice (a redelivery has a new delivery id): nothing starts twice.
        assert await d.send("merge_group", merge_group_payload("checks_requested", sha)) == 202
        await wait_until(lambda: world.completed(sha, 2), 60, "two completed check runs")
        await wait_until(d.idle, 20, "the daemon to go idle")
    # The PR's check names, so required checks match; not the workflows the queue excludes.
    assert world.conclusions(sha) == EXPECTED
    assert _job_dirs(jobs) == 2  # each job started once
    assert world.gh.comments == []  # no pull request: no comment
    world.assert_no_duplicates()


async def test_merge_group_destroyed_cancels_its_runs(redis_server, world, tmp_path):
    sha = sha_of("queue-destroyed")
    release = tmp_path / "never-released"
    slow = f"name: ci\nrun: |\n  while [ ! -f {release} ]; do sleep 0.05; done\n"
    await world.start({sha: {".lightning/workflows/ci.yaml": slow}})
    async with InProcessDaemon(config_data(redis_server.url, world.url, tmp_path / "jobs")) as d:
        assert await d.send("merge_group", merge_group_payload("checks_requested", sha)) == 202
        await wait_until(lambda: [r["status"] for r in world.runs(sha)] == ["in_progress"], 30, "the run to start")
        assert await d.send("merge_group", merge_group_payload("destroyed", sha, reason="dequeued")) == 202
        await wait_until(lambda: world.completed(sha, 1), 30, "the run to be cancelled")
        await wait_until(d.idle, 20, "idle")
    run = world.runs(sha)[0]
    assert run["conclusion"] == "cancelled"
    assert "the merge group was dequeued" in run["output"]["summary"]
    world.assert_no_duplicates()


async def test_push_runs_on_listed_branches_only_and_can_be_rerun(redis_server, world, tmp_path):
    main_sha, topic_sha = sha_of("pushed-main"), sha_of("pushed-topic")
    await world.start({main_sha: {".lightning/workflows/ci.yaml": PR_CHECKS},
                       topic_sha: {".lightning/workflows/ci.yaml": PR_CHECKS}})
    jobs = tmp_path / "jobs"
    async with InProcessDaemon(config_data(redis_server.url, world.url, jobs)) as d:
        assert await d.send("push", push_payload("feature/x", topic_sha)) == 202
        assert await d.send("push", push_payload("main", main_sha)) == 202
        await wait_until(lambda: world.completed(main_sha, 2), 60, "the push's runs")
        await wait_until(d.idle, 20, "idle")
        assert world.runs(topic_sha) == []  # not a listed branch: nothing at all
        assert world.conclusions(main_sha) == EXPECTED
        assert _job_dirs(jobs) == 2
        # Re-run the failed check of the pushed commit (check_run rerequested).
        failing = next(r for r in world.runs(main_sha) if r["conclusion"] == "failure")
        payload = {"action": "rerequested",
                   "check_run": {"id": failing["id"], "name": failing["name"], "head_sha": main_sha,
                                 "external_id": failing["external_id"], "pull_requests": []},
                   "repository": {"full_name": REPO, "private": True}, "installation": {"id": INSTALLATION},
                   "sender": {"login": "octocat"}}
        assert await d.send("check_run", payload) == 202
        await wait_until(lambda: world.completed(main_sha, 3), 60, "the re-run")
        await wait_until(d.idle, 20, "idle")
    names = sorted(r["name"] for r in world.runs(main_sha))
    assert names == ["ci (3.10)", "ci (3.11)", "ci (3.11)"]
    assert _job_dirs(jobs) == 3
    assert world.gh.comments == []
    world.assert_no_duplicates()


NOTICES = 60
JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="3" failures="2">
<testcase classname="tests.test_app" name="test_ok" file="tests/test_app.py" line="1"/>
<testcase classname="tests.test_app" name="test_add" file="tests/test_app.py" line="4">
<failure message="assert 3 == 4">tests/test_app.py:6: AssertionError</failure></testcase>
<testcase classname="tests.test_app" name="test_sub">
<failure message="boom">Traceback:
  File "$PWD/src/app.py", line 2, in sub
ValueError: boom</failure></testcase>
</testsuite></testsuites>
"""
ANNOTATING = f"""\
name: lint
reports: ["out/*.xml"]
run: |
  echo "::error file=src/app.py,line=1,endLine=2,title=Lint%3A E501::line too long%0Asecond line"
  echo "::warning file=./src/app.py,line=2,col=3,endColumn=7::unused name"
  echo "::error title=Setup::no file: listed in the output"
  echo "::notice file=../outside.py,line=1::dropped"
  for i in $(seq 1 {NOTICES}); do echo "::notice file=tests/test_app.py,line=$i::note $i"; done
  mkdir -p out
  cat > out/junit.xml <<EOF
{textwrap.indent(JUNIT, "  ")}  EOF
  exit 1
"""
TREE = {".lightning/workflows/lint.yaml": ANNOTATING, "src/app.py": "def sub():\n    raise ValueError('boom')\n",
        "tests/test_app.py": "".join(f"# line {i}\n" for i in range(1, NOTICES + 1))}


def _annotation_requests(run: dict[str, Any]) -> list[int]:
    return [len(body["output"]["annotations"]) for body in run["history"]
            if body.get("output", {}).get("annotations")]


async def test_workflow_commands_and_junit_failures_become_annotations(redis_server, world, tmp_path):
    sha = sha_of("annotations")
    await world.start({sha: TREE})
    async with InProcessDaemon(config_data(redis_server.url, world.url, tmp_path / "jobs")) as d:
        assert await d.send("push", push_payload("main", sha)) == 202  # push: the default trigger is PRs only
        await wait_until(d.idle, 10, "idle")
        assert world.runs(sha) == []
        assert await d.send("merge_group", merge_group_payload("checks_requested", sha)) == 202
        await wait_until(lambda: world.completed(sha, 1), 60, "the run to complete")
        await wait_until(d.idle, 20, "idle")
        run = world.gh.check_runs[0]
        expected = 2 + NOTICES + 2  # error + warning + notices + two JUnit failures; no file / outside: not
        assert len(run["annotations"]) == expected
        sizes = _annotation_requests(run)
        assert len(sizes) >= 2 and max(sizes) <= 50 and sum(sizes) == expected

        by_title = {a.get("title"): a for a in run["annotations"]}
        lint = by_title["Lint: E501"]
        assert (lint["path"], lint["start_line"], lint["end_line"], lint["annotation_level"], lint["message"]) == (
            "src/app.py", 1, 2, "failure", "line too long\nsecond line")
        warn = next(a for a in run["annotations"] if a["annotation_level"] == "warning")
        assert (warn["path"], warn["start_line"], warn["start_column"], warn["end_column"]) == ("src/app.py", 2, 3, 7)
        add = by_title["tests.test_app.test_add failed"]
        assert (add["path"], add["start_line"], add["annotation_level"]) == ("tests/test_app.py", 6, "failure")
        sub = by_title["tests.test_app.test_sub failed"]  # no file in the report: found in the traceback
        assert (sub["path"], sub["start_line"]) == ("src/app.py", 2)
        assert sum(a["annotation_level"] == "notice" for a in run["annotations"]) == NOTICES
        assert not any("outside" in a["path"] for a in run["annotations"])

        assert run["conclusion"] == "failure"
        assert "1 passed, 2 failed, 0 skipped, 0 errors" in run["output"]["summary"]
        assert f"{expected}, on the lines they name" in run["output"]["summary"]
        assert "error: Setup: no file: listed in the output" in run["output"]["text"]

        # At-least-once: a `results` step that runs again (a crash after some batches went out)
        # sends only what GitHub does not hold yet.
        first = list(run["annotations"])
        del run["annotations"][50:]
        key = workflows.run_key(".lightning/workflows/lint.yaml", "lint")
        await d.daemon.ctx.queue.enqueue(Task(kind="results", payload={
            "repo": REPO, "sha": sha, "run": key, "attempt": 1, "installation": INSTALLATION, "pr": None,
            "job": decisions.job_name(REPO, sha, key, 1), "check_run_id": run["id"]}))
        await wait_until(lambda: len(_annotation_requests(run)) > len(sizes), 20, "the repeated results step")
        await wait_until(d.idle, 20, "idle")
    assert len(run["annotations"]) == expected
    assert _annotation_requests(run)[len(sizes):] == [expected - 50]
    assert run["annotations"] == first
    world.assert_no_duplicates()


async def test_a_push_and_a_pr_on_one_commit_start_each_run_once_and_the_comment_follows(redis_server, world,
                                                                                         tmp_path):
    """The original bot's `trigger: [push, pull_request]`: pushing a PR's branch sends both events
    for one commit. The runs start once, and the PR's comment shows how they ended even when the
    push started them."""
    sha = sha_of("push-and-pr")
    both = "name: ci\ntrigger: [push, pull_request]\nparametrize:\n  matrix: {py: ['3.10', '3.11']}\n" \
           "run: test \"$py\" != 3.11\n"
    await world.start({sha: {".lightning/workflows/ci.yaml": both}})
    world.pull(sha)
    jobs = tmp_path / "jobs"
    async with InProcessDaemon(config_data(redis_server.url, world.url, jobs)) as d:
        assert await d.send("push", push_payload("topic", sha)) == 202
        await wait_until(lambda: len(world.runs(sha)) == 2, 30, "the push's check runs")
        assert await d.send("pull_request", pr_payload("synchronize", sha)) == 202
        await wait_until(lambda: world.completed(sha, 2), 60, "both runs")
        await wait_until(d.idle, 20, "idle")
    assert world.conclusions(sha) == EXPECTED
    assert _job_dirs(jobs) == 2
    body = world.gh.comments[0]["body"]
    assert "Failed" in body and "Passed" in body and "Queued" not in body and "Running" not in body, body
    world.assert_no_duplicates()
