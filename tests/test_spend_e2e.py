"""SPEC §11 end to end: a real redis-server, the GitHub stand-in, the local job backend priced
by limits.prices. Money caps hold a PR head's runs until a writer's /litci approve-cost;
max_parallel_per_machine is never exceeded, counted by the jobs themselves; the day's ledger
equals the sum of the costs the backend reported."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fake_github import REPO, GitHubWorld
from helpers.configs import config_data
from helpers.e2e import InProcessDaemon, comment_payload, pr_payload, sha_of
from helpers.wait import wait_until
from litbotd import spend
from litbotd.backends.base import JobStatus
from litbotd.backends.local import LocalBackend


def gpu_matrix(n: int, body: str = "echo ok") -> str:
    cells = ", ".join(f'"c{i}"' for i in range(n))
    indented = "\n".join("  " + line for line in body.splitlines())
    return f"""\
name: gpu
machine: L4
timeout: 60
parametrize:
  matrix: {{cell: [{cells}]}}
run: |
{indented}
"""


def _done(world: GitHubWorld, sha: str, n: int) -> bool:
    runs = world.runs(sha)
    return len(runs) >= n and all(r["status"] == "completed" for r in runs)


def metric_spend(repo: str) -> float:
    """litbotd_spend_usd_total{repo} as /metrics shows it (this process's registry)."""
    from litbotd import metrics

    for line in metrics.render().decode().splitlines():
        if line.startswith(f'litbotd_spend_usd_total{{repo="{repo}"}}'):
            return float(line.split()[-1])
    return 0.0


def _jobs(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "jobs").glob("litci-*") if p.is_dir()]


async def test_over_per_pr_usd_nothing_starts_until_a_writer_approves(redis_server, world, tmp_path):
    sha = sha_of("money")
    await world.start({sha: {".lightning/workflows/gpu.yaml": gpu_matrix(8)}})
    world.pull(sha)
    world.gh.set_permission(REPO, "maintainer", "write")
    world.gh.set_permission(REPO, "visitor", "read")
    data = config_data(redis_server.url, world.url, tmp_path / "jobs",
                       limits={"per_pr_usd": 20.0, "prices": {"L4": 4.0}})
    async with InProcessDaemon(data) as d:
        assert await d.send("pull_request", pr_payload("opened", sha)) == 202
        await wait_until(lambda: _done(world, sha, 8), 60, "eight held check runs")
        await wait_until(d.idle, 20, "idle")
        runs = world.runs(sha)
        assert {r["conclusion"] for r in runs} == {"action_required"}
        summary = runs[0]["output"]["summary"]
        assert "$32.00" in summary and "limits.per_pr_usd = $20.00" in summary and "approve-cost" in summary
        assert _jobs(tmp_path) == []  # nothing started

        assert await d.send("issue_comment", comment_payload("/litci approve-cost", "visitor", comment_id=701)) == 202
        await wait_until(lambda: any(x["comment_id"] == 701 for x in world.gh.reactions), 20, "the refusal")
        await wait_until(d.idle, 20, "idle")
        assert len(world.runs(sha)) == 8 and _jobs(tmp_path) == []

        assert await d.send("issue_comment", comment_payload("/litci approve-cost", "maintainer", comment_id=702)) == 202
        await wait_until(lambda: _done(world, sha, 16), 90, "the approved runs")
        # 40-odd check-run writes in a minute: the comment waits for GitHub's pacing budget.
        await wait_until(d.idle, 120, "idle")
    reactions = {x["comment_id"]: x["content"] for x in world.gh.reactions}
    assert reactions == {701: "confused", 702: "+1"}
    second = [r for r in world.runs(sha) if r["external_id"].endswith("/2")]
    assert len(second) == 8 and {r["conclusion"] for r in second} == {"success"}
    assert all("`@maintainer`" in r["output"]["summary"] for r in second)  # who approved, recorded
    assert len(_jobs(tmp_path)) == 8
    body = world.gh.comments[0]["body"]
    assert "| Cost |" in body and "spent $" in body
    world.assert_no_duplicates()


