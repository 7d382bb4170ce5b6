"""The CI lifecycle end to end: real redis-server, the GitHub stand-in (every request validated
against GitHub's OpenAPI description), the local job backend, the daemon in this process."""
from __future__ import annotations

import json
from pathlib import Path

from fake_github import REPO
from helpers.configs import config_data
from helpers.e2e import InProcessDaemon, comment_payload, pr_payload, rerequested_payload, sha_of
from helpers.wait import wait_until

MATRIX = """\
name: ci
parametrize:
  matrix: {py: ["3.10", "3.11"], os: ["a", "b"]}
run: |
  echo "cell $py-$os"
  test "$py-$os" != "3.11-b"
"""
NAMES = {"ci (3.10, a)": "success", "ci (3.10, b)": "success", "ci (3.11, a)": "success", "ci (3.11, b)": "failure"}


def waiting_workflow(release: Path) -> str:
    return f"""\
name: slow
run: |
  while [ ! -f {release} ]; do sleep 0.05; done
  echo released
"""


async def test_matrix_with_one_failing_cell(redis_server, world, tmp_path):
    sha = sha_of("matrix")
    await world.start({sha: {".lightning/workflows/ci.yaml": MATRIX, "README.md": "hi"}})
    world.pull(sha)
    async with InProcessDaemon(config_data(redis_server.url, world.url, tmp_path / "jobs")) as d:
        assert await d.send("pull_request", pr_payload("opened", sha)) == 202
        await wait_until(lambda: world.completed(sha, 4), 60, "four completed check runs")
        await wait_until(d.idle, 20, "the daemon to go idle")
    assert world.conclusions(sha) == NAMES
    assert len(world.gh.comments) == 1
    body = world.gh.comments[0]["body"]
    assert all(name in body for name in NAMES)
    failing = next(r for r in world.runs(sha) if r["name"] == "ci (3.11, b)")
    assert "exit code 1" in (failing["output"]["summary"] + failing["output"]["title"]).lower() or \
        "litci-exit-code: 1" in failing["output"]["text"]
    # Each job started exactly once: one job directory per run.
    assert len([p for p in (tmp_path / "jobs").glob("litci-*") if p.is_dir()]) == 4
    world.assert_no_duplicates()


async def test_synchronize_cancels_the_older_commit(redis_server, world, tmp_path):
    old, new = sha_of("old"), sha_of("new")
    release = tmp_path / "never-released"
    await world.start({old: {".lightning/workflows/slow.yaml": waiting_workflow(release)},
                       new: {".lightning/workflows/ci.yaml": "name: quick\nrun: echo ok\n"}})
    world.pull(old)
    async with InProcessDaemon(config_data(redis_server.url, world.url, tmp_path / "jobs")) as d:
        assert await d.send("pull_request", pr_payload("opened", old)) == 202
        await wait_until(lambda: [r["status"] for r in world.runs(old)] == ["in_progress"], 30, "the old run to start")
        world.pull(new)
        assert await d.send("pull_request", pr_payload("synchronize", new)) == 202
        await wait_until(lambda: world.completed(new, 1) and world.completed(old, 1), 30, "both commits settled")
        await wait_until(d.idle, 20, "idle")
    old_run = world.runs(old)[0]
    assert old_run["conclusion"] == "cancelled"
    assert f"superseded by {new[:7]}" in old_run["output"]["summary"] + old_run["output"]["title"]
    assert world.conclusions(new) == {"quick": "success"}
    states = sorted(json.loads((p / "status.json").read_text())["state"]
                    for p in (tmp_path / "jobs").glob("litci-*"))
    assert states == ["stopped", "succeeded"], states  # the old job was really stopped
    # The comment lists the latest head only.
    assert "quick" in world.gh.comments[0]["body"] and "slow" not in world.gh.comments[0]["body"]
    world.assert_no_duplicates()


async def test_reruns_and_commands(redis_server, world, tmp_path):
    sha = sha_of("rerun")
    await world.start({sha: {".lightning/workflows/ci.yaml": MATRIX}})
    world.pull(sha)
    world.gh.set_permission(REPO, "maintainer", "write")
    world.gh.set_permission(REPO, "visitor", "read")
    async with InProcessDaemon(config_data(redis_server.url, world.url, tmp_path / "jobs")) as d:
        await d.send("pull_request", pr_payload("opened", sha))
        await wait_until(lambda: world.completed(sha, 4), 60, "first round")
        failing = next(r for r in world.runs(sha) if r["name"] == "ci (3.11, b)")
        assert await d.send("check_run", rerequested_payload(failing)) == 202
        await wait_until(lambda: world.completed(sha, 5), 60, "the re-run of one check")
        reruns = [r for r in world.runs(sha) if r["name"] == "ci (3.11, b)"]
        assert len(reruns) == 2 and reruns[1]["external_id"].endswith("/2")

        assert await d.send("issue_comment", comment_payload('/litci run "ci (3.10, a)"', "maintainer",
                                                             comment_id=501)) == 202
        await wait_until(lambda: world.completed(sha, 6), 60, "the /litci run re-run")
        assert [r["name"] for r in world.runs(sha)].count("ci (3.10, a)") == 2

        assert await d.send("issue_comment", comment_payload("/litci run", "visitor", comment_id=502)) == 202
        await wait_until(lambda: any(x["comment_id"] == 502 for x in world.gh.reactions), 20, "a reaction")
        await wait_until(d.idle, 20, "idle")
    by_comment = {x["comment_id"]: x["content"] for x in world.gh.reactions}
    assert by_comment == {501: "+1", 502: "confused"}
    assert len(world.runs(sha)) == 6  # the refused command started nothing
    world.assert_no_duplicates()


