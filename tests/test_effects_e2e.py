"""Exactly-once effects when GitHub is slow or things race (SPEC §5, §6, §8): run states that never
go back, one summary comment however long GitHub takes, a removed installation that ends quietly,
and a burst of PRs whose results are not held up by lower-priority writes.

Real redis-server, the GitHub stand-in (every request validated against GitHub's OpenAPI
description), the local job backend, the daemon in this process."""
from __future__ import annotations

import asyncio

import pytest

from harness import (INSTALLATION, REPO, GitHubWorld, InProcessDaemon, config_data, pr_payload, sha_of,
                     wait_until)
from litbotd.runstate import RunRef, RunState


MATRIX2 = "name: ci\nparametrize:\n  matrix: {n: [1, 2]}\nrun: echo cell $n\n"
NAMES2 = ("ci (1)", "ci (2)")


@pytest.fixture
async def world():
    w = GitHubWorld()
    yield w
    await w.close()


def _shows_final(body: str) -> bool:
    rows = [line for line in body.splitlines() if any(f"| `{n}` |" in line for n in NAMES2)]
    return len(rows) == 2 and all(line.split("|")[1].strip().endswith(" Passed") for line in rows)


def _completed(world: GitHubWorld, sha: str, n: int) -> bool:
    runs = world.runs(sha)
    return len(runs) >= n and all(r["status"] == "completed" for r in runs)


async def test_a_cancel_that_races_the_start_wins(redis_server, world, tmp_path):
    """The PR closes while start_job is minting the job's token: the run ends cancelled, stays
    completed in Redis and on GitHub, and no job starts."""
    sha = sha_of("cancel-race")
    await world.start({sha: {".lightning/workflows/ci.yaml": "name: ci\nrun: echo hi\n"}})
    world.pull(sha)
    first_mint = world.gh.hold("POST", r"/access_tokens$")  # new_event's installation token
    async with InProcessDaemon(config_data(redis_server.url, world.url, tmp_path / "jobs")) as d:
        assert await d.send("pull_request", pr_payload("opened", sha)) == 202
        await wait_until(lambda: first_mint.reached.is_set(), 20, "the installation token request")
        job_mint = world.gh.hold("POST", r"/access_tokens$")  # the next one: start_job's scoped token
        first_mint.release()
        await wait_until(lambda: job_mint.reached.is_set(), 20, "start_job's token request")
        assert await d.send("pull_request", pr_payload("closed", sha)) == 202
        await wait_until(lambda: _completed(world, sha, 1), 20, "the cancel to complete the check")
        job_mint.release()
        await wait_until(d.idle, 20, "idle")
        rs = RunState(d.daemon.services.queue)
        (key,) = (await rs.runs(REPO, sha)).keys()
        state = await rs.get(RunRef(REPO, sha, key, 1))
    assert (state["status"], state["conclusion"]) == ("completed", "cancelled")
    assert world.conclusions(sha) == {"ci": "cancelled"}
    assert not list((tmp_path / "jobs").glob("litci-*")), "a job started for a cancelled run"
    assert "Running" not in world.gh.comments[-1]["body"]
    world.assert_no_duplicates()


@pytest.mark.parametrize("gone", ["installation", "repository"])
async def test_a_removed_installation_or_repository_ends_the_task_quietly(gone, redis_server, world, tmp_path, caplog):
    """GitHub answers 404 to the token request of an installation that was removed, or to the
    calls about a deleted repository: one warning, no retries, nothing dead-lettered, no traceback."""
    sha = sha_of("uninstalled")
    await world.start({sha: {".lightning/workflows/ci.yaml": "name: ci\nrun: echo hi\n"}})
    if gone == "installation":
        world.gh.repos[REPO].installation_id = INSTALLATION + 1  # the App was uninstalled from 77
    else:
        world.gh.add_repo("octo-org/other", {}, installation_id=INSTALLATION)  # the installation lives on
        del world.gh.repos[REPO]
    caplog.set_level("INFO")
    async with InProcessDaemon(config_data(redis_server.url, world.url, tmp_path / "jobs")) as d:
        assert await d.send("pull_request", pr_payload("opened", sha)) == 202
        queue = d.daemon.services.queue

        async def ended() -> bool:
            return any("gone" in r.getMessage() for r in caplog.records) or bool(await queue.dead_tasks())
        await wait_until(ended, 30, "the task to end")
        await wait_until(d.idle, 20, "idle")
        dead = await queue.dead_tasks()
    assert dead == []
    assert world.gh.count("POST", rf"/app/installations/{INSTALLATION}/access_tokens$") == 1  # not retried
    worker_lines = [r for r in caplog.records if r.name.startswith("litbotd.") and r.levelno >= 30]
    assert [(r.levelname, r.name) for r in worker_lines] == [("WARNING", "litbotd.lifecycle")], \
        [r.getMessage() for r in worker_lines]
    assert not any(r.exc_info for r in caplog.records)
    assert world.gh.check_runs == [] and world.gh.comments == []


async def test_one_comment_however_long_github_takes_to_create_it(redis_server, world, tmp_path, monkeypatch):
    """GitHub holds the first comment POST for several times the comment claim's time to live,
    while the runs finish and other workers want to edit the comment: still exactly one comment,
    and its last edit shows every run's final state."""
    import litbotd.lifecycle as lifecycle
    monkeypatch.setattr(lifecycle, "COMMENT_CLAIM_TTL", 0.5, raising=False)
    ttl = getattr(lifecycle, "COMMENT_CLAIM_TTL", 30.0)  # (on code without a claim: its 30 s lock)
    sha = sha_of("slow-comment")
    await world.start({sha: {".lightning/workflows/ci.yaml": MATRIX2}})
    world.pull(sha)
    held = world.gh.hold("POST", rf"/repos/{REPO}/issues/1/comments$")
    async with InProcessDaemon(config_data(redis_server.url, world.url, tmp_path / "jobs")) as d:
        assert await d.send("pull_request", pr_payload("opened", sha)) == 202
        await wait_until(held.reached.is_set, 30, "the first comment POST")
        await wait_until(lambda: _completed(world, sha, 2), 30, "both runs to complete")
        await asyncio.sleep(4 * ttl)  # the fault: GitHub answers after 4 times the claim's TTL
        held.release()
        await wait_until(lambda: world.gh.comments and _shows_final(world.gh.comments[-1]["body"]), 30,
                         "the final comment")
        await wait_until(d.idle, 20, "idle")
    assert len(world.gh.comments) == 1, [c["body"][:80] for c in world.gh.comments]
    assert world.gh.count("POST", r"/issues/1/comments$") == 1
    world.assert_no_duplicates()
