"""The dashboard's recent-runs index (runstate.RunState.recent): kept by the same Lua step that
records a run's state change, newest first, bounded to RECENT, on a real redis-server."""
from __future__ import annotations

import time
from pathlib import Path

from litbotd.queue import Queue
from litbotd.runstate import RECENT, RunRef, RunState

SHA = "a" * 40


async def test_the_recent_index_is_bounded_and_newest_first(aredis) -> None:
    rs = RunState(Queue(aredis, "rr"))
    refs = [RunRef("o/r", SHA, f"run-{i}", 1) for i in range(RECENT + 5)]
    for ref in refs:
        assert await rs.transition(ref, ("",), status="queued", queued_at=time.time())
    got = await rs.recent()
    assert len(got) == RECENT
    assert [r.ref for r in got] == refs[::-1][:RECENT]   # the oldest five are gone
    assert got[0].state["status"] == "queued" and got[0].check_name == got[0].ref.key  # no spec recorded
    assert await aredis.zcard("rr:runs:recent") == RECENT      # trimmed in Redis, not only in the reply
    # A conclusion brings an old run back to the top, with its final state.
    old = refs[10]
    await rs.conclude(old, "success", "", time.time())
    [top] = await rs.recent(limit=1)
    assert top.ref == old and top.state["conclusion"] == "success" and top.at > 0
    # A refused transition (the run has concluded) records nothing.
    await rs.transition(refs[20], ("",), status="queued")  # refused: status is already queued
    assert (await rs.recent(limit=1))[0].ref == old


async def test_a_run_whose_state_expired_is_left_out(aredis) -> None:
    rs = RunState(Queue(aredis, "rr"))
    a, b = RunRef("o/r", SHA, "a", 1), RunRef("o/r", SHA, "b", 2)
    await rs.transition(a, ("",), status="queued")
    await rs.transition(b, ("",), status="queued")
    await aredis.delete("rr:run:o/r@" + SHA + ":a:1")
    await aredis.zadd("rr:runs:recent", {"not json": time.time() + 10})
    assert [r.ref for r in await rs.recent()] == [b]


async def test_the_check_name_comes_from_the_recorded_spec(aredis) -> None:
    from litbotd import workflows

    rs = RunState(Queue(aredis, "rr"))
    text = (Path(__file__).parent / "data" / "workflows" / "spec-example.yml").read_bytes()
    plan = workflows.plan({".litci.yml": text}, "main",
                          workflows.Defaults(image="python:3.12", machine="CPU", timeout=60.0))
    run = plan.runs[0]
    await rs.add_runs("o/r", SHA, [run], pr=7, owner="t")
    await rs.transition(RunRef("o/r", SHA, run.key, 1), ("",), status="queued")
    [r] = await rs.recent()
    assert (r.check_name, r.machine) == (run.check_name, run.machine)
