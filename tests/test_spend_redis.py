"""spend.py against a real redis-server: slots, waiters woken by the run that ends, the ledger
counting each run once, compare-and-set under concurrent deciders, leaked slots reconciled."""
from __future__ import annotations

import asyncio
import json

import pytest

from litbotd import limits
from litbotd.queue import Queue
from litbotd.runstate import RunRef, RunState
from litbotd.spend import Ledger, Spend, run_id, spend_on, spend_today
from litbotd.tasks import Task
from litbotd.workflows import Run

SHA = "c" * 40
L4X2 = limits.Limits(max_parallel_per_machine={"L4": 2})


def price(machine: str, interruptible: bool) -> float:
    return {"L4": 4.0}.get(machine, 0.0)


def run(key: str, machine: str = "L4") -> Run:
    return Run(workflow="ci", file="ci.yaml", key=key, check_name=f"ci ({key})", cell={}, image="python:3.12-slim",
               machine=machine, interruptible=False, timeout=3600.0, env={}, script="true", reports=())


async def setup(q: Queue, keys: list[str], sha: str = SHA, machine: str = "L4") -> list[RunRef]:
    rs = RunState(q)
    await rs.add_runs("o/r", sha, [run(k, machine) for k in keys], 1, owner="ev")
    return [RunRef("o/r", sha, k, 1) for k in keys]


def cand(ref: RunRef, holder: str, machine: str = "L4") -> limits.Candidate:
    return limits.Candidate(run_id(ref), ref.repo, ref.sha, ref.key, machine, 4.0, 3600.0, holder)


@pytest.fixture
async def sp(aredis):
    return Spend(Queue(aredis, "sq"))


async def test_a_freed_slot_wakes_the_next_waiter_in_the_same_step(sp, aredis):
    refs = await setup(sp.q, ["a", "b", "c"])
    wakes = [Task(kind="start_job", payload={"run": r.key}) for r in refs]
    got = [await sp.gate(cand(r, f"t-{r.key}"), r, L4X2, w, price, True) for r, w in zip(refs, wakes, strict=True)]
    assert [d.action for d in got] == ["start", "start", "wait"]
    assert got[2].reason == "waiting for a free L4: 2 running (limits.max_parallel_per_machine = 2)"
    assert await aredis.llen("sq") == 0  # nothing polls: the waiter's task sits in the wake hash
    # The same task asking again (a crash before its finish) changes nothing.
    assert (await sp.gate(cand(refs[2], "t-c"), refs[2], L4X2, wakes[2], price, True)).action == "skip"
    assert (await sp.gate(cand(refs[0], "t-a"), refs[0], L4X2, wakes[0], price, True)).action == "start"

    assert await sp.finish(refs[0], L4X2, Ledger(1.25, "2026-12-03"))
    queued = await aredis.lrange("sq", 0, -1)
    assert [Task.from_json(t).id for t in queued] == [wakes[2].id]
    # The woken task holds the slot; the old task that asks again is told another starts it.
    assert (await sp.gate(cand(refs[2], wakes[2].id), refs[2], L4X2, wakes[2], price, True)).action == "start"
    assert (await sp.gate(cand(refs[2], "t-c"), refs[2], L4X2, wakes[2], price, True)).action == "skip"
    assert (await sp.usage())["running_by_machine"] == {"L4": 2}

    # Ending again (a retried results step) counts nothing twice and wakes nothing twice.
    assert not await sp.finish(refs[0], L4X2, Ledger(1.25, "2026-12-03"))
    assert await aredis.llen("sq") == 1
    assert await spend_on(sp.q, "2026-12-03") == {"o/r": 1.25}
    assert float((await RunState(sp.q).sha_info("o/r", SHA))["spent"]) == 1.25


async def test_concurrent_deciders_never_pass_a_cap(sp, aredis):
    refs = await setup(sp.q, [f"k{i}" for i in range(12)])
    got = await asyncio.gather(*(sp.gate(cand(r, f"t{i}"), r, L4X2, Task(kind="start_job"), price, True)
                                 for i, r in enumerate(refs)))
    assert sorted(d.action for d in got) == ["start"] * 2 + ["wait"] * 10
    # End the running ones one by one, concurrently with nothing else: each end wakes exactly one.
    running = [r for r, d in zip(refs, got, strict=True) if d.action == "start"]
    await asyncio.gather(*(sp.finish(r, L4X2, None) for r in running))
    assert await aredis.llen("sq") == 2
    entries = await aredis.hgetall(sp.entries)
    assert sum(json.loads(v)["slot"] for v in entries.values()) == 2


async def test_money_hold_starts_nothing_and_approval_lifts_it(sp, aredis):
    refs = await setup(sp.q, [f"k{i}" for i in range(8)])
    lim = limits.Limits(per_pr_usd=20.0)
    got = [await sp.gate(cand(r, "t"), r, lim, Task(kind="start_job"), price, True) for r in refs]
    assert {d.action for d in got} == {"hold"} and "$32.00" in got[0].reason
    assert await aredis.hlen(sp.entries) == 0
    await RunState(sp.q).set_sha_fields("o/r", SHA, cost_approved_by="boss")
    assert (await sp.gate(cand(refs[0], "t"), refs[0], lim, Task(kind="start_job"), price, True)).action == "start"


async def test_the_day_cap_counts_other_commits_reservations(sp):
    lim = limits.Limits(per_repo_day_usd=10.0)
    a = await setup(sp.q, ["a", "b"], sha="a" * 40)
    b = await setup(sp.q, ["x"], sha="b" * 40)
    for r in a:
        assert (await sp.gate(cand(r, "t"), r, lim, Task(kind="start_job"), price, True)).action == "start"
    d = await sp.gate(cand(b[0], "t"), b[0], lim, Task(kind="start_job"), price, True)
    assert d.action == "hold" and "$8.00 reserved by other runs" in d.reason


