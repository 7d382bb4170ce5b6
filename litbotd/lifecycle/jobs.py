"""A run's job: started (start_job), polled (wait_job), its results reported (results)."""
from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from .. import checks, decisions, infra, jobsecrets, logs, metrics, report
from ..annotations import SCAN_LINES, scan
from ..backends.base import JobNotFound, JobSpec, JobStatus
from ..context import Context
from ..github import PaceDeferred
from ..pages.keep import keep_run
from ..payloads import BOOL, ID, INT, NUM, REPO, SHA, STR, needs, opt
from ..runstate import RunRef
from ..tasks import Task
from . import ordering, spending
from .checkruns import report_completed, report_row, routing
from .comments import comment_soon

log = logs.get("litbotd.lifecycle")


# What a run's job steps carry (each schema next to its handler; payloads.py checks them first).
_RUN = dict(repo=REPO, sha=SHA, run=STR, attempt=INT, installation=ID, check_run_id=ID, pr=opt(ID),
            private=opt(BOOL), delivery=opt(STR),
            # an infrastructure retry (SPEC §11): its try, and whether it asks for an interruptible machine
            **{"try": opt(INT)}, interruptible=opt(BOOL))


@needs(**_RUN)
async def start_job(task: Task, ctx: Context) -> list[Task]:
    p = task.payload
    cfg, rs = ctx.config, ctx.runs
    repo, sha, key, attempt = p["repo"], p["sha"], p["run"], p["attempt"]
    ref = RunRef(repo, sha, key, attempt)
    try_n = int(p.get("try") or 1)  # an infrastructure retry's try (SPEC §11): a job of its own name
    name = decisions.job_name(repo, sha, key, attempt, try_n)
    run, _ = (await rs.runs(repo, sha))[key]
    state = await rs.get(ref)
    if not decisions.may_start(state, try_n):
        if state.get("cancel_reason"):
            # An earlier run of this task (before a crash, or one whose stop failed) may have
            # started the job before the cancel could see it: stop it (nothing when there is none).
            await ctx.backend.stop(name)
        await spending.not_started(task, ctx, ref, run, state)  # what it held is free (a held run: reported)
        return []  # cancelled before it started
    if not decisions.needs_met(state):
        return []  # waiting for its needs: the `needs` phase starts it (ordering.py)
    # SPEC §11 limits, once per run: a retried try keeps the slot and the reservation of its run.
    if try_n == 1 and (not_now := await spending.before_start(task, ctx, ref, run)) is not None:
        return not_now + await comment_soon(task, ctx, repo, await _pr_of(ctx, p), p["installation"])
    interruptible = bool(p.get("interruptible", run.interruptible))  # the last retry: on demand
    token = await ctx.github.scoped_token(p["installation"], repo) if decisions.needs_token(p.get("private")) else None
    if not decisions.may_start(state := await rs.get(ref), try_n):
        await spending.not_started(task, ctx, ref, run, state)
        return []  # cancelled while the token was minted: start nothing
    released = await _release(ctx, p, run.secrets, state)
    spec = JobSpec(name=name, repo=repo, sha=sha, archive_url=f"{cfg.github.api_url}{checks.repo_path(repo)}/tarball/{sha}",
                   script=run.script, image=run.image, machine=run.machine, interruptible=interruptible,
                   timeout=run.timeout, env=run.env, token=token, reports=run.reports,
                   secret_env=released.env)
    with logs.context(job=name):
        status = await ctx.backend.start(spec)
        metrics.JOBS.labels(ctx.backend.name, status.state).inc()
        now = time.time()
        # One atomic step: a run that a racing cancel ended (or is ending) never goes back to running.
        # in_progress again: this task re-executed after a crash (the job name is deterministic).
        if not await rs.transition(ref, ("queued", "", "in_progress"), status="in_progress", job=name, started_at=now,
                                   url=status.url or "", secrets=",".join(released.names),
                                   secret_notes="\n".join(released.notes)):
            await ctx.backend.stop(name)  # a cancel raced our start: it could not see the job yet
            log.info("run cancelled while its job started; job stopped")
            await spending.ended(ctx, ref)
            return []
        fields: dict[str, Any] = {"status": "in_progress", "started_at": checks.iso(now)}
        details = ctx.page_url(repo, sha, key, attempt) or status.url  # the run page, else the job's own link
        if details and details.startswith(("http://", "https://")):
            fields["details_url"] = details
        if state.get("released_by"):  # it waited for its needs: its check still says so
            fields["output"] = report.check_output(report_row(run, attempt, await rs.get(ref)))
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
        log.info("job started", state=status.state, url=status.url, secrets=",".join(released.names) or None,
                 withheld=len(released.notes) or None)
    poll = cfg.jobs.poll_interval
    return [task.successor("wait_job", {**p, "job": name, "poll": poll, "queued_at": now}, run_at=now + poll,
                           key=name), *await comment_soon(task, ctx, repo, await _pr_of(ctx, p), p["installation"])]


