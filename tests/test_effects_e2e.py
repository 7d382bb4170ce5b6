"""Exactly-once effects when GitHub is slow or things race (SPEC §5, §6, §8): run states that never
go back, one summary comment however long GitHub takes, a removed installation that ends quietly,
and a burst of PRs whose results are not held up by lower-priority writes.

Real redis-server, the GitHub stand-in (every request validated against GitHub's OpenAPI
description), the local job backend, the daemon in this process."""
from __future__ import annotations

import asyncio

import pytest

from fake_github import INSTALLATION, REPO
from helpers.configs import config_data
from helpers.e2e import InProcessDaemon, pr_payload, sha_of
from helpers.wait import wait_until
from litbotd.runstate import RunRef, RunState

MATRIX2 = "name: ci\nparametrize:\n  matrix: {n: [1, 2]}\nrun: echo cell $n\n"
NAMES2 = ("ci (1)", "ci (2)")


def _final_in(body: str) -> bool:
    """The summary comment shows both runs of MATRIX2 passed."""
    rows = [line for line in body.splitlines() if any(f"| `{n}` |" in line for n in NAMES2)]
    return len(rows) == 2 and all(line.split("|")[1].strip().endswith(" Passed") for line in rows)


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
        await wait_until(lambda: world.completed(sha, 1), 20, "the cancel to complete the check")
        job_mint.release()
        await wait_until(d.idle, 20, "idle")
        rs = RunState(d.daemon.ctx.queue)
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
        queue = d.daemon.ctx.queue

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
    import litbotd.lifecycle.comments as comments
    ttl = 0.5
    if hasattr(comments, "COMMENT_CLAIM_TTL"):
        monkeypatch.setattr(comments, "COMMENT_CLAIM_TTL", ttl)
    else:
        ttl = 30.0  # code before the claim: its comment lock's fixed time to live
    sha = sha_of("slow-comment")
    await world.start({sha: {".lightning/workflows/ci.yaml": MATRIX2}})
    world.pull(sha)
    held = world.gh.hold("POST", rf"/repos/{REPO}/issues/1/comments$")
    async with InProcessDaemon(config_data(redis_server.url, world.url, tmp_path / "jobs")) as d:
        assert await d.send("pull_request", pr_payload("opened", sha)) == 202
        await wait_until(held.reached.is_set, 30, "the first comment POST")
        await wait_until(lambda: world.completed(sha, 2), 30, "both runs to complete")
        await asyncio.sleep(max(2 * ttl, 4 * 0.5))  # the fault: GitHub answers after at least twice the TTL
        held.release()
        await wait_until(lambda: world.gh.comments and _final_in(world.gh.comments[-1]["body"]), 30,
                         "the final comment")
        await wait_until(d.idle, 20, "idle")
    assert len(world.gh.comments) == 1, [c["body"][:80] for c in world.gh.comments]
    assert world.gh.count("POST", r"/issues/1/comments$") == 1
    world.assert_no_duplicates()


def _sample(name: str, **labels: str) -> float:
    from litbotd import metrics
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_burst_of_ten_prs_gets_its_results_first(redis_server, world, tmp_path):
    """10 PRs × 2 runs at once, one installation: every run completes without a pacing wait over
    5 s, with at most 3 check-run writes per run and at most 1 comment write per PR during the
    burst; the postponed comment edits then show every run's final state."""
    shas = {pr: sha_of(f"burst-{pr}") for pr in range(1, 11)}
    await world.start({sha: {".lightning/workflows/ci.yaml": MATRIX2} for sha in shas.values()})
    for pr, sha in shas.items():
        world.pull(sha, pr=pr)
    waits = _sample("litbotd_github_pace_wait_seconds_count")
    short_waits = _sample("litbotd_github_pace_wait_seconds_bucket", le="5.0")
    data = config_data(redis_server.url, world.url, tmp_path / "jobs", workers={"count": 4})
    async with InProcessDaemon(data) as d:
        for pr, sha in shas.items():
            assert await d.send("pull_request", pr_payload("opened", sha, pr=pr)) == 202
        await wait_until(lambda: all(world.completed(sha, 2) for sha in shas.values()), 120, "every run to complete")
        burst = list(world.gh.requests)

        run_writes: dict[str, int] = {}
        for method, path in burst:
            if method == "PATCH" and "/check-runs/" in path:
                run_writes[path.rsplit("/", 1)[1]] = run_writes.get(path.rsplit("/", 1)[1], 0) + 1
        assert sum(1 for m, p in burst if m == "POST" and p.endswith("/check-runs")) == 20
        assert len(world.gh.check_runs) == 20
        per_run = [1 + run_writes.get(str(r["id"]), 0) for r in world.gh.check_runs]
        print(f"check-run writes per run: max {max(per_run)}, mean {sum(per_run) / len(per_run):.2f}")
        assert max(per_run) <= 3, per_run

        pr_of_comment = {str(c["id"]): c["issue_number"] for c in world.gh.comments}
        comment_writes = {pr: 0 for pr in shas}
        for method, path in burst:
            if method == "POST" and path.endswith("/comments"):
                comment_writes[int(path.split("/")[-2])] += 1
            elif method == "PATCH" and "/issues/comments/" in path:
                comment_writes[pr_of_comment[path.rsplit("/", 1)[1]]] += 1
        print(f"comment writes per PR during the burst: {sorted(comment_writes.values())}")
        assert max(comment_writes.values()) <= 1, comment_writes

        new_waits = _sample("litbotd_github_pace_wait_seconds_count") - waits
        long_waits = new_waits - (_sample("litbotd_github_pace_wait_seconds_bucket", le="5.0") - short_waits)
        print(f"pacing waits during the burst: {new_waits:g}, over 5 s: {long_waits:g}")
        assert long_waits == 0

        # A minute later the window is free again: the postponed edits show the final state.
        await d.daemon.redis.delete(d.daemon.ctx.queue.key("pace", str(INSTALLATION)))
        await wait_until(lambda: len(world.gh.comments) == 10 and all(
            _final_in(c["body"]) for c in world.gh.comments), 60, "every PR's comment to show its results")
        await wait_until(d.idle, 20, "idle")
    world.assert_no_duplicates()
