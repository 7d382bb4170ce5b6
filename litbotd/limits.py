"""Spend and concurrency limits (SPEC §11): every decision, as pure functions of (the plan, the
ledger, the limits). No Redis, no clock: spend.py reads the facts, asks here, and commits the answer.

Words used below:
- an *entry* is a run litbotd has let past the money gate: it reserves its projected cost until it
  ends, and it either holds a concurrency slot (`slot` True, its job may run) or waits for one;
- the *ledger* is what ended runs cost, per repository and UTC day, and per commit (head SHA);
- the *plan* of a commit is its runs' latest attempts: each still to end (counted at its projected
  cost), or ended (counted in the ledger).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Protocol

from .config import LimitsConfig as Limits  # [limits], as the decisions read it

# Why a run did not start, recorded on the run (`held`) so /litci approve-cost finds it.
HELD_COST, HELD_MACHINE = "cost", "machine"


class PriceLike(Protocol):
    """What a backend reports for one machine type (backends.base.Price), USD per hour."""
    @property
    def on_demand(self) -> float: ...
    @property
    def interruptible(self) -> float | None: ...


def price_per_hour(machine: str, interruptible: bool, reported: Mapping[str, PriceLike],
                   overrides: Mapping[str, float]) -> float:
    """USD per hour of one machine: `limits.prices` first, else what the backend reports (the
    interruptible price when the run asked for it and there is one), else 0 (unpriced)."""
    if machine in overrides:
        return float(overrides[machine])
    p = reported.get(machine)
    if p is None:
        return 0.0
    if interruptible and p.interruptible is not None:
        return float(p.interruptible)
    return float(p.on_demand)


def projected_cost(price: float, timeout_s: float) -> float:
    """The most a run can cost: its price for its whole timeout."""
    return price * max(0.0, timeout_s) / 3600.0


def spent_cost(reported: float | None, price: float, started_at: float | None, finished_at: float | None) -> float:
    """What an ended run cost: the backend's own figure when it gave one, else price × duration
    (0 for a run that never started)."""
    if reported is not None and reported >= 0:
        return float(reported)
    if started_at is None or finished_at is None:
        return 0.0
    return price * max(0.0, finished_at - started_at) / 3600.0


def utc_day(t: float) -> str:
    """The ledger's day of an epoch time: "2026-12-03", in UTC."""
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d")


def usd(x: float) -> str:
    return f"${x:,.2f}"


# ---------------------------------------------------------------------------------------------
# The facts a decision reads

@dataclass(frozen=True)
class Entry:
    """A run past the money gate: reserving `projected` until it ends."""
    run_id: str
    repo: str
    sha: str
    machine: str
    projected: float
    slot: bool          # holds a concurrency slot (its job may run)
    holder: str         # the start_job task that is to start it
    seq: float = 0.0    # order of waiting (first come, first served)


@dataclass(frozen=True)
class PlannedRun:
    """One run of the candidate's commit, its latest attempt."""
    key: str
    machine: str
    projected: float
    ended: bool         # concluded (its cost is in the ledger); a run held by a limit is not ended


@dataclass(frozen=True)
class Candidate:
    run_id: str
    repo: str
    sha: str
    key: str
    machine: str
    price: float        # USD per hour
    timeout: float      # seconds
    holder: str         # the task asking

    @property
    def projected(self) -> float:
        return projected_cost(self.price, self.timeout)


@dataclass(frozen=True)
class Facts:
    entries: Mapping[str, Entry]       # every run past the money gate, every repository
    repo_spent_today: float            # the ledger: the candidate's repository, today (UTC)
    head_spent: float                  # the ledger: every ended attempt of the candidate's commit
    plan: tuple[PlannedRun, ...]       # the candidate's commit
    is_pr: bool = True                 # per_pr_usd is about pull requests
    untrusted: bool = False            # an approved fork PR's code
    approved_by: str | None = None     # a writer's /litci approve-cost for this commit


@dataclass(frozen=True)
class Decision:
    action: str          # "start" | "wait" | "hold" | "skip"
    reason: str = ""     # "start": ""; "wait": what for; "hold": the figures; "skip": why
    held: str = ""       # "hold": HELD_COST or HELD_MACHINE
    entry: Entry | None = None  # "start" / "wait": the entry to record


def _running(entries: Iterable[Entry]) -> list[Entry]:
    return [e for e in entries if e.slot]


def slot_block(repo: str, machine: str, entries: Iterable[Entry], lim: Limits) -> str | None:
    """What a run of `repo` on `machine` waits for, or None when a slot is free for it."""
    running = _running(entries)
    cap = lim.max_parallel_per_machine.get(machine, 0)
    if cap > 0:
        n = sum(e.machine == machine for e in running)
        if n >= cap:
            return f"waiting for a free {machine}: {n} running (limits.max_parallel_per_machine = {cap})"
    if lim.max_parallel_per_repo > 0:
        n = sum(e.repo == repo for e in running)
        if n >= lim.max_parallel_per_repo:
            return (f"waiting for a free slot of {repo}: {n} running "
                    f"(limits.max_parallel_per_repo = {lim.max_parallel_per_repo})")
    return None