async def _release(ctx: Context, p: dict[str, Any], names: tuple[str, ...], state: dict[str, str]) -> jobsecrets.Release:
    """The secrets this run receives (jobsecrets.release), read from the store now: values are
    never in a task or in Redis. A fork's commit counts as approved only with an ok-to-test
    recorded for that very SHA."""
    if not names:
        return jobsecrets.Release()
    origin = jobsecrets.Origin.from_fields(state)
    approved = False
    if origin.fork and ctx.config.secrets.forks == "approved" and (pr := await _pr_of(ctx, p)):
        approved = bool((await ctx.runs.pr(p["repo"], pr)).get(f"approved:{p['sha']}"))
    return jobsecrets.release(names, ctx.secrets.for_repo(p["repo"]), origin, p["sha"],
                              ctx.config.github.trusted_associations, ctx.config.secrets.forks, approved)


@needs(**_RUN, job=STR, poll=NUM, queued_at=NUM, running_since=opt(NUM), unknown_since=opt(NUM))
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
        return [task.successor("results", p, key="results")]  # gone: results says so
    now = time.time()
    running_since = p.get("running_since") or (now if status.state in ("running", "stopping") else None)
    # A state the backend reports but litbotd does not know: still running, up to queue_timeout.
    unknown_since = (p.get("unknown_since") or now) if status.state == "unknown" else None
    run, _ = (await rs.runs(p["repo"], p["sha"]))[p["run"]]
    d = decisions.decide_wait(status.state, now, p["queued_at"], running_since, run.timeout,
                              cfg.jobs.queue_timeout, grace=cfg.jobs.poll_interval_max, unknown_since=unknown_since)
    if d.action == "poll":
        seen = "running" if status.state == "unknown" else status.state  # an unknown state: as running
        poll = decisions.next_poll(p["poll"], cfg.jobs.poll_interval, cfg.jobs.poll_interval_max, seen,
                                   reports_end=ctx.backend.reports_end)
        return [task.successor("wait_job", {**p, "poll": poll, "running_since": running_since,
                                            "unknown_since": unknown_since}, run_at=now + poll, key=str(now))]
    if d.action == "stop":
        message = f"{d.message}; {status.message}" if status.message else d.message  # e.g. "Lightning: no capacity"
        log.warning("stopping the job", reason=message)
        await ctx.backend.stop(p["job"])
        return [task.successor("results", {**p, "timed_out": d.conclusion == decisions.TIMED_OUT,
                                           "message": message}, key="results")]
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
    # The one place the daemon reads a job's log: every job secret masked before anything is
    # parsed, stored or sent (a local job's log is masked on disk already; a Lightning one is not).
    log_text = await asyncio.to_thread(ctx.masker.mask, log_text)  # megabytes of log: not on the loop
    status = dataclasses.replace(status, message=ctx.masker.mask(status.message))  # it may quote the log
    if not p.get("timed_out") and (retried := await _retry_infra(task, ctx, ref, status)) is not None:
        return retried
    found = await asyncio.to_thread(scan, log_text)
    tail = _last_lines(log_text, lines)
    timed_out = bool(p.get("timed_out") or status.timed_out)
    cancel_reason = (await rs.get(ref)).get("cancel_reason")
    conclusion = decisions.conclusion_for(status.state, status.exit_code, timed_out, bool(cancel_reason))
    message = ctx.masker.mask(p.get("message") or status.message)
    if conclusion == decisions.CANCELLED and cancel_reason:
        message = cancel_reason
    if status.infra and not p.get("message"):  # retried as often as jobs.infra_retries allows, or not retried
        message = infra.final_message(status.message, int(p.get("try") or 1), int((await rs.get(ref)).get("tries") or 1))
    conclusion, message = await rs.conclude(ref, conclusion, message, time.time())
    metrics.JOBS.labels(ctx.backend.name, conclusion).inc()
    await spending.ended(ctx, ref, status.cost, part=int(p.get("try") or 1))
    if await rs.record_outcome(ref, conclusion, time.time()):
        log.info("flaky run: failed, then passed on a re-run of the same commit", attempt=p["attempt"])
    await _keep_page(ctx, p, ref)  # before the check run completes: its link then shows the final page
    await report_completed(ctx, p, ref, tail, found)
    log.info("run finished", conclusion=conclusion, exit_code=status.exit_code, job=p["job"],
             annotations=len(found.annotations), tests=found.tests_text or None)
    return [*await ordering.after_conclusion(task, ctx, p),
            *await comment_soon(task, ctx, p["repo"], await _pr_of(ctx, p), p["installation"], sha=p["sha"])]


