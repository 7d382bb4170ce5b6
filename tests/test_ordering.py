"""ordering.release / rearmed / give_up against a real redis-server: the `needs` phase's state
steps (start or skip once, whoever asks twice), without GitHub."""
from __future__ import annotations

import time
from typing import Any

from litbotd import workflows
from litbotd.lifecycle import ordering
from litbotd.queue import Queue
from litbotd.runstate import FlakyStat, RunRef, RunState, flaky_counts, flaky_stats
from litbotd.tasks import Task

REPO, SHA = "o/r", "a" * 40
D = workflows.Defaults(image="i", machine="CPU", timeout=60.0)
FILES = {".lightning/workflows/lint.yml": "run: x\n",
         ".lightning/workflows/gpu.yml": "needs: lint\nparametrize: {matrix: {cuda: ['1', '2']}}\nrun: x\n"}


async def setup(aredis: Any) -> tuple[RunState, dict[str, workflows.Run]]:
    rs = RunState(Queue(aredis))
    plan = workflows.plan(FILES, "main", D)
    await rs.add_runs(REPO, SHA, plan.runs, 1, owner="t0")
    runs = {r.check_name: r for r in plan.runs}
    for r in plan.runs:
        fields = {"waiting": "waiting for lint"} if r.needs else {}
        await rs.transition(RunRef(REPO, SHA, r.key, 1), ("",), status="queued", check_run_id=7, **fields)
    return rs, runs


def needs_task(n: int = 1) -> Task:
    return Task(kind="needs", payload={"repo": REPO, "sha": SHA, "installation": 1, "pr": 1}, id=f"needs-{n}")


async def test_release_starts_once_and_again_for_the_same_task_only(aredis):
    rs, runs = await setup(aredis)
    lint = RunRef(REPO, SHA, runs["lint"].key, 1)
    completed: list[RunRef] = []

    async def complete(p: dict, ref: RunRef) -> None:
        completed.append(ref)

    out, changed = await ordering.release(needs_task(), rs, complete)
    assert (out, changed) == ([], False)  # lint has not concluded: they wait
    await rs.conclude(lint, "success", "", time.time())
    out, changed = await ordering.release(needs_task(), rs, complete)
    assert changed and sorted(t.payload["run"] for t in out) == sorted(runs[n].key for n in ("gpu (1)", "gpu (2)"))
    assert all(t.kind == "start_job" and t.payload["check_run_id"] == 7 for t in out)
    again, _ = await ordering.release(needs_task(), rs, complete)    # the same task after a crash
    assert [t.id for t in again] == [t.id for t in out]
    other, changed = await ordering.release(needs_task(2), rs, complete)  # another needs task
    assert (other, changed) == ([], False) and completed == []


async def test_release_skips_naming_the_need_and_rearm_brings_them_back(aredis):
    rs, runs = await setup(aredis)
    lint = RunRef(REPO, SHA, runs["lint"].key, 1)
    completed: list[RunRef] = []

    async def complete(p: dict, ref: RunRef) -> None:
        completed.append(ref)

    await rs.conclude(lint, "failure", "exit code 1", time.time())
    out, changed = await ordering.release(needs_task(), rs, complete)
    assert out == [] and changed and len(completed) == 2
    gpu = await rs.get(RunRef(REPO, SHA, runs["gpu (1)"].key, 1))
    assert gpu["conclusion"] == "skipped" and gpu["skip_kind"] == "needs" and "lint (failure)" in gpu["message"]
    assert "waiting" not in gpu
    assert await ordering.rearmed(rs, REPO, SHA, [runs["lint"].key]) == sorted(
        runs[n].key for n in ("gpu (1)", "gpu (2)"))
    assert await ordering.rearmed(rs, REPO, SHA, [runs["gpu (1)"].key]) == []


async def test_a_dead_needs_task_leaves_no_run_queued(aredis):
    rs, runs = await setup(aredis)
    completed: list[RunRef] = []

    async def complete(p: dict, ref: RunRef) -> None:
        completed.append(ref)

    assert await ordering.give_up(needs_task(), rs, complete, "litbotd gave up") == 2
    states = await rs.latest_states(REPO, SHA)
    assert {runs_key: st.get("conclusion") for runs_key, (_, _, st) in states.items()} == {
        runs["lint"].key: None, runs["gpu (1)"].key: "neutral", runs["gpu (2)"].key: "neutral"}


async def test_flaky_is_counted_once_per_run_and_commit_and_bounded(aredis):
    rs, runs = await setup(aredis)
    q = Queue(aredis)
    key = runs["lint"].key
    now = time.time()
    assert not await rs.record_outcome(RunRef(REPO, SHA, key, 1), "failure", now)
    assert await rs.record_outcome(RunRef(REPO, SHA, key, 2), "success", now)
    assert not await rs.record_outcome(RunRef(REPO, SHA, key, 2), "success", now)   # repeated after a crash
    assert not await rs.record_outcome(RunRef(REPO, SHA, runs["gpu (1)"].key, 1), "success", now)  # never failed
    assert await rs.flaky(REPO, SHA) == {key}
    assert await flaky_counts(q) == {REPO: 1}
    # every attempt counted once in its day, a repeated one (a crash) not again
    assert await flaky_stats(q) == {REPO: FlakyStat(flaky=1, runs=3)}
    # 30 days later it no longer counts
    assert await flaky_counts(q, now=now + 31 * 24 * 3600) == {}
    # an old entry is dropped when a new one is recorded
    other = "b" * 40
    await aredis.zadd(q.key("flaky", REPO), {f"{other}:old": now - 40 * 24 * 3600})
    await rs.record_outcome(RunRef(REPO, other, key, 1), "timed_out", now)
    assert await rs.record_outcome(RunRef(REPO, other, key, 2), "success", now)
    assert await aredis.zcard(q.key("flaky", REPO)) == 2 and await aredis.ttl(q.key("flaky", REPO)) > 0
