"""The operator dashboard's view model (SPEC §9), pure: what the template shows, built from the
queue snapshot (the same opsview.QueueStatus `litbotd status` prints), the recent runs and the
dead letter. Sections other issues add (spend per repository today, flaky runs per repository
over 30 days) are optional inputs: None leaves the section out, an empty list shows "none".
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

from ..opsview import DeadRow, QueueStatus, worker_doing

SHOWN_RUNS = 100
SHOWN_DEAD = 200      # the dead letter's first entries; the count above them is the whole list's
SHOWN_FLAKY = 50      # repositories with the most flaky runs


class Recent(Protocol):
    """runstate.RecentRun, as far as the dashboard reads it."""
    @property
    def ref(self) -> Any: ...
    @property
    def at(self) -> float: ...
    @property
    def state(self) -> Mapping[str, str]: ...
    @property
    def check_name(self) -> str: ...
    @property
    def machine(self) -> str: ...


@dataclass(frozen=True)
class RunRow:
    repo: str
    sha7: str
    check_name: str
    attempt: int
    status: str           # queued / in_progress / completed
    conclusion: str       # "" until it has one
    machine: str
    changed: str          # UTC time of its last state change
    url: str | None       # its run page; None without server.public_url


@dataclass(frozen=True)
class WorkerRow:
    id: str
    host: str
    alive: bool
    doing: str
    task: str | None
    busy_s: float | None
    processing: int


@dataclass(frozen=True)
class SpendRow:           # issue 21: the spend ledger fills it
    repo: str
    usd_today: float


@dataclass(frozen=True)
class FlakyRow:           # issue 22: flaky runs per repository over 30 days
    repo: str
    flaky: int
    runs: int


@dataclass(frozen=True)
class Dashboard:
    queue: str
    queued: int
    delayed: int
    dead: int
    oldest_s: float | None
    phases: tuple[tuple[str, int], ...]
    workers: tuple[WorkerRow, ...]
    awaiting_recovery: int
    refused_reloads: tuple[str, ...]
    runs: tuple[RunRow, ...]
    dead_rows: tuple[DeadRow, ...]
    generated: str
    spend: tuple[SpendRow, ...] | None = None
    flaky: tuple[FlakyRow, ...] | None = None


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + "Z"


def run_row(r: Recent, url: str | None) -> RunRow:
    return RunRow(repo=r.ref.repo, sha7=r.ref.sha[:7], check_name=r.check_name, attempt=r.ref.attempt,
                  status=r.state.get("status", ""), conclusion=r.state.get("conclusion", ""), machine=r.machine,
                  changed=_utc(r.at), url=url)


def build(status: QueueStatus, recent: Sequence[Recent], dead: Sequence[DeadRow],
          run_url: Callable[[Any], str | None], now: float, *,
          spend: Sequence[SpendRow] | None = None, flaky: Sequence[FlakyRow] | None = None) -> Dashboard:
    workers = tuple(WorkerRow(w.id, w.host, w.alive, worker_doing(w) if w.alive else "awaiting recovery",
                              w.task, w.busy_s, w.processing)
                    for w in sorted(status.workers, key=lambda w: (not w.alive, w.id)))
    refused = tuple(f"{r.get('host')} pid {r.get('pid')} at {_utc(float(r.get('at', 0)))}: {r.get('error')}"
                    for r in status.refused_reloads)
    return Dashboard(
        queue=status.queue, queued=status.queued, delayed=status.delayed, dead=status.dead, oldest_s=status.oldest_s,
        phases=tuple(sorted(status.by_phase.items())), workers=workers,
        awaiting_recovery=len(status.awaiting_recovery), refused_reloads=refused,
        runs=tuple(run_row(r, run_url(r.ref)) for r in list(recent)[:SHOWN_RUNS]),
        dead_rows=tuple(dead[:SHOWN_DEAD]), generated=_utc(now),
        spend=None if spend is None else tuple(sorted(spend, key=lambda s: -s.usd_today)),
        flaky=None if flaky is None else tuple(sorted(flaky, key=lambda f: (-f.flaky, f.repo))),
    )