async def test_untrusted_fork_waits_for_ok_to_test(redis_server, world, tmp_path):
    sha = sha_of("fork")
    # The fork's own workflow is never read: the base branch's is.
    await world.start({sha: {".lightning/workflows/ci.yaml": "name: evil\nrun: echo pwned\n"},
                       "main": {".lightning/workflows/ci.yaml": "name: trusted\nrun: echo safe\n"}})
    world.pull(sha, fork_user="stranger", association="FIRST_TIME_CONTRIBUTOR")
    world.gh.set_permission(REPO, "maintainer", "admin")
    async with InProcessDaemon(config_data(redis_server.url, world.url, tmp_path / "jobs")) as d:
        await d.send("pull_request", pr_payload("opened", sha, fork=True, association="FIRST_TIME_CONTRIBUTOR",
                                                user="stranger"))
        await wait_until(lambda: world.runs(sha), 20, "the approval check")
        await wait_until(d.idle, 20, "idle")
        assert world.conclusions(sha) == {"litci": "action_required"}
        assert "ok-to-test" in world.runs(sha)[0]["output"]["summary"]
        assert not list((tmp_path / "jobs").glob("litci-*"))

        await d.send("issue_comment", comment_payload("/litci ok-to-test", "maintainer", comment_id=601))
        await wait_until(lambda: world.completed(sha, 2), 30, "the approved run")
        await wait_until(d.idle, 20, "idle")
    assert world.conclusions(sha) == {"litci": "action_required", "trusted": "success"}
    world.assert_no_duplicates()


async def test_invalid_workflow_file_fails_one_check(redis_server, world, tmp_path):
    sha = sha_of("invalid")
    bad = "name: broken\nrun: echo hi\nmachin: CPU\n"
    await world.start({sha: {".lightning/workflows/bad.yaml": bad, ".lightning/workflows/ok.yaml": "name: ok\nrun: echo ok\n"}})
    world.pull(sha)
    async with InProcessDaemon(config_data(redis_server.url, world.url, tmp_path / "jobs")) as d:
        await d.send("pull_request", pr_payload("opened", sha))
        await wait_until(lambda: world.completed(sha, 2), 30, "two checks")
        await wait_until(d.idle, 20, "idle")
    conclusions = world.conclusions(sha)
    assert conclusions == {"litci: .lightning/workflows/bad.yaml": "failure", "ok": "success"}
    out = next(r for r in world.runs(sha) if r["name"].startswith("litci:"))["output"]
    text = " ".join(str(v) for v in out.values())
    assert "bad.yaml" in text and "3" in text and "machin" in text
    world.assert_no_duplicates()


async def test_no_workflow_files_is_one_neutral_check(redis_server, world, tmp_path):
    sha = sha_of("empty")
    await world.start({sha: {"README.md": "nothing to run"}})
    world.pull(sha)
    async with InProcessDaemon(config_data(redis_server.url, world.url, tmp_path / "jobs")) as d:
        await d.send("pull_request", pr_payload("opened", sha))
        await wait_until(lambda: world.completed(sha, 1), 30, "the neutral check")
        await wait_until(d.idle, 20, "idle")
    assert world.conclusions(sha) == {"litci": "neutral"}


async def test_closed_pr_cancels_running_jobs(redis_server, world, tmp_path):
    sha = sha_of("closing")
    await world.start({sha: {".lightning/workflows/slow.yaml": waiting_workflow(tmp_path / "never")}})
    world.pull(sha)
    async with InProcessDaemon(config_data(redis_server.url, world.url, tmp_path / "jobs")) as d:
        await d.send("pull_request", pr_payload("opened", sha))
        await wait_until(lambda: [r["status"] for r in world.runs(sha)] == ["in_progress"], 30, "the run to start")
        await d.send("pull_request", pr_payload("closed", sha))
        await wait_until(lambda: world.completed(sha, 1), 30, "the cancel")
        await wait_until(d.idle, 20, "idle")
    run = world.runs(sha)[0]
    assert run["conclusion"] == "cancelled" and "closed" in run["output"]["summary"]



async def test_a_job_that_will_not_start_completes_its_check(redis_server, world, tmp_path):
    """start_job fails every attempt (the jobs directory cannot be made): after max_attempts the
    task is dead-lettered and its check run completed as a failure saying why — no check hangs."""
    sha = sha_of("nostart")
    await world.start({sha: {".lightning/workflows/ci.yaml": "name: ci\nrun: echo never\n"}})
    world.pull(sha)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the jobs directory should be")
    data = config_data(redis_server.url, world.url, blocker, workers={"max_attempts": 2})
    async with InProcessDaemon(data) as d:
        await d.send("pull_request", pr_payload("opened", sha))
        await wait_until(lambda: world.completed(sha, 1), 30, "the check to complete")
        await wait_until(d.idle, 20, "idle")
        dead = await d.daemon.ctx.queue.dead_tasks()
    run = world.runs(sha)[0]
    assert run["conclusion"] == "failure"
    assert "failed to start" in run["output"]["summary"] + run["output"]["title"]
    assert [t.kind for _, t in dead] == ["start_job"] and dead[0][1].attempt == 2
    assert "ci" in world.gh.comments[0]["body"]
    world.assert_no_duplicates()
