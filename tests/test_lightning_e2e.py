"""SPEC §11 end to end on Lightning: the real lightning-sdk talking to the Lightning stand-in on
loopback, a real redis-server, the GitHub stand-in, litbotd's daemon in this process.

Infrastructure failures are retried in the same check run, each attempt shown; a test failure is
not; the backend's own message is shown; a state litbotd does not know is never pending; a
superseded run's machine is stopped within 60 s of the push."""
from __future__ import annotations

import time
from typing import Any

from fake_github import GitHubWorld
from helpers.configs import config_data
from helpers.e2e import InProcessDaemon, pr_payload, sha_of
from helpers.wait import wait_until
from lightning_standin import LightningStandIn

GPU = """\
name: gpu
machine: L4
interruptible: true
image: python:3.12-slim
run: pytest -q
"""


def lightning_config(redis_url: str, api_url: str, tmp_path: Any, **jobs: Any) -> dict[str, Any]:
    return config_data(redis_url, api_url, tmp_path / "jobs",
                       jobs={"backend": "lightning", "lightning": {"teamspace": "acme/ci"}, **jobs})


def created(standin: LightningStandIn, n: int) -> Any:
    """The name of the n-th job litbotd created (1-based), once it exists."""
    return standin.creates[n - 1]["name"] if len(standin.creates) >= n else None


def spot(standin: LightningStandIn, n: int) -> bool:
    return bool(standin.creates[n - 1]["spec"].get("spot"))


def check(world: GitHubWorld, sha: str) -> dict[str, Any]:
    (run,) = world.runs(sha)
    return run


def completed(world: GitHubWorld, sha: str) -> bool:
    runs = world.runs(sha)
    return bool(runs) and all(r["status"] == "completed" for r in runs)


async def start_pr(d: InProcessDaemon, world: GitHubWorld, sha: str) -> None:
    world.pull(sha)
    assert await d.send("pull_request", pr_payload("opened", sha)) == 202


async def test_a_preempted_run_is_retried_in_its_check_run_and_passes(redis_server, world, lightning, tmp_path):
    sha = sha_of("preempted")
    await world.start({sha: {".lightning/workflows/gpu.yaml": GPU}})
    async with InProcessDaemon(lightning_config(redis_server.url, world.url, tmp_path)) as d:
        await start_pr(d, world, sha)
        first = await wait_until(lambda: created(lightning, 1), 30, "the first job")
        lightning.set_state(first, "running")
        lightning.notice(first)  # the cloud announces the reclaim…
        lightning.preempt(first)  # …and the attempt fails (one run attempt: Lightning restarts nothing)
        second = await wait_until(lambda: created(lightning, 2), 30, "the second try")
        await wait_until(lambda: "attempt 1 of 3: preempted" in check(world, sha)["output"]["summary"], 30,
                         "the check run to show the first attempt")
        assert check(world, sha)["status"] == "in_progress"
        assert check(world, sha)["output"]["title"].endswith("attempt 2 of 3")
        lightning.set_state(second, "running")
        lightning.preempt(second)
        third = await wait_until(lambda: created(lightning, 3), 30, "the last try")
        lightning.set_state(third, "running")
        lightning.finish(third, 0)
        await wait_until(lambda: completed(world, sha), 30, "the check run to complete")
        await wait_until(d.idle, 20, "idle")
    assert len({first, second, third}) == 3
    assert [spot(lightning, n) for n in (1, 2, 3)] == [True, True, False]  # the last try on demand
    assert [c["spec"]["maxRunAttempts"] for c in lightning.creates] == [1, 1, 1]
    run = check(world, sha)
    assert run["conclusion"] == "success"
    summary = run["output"]["summary"]
    assert "attempt 1 of 3: preempted" in summary and "attempt 2 of 3: preempted" in summary
    assert "attempt 3 of 3: passed" in summary
    assert "The interruptible machine was reclaimed by the cloud provider" in summary  # Lightning's own words
    assert run["output"]["title"].endswith("attempt 3 of 3")
    world.assert_no_duplicates()  # one check run for all three tries
    # What each retried try cost stays with the run, for the spend (the last one is the run's own).
    (key,) = redis_server.client().keys("bot_queue:run:*")
    state = redis_server.client().hgetall(key)
    assert {k for k in state if k.startswith("try_cost:")} == {"try_cost:1", "try_cost:2"}
    assert float(state["try_cost:1"]) == lightning.job(first).cost()


