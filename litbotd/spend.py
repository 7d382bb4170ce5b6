"""Spend and concurrency limits in Redis (SPEC §11): the thin adapter around limits.py.

Keys, with `q` = the queue name:
    q:limits:version   a counter: every change below bumps it, and a change is applied only if
                       nothing changed since its facts were read (compare-and-set, in Lua)
    q:limits:entries   hash run id -> JSON: the runs past the money gate (reserving their
                       projected cost), each holding a concurrency slot or waiting for one
    q:limits:wake      hash run id -> the start_job task a freed slot enqueues for that waiter
    q:spend:<day>      hash repo -> USD its runs that ended that UTC day cost (the ledger)
and on runstate's hashes: a run's `spent` (set once: the ledger counts it exactly once, whatever
crash or retry), `price`, `projected`, `held`; a commit's `spent` (its ended attempts).

Every decision comes from limits.py, over facts read in one MULTI; the answer is committed by one
Lua script that first checks the version it read, so two daemons deciding at once cannot both
take the last slot or the last dollar: the later one reads again and decides again. The run that
ends releases its slot, records its cost and enqueues the start_job of each waiter that now fits,
in that same script: a freed slot wakes the next waiter, nothing polls.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, cast

from . import limits, opsview
from .backoff import backoff
from .queue import Queue
from .runstate import RunRef, RunState
from .tasks import Task

LEDGER_TTL = 400 * 24 * 3600   # a day's spend stays readable for a year and more
CAS_TRIES = 50                 # version clashes before giving up (the task is then retried)
CAS_BACKOFF = (0.002, 0.1)     # seconds after a clash: doubling, capped, jittered (no lockstep)
RECONCILE_GRACE = 600.0        # seconds a concluded run may keep its slot before it is released for it

# KEYS: version, entries, wake, main[, run hash, day ledger, commit hash].
# ARGV: version read ('' = apply whatever it is now: a ledger entry alone), then: n_set, (run id,
# entry JSON)...; n_del, run id...; n_wake, (run id, task)...; n_push, run id...; with the 3 ledger
# keys also: amount, repo, day, ttl, part (the run's part counted: its infrastructure try).
# Returns -1 when the version moved (nothing done), else 1 when the ledger counted the part now, 0 not.
_COMMIT = """
if ARGV[1] ~= '' and (redis.call('GET', KEYS[1]) or '0') ~= ARGV[1] then return -1 end
local i = 2
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]); i = i + 2 end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('HDEL', KEYS[2], ARGV[i]); redis.call('HDEL', KEYS[3], ARGV[i]); i = i + 1 end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]); i = i + 2 end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local t = redis.call('HGET', KEYS[3], ARGV[i])
  if t then
    redis.call('LPUSH', KEYS[4], t)
    redis.call('HDEL', KEYS[3], ARGV[i])
  end
  i = i + 1
