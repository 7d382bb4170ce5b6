"""The phases (SPEC §1, §4, §5): what each task does, and the tasks that follow it.

    new_event  read the workflow files, create `queued` check runs, one start_job per run
    new_commit the same for a commit that is no PR head: a merge queue's (merge_group) or a
               pushed branch's (push); no fork rules, no comment, nothing superseded
    start_job  start the job (start-or-find by its deterministic name), check → in_progress
    wait_job   poll the job with backoff; enforce queue_timeout and the run's timeout
    results    log tail, conclusion, check → completed (+ annotations), summary comment
    needs      after a conclusion on a commit: start the runs waiting for it, or skip them
    cancel     stop a SHA's runs (superseded, PR closed, /litci cancel)
    rerun      check_run / check_suite re-requested: new attempts of recorded runs
    command    /litci run|cancel|ok-to-test|approve-cost from a PR comment
    comment    the sticky summary comment, edited a moment after a change (coalesced)

Every handler may run more than once for the same task (a crash before its finish): each step
finds what an earlier try created (check runs by external_id, jobs by name, the comment by its
marker) instead of creating it twice. Decisions come from decisions.py; GitHub calls from checks.py.

A handler is `async def handler(task: Task, ctx: Context) -> list[Task]`: `ctx` (context.py) holds
the config in force, the queue, the run state, GitHub and the backend. The modules:

    planning   new_event, new_commit
    ordering   paths / paths-ignore / needs: runs queued to start, waiting, or skipped; the
               `needs` phase; re-runs that re-arm what a failed need skipped
    jobs       start_job, wait_job, results
    commands   cancel, rerun, command
    comments   the summary comment writer (comment, comment_soon)
    checkruns  a run's check-run row and its completion
    spending   the limits gate before a job starts, the ledger at a run's end (SPEC §11)
"""
from __future__ import annotations

import functools
import time
from typing import Sequence

from .. import checks, decisions, logs
from ..context import Context
from ..github import GitHubError, Gone
from ..runstate import RunRef
from ..tasks import Task
from ..worker import Handler, Registry
from . import spending
from .checkruns import report_completed
from .commands import cancel, command, rerun
from .comments import comment, comment_soon
from .jobs import results, start_job, wait_job
from .ordering import after_conclusion, give_up, needs_phase
from .planning import new_commit, new_event

log = logs.get("litbotd.lifecycle")


async def on_dead(task: Task, ctx: Context) -> list[Task]:
    """A task given up on: complete its check run so the PR does not hang (SPEC §6). Returns the
    tasks that follow (the comment edit), committed by the same finish as the dead letter."""
    p = task.payload
    message = f"litbotd gave up after {task.attempt} attempts: {task.error}"
    ended = decisions.dead_task_conclusion(task.kind, task.attempt, task.error or "")
    if ended and p.get("run"):
        ref = RunRef(p["repo"], p["sha"], p["run"], p["attempt"])
        await ctx.runs.conclude(ref, *ended, time.time())
        await spending.ended(ctx, ref)
        await report_completed(ctx, p, ref)
        return [*await after_conclusion(task, ctx, p),
                *await comment_soon(task, ctx, p["repo"], p.get("pr"), p["installation"])]
    if task.kind == "needs":  # its waiting runs end neutral: no check run stays queued
        await give_up(task, ctx.runs, lambda q, ref: report_completed(ctx, q, ref), message)
        return await comment_soon(task, ctx, p["repo"], p.get("pr"), p["installation"])
    if task.kind in ("new_event", "new_commit"):
        await checks.find_or_create_check(
            ctx.github, p["installation"], p["repo"], p["sha"], "litci", "event-failed", status="completed",
            conclusion=decisions.FAILURE, output={"title": "litbotd could not process this push", "summary": message})
    return []


def _ends_when_gone(handler: Handler) -> Handler:
    """A removed installation or a deleted repository ends the task with one log line: GitHub
    will never answer otherwise, so no retries, no dead letter, no traceback (SPEC §8)."""
    @functools.wraps(handler)
    async def run(task: Task, ctx: Context) -> Sequence[Task] | None:
        try:
            return await handler(task, ctx)
        except Gone as e:
            why = str(e)
        except GitHubError as e:
            repo = task.payload.get("repo")
            if e.status != 404 or not repo or not await ctx.github.repository_gone(checks.repo_path(repo)):
                raise
            why = f"repository {repo} no longer exists or the App was removed from it ({e})"
        log.warning("task ends: GitHub says it is gone", reason=why)
        return []
    return run


REGISTRY = Registry(
    handlers={kind: _ends_when_gone(h) for kind, h in {
        "new_event": new_event, "start_job": start_job, "wait_job": wait_job, "results": results,
        "new_commit": new_commit, "cancel": cancel, "rerun": rerun, "command": command,
        "comment": comment, "needs": needs_phase}.items()},
    on_dead=on_dead,
)
