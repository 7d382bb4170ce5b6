"""limits.py: every spend and concurrency decision, table-tested (pure: no Redis, no clock)."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from litbotd import limits as L


@dataclass(frozen=True)
class P:
    on_demand: float
    interruptible: float | None = None


REPORTED = {"L4": P(4.0, 1.5), "A100": P(10.0, None), "CPU": P(0.1, 0.05)}


@pytest.mark.parametrize("machine, interruptible, overrides, want", [
    ("L4", False, {}, 4.0),
    ("L4", True, {}, 1.5),                    # the interruptible price when asked for
    ("A100", True, {}, 10.0),                 # no interruptible price: on-demand
    ("L4", True, {"L4": 3.0}, 3.0),           # limits.prices over the SDK's
    ("T4", False, {"T4": 0.5}, 0.5),          # a machine only limits.prices knows
    ("T4", False, {}, 0.0),                   # unpriced: free (a local job)
])
def test_price_per_hour(machine, interruptible, overrides, want):
    assert L.price_per_hour(machine, interruptible, REPORTED, overrides) == want


@pytest.mark.parametrize("reported, price, started, finished, want", [
    (2.5, 4.0, 0.0, 3600.0, 2.5),             # the backend's figure wins
    (None, 4.0, 0.0, 1800.0, 2.0),            # else price × duration
    (None, 4.0, None, 1800.0, 0.0),           # never started: nothing
    (None, 4.0, 100.0, 50.0, 0.0),            # a clock step back is not a refund
    (0.0, 4.0, 0.0, 3600.0, 0.0),             # a reported 0 is a figure too
])
def test_spent_cost(reported, price, started, finished, want):
    assert L.spent_cost(reported, price, started, finished) == pytest.approx(want)


def test_projected_cost_and_day():
    assert L.projected_cost(4.0, 3600) == 4.0
    assert L.projected_cost(4.0, 900) == 1.0
    assert L.utc_day(0) == "1970-01-01"
    assert L.utc_day(1_796_342_399) == "2026-12-03"   # 23:59:59Z
    assert L.utc_day(1_796_342_400) == "2026-12-04"


def entry(run_id, machine="L4", repo="o/r", sha="s1", slot=True, projected=4.0, holder="t", seq=0.0):
    return L.Entry(run_id, repo, sha, machine, projected, slot, holder, seq)


def cand(run_id="s2/a/1", key="a", machine="L4", repo="o/r", sha="s2", price=4.0, timeout=3600.0, holder="t"):
    return L.Candidate(run_id, repo, sha, key, machine, price, timeout, holder)


def plan(n, machine="L4", projected=4.0, ended=()):
    return tuple(L.PlannedRun(k, machine, projected, k in ended) for k in "abcdefghijklmnop"[:n])


def facts(entries=(), spent_today=0.0, head_spent=0.0, plan_=(), **kw):
    return L.Facts({e.run_id: e for e in entries}, spent_today, head_spent, plan_, **kw)


NONE = L.Limits()
PR20 = L.Limits(per_pr_usd=20.0)
DAY50 = L.Limits(per_repo_day_usd=50.0)
L4X2 = L.Limits(max_parallel_per_machine={"L4": 2})
REPO2 = L.Limits(max_parallel_per_repo=2)

# (name, candidate, facts, limits) -> (action, held, reason fragment)
CASES = [
    ("no limits: start", cand(), facts(plan_=plan(8)), NONE, ("start", "", "")),
    ("8 × $4 over per_pr_usd 20: hold", cand(), facts(plan_=plan(8)), PR20, ("hold", "cost", "$32.00")),
    ("5 × $4 = 20 is not over 20", cand(), facts(plan_=plan(5)), PR20, ("start", "", "")),
    ("held runs still count: the 4th of 8 is held", cand(key="d"),
     facts(plan_=plan(8)), PR20, ("hold", "cost", "8 runs to go")),
    ("ended runs count as spent, not projected", cand(key="e"),
     facts(head_spent=3.0, plan_=plan(5, ended="abcd")), PR20, ("start", "", "")),
    ("spent + projected over", cand(key="e"),
     facts(head_spent=18.0, plan_=plan(5, ended="abcd")), PR20, ("hold", "cost", "$18.00 spent")),
    ("per_pr_usd is not about pushes", cand(), facts(plan_=plan(8), is_pr=False), PR20, ("start", "", "")),
    ("approval lifts the money cap", cand(), facts(plan_=plan(8), approved_by="boss"), PR20, ("start", "", "")),
    ("day: spent + others' reservations + this commit", cand(),
     facts([entry("s1/x/1", projected=20.0)], spent_today=20.0, plan_=plan(3)), DAY50, ("hold", "cost", "$52.00")),
    ("day: within", cand(), facts([entry("s1/x/1", projected=20.0)], spent_today=20.0, plan_=plan(2)), DAY50,
     ("start", "", "")),
    ("day: other repositories do not count", cand(),
     facts([entry("s1/x/1", repo="o/other", projected=40.0)], spent_today=0.0, plan_=plan(3)), DAY50,
     ("start", "", "")),
    ("day: this commit's own entries are not counted twice", cand(key="c"),
     facts([entry("s2/a/1", sha="s2"), entry("s2/b/1", sha="s2")], spent_today=38.0, plan_=plan(3)), DAY50,
     ("start", "", "")),
    ("day cap holds pushes too", cand(), facts(spent_today=49.0, plan_=plan(1), is_pr=False), DAY50,
     ("hold", "cost", "per_repo_day_usd")),
    ("fork on a GPU: hold", cand(), facts(plan_=plan(1), untrusted=True), NONE, ("hold", "machine", "L4")),
    ("fork on CPU: start", cand(machine="CPU"), facts(plan_=plan(1, "CPU"), untrusted=True), NONE,
     ("start", "", "")),
    ("fork on a GPU, approved: start", cand(), facts(plan_=plan(1), untrusted=True, approved_by="boss"), NONE,
     ("start", "", "")),
    ("2 L4 running: wait", cand(), facts([entry("1"), entry("2")], plan_=plan(1)), L4X2,
     ("wait", "", "waiting for a free L4: 2 running")),
    ("1 L4 running, 1 waiting: start", cand(), facts([entry("1"), entry("2", slot=False)], plan_=plan(1)), L4X2,
     ("start", "", "")),
    ("a CPU run does not wait for L4", cand(machine="CPU"), facts([entry("1"), entry("2")], plan_=plan(1)), L4X2,
     ("start", "", "")),
    ("approval never lifts concurrency", cand(), facts([entry("1"), entry("2")], plan_=plan(1), approved_by="b"),
     L4X2, ("wait", "", "L4")),
    ("per repo: 2 running in this repo", cand(machine="CPU"),
     facts([entry("1", machine="CPU"), entry("2", machine="A100")], plan_=plan(1)), REPO2,
     ("wait", "", "free slot of o/r: 2 running")),
    ("per repo: other repos' runs do not count", cand(),
     facts([entry("1", repo="x/y"), entry("2", repo="x/y")], plan_=plan(1)), REPO2, ("start", "", "")),
    ("money is decided before concurrency", cand(), facts([entry("1"), entry("2")], plan_=plan(8)),
     L.Limits(per_pr_usd=20.0, max_parallel_per_machine={"L4": 2}), ("hold", "cost", "")),
    ("already holding a slot for this task: start", cand(run_id="1"), facts([entry("1")], plan_=plan(8)), PR20,
     ("start", "", "")),
    ("a slot granted to the woken task: skip", cand(run_id="1", holder="old"),
     facts([entry("1", holder="woken")], plan_=plan(1)), NONE, ("skip", "", "woke another task")),
    ("already waiting: skip", cand(run_id="1"), facts([entry("1", slot=False)], plan_=plan(1)), L4X2,
     ("skip", "", "waiting")),
]


@pytest.mark.parametrize("name, c, f, lim, want", CASES, ids=[c[0] for c in CASES])
def test_decide_start(name, c, f, lim, want):
    d = L.decide_start(c, f, lim, seq=7.0)
    action, held, fragment = want
    assert (d.action, d.held) == (action, held), d
    assert fragment in d.reason, d.reason
    if action == "start" and c.run_id not in f.entries:
        assert d.entry is not None and d.entry.slot and d.entry.holder == c.holder
        assert d.entry.projected == pytest.approx(c.projected)
    if action == "wait":
        assert d.entry is not None and not d.entry.slot and d.entry.seq == 7.0


def _ids(es):
    return [e.run_id for e in es]


GRANTS = [
    ("a freed L4 goes to the first L4 waiter",
     [entry("r1"), entry("r2"), entry("w1", slot=False, seq=2), entry("w2", slot=False, seq=1)], ["r1"], L4X2,
     ["w2"]),
    ("two freed, two granted", [entry("r1"), entry("r2"), entry("w1", slot=False, seq=1),
                                entry("w2", slot=False, seq=2), entry("w3", slot=False, seq=3)], ["r1", "r2"], L4X2,
     ["w1", "w2"]),
    ("nothing freed, nothing granted", [entry("r1"), entry("r2"), entry("w1", slot=False)], [], L4X2, []),
    ("a blocked L4 waiter does not hold up a CPU waiter",
     [entry("r1"), entry("r2"), entry("w1", slot=False, seq=1), entry("w2", "CPU", slot=False, seq=2)], [], L4X2,
     ["w2"]),
    ("per repo: the freed slot goes to the waiter of that repo",
     [entry("r1", repo="a/a"), entry("r2", repo="a/a"), entry("w1", repo="a/a", slot=False, seq=2),
      entry("w2", repo="b/b", slot=False, seq=1)], ["r1"], REPO2, ["w2", "w1"]),
    ("a waiting run that ends (cancelled) is not granted",
     [entry("r1"), entry("r2"), entry("w1", slot=False, seq=1)], ["r1", "w1"], L4X2, []),
    ("caps raised by a reload: waiters granted", [entry("r1"), entry("w1", slot=False), entry("w2", slot=False, seq=1)],
     [], L.Limits(max_parallel_per_machine={"L4": 3}), ["w1", "w2"]),
]


@pytest.mark.parametrize("name, es, ending, lim, want", GRANTS, ids=[g[0] for g in GRANTS])
def test_grants(name, es, ending, lim, want):
    got = L.grants({e.run_id: e for e in es}, lim, ending, wake={e.run_id: f"wake-{e.run_id}" for e in es})
    assert _ids(got) == want
    assert all(g.slot and g.holder == f"wake-{g.run_id}" for g in got)


def test_grants_never_exceed_a_cap():
    """Whatever the order of ends and arrivals, granting never puts more than the cap running."""
    import random

    rnd = random.Random(3)
    lim = L.Limits(max_parallel_per_machine={"L4": 2, "A100": 1}, max_parallel_per_repo=3)
    entries: dict[str, L.Entry] = {}
    for i in range(400):
        if entries and rnd.random() < 0.4:
            gone = rnd.choice(sorted(entries))
            granted = L.grants(entries, lim, [gone])
            del entries[gone]
            entries.update({g.run_id: g for g in granted})
        else:
            c = cand(run_id=f"r{i}", key=f"k{i}", machine=rnd.choice(["L4", "A100", "CPU"]),
                     repo=rnd.choice(["a/a", "b/b"]))
            d = L.decide_start(c, facts(entries.values(), plan_=()), lim, seq=float(i))
            assert d.entry is not None
            entries[c.run_id] = d.entry
        running = [e for e in entries.values() if e.slot]
        for m, cap in lim.max_parallel_per_machine.items():
            assert sum(e.machine == m for e in running) <= cap
        for r in ("a/a", "b/b"):
            assert sum(e.repo == r for e in running) <= 3
        # No waiter could have run: everything that fits is granted.
        assert L.grants(entries, lim) == []


def test_stale_and_counts():
    es = {e.run_id: e for e in [entry("a"), entry("b", slot=False), entry("c", "CPU")]}
    assert L.stale(es, {"a": True, "b": False}) == ["a"]
    assert L.counts(es.values()) == {"running_by_machine": {"L4": 1, "CPU": 1}, "waiting_by_machine": {"L4": 1},
                                     "running_by_repo": {"o/r": 2}}
    assert L.waiting_reason(es["b"], es, L4X2) is None
    assert "L4: 2 running" in L.waiting_reason(es["b"], {**es, "z": entry("z")}, L4X2)