async def test_max_parallel_per_machine_and_the_ledger(redis_server, world, tmp_path, monkeypatch):
    """Six L4 runs, two L4 slots: two run, four wait saying so; each end starts the next. The jobs
    log their own start and end, so the count is the backend's, not litbotd's. The backend reports
    a cost per job; the day's ledger is exactly their sum."""
    events = tmp_path / "events.log"
    release = tmp_path / "release"
    body = f'echo "S $cell" >> {events}\nwhile [ ! -f {release} ]; do sleep 0.05; done\necho "E $cell" >> {events}'
    sha = sha_of("slots")
    await world.start({sha: {".lightning/workflows/gpu.yaml": gpu_matrix(6, body)}})
    world.pull(sha)

    reported: dict[str, float] = {}
    original = LocalBackend.status

    async def status_with_cost(self, name: str) -> JobStatus:
        st = await original(self, name)
        if not st.final:
            return st
        cost = int(hashlib.sha256(name.encode()).hexdigest()[:4], 16) / 65536  # $0.00-$1.00, per job
        reported[name] = cost
        return JobStatus(st.state, st.exit_code, st.url, st.message, st.timed_out, cost=cost)

    monkeypatch.setattr(LocalBackend, "status", status_with_cost)
    before = metric_spend(REPO)
    data = config_data(redis_server.url, world.url, tmp_path / "jobs", jobs={"local": {
        "workdir": str(tmp_path / "jobs"), "max_parallel": 8, "writable_paths": [str(tmp_path)]}},
        limits={"max_parallel_per_machine": {"L4": 2}, "prices": {"L4": 4.0}})

    def started() -> list[str]:
        return [ln for ln in events.read_text().splitlines() if ln.startswith("S")] if events.exists() else []

    async with InProcessDaemon(data) as d:
        assert await d.send("pull_request", pr_payload("opened", sha)) == 202
        await wait_until(lambda: len(started()) == 2, 60, "two jobs running")
        await wait_until(lambda: sum("Waiting for a free L4: 2 running" in r["output"].get("title", "")
                                     for r in world.runs(sha)) == 4, 30, "four runs saying what they wait for")
        assert len(started()) == 2 and len(_jobs(tmp_path)) == 2
        usage = await spend.usage(d.daemon.queue)
        assert usage["running_by_machine"] == {"L4": 2} and usage["waiting_by_machine"] == {"L4": 4}
        release.touch()
        await wait_until(lambda: _done(world, sha, 6), 90, "all six runs")
        await wait_until(d.idle, 20, "idle")
        today = await spend.spend_today(d.daemon.queue)
    running = peak = 0
    for line in events.read_text().splitlines():
        running += 1 if line.startswith("S") else -1
        peak = max(peak, running)
    assert peak == 2, events.read_text()
    assert {r["conclusion"] for r in world.runs(sha)} == {"success"}
    assert len(reported) == 6
    assert today == {REPO: pytest.approx(sum(reported.values()), abs=1e-5)}
    assert metric_spend(REPO) - before == pytest.approx(sum(reported.values()), abs=1e-5)
    world.assert_no_duplicates()


async def test_sigkill_double_counts_nothing_and_starts_nothing_over_a_cap(redis_server, tmp_path):
    """`litbotd run` SIGKILLed twice: while two L4 jobs run and four wait, then in the middle of a
    result (its cost counted and its slot handed on, the check-run write parked). After each
    restart: never more than 2 jobs at once (counted by the jobs), each job started once, and
    the day's ledger is exactly the sum of the runs' costs, each counted once."""
    from helpers.configs import write_config
    from helpers.daemon import DaemonProcess
    from helpers.e2e import DAEMON_ENV, post_webhook
    from helpers.net import free_port

    events, release = tmp_path / "events.log", tmp_path / "release"
    body = f'echo "S $cell" >> {events}\nwhile [ ! -f {release} ]; do sleep 0.05; done\necho "E $cell" >> {events}'
    sha = sha_of("spend-crash")
    world = GitHubWorld()
    await world.start({sha: {".lightning/workflows/gpu.yaml": gpu_matrix(6, body)}})
    world.pull(sha)
    cfg_path = write_config(tmp_path / "litbotd.toml", redis_server.url, world.url, server={"port": free_port()},
                            workers={"count": 2},
                            jobs={"local": {"workdir": str(tmp_path / "jobs"), "max_parallel": 8,
                                            "writable_paths": [str(tmp_path)]}},
                            limits={"max_parallel_per_machine": {"L4": 2}, "prices": {"L4": 4.0}, "per_pr_usd": 100.0})
    daemon = DaemonProcess(cfg_path, tmp_path / "daemon.log", env=DAEMON_ENV)

    def started() -> int:
        return sum(ln.startswith("S") for ln in events.read_text().splitlines()) if events.exists() else 0

    def waiting() -> int:
        return sum("Waiting for a free L4" in (r["output"] or {}).get("title", "") for r in world.runs(sha)
                   if r["status"] == "queued")

    try:
        daemon.start(wait=False)
        port = await daemon.ready()
        assert await post_webhook(port, "pull_request", pr_payload("opened", sha)) == 202
        await wait_until(lambda: started() == 2 and waiting() == 4, 60, "two running, four waiting")
        daemon.kill()                                     # 1: in the middle of the waiting
        daemon.start(wait=False)
        await daemon.ready()
        hold = world.gh.hold("PATCH", r"/check-runs/\d+$", when=lambda b: (b or {}).get("status") == "completed")
        release.touch()
        await wait_until(hold.reached.is_set, 60, "the first result being reported")
        daemon.kill()                                     # 2: a result counted, its write parked
        hold.release()
        daemon.start(wait=False)
        await daemon.ready()
        await wait_until(lambda: len(world.runs(sha)) == 6 and all(r["status"] == "completed" for r in world.runs(sha)),
                         120, "every run to complete after the restarts")
        assert daemon.term() == 0
    finally:
        daemon.close()
        await world.close()
    running = peak = 0
    for line in events.read_text().splitlines():
        running += 1 if line.startswith("S") else -1
        peak = max(peak, running)
    assert peak <= 2 and started() == 6, events.read_text()
    assert {r["conclusion"] for r in world.runs(sha)} == {"success"}
    assert len(_jobs(tmp_path)) == 6
    world.assert_no_duplicates()
    r = redis_server.client()
    runs = [k for k in r.scan_iter("bot_queue:run:*") if r.type(k) == "hash"]
    spent = [float(r.hget(k, "spent")) for k in runs]
    assert len(spent) == 6 and all(x > 0 for x in spent)
    ledger = {k: v for day in r.scan_iter("bot_queue:spend:*") for k, v in r.hgetall(day).items()}
    assert float(ledger[REPO]) == pytest.approx(sum(spent), abs=1e-5)
    assert float(r.hget(f"bot_queue:sha:{REPO}@{sha}", "spent")) == pytest.approx(sum(spent), abs=1e-5)
    assert r.hlen("bot_queue:limits:entries") == 0 and r.hlen("bot_queue:limits:wake") == 0


