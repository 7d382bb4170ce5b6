"""A run's job: started (start_job), polled (wait_job), its results reported (results)."""
from __future__ import annotations

import asyncio
import time
from typing import Any

from .. import checks, decisions, logs, metrics
from ..annotations import SCAN_LINES, scan
from ..backends.base import JobNotFound, JobSpec, JobStatus
from ..context import Context
from ..github import PaceDeferred
from ..pages.keep import keep_run
from ..payloads import BOOL, ID, INT, NUM, REPO, SHA, STR, needs, opt
from ..runstate import RunRef
from ..tasks import Task
from . import spending
from .checkruns import report_completed
from .comments import comment_soon

log = logs.get("litbotd.lifecycle")


# What a run's job steps carry (each schema next to its handler; payloads.py checks them first).
_RUN = dict(repo=REPO, sha=SHA, run=STR, attempt=INT, installation=ID, check_run_id=ID, pr=opt(ID),
            private=opt(BOOL), delivery=opt(STR))


@needs(**_RUN)
async def start_job(task: Task, ctx: Context) -> list[Task]:
    p = task.payload
    cfg, rs = ctx.config, ctx.runs
    repo, sha, key, attempt = p["repo"], p["sha"], p["run"], p["attempt"]
    ref = RunRef(repo, sha, key, attempt)
    run, _ = (await rs.runs(repo, sha))[key]
    if not decisions.may_start(st := await rs.get(ref)):
        await spending.not_started(task, ctx, ref, run, st)  # cancelled (or held) before it started
        return []
    if (not_now := await spending.before_start(task, ctx, ref, run)) is not None:  # SPEC §11 limits
        return not_now + await comment_soon(task, ctx, repo, await _pr_of(ctx, p), p["installation"])
    name = decisions.job_name(repo, sha, key, attempt)
    token = await ctx.github.scoped_token(p["installation"], repo) if decisions.needs_token(p.get("private")) else None
    if not decisions.may_start(await rs.get(ref)):
        await spending.ended(ctx, ref)
        return []  # cancelled while the token was minted: start nothing
    spec = JobSpec(name=name, repo=repo, sha=sha, archive_url=f"{cfg.github.api_url}{checks.repo_path(repo)}/tarball/{sha}",
                   script=run.script, image=run.image, machine=run.machine, interruptible=run.interruptible,
                   timeout=run.timeout, env=run.env, token=token, reports=run.reports)
    with logs.context(job=name):
        status = await ctx.backend.start(spec)
        metrics.JOBS.labels(ctx.backend.name, status.state).inc()
        now = time.time()
        # One atomic step: a run that a racing cancel ended (or is ending) never goes back to running.
        # in_progress again: this task re-executed after a crash (the job name is deterministic).
        if not await rs.transition(ref, ("queued", "", "in_progress"), status="in_progress", job=name, started_at=now,
                                   url=status.url or ""):
            await ctx.backend.stop(name)  # a cancel raced our start: it could not see the job yet
            log.info("run cancelled while its job started; job stopped")
            await spending.ended(ctx, ref)
            return []
        fields: dict[str, Any] = {"status": "in_progress", "started_at": checks.iso(now)}
        details = ctx.page_url(repo, sha, key, attempt) or status.url  # the run page, else the job's own link
        if details and details.startswith(("http://", "https://")):
            fields["details_url"] = details
        try:
            await checks.update_check(ctx.github, p["installation"], repo, int(p["check_run_id"]), "progress",
                                      defer=True, **fields)
            await rs.count_write(ref)
        except PaceDeferred:
            # Results first: the conclusion will carry the details link; this update is skipped.
            log.info("in_progress update skipped: the pacing budget is kept for results")
        if (await rs.get(ref)).get("conclusion"):
            # Concluded while our in_progress write was in flight: make sure the last write is the conclusion.
            await report_completed(ctx, p, ref)
            return []
        log.info("job started", state=status.state, url=status.url)
    poll = cfg.jobs.poll_interval
    return [task.successor("wait_job", {**p, "job": name, "poll": poll, "queued_at": now}, run_at=now + poll,
                           key=name), *await comment_soon(task, ctx, repo, await _pr_of(ctx, p), p["installation"])]


