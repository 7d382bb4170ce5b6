"""SPEC §6: every key a Lua script touches is passed in KEYS, as Redis Cluster requires (a script
that builds key names itself runs on a single Redis and breaks on a cluster, silently).

Every script litbotd sends runs here against a real redis-server with a prelude that shadows
`redis.call`/`redis.pcall`: before each command it asks Redis which arguments are keys
(`COMMAND GETKEYS`) and raises if one of them is not in KEYS. A scenario drives every script of
the product; the test also fails when a script found in litbotd's modules was not run by it.
"""
from __future__ import annotations

import importlib
import pkgutil
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

import litbotd
from helpers.wait import wait_until
from litbotd.ghstate import Pacer
from litbotd.locks import FencedLock
from litbotd.queue import Queue
from litbotd.runstate import RunRef, RunState
from litbotd.tasks import Task

PRELUDE = """
local __redis = redis
local __declared = {}
for _, k in ipairs(KEYS) do __declared[k] = true end
local function __check(...)
  local ok, keys = pcall(__redis.call, 'COMMAND', 'GETKEYS', ...)
  if not ok then return end  -- a command without key arguments
  for _, k in ipairs(keys) do
    if not __declared[k] then error('undeclared key ' .. tostring(k) .. ' in ' .. tostring((...)), 0) end
  end
end
local redis = setmetatable({
  call = function(...) __check(...); return __redis.call(...) end,
  pcall = function(...) __check(...); return __redis.pcall(...) end,
}, {__index = __redis})
"""


def product_scripts() -> dict[str, str]:
    """Every module-level Lua script in litbotd: `module.NAME` -> text."""
    found = {}
    for info in pkgutil.walk_packages(litbotd.__path__, "litbotd."):
        if info.name.endswith("__main__"):  # running it would run the CLI
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if isinstance(value, str) and "redis.call(" in value:
                found[f"{info.name}.{name}"] = value
    return found


@pytest.fixture
def checked(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Every script sent from now on is checked; returns the set of scripts run (original text)."""
    ran: set[str] = set()
    init = AsyncScript.__init__
    evaluate = aioredis.Redis.eval

    def script_init(self: AsyncScript, registered_client: Any, script: str) -> None:
        ran.add(script)
        init(self, registered_client, PRELUDE + script)

    def eval_(self: aioredis.Redis, script: str, numkeys: int, *args: Any) -> Any:
        ran.add(script)
        return evaluate(self, PRELUDE + script, numkeys, *args)

    monkeypatch.setattr(AsyncScript, "__init__", script_init)
    monkeypatch.setattr(aioredis.Redis, "eval", eval_)
    return ran


async def test_the_prelude_refuses_an_undeclared_key(aredis: aioredis.Redis, checked: set[str]) -> None:
    await aredis.eval("return redis.call('SET', KEYS[1], 'x')", 1, "declared")
    with pytest.raises(Exception, match="undeclared key other"):
        await aredis.eval("return redis.call('SET', KEYS[1] .. '', 'x') and redis.call('GET', 'other')", 1, "k")


async def test_every_lua_script_passes_every_key_in_keys(aredis: aioredis.Redis, checked: set[str]) -> None:
    q = Queue(aredis, "lk")
    now = time.time()
    # queue: push, claim-and-push, take + finish (successors now and later, a dead letter), promote
    await q.enqueue(Task(kind="a"), Task(kind="b", run_at=now + 3600))
    assert await q.enqueue_delivery("d1", [Task(kind="c")])
    raw = await q.take("w1", 1)
    assert raw is not None
    assert (await q.finish_and_take("w1", raw, [Task(kind="d"), Task(kind="e", run_at=now + 3600)], dead=Task(kind="x"),
                                   take=False))[0]
    assert (await q.promote_due(now + 7200))[0] == 2
    # recovery: an expired lease (swept) and a dead process's worker (forced)
    for wid in ("w2", "w3"):
        assert await q.take(wid, 1) is not None
    await q.heartbeat({"w2": {"host": "h"}, "w3": {"host": "h"}}, lease_timeout=0.05)
    async def lease_gone() -> bool:
        return not await aredis.exists(q.lease("w2"))

    await wait_until(lease_gone, 10, "w2's lease to expire", every=0.02)
    await q.heartbeat({"w3": {"host": "h"}}, lease_timeout=60)
    assert await q.sweep() == 1
    assert await q.recover(["w3"]) == 1
    assert await q.dead_retry() == 1
    # run state
    rs = RunState(q)
    assert await rs.new_attempt("o/r", "a" * 40, "run-1", "task-1") == 1
    ref = RunRef("o/r", "a" * 40, "run-1", 1)
    assert await rs.transition(ref, ("",), status="queued")
    assert await rs.advance_try(ref, 1, "attempt 1 of 3: preempted", 3) == 2
    assert await rs.request_cancel(ref, "superseded")
    await rs.conclude(ref, "cancelled", "superseded", now)
    # needs: a waiting run released to start, another skipped; flaky: a failure, then a success
    for key, action in (("run-2", "start"), ("run-3", "skip")):
        waiting = RunRef("o/r", "a" * 40, key, 1)
        assert await rs.transition(waiting, ("",), status="queued", waiting="waiting for lint")
        assert await rs.release(waiting, "task-2", action, "lint failed", now)
    assert not await rs.record_outcome(RunRef("o/r", "a" * 40, "run-2", 1), "failure", now)
    assert await rs.record_outcome(RunRef("o/r", "a" * 40, "run-2", 2), "success", now)

    # spend and limits: a start, a wait, an end with its cost that wakes the waiter
    from litbotd import limits
    from litbotd.spend import Ledger, Spend, run_id
    sp, lim = Spend(q), limits.Limits(max_parallel_per_machine={"L4": 1}, per_pr_usd=100.0)
    for n in (1, 2):
        r = RunRef("o/r", "b" * 40, f"k{n}", 1)
        c = limits.Candidate(run_id(r), "o/r", r.sha, r.key, "L4", 4.0, 3600, f"t{n}")
        await sp.gate(c, r, lim, Task(kind="start_job"), lambda m, i: 4.0, is_pr=True)
    await sp.finish(RunRef("o/r", "b" * 40, "k1", 1), lim, Ledger(1.0, "2026-12-03"))

    # GitHub's shared state: the pacer of content-creating calls
    assert await Pacer(aredis, q.name).admit(1, now, 80, 500) is None
    # the one lock: claim, renew, record under the fence, release
    lock = FencedLock(aredis, q.key("lock", "x"), ttl=5)
    fence = await lock.acquire()
    assert fence is not None and await lock.renew(fence)
    assert await lock.commit(fence, q.key("lock", "x", "result"), 60, done="1")
    await lock.release(fence)

    missing = {name for name, text in product_scripts().items() if not any(text in run for run in checked)}
    assert not missing, f"scripts the scenario did not run (add them to it): {sorted(missing)}"
