"""SPEC §11 on Lightning, end to end: the real lightning-sdk against the Lightning stand-in on
loopback (prices from its machine listing, costs from its jobs' total_cost), a real
redis-server, the GitHub stand-in. Nothing priced by limits.prices: the SDK's $4/h for L4."""
from __future__ import annotations

from typing import Any

import pytest

from fake_github import REPO, GitHubWorld
from helpers.configs import config_data
from helpers.e2e import InProcessDaemon, comment_payload, pr_payload, sha_of
from helpers.wait import wait_until
from lightning_standin import LightningStandIn
from litbotd import spend


def gpu_matrix(n: int) -> str:
    cells = ", ".join(f'"c{i}"' for i in range(n))
    return f"""\
name: gpu
machine: L4
image: python:3.12-slim
timeout: 60
parametrize:
  matrix: {{cell: [{cells}]}}
run: pytest -q
"""


def lightning_config(redis_url: str, api_url: str, tmp_path: Any, **limits: Any) -> dict[str, Any]:
    return config_data(redis_url, api_url, tmp_path / "jobs",
                       jobs={"backend": "lightning", "lightning": {"teamspace": "acme/ci"}}, limits=limits)


def done(world: GitHubWorld, sha: str, n: int) -> bool:
    runs = world.runs(sha)
    return len(runs) >= n and all(r["status"] == "completed" for r in runs)


async def test_on_lightning_caps_hold_approval_starts_two_at_a_time_and_the_ledger_is_total_cost(
        redis_server, world, lightning: LightningStandIn, tmp_path):
    sha = sha_of("lightning-spend")
    await world.start({sha: {".lightning/workflows/gpu.yaml": gpu_matrix(8)}})
    world.pull(sha)
    world.gh.set_permission(REPO, "maintainer", "write")
    world.gh.set_permission(REPO, "visitor", "read")
    lightning.autorun = lambda job: 0      # each job runs a few reads, then passes
    lightning.autorun_reads = 3
    data = lightning_config(redis_server.url, world.url, tmp_path, per_pr_usd=20.0,
                            max_parallel_per_machine={"L4": 2})
    async with InProcessDaemon(data) as d:
        assert await d.send("pull_request", pr_payload("opened", sha)) == 202
        await wait_until(lambda: done(world, sha, 8), 60, "eight held check runs")
        await wait_until(d.idle, 60, "idle")
        assert {r["conclusion"] for r in world.runs(sha)} == {"action_required"}
        assert "$32.00" in world.runs(sha)[0]["output"]["summary"]  # 8 × $4/h (the SDK's price) × 60 min
        assert lightning.creates == []

        await d.send("issue_comment", comment_payload("/litci approve-cost", "visitor", comment_id=901))
        await wait_until(lambda: any(x["comment_id"] == 901 for x in world.gh.reactions), 20, "the refusal")
        assert lightning.creates == []
        await d.send("issue_comment", comment_payload("/litci approve-cost", "maintainer", comment_id=902))
        await wait_until(lambda: done(world, sha, 16), 120, "the approved runs")
        await wait_until(d.idle, 120, "idle")
        today = await spend.spend_today(d.daemon.queue)
    assert {x["comment_id"]: x["content"] for x in world.gh.reactions} == {901: "confused", 902: "+1"}
    assert len(lightning.creates) == 8
    assert lightning.peak_running.get("lit-l4-1") == 2          # counted by the stand-in
    second = [r for r in world.runs(sha) if r["external_id"].endswith("/2")]
    assert {r["conclusion"] for r in second} == {"success"}
    total = sum(lightning.job(c["name"]).cost() for c in lightning.creates)
    assert total > 0
    assert today == {REPO: pytest.approx(total, abs=1e-5)}
    world.assert_no_duplicates()


