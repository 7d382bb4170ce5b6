"""The phases' side of SPEC §11: the one gate a run passes before its job starts, and what a
run's end records. Decisions come from limits.py (through spend.py); this module only does
what they say: a check run `queued` saying what it waits for, or completed `action_required`
with the figures; the ledger and the freed slot at a run's end.

Called at one point each: `before_start` in start_job (just before the job is started),
`ended` wherever a run ends (results, cancel, a dead task, a start that will not happen).
"""
from __future__ import annotations

import time
from typing import Any

from .. import checks, decisions, limits, logs, metrics, report
from ..context import Context
from ..github import PaceDeferred
from ..runstate import RunRef
from ..spend import Ledger, Spend, run_id
from ..tasks import Task
from ..workflows import Run
from .checkruns import report_row

log = logs.get("litbotd.limits")


async def before_start(task: Task, ctx: Context, ref: RunRef, run: Run) -> list[Task] | None:
    """The limits gate. None: start the job now. A list: the run does not start now — it waits
    for a slot (a freed slot enqueues its start_job), it is held (`action_required`), or another
    task starts it — and the handler returns these tasks."""
    p = task.payload
    cfg, rs = ctx.config, ctx.runs
    if ctx.prices.read_at is None:
        # Not read yet (the daemon just started): a run priced 0 could slip past a money cap.
        try:
            await ctx.prices.refresh(ctx.backend)
        except Exception as e:
            if cfg.limits.per_pr_usd or cfg.limits.per_repo_day_usd:
                raise RuntimeError(f"machine prices could not be read yet: {type(e).__name__}") from None
            log.warning("machine prices could not be read; runs are priced by limits.prices only")
    price_of = ctx.prices.price_fn(cfg.limits.prices)
    price = price_of(run.machine, run.interruptible)
    cand = limits.Candidate(run_id(ref), ref.repo, ref.sha, ref.key, run.machine, price, run.timeout, task.id)
    wake = task.successor("start_job", p, key="slot")
    is_pr = bool(p.get("pr") or await rs.pr_of(ref.repo, ref.sha))  # a fork's re-run carries no PR number
    d = await Spend(ctx.queue).gate(cand, ref, cfg.limits, wake, price_of, is_pr=is_pr)
    if d.action == "start":
        approved = (await rs.sha_info(ref.repo, ref.sha)).get("cost_approved_by", "")
        await rs.update(ref, price=price, projected=cand.projected, approved_by=approved)
        return None
    if d.action == "skip":
        log.info("run not started by this task", reason=d.reason)
        return []
    await rs.update(ref, price=price, projected=cand.projected)
    st = await rs.get(ref)
    gh, inst, check_id = ctx.github, p["installation"], int(st.get("check_run_id") or p["check_run_id"])
    if d.action == "wait":
        log.info("run waits for a slot", reason=d.reason)
        try:
            await checks.update_check(gh, inst, ref.repo, check_id, "progress", defer=True, status="queued",
                                      output=report.waiting_output(d.reason, report_row(run, ref.attempt, st)))
        except PaceDeferred:
            log.info("waiting note skipped: the pacing budget is kept for results")
        return []
    # hold: the run completes action_required with the figures, until a writer approves.
    await rs.update(ref, held=d.held)
    conclusion, _ = await rs.conclude(ref, decisions.ACTION_REQUIRED, d.reason, time.time())
    if conclusion == decisions.ACTION_REQUIRED:
        log.info("run held by a limit", held=d.held, reason=d.reason)
        await _report_held(ctx, p, ref, run)
    return []


async def _report_held(ctx: Context, p: dict[str, Any], ref: RunRef, run: Run) -> None:
    rs = ctx.runs
    st = await rs.get(ref)
    output = report.limit_held_output(ctx.config.github.command_prefix, st.get("message", ""),
                                      report_row(run, ref.attempt, st))
    await checks.update_check(ctx.github, p["installation"], ref.repo, int(st.get("check_run_id") or p["check_run_id"]),
                              status="completed", conclusion=decisions.ACTION_REQUIRED,
                              completed_at=checks.iso(time.time()), output=output)
    await rs.update(ref, reported=1)


async def not_started(task: Task, ctx: Context, ref: RunRef, run: Run, st: dict[str, str]) -> None:
    """start_job found its run ended or asked to stop before its job started: free what it held;
    a run a limit held whose check-run write a crash cut short is reported now. A task of a try
    no longer in force (the run goes on in another) leaves everything as it is."""
    if not (st.get("conclusion") or st.get("cancel_reason")):
        return
    if st.get("held") and st.get("conclusion") == decisions.ACTION_REQUIRED:
        if not st.get("reported"):
            await _report_held(ctx, task.payload, ref, run)
        return
    await ended(ctx, ref)


async def ended(ctx: Context, ref: RunRef, reported_cost: float | None = None, part: int = 1,
                started_at: float | None = None) -> None:
    """The run ended, or will never start: count its cost in the ledger (once, whatever the
    retries), free its slot and reservation, and wake the waiters that now fit. Call it after
    the run's conclusion is recorded (its finished_at dates the cost). `part`: the run's last
    infrastructure try, whose job this cost is; `started_at`: that try's start, when not the run's."""
    st = await ctx.runs.get(ref)
    if st.get("held"):  # never started, holds nothing: its row keeps showing the projection
        return
    ledger = _ledger(st, reported_cost, part, started_at, float(st.get("finished_at") or time.time()))
    if await Spend(ctx.queue).finish(ref, ctx.config.limits, ledger):
        _counted(ref, ledger, reported_cost)


async def try_ended(ctx: Context, ref: RunRef, part: int, reported_cost: float | None,
                    started_at: float | None = None, now: float | None = None) -> None:
    """One infrastructure try of a run that goes on (retried, SPEC §11) ended: its job's cost is
    counted once; the run keeps its slot for the next try."""
    st = await ctx.runs.get(ref)
    ledger = _ledger(st, reported_cost, part, started_at, time.time() if now is None else now)
    if await Spend(ctx.queue).count(ref, ledger):
        _counted(ref, ledger, reported_cost)


def _ledger(st: dict[str, str], reported: float | None, part: int, started_at: float | None,
            finished: float) -> Ledger:
    price = float(st["price"]) if st.get("price") else 0.0
    started = started_at if started_at is not None else (float(st["started_at"]) if st.get("started_at") else None)
    return Ledger(limits.spent_cost(reported, price, started, finished), limits.utc_day(finished), str(part))


def _counted(ref: RunRef, ledger: Ledger, reported: float | None) -> None:
    metrics.SPEND.labels(ref.repo).inc(ledger.amount)
    log.info("run cost counted", usd=f"{ledger.amount:.4f}", part=ledger.part, reported=reported is not None)


async def approve(ctx: Context, repo: str, sha: str, user: str) -> list[str]:
    """Record a writer's /litci approve-cost for a commit; returns the keys of its runs that a
    limit held (each to be queued again as a new attempt)."""
    rs = ctx.runs
    await rs.set_sha_fields(repo, sha, cost_approved_by=user, cost_approved_at=time.time())
    held = []
    for key, (_, attempt) in sorted((await rs.runs(repo, sha)).items()):
        st = await rs.get(RunRef(repo, sha, key, attempt))
        if st.get("held") and st.get("conclusion") == decisions.ACTION_REQUIRED:
            held.append(key)
    log.info("cost approved", user=user, sha=sha, runs=len(held))
    return held