async def _keep_page(ctx: Context, p: dict[str, Any], ref: RunRef) -> None:
    """Keep the ended run's whole log and page on the VM (with server.public_url; SPEC §9)."""
    if ctx.page_store is None or ctx.backend_impl is None or not p.get("job"):
        return
    run, _ = (await ctx.runs.runs(ref.repo, ref.sha))[ref.key]
    spec = {"check_name": run.check_name, "machine": run.machine, "image": run.image,
            "backend": ctx.backend.name, "pr": await _pr_of(ctx, p)}
    await keep_run(ctx.backend, ctx.page_store, p["job"], await ctx.runs.get(ref), spec, ctx.masker.mask)


async def _retry_infra(task: Task, ctx: Context, ref: RunRef, status: JobStatus) -> list[Task] | None:
    """SPEC §11: a try the infrastructure failed is tried again (infra.decide_retry, the one
    place that decides), as a job of its own name, in the same check run; None when it is not.
    Exactly once: the try moves on in one Redis step that a repeat of this task finds done."""
    p, rs = task.payload, ctx.runs
    run, _ = (await rs.runs(ref.repo, ref.sha))[ref.key]
    try_n, retries = int(p.get("try") or 1), ctx.config.jobs.infra_retries
    retry = infra.decide_retry(state=status.state, exit_code=status.exit_code, timed_out=status.timed_out,
                               infra=status.infra, try_n=try_n, retries=retries,
                               interruptible=bool(p.get("interruptible", run.interruptible)))
    if retry is None:
        return None
    line = infra.attempt_line(try_n, retries + 1, status.message or infra.KINDS.get(status.infra, status.infra))
    now_try = await rs.advance_try(ref, try_n, line, retries + 1, status.cost)
    if now_try == 0:
        return None  # concluded or being cancelled meanwhile: report it as it is
    if now_try != retry.next_try:
        log.info("infrastructure retry already under way", job=p["job"], try_now=now_try)
        return []
    await spending.try_ended(ctx, ref, try_n, status.cost)  # the failed try's machine cost too
    log.warning("the infrastructure failed the job; trying again", job=p["job"], kind=status.infra,
                attempt=f"{retry.next_try} of {retries + 1}", interruptible=retry.interruptible)
    metrics.JOBS.labels(ctx.backend.name, f"retried_{status.infra}").inc()
    row = report_row(run, ref.attempt, await rs.get(ref))
    try:
        await checks.update_check(ctx.github, p["installation"], ref.repo, int(p["check_run_id"]), "progress",
                                  defer=True, status="in_progress", output=report.check_output(row))
        await rs.count_write(ref)
    except PaceDeferred:
        log.info("retry note skipped: the pacing budget is kept for results")
    nxt = routing(p, run=ref.key, attempt=ref.attempt, check_run_id=p["check_run_id"])
    return [task.successor("start_job", {**nxt, "try": retry.next_try, "interruptible": retry.interruptible},
                           key=f"try{retry.next_try}"),
            *await comment_soon(task, ctx, ref.repo, await _pr_of(ctx, p), p["installation"])]


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