async def test_a_preempted_try_and_its_retry_are_both_counted_once(redis_server, world, lightning, tmp_path):
    sha = sha_of("lightning-tries")
    wf = "name: gpu\nmachine: L4\ninterruptible: true\nimage: python:3.12-slim\nrun: pytest -q\n"
    await world.start({sha: {".lightning/workflows/gpu.yaml": wf}})
    world.pull(sha)

    def created(n: int) -> Any:
        return lightning.creates[n - 1]["name"] if len(lightning.creates) >= n else None

    async with InProcessDaemon(lightning_config(redis_server.url, world.url, tmp_path,
                                                max_parallel_per_machine={"L4": 1})) as d:
        assert await d.send("pull_request", pr_payload("opened", sha)) == 202
        first = await wait_until(lambda: created(1), 30, "the first job")
        lightning.set_state(first, "running")
        lightning.job(first).total_cost = 0.75           # what the preempted machine cost
        lightning.preempt(first)
        second = await wait_until(lambda: created(2), 30, "the second try")
        lightning.set_state(second, "running")
        lightning.job(second).total_cost = 1.5
        lightning.finish(second, 0)
        await wait_until(lambda: done(world, sha, 1), 60, "the run to pass")
        await wait_until(d.idle, 60, "idle")
        today = await spend.spend_today(d.daemon.queue)
        usage = await spend.usage(d.daemon.queue)
    assert world.conclusions(sha) == {"gpu": "success"}
    assert today == {REPO: pytest.approx(2.25, abs=1e-6)}     # both tries, each once
    assert usage["running_by_machine"] == {}                   # the slot was the run's, through its tries
    body = world.gh.comments[0]["body"]
    assert "$2.25" in body


async def test_sigkill_on_lightning_counts_each_job_once_and_never_passes_the_cap(redis_server, lightning, tmp_path):
    """`litbotd run` (the real SDK against the stand-in) SIGKILLed twice: while two L4 jobs run and
    two wait, then in the middle of a result (its cost counted, its slot handed on, the check-run
    write parked). The stand-in counts the L4 jobs running at once; the day's ledger is exactly
    the sum of the stand-in's total_cost."""
    from helpers.configs import write_config
    from helpers.daemon import DaemonProcess
    from helpers.e2e import DAEMON_ENV, post_webhook
    from helpers.net import free_port

    sha = sha_of("lightning-spend-crash")
    world = GitHubWorld()
    await world.start({sha: {".lightning/workflows/gpu.yaml": gpu_matrix(4)}})
    world.pull(sha)
    cfg_path = write_config(tmp_path / "litbotd.toml", redis_server.url, world.url, server={"port": free_port()},
                            workers={"count": 2}, jobs={"backend": "lightning", "lightning": {"teamspace": "acme/ci"}},
                            limits={"max_parallel_per_machine": {"L4": 2}, "per_pr_usd": 100.0})
    daemon = DaemonProcess(cfg_path, tmp_path / "daemon.log", env={**DAEMON_ENV, **lightning.sdk_env(str(tmp_path))})

    def waiting() -> int:
        return sum("Waiting for a free L4" in (r["output"] or {}).get("title", "") for r in world.runs(sha))

    try:
        daemon.start(wait=False)
        port = await daemon.ready(60)
        assert await post_webhook(port, "pull_request", pr_payload("opened", sha)) == 202
        await wait_until(lambda: len(lightning.creates) == 2 and waiting() == 2, 60, "two started, two waiting")
        for c in lightning.creates:
            lightning.set_state(c["name"], "running")
        daemon.kill()                                           # 1: two running, two waiting
        daemon.start(wait=False)
        await daemon.ready(60)
        hold = world.gh.hold("PATCH", r"/check-runs/\d+$", when=lambda b: (b or {}).get("status") == "completed")
        first = lightning.creates[0]["name"]
        lightning.job(first).total_cost = 1.25
        lightning.finish(first, 0)
        await wait_until(hold.reached.is_set, 60, "the first result being reported")
        daemon.kill()                                           # 2: a result counted, its write parked
        hold.release()
        lightning.autorun = lambda job: 0                      # the rest run and pass by themselves
        daemon.start(wait=False)
        await daemon.ready(60)
        await wait_until(lambda: len(world.runs(sha)) == 4 and all(r["status"] == "completed" for r in world.runs(sha)),
                         120, "every run to complete after the restarts")
        assert daemon.term() == 0
    finally:
        daemon.close()
        await world.close()
    assert len({c["name"] for c in lightning.creates}) == len(lightning.creates) == 4
    assert lightning.peak_running.get("lit-l4-1") == 2
    assert {r["conclusion"] for r in world.runs(sha)} == {"success"}
    world.assert_no_duplicates()
    r = redis_server.client()
    ledger = {k: float(v) for day in r.scan_iter("bot_queue:spend:*") for k, v in r.hgetall(day).items()}
    total = sum(lightning.job(c["name"]).cost() for c in lightning.creates)
    assert total > 1.25
    assert ledger == {REPO: pytest.approx(total, abs=1e-5)}
    assert r.hlen("bot_queue:limits:entries") == 0