async def test_leaked_slots_are_reconciled_and_counted_once(sp, aredis):
    refs = await setup(sp.q, ["a", "b", "c"])
    for r in refs:
        await sp.gate(cand(r, "t"), r, L4X2, Task(kind="start_job", payload={"k": r.key}), price, True)
    rs = RunState(sp.q)
    gone = RunRef("o/r", SHA, "expired", 1)  # its run state expired: freed, nothing to count
    await sp.gate(cand(gone, "t", machine="CPU"), gone, L4X2, Task(kind="start_job"), price, True)
    # a: ended an hour ago, its end never ran (its task lost): freed, cost counted from its times
    await rs.update(refs[0], price=4.0, started_at=1000.0)
    await rs.conclude(refs[0], "success", "", 1000.0 + 1800)
    # b: still running; c: waiting
    await rs.update(refs[1], status="in_progress", started_at=2000.0)
    await rs.update(refs[2], status="queued")
    now = 1000.0 + 1800 + 3600
    assert await sp.reconcile(L4X2, price, now=now) == 2
    assert await spend_on(sp.q, limits.utc_day(now)) == {"o/r": 2.0}
    assert await aredis.llen("sq") == 1  # c was woken by a's slot
    assert await sp.reconcile(L4X2, price, now=now) == 0
    assert (await sp.usage())["running_by_machine"] == {"L4": 2}
    assert await spend_today(sp.q) in ({}, {"o/r": 2.0})


async def test_each_part_of_a_run_is_counted_once(sp, aredis):
    """A run retried for the infrastructure: each try's job cost is counted once, and the run
    keeps its slot until its end."""
    [ref] = await setup(sp.q, ["a"])
    await sp.gate(cand(ref, "t"), ref, L4X2, Task(kind="start_job"), price, True)
    assert await sp.count(ref, Ledger(0.5, "2026-12-03", part="1"))
    assert not await sp.count(ref, Ledger(0.5, "2026-12-03", part="1"))  # the same try again
    assert (await sp.usage())["running_by_machine"] == {"L4": 1}
    assert await sp.finish(ref, L4X2, Ledger(1.5, "2026-12-03", part="2"))
    assert not await sp.finish(ref, L4X2, Ledger(1.5, "2026-12-03", part="2"))
    assert await spend_on(sp.q, "2026-12-03") == {"o/r": 2.0}
    assert float(await aredis.hget(RunState(sp.q).run_key(ref), "spent")) == 2.0
    assert (await sp.usage())["running_by_machine"] == {}


async def test_the_price_book_reads_the_backend_and_limits_prices_go_over_it():
    from litbotd.backends.base import Price
    from litbotd.spend import PriceBook

    class Backend:
        calls = 0

        async def prices(self):
            Backend.calls += 1
            return {"L4": Price("L4", 0.9, 0.4), "A100": Price("A100", 3.5, None)}

    book = PriceBook()
    assert book.read_at is None and book.price("L4", False, {}) == 0.0
    assert await book.refresh(Backend()) == 2 and book.read_at is not None
    of = book.price_fn({"A100": 2.0})
    assert (of("L4", False), of("L4", True), of("A100", True), of("CPU", False)) == (0.9, 0.4, 2.0, 0.0)


async def test_the_lifecycle_counts_each_try_of_a_retried_run_once(aredis):
    from litbotd.configfile import parse
    from litbotd.context import Context
    from litbotd.lifecycle import spending

    q = Queue(aredis, "tq")
    ctx = Context.of(parse({"limits": {"max_parallel_per_machine": {"L4": 1}}}, env={}), q)
    [ref, other] = await setup(q, ["a", "b"])
    sp = Spend(q)
    for r in (ref, other):
        await sp.gate(cand(r, "t"), r, ctx.config.limits, Task(kind="start_job", payload={"k": r.key}), price, True)
    await ctx.runs.update(ref, price=4.0, started_at=1000.0)
    await spending.try_ended(ctx, ref, 1, None, now=1000.0 + 900)       # preempted after 15 min: $1
    await spending.try_ended(ctx, ref, 1, None, now=1000.0 + 1800)      # the same try again: nothing
    assert await aredis.llen("tq") == 0                                 # the slot stays with the run
    await ctx.runs.conclude(ref, "success", "", 5000.0)
    await spending.ended(ctx, ref, 2.5, part=2)                          # the last try: its job's cost
    await spending.ended(ctx, ref, 2.5, part=2)
    assert await spend_on(q, limits.utc_day(5000.0)) == {"o/r": 3.5}
    assert await aredis.llen("tq") == 1                                 # b woken by the freed slot


async def test_a_raised_cap_wakes_waiters_at_the_next_reconcile(sp, aredis):
    refs = await setup(sp.q, ["a", "b", "c"])
    one = limits.Limits(max_parallel_per_machine={"L4": 1})
    for r in refs:
        await sp.gate(cand(r, "t"), r, one, Task(kind="start_job", payload={"k": r.key}), price, True)
    for r in refs:
        await RunState(sp.q).update(r, status="queued")
    assert await sp.reconcile(one, price) == 0 and await aredis.llen("sq") == 0
    assert await sp.reconcile(limits.Limits(max_parallel_per_machine={"L4": 3}), price) == 0
    assert await aredis.llen("sq") == 2 and (await sp.usage())["running_by_machine"] == {"L4": 3}
