"""Fast unit tests of the task envelope, the backoff and the queue's Lua scripts (fakeredis + lupa).

Queue semantics under concurrency, crashes and restarts are proven against a real redis-server in
test_queue_redis.py and test_daemon_recovery.py; here only what fakeredis models faithfully.
"""
from __future__ import annotations

import asyncio
import json
import random
import time

import pytest

pytest.importorskip("lupa", reason="fakeredis runs Lua scripts only with the lupa package")
import fakeredis  # noqa: E402

from litbotd.backoff import backoff  # noqa: E402
from litbotd.queue import Queue  # noqa: E402
from litbotd.tasks import VERSION, Task, TaskFormatError, derive_id  # noqa: E402


# -- the envelope -----------------------------------------------------------------------------------
def test_task_round_trip_keeps_every_field():
    t = Task(kind="start_job", payload={"repo": "o/r", "pr": 7, "run": "abc", "nested": {"x": [1, 2]}},
             attempt=2, run_at=123.5, error="boom")
    raw = t.to_json()
    back = Task.from_json(raw)
    assert back == t
    d = json.loads(raw)  # readable JSON with every documented field (SPEC §6)
    assert set(d) == {"v", "id", "kind", "payload", "attempt", "created", "run_at", "error"}
    assert d["v"] == VERSION
    assert Task.from_json(raw.encode()) == t  # bytes too


def test_task_ignores_unknown_fields_from_a_newer_minor_writer():
    d = json.loads(Task(kind="k").to_json())
    d["future_field"] = 1
    assert Task.from_json(json.dumps(d)).kind == "k"


