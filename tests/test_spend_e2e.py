"""SPEC §11 end to end: a real redis-server, the GitHub stand-in, the local job backend priced
by limits.prices. Money caps hold a PR head's runs until a writer's /litci approve-cost;
max_parallel_per_machine is never exceeded, counted by the jobs themselves; the day's ledger
equals the sum of the costs the backend reported."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from harness import REPO, GitHubWorld, InProcessDaemon, comment_payload, config_data, pr_payload, sha_of, wait_until
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


@pytest.fixture
async def world():
    w = GitHubWorld()
    yield w
    await w.close()


def _done(world: GitHubWorld, sha: str, n: int) -> bool:
    runs = world.runs(sha)
    return len(runs) >= n and all(r["status"] == "completed" for r in runs)


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
        usage = await spend.usage(d.daemon.services.queue)
        assert usage["running_by_machine"] == {"L4": 2} and usage["waiting_by_machine"] == {"L4": 4}
        release.touch()
        await wait_until(lambda: _done(world, sha, 6), 90, "all six runs")
        await wait_until(d.idle, 20, "idle")
        today = await spend.spend_today(d.daemon.services.queue)
    running = peak = 0
    for line in events.read_text().splitlines():
        running += 1 if line.startswith("S") else -1
        peak = max(peak, running)
    assert peak == 2, events.read_text()
    assert {r["conclusion"] for r in world.runs(sha)} == {"success"}
    assert len(reported) == 6
    assert today == {REPO: pytest.approx(sum(reported.values()), abs=1e-5)}
    world.assert_no_duplicates()