def _money_block(c: Candidate, f: Facts, lim: Limits) -> str | None:
    pending = [r for r in f.plan if not r.ended]
    if c.key not in {r.key for r in pending}:
        pending.append(PlannedRun(c.key, c.machine, c.projected, False))
    head_projected = sum(r.projected for r in pending)
    n = len(pending)
    runs = f"{n} run{'s' if n != 1 else ''}"
    if f.is_pr and lim.per_pr_usd > 0 and f.head_spent + head_projected > lim.per_pr_usd + 1e-9:
        return (f"This commit's runs would cost up to {usd(f.head_spent + head_projected)}: "
                f"{runs} to go, {usd(head_projected)} projected (price × timeout), "
                f"+ {usd(f.head_spent)} spent; over limits.per_pr_usd = {usd(lim.per_pr_usd)}.")
    if lim.per_repo_day_usd > 0:
        reserved = sum(e.projected for e in f.entries.values() if e.repo == c.repo and e.sha != c.sha)
        total = f.repo_spent_today + reserved + head_projected
        if total > lim.per_repo_day_usd + 1e-9:
            return (f"{c.repo} would spend up to {usd(total)} today (UTC): {usd(f.repo_spent_today)} spent, "
                    f"{usd(reserved)} reserved by other runs, {usd(head_projected)} projected for this "
                    f"commit's {runs}; over limits.per_repo_day_usd = {usd(lim.per_repo_day_usd)}.")
    return None


def decide_start(c: Candidate, f: Facts, lim: Limits, seq: float) -> Decision:
    """May the candidate run start now? In this order:

    1. already past the gate: "start" if it holds a slot for this task, "skip" if another task is
       to start it (the one a freed slot woke) or it is waiting for a slot;
    2. an approved fork PR's run on a machine outside `untrusted_machines`: "hold";
    3. its commit's runs over `per_pr_usd`, or its repository's day over `per_repo_day_usd`: "hold";
    4. no free slot (`max_parallel_per_machine`, `max_parallel_per_repo`): "wait", in line;
    5. else "start", holding a slot.
    A writer's approval (`approved_by`) lifts 2 and 3, never 4."""
    mine = f.entries.get(c.run_id)
    if mine is not None:
        if not mine.slot:
            return Decision("skip", "waiting for a slot; a freed slot wakes it")
        if mine.holder == c.holder:
            return Decision("start", entry=mine)
        return Decision("skip", "a freed slot woke another task to start it")
    if f.approved_by is None:
        if f.untrusted and c.machine not in lim.untrusted_machines:
            allowed = ", ".join(lim.untrusted_machines) or "none"
            return Decision("hold", held=HELD_MACHINE, reason=(
                f"This fork pull request's run asks for the machine {c.machine}; an approved fork may use "
                f"only limits.untrusted_machines ({allowed})."))
        if (why := _money_block(c, f, lim)) is not None:
            return Decision("hold", held=HELD_COST, reason=why)
    entry = Entry(c.run_id, c.repo, c.sha, c.machine, c.projected, slot=False, holder=c.holder, seq=seq)
    if (why := slot_block(c.repo, c.machine, f.entries.values(), lim)) is not None:
        # A run that waits while older ones wait for the same thing keeps its place in line.
        return Decision("wait", why, entry=entry)
    return Decision("start", entry=replace(entry, slot=True))


def grants(entries: Mapping[str, Entry], lim: Limits, ending: Iterable[str] = (),
           wake: Mapping[str, str] | None = None) -> list[Entry]:
    """The waiting entries that get a slot once the `ending` runs are gone: in line order, each
    one that fits given those granted before it (a waiter for a busy L4 does not hold up one for a
    free CPU). Each comes back holding its slot, `holder` = its wake task's id (`wake`: run id →
    that id; default: unchanged)."""
    gone = set(ending)
    live = {k: e for k, e in entries.items() if k not in gone}
    out: list[Entry] = []
    for e in sorted((e for e in live.values() if not e.slot), key=lambda e: (e.seq, e.run_id)):
        if slot_block(e.repo, e.machine, live.values(), lim) is None:
            granted = replace(e, slot=True, holder=(wake or {}).get(e.run_id, e.holder))
            live[e.run_id] = granted
            out.append(granted)
    return out


def waiting_reason(e: Entry, entries: Mapping[str, Entry], lim: Limits) -> str | None:
    """What a waiting entry still waits for (None: a slot is free now)."""
    return slot_block(e.repo, e.machine, [x for x in entries.values() if x.run_id != e.run_id], lim)


def stale(entries: Mapping[str, Entry], ended: Mapping[str, bool]) -> list[str]:
    """Entries whose run has ended or is gone (`ended[run_id]`: True when concluded or no longer
    recorded): their slot leaked (a task lost for good), reconciled by releasing them."""
    return sorted(k for k in entries if ended.get(k, False))


def counts(entries: Iterable[Entry]) -> dict[str, dict[str, int]]:
    """Running and waiting runs by machine and by repository, for status and the dashboard."""
    out: dict[str, dict[str, int]] = {"running_by_machine": {}, "waiting_by_machine": {}, "running_by_repo": {}}
    for e in entries:
        key = "running_by_machine" if e.slot else "waiting_by_machine"
        out[key][e.machine] = out[key].get(e.machine, 0) + 1
        if e.slot:
            out["running_by_repo"][e.repo] = out["running_by_repo"].get(e.repo, 0) + 1
    return out