@pytest.mark.parametrize("raw, why", [
    ("{not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    (b"\xff\xfe", "not JSON"),
    (json.dumps({"v": 2, "id": "a", "kind": "k"}), "unsupported task version 2"),
    (json.dumps({"id": "a", "kind": "k"}), "unsupported task version None"),
    (json.dumps({"v": 1, "id": "a"}), "field 'kind': missing"),
    (json.dumps({"v": 1, "kind": "k", "id": 5}), "field 'id': expected a string"),
    (json.dumps({"v": 1, "kind": "k", "id": "a", "payload": [1]}), "field 'payload': expected an object"),
])
def test_task_rejects_what_it_cannot_read(raw, why):
    with pytest.raises(TaskFormatError, match=why):
        Task.from_json(raw)


def test_successor_ids_are_deterministic_and_distinct():
    parent = Task(kind="new_event", payload={})
    a1 = parent.successor("start_job", {"run": "r1"}, key="r1")
    a2 = parent.successor("start_job", {"run": "r1"}, key="r1")
    b = parent.successor("start_job", {"run": "r2"}, key="r2")
    assert a1.id == a2.id == derive_id(parent.id, "start_job", "r1")  # a re-run yields the same ids
    assert b.id != a1.id
    assert parent.successor("results", {"run": "r1"}, key="r1").id != a1.id
    assert Task(kind="new_event").successor("start_job", {}, key="r1").id != a1.id  # other parent
    later = a1.later(999.0)
    assert later.id == a1.id and later.run_at == 999.0


def test_context_carries_the_log_fields_only_when_set():
    t = Task(kind="wait_job", payload={"repo": "o/r", "pr": 3, "sha": "", "job": None, "other": 1})
    assert t.context() == {"task": t.id, "phase": "wait_job", "repo": "o/r", "pr": 3}


# -- backoff ----------------------------------------------------------------------------------------
def test_backoff_doubles_within_jitter_bounds_and_caps():
    rng = random.Random(1)
    for attempt in range(1, 12):
        raw = min(300.0, 2.0 * 2 ** (attempt - 1))
        for _ in range(200):
            d = backoff(attempt, 2.0, 300.0, rng)
            assert 0.5 * raw <= d <= raw
    assert backoff(0, 2.0, 300.0, rng) <= 2.0  # attempt 0 is treated as the first
    assert max(backoff(50, 2.0, 300.0, rng) for _ in range(100)) <= 300.0


def test_backoff_has_jitter():
    rng = random.Random(7)
    values = {round(backoff(3, 2.0, 300.0, rng), 6) for _ in range(50)}
    assert len(values) > 40  # not lockstep
    assert min(values) < 6.0 < max(values)  # spread over [4, 8]


# -- the queue's scripts on fakeredis ---------------------------------------------------------------
@pytest.fixture
async def q():
    r = fakeredis.FakeAsyncRedis(decode_responses=True)
    yield Queue(r, "bot_queue")
    await r.aclose()


async def test_enqueue_take_finish_fifo_and_successors(q):
    tasks = [Task(kind="k", payload={"i": i}) for i in range(5)]
    await q.enqueue(*tasks)
    assert await q.redis.llen("bot_queue") == 5
    # readable JSON in the main list
    assert all(json.loads(x)["kind"] == "k" for x in await q.redis.lrange("bot_queue", 0, -1))
    raw = await q.take("w1", 0.1)
    assert Task.from_json(raw).payload == {"i": 0}  # FIFO
    assert await q.redis.lrange(q.processing("w1"), 0, -1) == [raw]
    nxt = Task.from_json(raw).successor("results", {"run": "r"}, key="r")
    later = Task(kind="poll", run_at=time.time() + 3600)
    assert (await q.finish_and_take("w1", raw, [nxt, later], take=False))[0] is True
    assert await q.redis.llen(q.processing("w1")) == 0
    assert await q.depths() == {"queued": 5, "delayed": 1, "dead": 0}
    # the successor is queued behind the older tasks
    order = [Task.from_json(await q.take("w1", 0.1)).payload for _ in range(5)]
    assert order == [{"i": 1}, {"i": 2}, {"i": 3}, {"i": 4}, {"run": "r"}]


async def test_finish_and_take_hands_over_the_next_task_in_the_same_step(q):
    a, b = Task(kind="k", payload={"i": 0}), Task(kind="k", payload={"i": 1})
    await q.enqueue(a, b)
    raw = await q.take("w1", 0.1)
    succ = Task.from_json(raw).successor("results", {"run": "r"}, key="r")
    kept, nxt = await q.finish_and_take("w1", raw, [succ])
    assert kept is True and Task.from_json(nxt).id == b.id
    # the next task sits in the processing list (as BLMOVE would leave it), the successor queued
    assert await q.redis.lrange(q.processing("w1"), 0, -1) == [nxt]
    assert [Task.from_json(x).id for x in await q.redis.lrange("bot_queue", 0, -1)] == [succ.id]
    kept, nxt2 = await q.finish_and_take("w1", nxt, take=False)  # stopping: takes nothing
    assert (kept, nxt2) == (True, None) and await q.redis.llen("bot_queue") == 1
    raw = await q.take("w1", 0.1)
    assert await q.finish_and_take("w1", raw) == (True, None)  # queue empty
    assert await q.redis.llen(q.processing("w1")) == 0


async def test_finish_of_a_task_no_longer_held_pushes_nothing(q):
    await q.enqueue(Task(kind="k"))
    raw = await q.take("w1", 0.1)
    await q.redis.delete(q.processing("w1"))  # as if swept away
    dead = Task(kind="k", error="x")
    assert (await q.finish_and_take("w1", raw, [Task(kind="s"), Task(kind="d", run_at=time.time() + 99)], dead,
                                    take=False))[0] is False
    assert await q.depths() == {"queued": 0, "delayed": 0, "dead": 0}


async def test_finish_to_the_dead_letter(q):
    await q.enqueue(Task(kind="k"))
    raw = await q.take("w1", 0.1)
    failed = Task.from_json(raw)
    from dataclasses import replace
    failed = replace(failed, attempt=5, error="RuntimeError: boom")
    assert (await q.finish_and_take("w1", raw, [], failed, take=False))[0]
    [(_, dead)] = await q.dead_tasks()
    assert dead.error == "RuntimeError: boom" and dead.attempt == 5
    assert await q.dead_retry(dead.id) == 1
    back = Task.from_json(await q.take("w1", 0.1))
    assert back.id == dead.id and back.attempt == 0 and back.error is None
    assert await q.dead_purge() == 0


async def test_promote_moves_due_tasks_in_due_order(q):
    now = time.time() + 10_000  # all in the future for enqueue
    runs = [now + 5, now + 1, now + 3, now + 2, now + 100]
    await q.enqueue(*[Task(kind="d", payload={"at": r}, run_at=r) for r in runs])
    assert await q.depths() == {"queued": 0, "delayed": 5, "dead": 0}
    moved, nxt = await q.promote_due(now=now + 4)
    assert (moved, nxt) == (3, now + 5)
    moved, nxt = await q.promote_due(now=now + 50)
    assert (moved, nxt) == (1, now + 100)
    taken = [Task.from_json(await q.take("w", 0.1)).payload["at"] for _ in range(4)]
    assert taken == [now + 1, now + 2, now + 3, now + 5]
    assert await q.promote_due(now=now + 1000) == (1, None)


async def test_delivery_claim_is_once(q):
    assert await q.enqueue_delivery("d-1", [Task(kind="new_event")]) is True
    assert await q.enqueue_delivery("d-1", [Task(kind="new_event")]) is False
    assert await q.delivery_seen("d-1") and not await q.delivery_seen("d-2")
    assert await q.redis.llen("bot_queue") == 1
    assert 0 < await q.redis.ttl(q.key("delivery", "d-1")) <= 7 * 24 * 3600


async def test_concurrent_delivery_claims_share_script_calls_and_each_is_claimed_once(q, monkeypatch):
    calls = []
    real = q._claim

    async def counted(**kw):
        calls.append(len(kw["keys"]) - 2)
        return await real(**kw)

    monkeypatch.setattr(q, "_claim", counted)
    ids = [f"d-{i % 40}" for i in range(50)]  # ten repeats of a delivery within the burst
    later = time.time() + 3600
    results = await asyncio.gather(*[
        q.enqueue_delivery(d, [Task(kind="new_event", payload={"d": d}), Task(kind="poll", run_at=later)])
        for d in ids])
    assert results == [True] * 40 + [False] * 10
    assert sum(calls) == 50 and len(calls) < 50  # batched: fewer calls than deliveries
    assert await q.depths() == {"queued": 40, "delayed": 40, "dead": 0}
    assert sorted(Task.from_json(x).payload["d"] for x in await q.redis.lrange("bot_queue", 0, -1)) == sorted(set(ids))


async def test_sweep_takes_only_expired_workers_and_recover_is_unconditional(q):
    await q.enqueue(*[Task(kind="k", payload={"i": i}) for i in range(3)])
    for wid in ("live", "dead", "mine"):
        await q.take(wid, 0.1)
    await q.heartbeat({"live": {"host": "h"}, "dead": {"host": "h"}, "mine": {"host": "h"}}, 60)
    await q.redis.delete(q.lease("dead"))  # lease expired
    assert await q.sweep() == 1
    assert await q.redis.llen(q.processing("dead")) == 0
    assert set(await q.registered()) == {"live", "mine"}
    assert await q.recover(["mine"]) == 1  # own host, process gone: no waiting for the lease
    assert not await q.redis.exists(q.lease("mine"))
    assert await q.redis.llen(q.processing("live")) == 1
    assert await q.redis.llen("bot_queue") == 2
    assert await q.recover([]) == 0


async def test_inspection_helpers(q):
    await q.enqueue(Task(kind="a", created=time.time() - 30), Task(kind="b"))
    await q.redis.lpush("bot_queue", "garbage")
    assert await q.queued_by_kind() == {"a": 1, "b": 1, "(malformed)": 1}
    age = await q.oldest_age()
    assert age is not None and 29 <= age <= 40
    await q.take("w1", 0.1)
    await q.heartbeat({"w1": {"host": "h", "pid": 4, "task": "t1", "since": time.time() - 5}}, 60)
    [info] = await q.worker_infos()
    assert info.id == "w1" and info.alive and info.task == "t1" and info.processing == 1
    assert 4.5 <= info.busy_s <= 10


async def test_queue_name_prefixes_every_key(q):
    q2 = Queue(q.redis, "{ci}:q")
    await q2.enqueue(Task(kind="k"), Task(kind="d", run_at=time.time() + 99))
    await q2.take("w", 0.1)
    await q2.heartbeat({"w": {}}, 60)
    keys = set(await q.redis.keys("*"))
    assert keys and all(k == "{ci}:q" or k.startswith("{ci}:q:") for k in keys)