async def test_a_test_failure_is_not_retried(redis_server, world, lightning, tmp_path):
    sha = sha_of("red")
    await world.start({sha: {".lightning/workflows/gpu.yaml": GPU}})
    async with InProcessDaemon(lightning_config(redis_server.url, world.url, tmp_path)) as d:
        await start_pr(d, world, sha)
        name = await wait_until(lambda: created(lightning, 1), 30, "the job")
        lightning.set_state(name, "running")
        # Lightning answers a whole status read (the SDK's three tries) with 503, then slowly: a
        # poll that fails is tried again, it is no failure of the run
        failing = lightning.fail("GET", r"/jobs/find$", 503, times=3)
        await wait_until(lambda: failing.hits == 3, 30, "a status read refused")
        lightning.slow("GET", r"/jobs/find$", 1.0, times=2)
        lightning.notice(name)  # even with a notice: the script's own exit status decides
        lightning.finish(name, 1, lines=("1 failed",))
        await wait_until(lambda: completed(world, sha), 30, "the check run to complete")
        await wait_until(d.idle, 20, "idle")
    assert len(lightning.creates) == 1
    run = check(world, sha)
    assert run["conclusion"] == "failure"
    assert "exit code 1" in run["output"]["summary"] and "Attempts" not in run["output"]["summary"]


async def test_a_failure_with_a_server_message_shows_it(redis_server, world, lightning, tmp_path):
    sha = sha_of("badimage")
    await world.start({sha: {".lightning/workflows/gpu.yaml": GPU}})
    async with InProcessDaemon(lightning_config(redis_server.url, world.url, tmp_path, infra_retries=0)) as d:
        await start_pr(d, world, sha)
        name = await wait_until(lambda: created(lightning, 1), 30, "the job")
        lightning.fail_with(name, 'Back-off pulling image "python:3.12-slim": not found', "ErrImagePull")
        await wait_until(lambda: completed(world, sha), 30, "the check run to complete")
        await wait_until(d.idle, 20, "idle")
    assert len(lightning.creates) == 1  # jobs.infra_retries = 0
    run = check(world, sha)
    assert run["conclusion"] == "failure"
    summary = run["output"]["summary"]
    assert "the infrastructure failed, not the tests: image could not be pulled" in summary
    assert 'Back-off pulling image "python:3.12-slim": not found; ErrImagePull' in summary


async def test_an_unknown_state_is_never_shown_as_pending(redis_server, world, lightning, tmp_path):
    sha = sha_of("odd")
    await world.start({sha: {".lightning/workflows/gpu.yaml": GPU}})
    async with InProcessDaemon(lightning_config(redis_server.url, world.url, tmp_path, queue_timeout="3s")) as d:
        await start_pr(d, world, sha)
        name = await wait_until(lambda: created(lightning, 1), 30, "the job")
        lightning.set_state(name, "hibernating")  # a state no litbotd knows
        await wait_until(lambda: completed(world, sha), 30, "the check run to complete")
        await wait_until(d.idle, 20, "idle")
    run = check(world, sha)
    assert run["conclusion"] == "neutral"
    text = run["output"]["title"] + run["output"]["summary"]
    assert "does not know" in text and "queue_timeout" in text and "pending" not in text
    assert [n for n, _ in lightning.stops] == [name]  # and the job was stopped
    assert len(lightning.creates) == 1