async def test_an_approved_fork_may_use_only_untrusted_machines_until_approve_cost(redis_server, world, tmp_path):
    sha = sha_of("fork-gpu")
    wf = 'name: t\nparametrize:\n  matrix: {machine: ["CPU", "L4"]}\nrun: echo ok\n'
    await world.start({sha: {".lightning/workflows/ci.yaml": "name: evil\nrun: echo pwned\n"},
                       "main": {".lightning/workflows/ci.yaml": wf}})
    world.pull(sha, fork_user="stranger", association="FIRST_TIME_CONTRIBUTOR")
    world.gh.set_permission(REPO, "maintainer", "admin")
    async with InProcessDaemon(config_data(redis_server.url, world.url, tmp_path / "jobs")) as d:
        await d.send("pull_request", pr_payload("opened", sha, fork=True, association="FIRST_TIME_CONTRIBUTOR",
                                                user="stranger"))
        await wait_until(lambda: world.runs(sha), 20, "the approval check")
        await d.send("issue_comment", comment_payload("/litci ok-to-test", "maintainer", comment_id=801))
        await wait_until(lambda: _done(world, sha, 3), 30, "the approved fork's runs")
        await wait_until(d.idle, 60, "idle")
        assert world.conclusions(sha) == {"litci": "action_required", "t (CPU)": "success",
                                          "t (L4)": "action_required"}
        held = next(r for r in world.runs(sha) if r["name"] == "t (L4)")
        assert "machine L4" in held["output"]["summary"] and "untrusted_machines (CPU)" in held["output"]["summary"]
        assert len(_jobs(tmp_path)) == 1

        await d.send("issue_comment", comment_payload("/litci approve-cost", "maintainer", comment_id=802))
        await wait_until(lambda: _done(world, sha, 4), 30, "the approved GPU run")
        await wait_until(d.idle, 60, "idle")
    gpu = [r for r in world.runs(sha) if r["name"] == "t (L4)"]
    assert [r["conclusion"] for r in gpu] == ["action_required", "success"]
    assert len(_jobs(tmp_path)) == 2
    world.assert_no_duplicates()


async def test_a_cancelled_run_frees_its_slot_and_a_cancelled_waiter_never_starts(redis_server, world, tmp_path):
    """{L4 = 1}: the old commit's first run holds the L4, its second waits; a push cancels both.
    The waiter never starts; the new commit's run gets the freed slot at once."""
    events = tmp_path / "events.log"
    body = f'echo "S $cell" >> {events}\nwhile true; do sleep 0.05; done'
    old, new = sha_of("old-slots"), sha_of("new-slots")
    await world.start({old: {".lightning/workflows/gpu.yaml": gpu_matrix(2, body)},
                       new: {".lightning/workflows/gpu.yaml": gpu_matrix(1, f'echo "S new" >> {events}')}})
    world.pull(old)
    data = config_data(redis_server.url, world.url, tmp_path / "jobs", jobs={"local": {
        "workdir": str(tmp_path / "jobs"), "max_parallel": 4, "writable_paths": [str(tmp_path)]}},
        limits={"max_parallel_per_machine": {"L4": 1}, "prices": {"L4": 4.0}})
    async with InProcessDaemon(data) as d:
        await d.send("pull_request", pr_payload("opened", old))
        await wait_until(lambda: events.exists() and len(events.read_text().splitlines()) == 1
                         and sum(r["status"] == "queued" for r in world.runs(old)) == 1, 60, "one running, one waiting")
        world.pull(new)
        await d.send("pull_request", pr_payload("synchronize", new))
        await wait_until(lambda: _done(world, new, 1) and _done(world, old, 2), 60, "both commits settled")
        await wait_until(d.idle, 60, "idle")
        usage = await spend.usage(d.daemon.queue)
    assert {r["conclusion"] for r in world.runs(old)} == {"cancelled"}
    assert world.conclusions(new) == {"gpu (c0)": "success"}
    started = sorted(ln.split()[1] for ln in events.read_text().splitlines())
    assert len(started) == 2 and started[1] == "new" and started[0] in ("c0", "c1")  # the waiter never started
    assert len(_jobs(tmp_path)) == 2
    assert usage == {"running_by_machine": {}, "waiting_by_machine": {}, "running_by_repo": {}}