end
redis.call('INCR', KEYS[1])
if #KEYS < 7 then return 0 end
if redis.call('HSETNX', KEYS[5], 'spent:' .. ARGV[i + 4], ARGV[i]) == 0 then return 0 end
redis.call('HINCRBYFLOAT', KEYS[5], 'spent', ARGV[i])
redis.call('HSET', KEYS[5], 'spent_day', ARGV[i + 2])
redis.call('HINCRBYFLOAT', KEYS[6], ARGV[i + 1], ARGV[i])
redis.call('EXPIRE', KEYS[6], ARGV[i + 3])
redis.call('HINCRBYFLOAT', KEYS[7], 'spent', ARGV[i])
return 1
"""

# KEYS: run hashes. Returns {conclusion, held} of each (one call for a whole plan).
_PLAN_STATES = """
local out = {}
for i, k in ipairs(KEYS) do out[i] = redis.call('HMGET', k, 'conclusion', 'held') end
return out
"""


class Contended(Exception):
    """The limits state kept changing under us (CAS_TRIES times): the task is retried."""


@dataclass(frozen=True)
class Ledger:
    """A run's cost for the ledger: counted once, on the day it ended. A run retried for the
    infrastructure (SPEC §11) ran one job per try: each try is a `part`, counted once each."""
    amount: float
    day: str
    part: str = "1"


def run_id(ref: RunRef) -> str:
    return f"{ref.repo}@{ref.sha}:{ref.key}:{ref.attempt}"


def _entry_json(e: limits.Entry, ref: RunRef) -> str:
    return json.dumps({"repo": e.repo, "sha": e.sha, "key": ref.key, "attempt": ref.attempt, "machine": e.machine,
                       "projected": e.projected, "slot": e.slot, "holder": e.holder, "seq": e.seq}, sort_keys=True)


def _parse(rid: str, raw: str) -> tuple[limits.Entry, RunRef] | None:
    try:
        d = json.loads(raw)
        e = limits.Entry(rid, d["repo"], d["sha"], d["machine"], float(d["projected"]), bool(d["slot"]),
                         str(d["holder"]), float(d.get("seq", 0.0)))
        return e, RunRef(d["repo"], d["sha"], d["key"], int(d["attempt"]))
    except (ValueError, KeyError, TypeError):
        return None


class Spend:
    def __init__(self, queue: Queue) -> None:
        self.q = queue
        self.r = queue.redis
        self.rs = RunState(queue)
        self.version = queue.key("limits", "version")
        self.entries = queue.key("limits", "entries")
        self.wake = queue.key("limits", "wake")
        self._commit = self.r.register_script(_COMMIT)
        self._plan_states = self.r.register_script(_PLAN_STATES)

    def day_key(self, day: str) -> str:
        return self.q.key("spend", day)

    # -- reading ----------------------------------------------------------------------------------
    async def _snapshot(self, repo: str, day: str) -> tuple[str, dict[str, tuple[limits.Entry, RunRef]], float]:
        async with self.r.pipeline(transaction=True) as p:
            p.get(self.version)
            p.hgetall(self.entries)
            p.hget(self.day_key(day), repo)
            version, raw, spent = await p.execute()
        entries = {rid: parsed for rid, value in raw.items() if (parsed := _parse(rid, value)) is not None}
        return version or "0", entries, float(spent or 0.0)

    async def commit_facts(self, ref: RunRef, price_of: Callable[[str, bool], float],
                           with_plan: bool) -> tuple[dict[str, str], tuple[limits.PlannedRun, ...]]:
        """The candidate's commit: its own fields (spent, untrusted, cost_approved_by) and, when a
        money cap needs it, its plan: each run's latest attempt, ended or still to go at its
        projected cost (one round trip for all of them)."""
        info = await self.rs.sha_info(ref.repo, ref.sha)
        if not with_plan:
            return info, ()
        runs = sorted((await self.rs.runs(ref.repo, ref.sha)).items())
        keys = [self.rs.run_key(RunRef(ref.repo, ref.sha, key, attempt)) for key, (_, attempt) in runs]
        states = await self._plan_states(keys=keys) if keys else []
        plan = tuple(limits.PlannedRun(key, run.machine, limits.projected_cost(price_of(run.machine, run.interruptible),
                                                                            run.timeout), bool(concl) and not held)
                     for (key, (run, _)), (concl, held) in zip(runs, states, strict=True))
        return info, plan

    # -- the gate before a start --------------------------------------------------------------------
    async def gate(self, c: limits.Candidate, ref: RunRef, lim: limits.Limits, wake: Task,
                   price_of: Callable[[str, bool], float], is_pr: bool, now: float | None = None) -> limits.Decision:
        """Decide whether the candidate run starts, waits or is held, and record it. `wake` is the
        start_job task a freed slot enqueues when the run waits (its id becomes the entry's holder)."""
        now = time.time() if now is None else now
        day = limits.utc_day(now)
        # The commit's plan changes only with its own events: read once. The shared part (every
        # run's entry, the day's ledger) is read afresh on each try of the compare-and-set.
        info, plan = await self.commit_facts(ref, price_of, with_plan=bool(lim.per_pr_usd or lim.per_repo_day_usd))
        for tries in range(1, CAS_TRIES + 1):
            version, parsed, spent_today = await self._snapshot(c.repo, day)
            entries = {rid: e for rid, (e, _) in parsed.items()}
            refs = {rid: r for rid, (_, r) in parsed.items()}
            # Waiters that fit now (caps raised by a reload) go first, in line order.
            before = limits.grants(entries, lim)
            entries.update({g.run_id: g for g in before})
            facts = limits.Facts(entries, spent_today, float(info.get("spent") or 0.0), plan, is_pr=is_pr,
                                 untrusted=bool(info.get("untrusted")),
                                 approved_by=info.get("cost_approved_by") or None)
            d = limits.decide_start(c, facts, lim, seq=now)
            sets = [(g, refs[g.run_id]) for g in before]
            wakes: list[tuple[str, str]] = []
            if d.action == "wait" and d.entry is not None:
                d = replace(d, entry=replace(d.entry, holder=wake.id))
                wakes.append((c.run_id, wake.to_json()))
            if d.action in ("start", "wait") and d.entry is not None and c.run_id not in parsed:
                sets.append((d.entry, ref))
            if not sets:
                return d
            if await self._apply(version, sets, [], wakes, [g.run_id for g in before]) >= 0:
                return d
            await asyncio.sleep(backoff(tries, *CAS_BACKOFF))
        raise Contended("the limits state kept changing; trying again later")

    async def finish(self, ref: RunRef, lim: limits.Limits, ledger: Ledger | None) -> bool:
        """The run ended (or will never start): record its cost once, free what it held (its slot,
        its reservation, its place in line) and wake the waiters that now fit, in one step.
        Idempotent. True when this call counted the cost."""
        rid = run_id(ref)
        for tries in range(1, CAS_TRIES + 1):
            version, parsed, _ = await self._snapshot(ref.repo, ledger.day if ledger else limits.utc_day(time.time()))
            entries = {k: e for k, (e, _) in parsed.items()}
            granted = limits.grants(entries, lim, ending=[rid])
            sets = [(g, parsed[g.run_id][1]) for g in granted]
            got = await self._apply(version, sets, [rid], [], [g.run_id for g in granted],
                                    ledger=(ref, ledger) if ledger else None)
            if got >= 0:
                return got == 1
            await asyncio.sleep(backoff(tries, *CAS_BACKOFF))
        raise Contended("the limits state kept changing; trying again later")

    async def count(self, ref: RunRef, ledger: Ledger) -> bool:
        """Count one part of a run that goes on (an infrastructure try that ended, the run retried):
        the ledger only; its slot stays held. Idempotent per part. True when counted now."""
        return await self._apply("", [], [], [], [], ledger=(ref, ledger)) == 1

    async def _apply(self, version: str, sets: list[tuple[limits.Entry, RunRef]], dels: list[str],
                     wakes: list[tuple[str, str]], pushes: list[str],
                     ledger: tuple[RunRef, Ledger] | None = None) -> int:
        keys = [self.version, self.entries, self.wake, self.q.name]
        args: list[Any] = [version, len(sets)]
        for e, r in sets:
            args += [e.run_id, _entry_json(e, r)]
        args += [len(dels), *dels, len(wakes)]
        for rid, raw in wakes:
            args += [rid, raw]
        args += [len(pushes), *pushes]
        if ledger is not None:
            ref, led = ledger
            keys += [self.rs.run_key(ref), self.day_key(led.day), self.rs.sha_key(ref.repo, ref.sha)]
            args += [f"{max(0.0, led.amount):.6f}", ref.repo, led.day, LEDGER_TTL, led.part]
        return int(await self._commit(keys=keys, args=args))

    # -- reconciliation -------------------------------------------------------------------------------
    async def reconcile(self, lim: limits.Limits, price_of: Callable[[str, bool], float],
                        now: float | None = None, grace: float = RECONCILE_GRACE) -> int:
        """Free the slots that leaked: entries whose run no longer exists, or concluded longer than
        `grace` ago without its end having freed them (its task lost for good, e.g. a purged dead
        letter). Such a run's cost is counted then, price × duration, unless it already was.
        Then wake the waiters that fit (a reload may have raised a cap)."""
        now = time.time() if now is None else now
        _, parsed, _ = await self._snapshot("", limits.utc_day(now))
        freed = 0
        for _, (e, ref) in sorted(parsed.items()):
            st = await self.rs.get(ref)
            if st and not st.get("conclusion"):
                continue
            finished = float(st.get("finished_at") or 0.0) if st else 0.0
            if st and now - finished < grace:
                continue
            ledger = None
            if st and not st.get("spent"):
                price = float(st["price"]) if st.get("price") else price_of(e.machine, False)
                started = float(st["started_at"]) if st.get("started_at") else None
                ledger = Ledger(limits.spent_cost(None, price, started, finished or now),
                                limits.utc_day(finished or now))
            await self.finish(ref, lim, ledger)
            freed += 1
        await self.wake_fitting(lim)
        return freed

    async def wake_fitting(self, lim: limits.Limits) -> int:
        """Start the waiters that fit now (after a reload raised a cap, with nothing ending)."""
        for tries in range(1, CAS_TRIES + 1):
            version, parsed, _ = await self._snapshot("", limits.utc_day(time.time()))
            granted = limits.grants({k: e for k, (e, _) in parsed.items()}, lim)
            if not granted:
                return 0
            sets = [(g, parsed[g.run_id][1]) for g in granted]
            if await self._apply(version, sets, [], [], [g.run_id for g in granted]) >= 0:
                return len(granted)
            await asyncio.sleep(backoff(tries, *CAS_BACKOFF))
        raise Contended("the limits state kept changing; trying again later")

    # -- reading for status, metrics and the dashboard -------------------------------------------------
    async def usage(self) -> dict[str, Any]:
        """Running and waiting runs by machine and repository, from the entries."""
        raw = cast(dict[str, str], await self.r.hgetall(self.entries))  # decoded
        es = [p[0] for rid, v in raw.items() if (p := _parse(rid, v)) is not None]
        return limits.counts(es)


async def spend_today(queue: Queue, now: float | None = None) -> dict[str, float]:
    """USD each repository's runs that ended today (UTC) cost: {repo: usd}. For `litbotd status`
    and the dashboard; a queue-level read, nothing else needed."""
    day = limits.utc_day(time.time() if now is None else now)
    return await spend_on(queue, day)


async def spend_on(queue: Queue, day: str) -> dict[str, float]:
    """The ledger of one UTC day ("2026-12-03")."""
    raw = cast(dict[str, str], await queue.redis.hgetall(queue.key("spend", day)))  # decoded
    return {repo: round(float(v), 6) for repo, v in sorted(raw.items())}


async def usage(queue: Queue) -> dict[str, Any]:
    """Running and waiting runs by machine and repository (status, dashboard)."""
    return await Spend(queue).usage()


async def view(queue: Queue, now: float | None = None) -> opsview.SpendView:
    """Today's ledger and the slots, as `litbotd status` shows them."""
    day = limits.utc_day(time.time() if now is None else now)
    u = await usage(queue)
    return opsview.SpendView(day, await spend_on(queue, day), u["running_by_machine"], u["waiting_by_machine"],
                             u["running_by_repo"])


class PriceBook:
    """The machine prices the backend reports, read at start and every hour (pool.py's loop);
    `limits.prices` goes over them at each lookup, so a reload applies at once."""

    def __init__(self) -> None:
        self.reported: dict[str, Any] = {}   # machine -> backends.base.Price
        self.read_at: float | None = None

    def update(self, prices: Mapping[str, Any], now: float | None = None) -> None:
        self.reported = dict(prices)
        self.read_at = time.time() if now is None else now

    def price(self, machine: str, interruptible: bool, overrides: Mapping[str, float]) -> float:
        return limits.price_per_hour(machine, interruptible, self.reported, overrides)

    def price_fn(self, overrides: Mapping[str, float]) -> Callable[[str, bool], float]:
        """USD per hour of (machine, interruptible), with `overrides` (limits.prices) first."""
        return lambda machine, interruptible: self.price(machine, interruptible, overrides)

    async def refresh(self, backend: Any) -> int:
        """Read `backend.prices()` (backends.base.Backend) into the book; how many machines."""
        prices = await backend.prices()
        self.update(prices)
        return len(prices)