async def test_a_superseded_runs_machine_is_stopped_within_60s(redis_server, world, lightning, tmp_path):
    old, new = sha_of("old-gpu"), sha_of("new-gpu")
    await world.start({old: {".lightning/workflows/gpu.yaml": GPU}, new: {".lightning/workflows/gpu.yaml": GPU}})
    async with InProcessDaemon(lightning_config(redis_server.url, world.url, tmp_path)) as d:
        await start_pr(d, world, old)
        name = await wait_until(lambda: created(lightning, 1), 30, "the old commit's job")
        lightning.set_state(name, "running")
        await wait_until(lambda: check(world, old)["status"] == "in_progress", 30, "the old run in progress")
        # Lightning refuses the first stop requests (more than the SDK's own three tries, twice)
        lightning.fail("PUT", r"/jobs/job-", 503, times=6)
        world.pull(new)
        pushed = time.time()
        assert await d.send("pull_request", pr_payload("synchronize", new)) == 202
        await wait_until(lambda: lightning.stops, 50, "the old machine's stop request")
        stopped_after = lightning.stops[0][1] - pushed
        await wait_until(lambda: completed(world, old), 30, "the old check run to complete")
        await wait_until(lambda: created(lightning, 2), 30, "the new commit's job")
    print(f"\nsuperseded machine stopped {stopped_after:.2f}s after the push (limit 60 s)")
    assert lightning.stops[0][0] == name and lightning.job(name).state == "stopped"
    assert stopped_after < 60
    assert check(world, old)["conclusion"] == "cancelled"


async def test_a_job_pending_too_long_says_what_lightning_said(redis_server, world, lightning, tmp_path):
    sha = sha_of("nocapacity")
    await world.start({sha: {".lightning/workflows/gpu.yaml": GPU}})
    async with InProcessDaemon(lightning_config(redis_server.url, world.url, tmp_path, queue_timeout="2s")) as d:
        await start_pr(d, world, sha)
        name = await wait_until(lambda: created(lightning, 1), 30, "the job")
        lightning.job(name).message = "waiting for L4 capacity in us-east-1"
        await wait_until(lambda: completed(world, sha), 30, "the check run to complete")
        await wait_until(d.idle, 20, "idle")
    run = check(world, sha)
    assert run["conclusion"] == "timed_out"
    assert "queue_timeout" in run["output"]["summary"]
    assert "Lightning: waiting for L4 capacity in us-east-1" in run["output"]["summary"]


MATRIX = """\
name: gpu
machine: L4
interruptible: true
image: python:3.12-slim
parametrize:
  matrix: {shard: ["1", "2", "3", "4"]}
run: pytest -q --shard $shard
"""


async def test_superseded_machines_stop_before_github_hears_of_it(redis_server, world, lightning, tmp_path):
    """Four superseded runs, and GitHub holds the first check-run completion: every machine is
    still told to stop within 60 s of the push (they go first, all at once)."""
    old, new = sha_of("old-matrix"), sha_of("new-matrix")
    await world.start({old: {".lightning/workflows/gpu.yaml": MATRIX}, new: {".lightning/workflows/gpu.yaml": GPU}})
    async with InProcessDaemon(lightning_config(redis_server.url, world.url, tmp_path)) as d:
        await start_pr(d, world, old)
        await wait_until(lambda: len(lightning.creates) == 4, 30, "the old commit's four jobs")
        names = [c["name"] for c in lightning.creates]
        for n in names:
            lightning.set_state(n, "running")
        await wait_until(lambda: [r["status"] for r in world.runs(old)] == ["in_progress"] * 4, 30, "all running")
        hold = world.gh.hold("PATCH", r"/check-runs/\d+$", when=lambda b: (b or {}).get("status") == "completed")
        world.pull(new)
        pushed = time.time()
        assert await d.send("pull_request", pr_payload("synchronize", new)) == 202
        await wait_until(lambda: len(lightning.stops) == 4, 50, "all four machines told to stop")
        slowest = max(t for _, t in lightning.stops) - pushed
        await wait_until(hold.reached.is_set, 30, "GitHub holding the first completion")
        hold.release()
        await wait_until(lambda: completed(world, old), 30, "the old check runs to complete")
    print(f"\nfour superseded machines stopped at most {slowest:.2f}s after the push (limit 60 s)")
    assert sorted(n for n, _ in lightning.stops) == sorted(names)
    assert slowest < 60
    assert {r["conclusion"] for r in world.runs(old)} == {"cancelled"}
