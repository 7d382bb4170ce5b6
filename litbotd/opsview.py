"""What an operator sees of the queue: one snapshot, shaped for `litbotd status` (text, JSON) and for
the dashboard (SPEC §2, §9). Pure: `Queue.status()` reads the snapshot, this module only shapes it,
so the command and the page show the same figures computed once.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    host: str
    pid: int
    alive: bool
    task: str | None
    busy_s: float | None
    processing: int


@dataclass(frozen=True)
class QueueStatus:
    queue: str
    queued: int
    delayed: int
    dead: int
    by_phase: dict[str, int] = field(default_factory=dict)
    oldest_s: float | None = None
    workers: tuple[WorkerInfo, ...] = ()
    refused_reloads: tuple[dict[str, Any], ...] = ()   # what daemons recorded of a refused SIGHUP

    @property
    def alive(self) -> list[WorkerInfo]:
        return [w for w in self.workers if w.alive]

    @property
    def awaiting_recovery(self) -> list[WorkerInfo]:
        return [w for w in self.workers if not w.alive]


class Flaky(Protocol):
    """runstate.FlakyStat: one repository's flaky runs over 30 days."""
    @property
    def flaky(self) -> int: ...
    @property
    def runs(self) -> int: ...


FLAKY_SHOWN = 10


@dataclass(frozen=True)
class SpendView:
    """SPEC §11: today's ledger and the limits' slots (spend.spend_today, spend.usage)."""
    day: str                                  # "2026-12-03" (UTC)
    by_repo: dict[str, float]                 # USD the runs that ended today cost
    running_by_machine: dict[str, int] = field(default_factory=dict)
    waiting_by_machine: dict[str, int] = field(default_factory=dict)
    running_by_repo: dict[str, int] = field(default_factory=dict)


def top_flaky(flaky: Mapping[str, Flaky]) -> list[tuple[str, Flaky]]:
    """The repositories with the most flaky runs first (then by name)."""
    return sorted(flaky.items(), key=lambda kv: (-kv[1].flaky, kv[0]))


def status_json(st: QueueStatus, flaky: Mapping[str, Flaky] | None = None,
                spend: SpendView | None = None) -> dict[str, Any]:
    """`litbotd status --json` (SPEC §2: queued, delayed, dead, workers with id, host, alive, task, busy_s)."""
    return {
        **({"spend_today_usd": dict(spend.by_repo), "running_by_machine": dict(spend.running_by_machine),
            "waiting_by_machine": dict(spend.waiting_by_machine), "running_by_repo": dict(spend.running_by_repo)}
           if spend is not None else {}),
        "queued": st.queued, "delayed": st.delayed, "dead": st.dead, "queued_by_phase": dict(st.by_phase),
        "oldest_task_age_s": st.oldest_s, "reload_refused": list(st.refused_reloads),
        "flaky_runs_30d": {repo: {"flaky": f.flaky, "runs": f.runs} for repo, f in (flaky or {}).items()},
        "workers": [{"id": w.id, "host": w.host, "pid": w.pid, "alive": w.alive, "task": w.task,
                     "busy_s": w.busy_s, "processing": w.processing} for w in st.workers],
    }


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + "Z"


def status_text(st: QueueStatus, flaky: Mapping[str, Flaky] | None = None,
                spend: SpendView | None = None) -> list[str]:
    """`litbotd status`: one line for the queue, today's spend and the runs by machine, one for
    the flaky runs, one per live worker, the refused reloads, the dead workers."""
    phases = ", ".join(f"{k} {v}" for k, v in sorted(st.by_phase.items())) or "none"
    out = [f"queue {st.queue}: queued {st.queued} ({phases}), delayed {st.delayed}, dead {st.dead}"
           + (f", oldest {st.oldest_s:.0f}s" if st.oldest_s is not None else "")]
    if spend is not None:
        out.append(f"spend today ({spend.day} UTC): "
                   + (", ".join(f"{repo} ${usd:,.2f}" for repo, usd in spend.by_repo.items()) or "none"))
        machines = sorted(set(spend.running_by_machine) | set(spend.waiting_by_machine))
        if machines:
            out.append("runs by machine: " + ", ".join(
                f"{m} {spend.running_by_machine.get(m, 0)} running {spend.waiting_by_machine.get(m, 0)} waiting"
                for m in machines))
    if flaky:
        top = top_flaky(flaky)
        shown = ", ".join(f"{repo} {f.flaky} of {f.runs}" for repo, f in top[:FLAKY_SHOWN]) \
            + (f", … ({len(top)} repositories)" if len(top) > FLAKY_SHOWN else "")
        out.append(f"flaky runs (failed, then passed on a re-run; 30 days): {shown}")
    out.append(f"workers: {len(st.alive)} alive")
    for w in st.alive:
        out.append(f"  {w.id}  {worker_doing(w)}")
    for r in st.refused_reloads:
        out.append(f"last reload REFUSED on {r.get('host')} pid {r.get('pid')} at {_utc(r.get('at', 0))}, "
                   f"running the old config: {r.get('error')}")
    if st.awaiting_recovery:
        out.append(f"dead workers awaiting recovery: {len(st.awaiting_recovery)}")
        for w in st.awaiting_recovery:
            out.append(f"  {w.id}  {w.processing} task(s) to requeue")
    return out


def worker_doing(w: WorkerInfo) -> str:
    return f"task {w.task} for {w.busy_s:.0f}s" if w.task and w.busy_s is not None else "idle"


@dataclass(frozen=True)
class DeadRow:
    """One dead-letter entry as `dead list` and the dashboard show it."""
    id: str | None           # None: an entry that is not a task (malformed)
    created: str
    attempts: int
    context: dict[str, Any]
    error: str
    raw_head: str            # the first 200 characters of a malformed entry


def dead_row(raw: str, task: Any) -> DeadRow:
    """`task` is the parsed tasks.Task, or None when the entry is malformed."""
    if task is None:
        return DeadRow(None, "", 0, {}, "", raw[:200])
    ctx = {k: v for k, v in task.context().items() if k != "task"}
    return DeadRow(task.id, _utc(task.created), task.attempt, ctx, task.error or "", "")


def dead_text(rows: list[DeadRow]) -> list[str]:
    out = []
    for r in rows:
        if r.id is None:
            out.append(f"(malformed) {r.raw_head}")
        else:
            ctx = " ".join(f"{k}={v}" for k, v in r.context.items())
            out.append(f"{r.id}  {r.created}  attempts={r.attempts}  {ctx}\n    error: {r.error}")
    out.append(f"{len(rows)} dead task(s)")
    return out