@needs(**_RUN, job=STR, poll=NUM, queued_at=NUM, running_since=opt(NUM))
async def wait_job(task: Task, ctx: Context) -> list[Task]:
    p = task.payload
    cfg, rs = ctx.config, ctx.runs
    ref = RunRef(p["repo"], p["sha"], p["run"], p["attempt"])
    state = await rs.get(ref)
    if state.get("conclusion"):
        if state["conclusion"] == decisions.CANCELLED:
            await ctx.backend.stop(p["job"])
            await _keep_page(ctx, p, ref)  # what it printed until then stays readable
        return []
    try:
        status = await ctx.backend.status(p["job"])
    except JobNotFound:
        status = JobStatus(state="unknown", exit_code=None, url=None, message="the job no longer exists")
    now = time.time()
    running_since = p.get("running_since") or (now if status.state in ("running", "stopping") else None)
    run, _ = (await rs.runs(p["repo"], p["sha"]))[p["run"]]
    d = decisions.decide_wait(status.state, now, p["queued_at"], running_since, run.timeout,
                              cfg.jobs.queue_timeout, grace=cfg.jobs.poll_interval_max)
    if d.action == "poll":
        poll = decisions.next_poll(p["poll"], cfg.jobs.poll_interval, cfg.jobs.poll_interval_max, status.state,
                                   reports_end=ctx.backend.reports_end)
        return [task.successor("wait_job", {**p, "poll": poll, "running_since": running_since},
                               run_at=now + poll, key=str(now))]
    if d.action == "stop":
        log.warning("stopping the job", reason=d.message)
        await ctx.backend.stop(p["job"])
        return [task.successor("results", {**p, "timed_out": d.conclusion == decisions.TIMED_OUT,
                                           "message": d.message}, key="results")]
    return [task.successor("results", p, key="results")]


@needs(**_RUN, job=STR, timed_out=opt(BOOL), message=opt(STR))
async def results(task: Task, ctx: Context) -> list[Task]:
    p = task.payload
    rs = ctx.runs
    ref = RunRef(p["repo"], p["sha"], p["run"], p["attempt"])
    lines = ctx.config.report.log_tail_lines
    try:
        status = await ctx.backend.status(p["job"])
        # One read for both: workflow commands anywhere in the last SCAN_LINES, the tail shown.
        log_text = await ctx.backend.log_tail(p["job"], max(lines, SCAN_LINES))
    except JobNotFound:
        status, log_text = JobStatus(state="unknown", exit_code=None, url=None, message="the job no longer exists"), ""
    found = await asyncio.to_thread(scan, log_text)  # megabytes of log: not on the loop
    tail = _last_lines(log_text, lines)
    timed_out = bool(p.get("timed_out") or status.timed_out)
    conclusion = decisions.conclusion_for(status.state, status.exit_code, timed_out)
    message = p.get("message") or status.message
    conclusion, message = await rs.conclude(ref, conclusion, message, time.time())
    metrics.JOBS.labels(ctx.backend.name, conclusion).inc()
    await spending.ended(ctx, ref, status.cost)
    await _keep_page(ctx, p, ref)  # before the check run completes: its link then shows the final page
    await report_completed(ctx, p, ref, tail, found)
    log.info("run finished", conclusion=conclusion, exit_code=status.exit_code, job=p["job"],
             annotations=len(found.annotations), tests=found.tests_text or None)
    return await comment_soon(task, ctx, p["repo"], await _pr_of(ctx, p), p["installation"], sha=p["sha"])


async def _keep_page(ctx: Context, p: dict[str, Any], ref: RunRef) -> None:
    """Keep the ended run's whole log and page on the VM (with server.public_url; SPEC §9)."""
    if ctx.page_store is None or ctx.backend_impl is None or not p.get("job"):
        return
    run, _ = (await ctx.runs.runs(ref.repo, ref.sha))[ref.key]
    spec = {"check_name": run.check_name, "machine": run.machine, "image": run.image,
            "backend": ctx.backend.name, "pr": await _pr_of(ctx, p)}
    await keep_run(ctx.backend, ctx.page_store, p["job"], await ctx.runs.get(ref), spec)


async def _pr_of(ctx: Context, p: dict[str, Any]) -> int | None:
    """The PR whose comment shows a run: the task's, else the one recorded for its commit since
    (a push started the runs, then the PR's event for the same commit found them running)."""
    return p.get("pr") or await ctx.runs.pr_of(p["repo"], p["sha"])


def _last_lines(text: str, n: int) -> str:
    """The last `n` lines (split on newlines only: `\r` redraws are report.tail's business)."""
    parts = text.split("\n")
    if parts and parts[-1] == "":
        parts.pop()
    return "\n".join(parts[-n:])
