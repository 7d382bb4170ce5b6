"""The phases (SPEC §1, §4, §5): what each task does, and the tasks that follow it.

    new_event  read the workflow files, create `queued` check runs, one start_job per run
    new_commit the same for a commit that is no PR head: a merge queue's (merge_group) or a
               pushed branch's (push); no fork rules, no comment, nothing superseded
    start_job  start the job (start-or-find by its deterministic name), check → in_progress
    wait_job   poll the job with backoff; enforce queue_timeout and the run's timeout
    results    log tail, conclusion, check → completed (+ annotations), summary comment
    cancel     stop a SHA's runs (superseded, PR closed, /litci cancel)
    rerun      check_run / check_suite re-requested: new attempts of recorded runs
    command    /litci run|cancel|ok-to-test|approve-cost from a PR comment
    comment    the sticky summary comment, edited a moment after a change (coalesced)

Every handler may run more than once for the same task (a crash before its finish): each step
finds what an earlier try created (check runs by external_id, jobs by name, the comment by its
marker) instead of creating it twice. Decisions come from decisions.py; GitHub calls from checks.py.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from typing import Any, Sequence

from . import annotations, checks, decisions, logs, metrics, report, spendgate, workflows
from .backends import machine_names
from .backends.base import JobNotFound, JobSpec, JobStatus
from .github import GitHubApp, GitHubError, Gone, PaceDeferred
from .locks import FencedLock
from .runstate import TTL, RunRef, RunState
from .services import Services
from .tasks import Task
from .worker import Handler, Permanent, Registry

log = logs.get("litbotd.lifecycle")
ROUTING = ("delivery", "installation", "repo", "pr", "sha", "private")
_machines: frozenset[str] | None = None
COMMENT_DEBOUNCE = 1.0  # seconds
COMMENT_CLAIM_TTL = 30.0  # seconds; renewed while held, so only a dead holder's claim lapses
COMMENT_EDIT_INTERVAL = 10.0  # seconds between two edits of one PR's comment
COMMENT_RETRY_MAX = 5.0  # seconds: how long a comment edit postponed for the pacing budget waits at most


def _gh(s: Services) -> GitHubApp:
    if s.github is None:
        raise Permanent("GitHub App credentials are not configured (github.app_id and the private key)")
    return s.github


def _routing(p: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**{k: p.get(k) for k in ROUTING}, **extra}


async def _defaults(s: Services) -> workflows.Defaults:
    global _machines
    cfg = s.config
    if cfg.jobs.backend == "lightning" and _machines is None:
        _machines = await asyncio.to_thread(machine_names)  # imports the SDK: not on the loop
    return workflows.Defaults(image=cfg.jobs.lightning.default_image, machine=cfg.jobs.lightning.default_machine,
                              timeout=cfg.jobs.default_timeout,
                              machines=_machines if cfg.jobs.backend == "lightning" else None)


def _report_row(run: workflows.Run, attempt: int, st: dict[str, str], log_tail: str = "") -> report.RunReport:
    def num(k: str) -> float | None:
        return float(st[k]) if st.get(k) else None

    return report.RunReport(
        check_name=run.check_name, status=st.get("status") or "queued", conclusion=st.get("conclusion") or None,
        machine=run.machine, image=run.image, attempt=attempt, started_at=num("started_at"),
        finished_at=num("finished_at"), details_url=st.get("url") or None, message=st.get("message", ""),
        log_tail=log_tail, approved_by=st.get("approved_by", ""), **spendgate.cost_fields(st),
    )


async def _render_comment(rs: RunState, repo: str, pr: int, head: str | None) -> str | None:
    """The PR's summary comment as of now, from the run states of its latest head SHA; None when
    there is nothing to show yet."""
    if not head:
        return None
    rows = []
    for key, (run, attempt) in sorted((await rs.runs(repo, head)).items()):
        rows.append(_report_row(run, attempt, await rs.get(RunRef(repo, head, key, attempt))))
    return report.summary_comment(repo, pr, head, rows) if rows else None


async def _comment_soon(task: Task, s: Services, repo: str, pr: int | None, inst: int) -> list[Task]:
    """A coalesced summary-comment edit: each change bumps the PR's version and schedules a
    `comment` task a moment later, which edits the comment only if nothing newer has been shown.
    A burst of run changes (a matrix starting) costs one edit, not one per run and phase."""
    if pr is None or not s.config.report.comment:
        return []
    await RunState(s.queue).bump_version(repo, pr)
    return [task.successor("comment", {"repo": repo, "pr": pr, "installation": inst},
                           run_at=time.time() + COMMENT_DEBOUNCE, key="comment")]


async def comment(task: Task, s: Services) -> list[Task]:
    """Edit the summary comment, unless an earlier comment task already showed this version.

    One writer per PR by construction: the writer holds the PR's fenced claim (renewed while GitHub
    takes its time) and records the comment id only if its claim still stands. A task that finds
    the claim taken does not wait for it: it comes back a moment later, and shows whatever is
    newest then, so edits coalesce into the latest state."""
    p = task.payload
    repo, pr, inst = p["repo"], p["pr"], p["installation"]
    rs = RunState(s.queue)
    info = await rs.pr(repo, pr)
    if _comment_version_due(info) is None:
        return []
    next_edit = float(info.get("commented_at") or 0) + COMMENT_EDIT_INTERVAL
    if next_edit > time.time():
        # Edits of one comment coalesce: at most one per interval, showing the latest state.
        return [task.successor("comment", p, run_at=next_edit, key="coalesced")]
    claim = FencedLock(s.redis, s.queue.key("lock", "comment", f"{repo}#{pr}"), COMMENT_CLAIM_TTL)
    async with claim.held() as fence:
        if fence is None:
            log.info("summary comment being written by another worker; coming back after it")
            return [task.successor("comment", p, run_at=time.time() + COMMENT_DEBOUNCE, key="again")]
        # Rendered under the claim: a change recorded after this read has its own comment task
        # waiting (every change schedules one), which shows it next.
        info = await rs.pr(repo, pr)
        version = _comment_version_due(info)
        if version is None:
            return []
        known = int(info["comment_id"]) if info.get("comment_id") else None
        body = await _render_comment(rs, repo, pr, info.get("head"))
        try:
            comment_id = known if body is None else await checks.upsert_comment(_gh(s), inst, repo, pr, body, known)
        except PaceDeferred as e:
            # The budget is kept for results (or GitHub said wait): show the then latest state later.
            delay = e.wait if e.limited else min(e.wait, COMMENT_RETRY_MAX)
            return [task.successor("comment", p, run_at=time.time() + delay, key="later")]
        shown = {"commented": version, "commented_at": time.time(), **({"comment_id": comment_id} if comment_id else {})}
        if not await claim.commit(fence, rs.pr_key(repo, pr), TTL, **shown):
            log.warning("summary comment claim lost while writing; its new holder carries on")
    return []


def _comment_version_due(info: dict[str, str]) -> int | None:
    """The PR's version not yet shown in its comment, or None when the comment is up to date."""
    version = int(info.get("version") or 0)
    return version if version > int(info.get("commented") or -1) else None


async def _queue_run(s: Services, task: Task, p: dict[str, Any], run: workflows.Run, attempt: int) -> Task:
    """Create the run's `queued` check run and the start_job task that follows."""
    gh, rs = _gh(s), RunState(s.queue)
    ref = RunRef(p["repo"], p["sha"], run.key, attempt)
    check_id = await checks.find_or_create_check(
        gh, p["installation"], p["repo"], p["sha"], run.check_name, decisions.external_id(run.key, attempt),
        priority="create", status="queued", output=report.check_output(_report_row(run, attempt, {})))
    await rs.count_write(ref)
    if not await rs.transition(ref, ("", "queued"), status="queued", check_run_id=check_id, queued_at=time.time()):
        await rs.update(ref, check_run_id=check_id)  # repeated after a cancel ended it: keep its state
    log.info("run queued", run=run.key, check=run.check_name, attempt=attempt)
    return task.successor("start_job", _routing(p, run=run.key, attempt=attempt, check_run_id=check_id),
                          key=f"{run.key}/{attempt}")


# -- phases ------------------------------------------------------------------------------------------
async def new_event(task: Task, s: Services) -> list[Task]:
    p = task.payload
    cfg, gh, rs = s.config, _gh(s), RunState(s.queue)
    repo, sha, pr, inst = p["repo"], p["sha"], p["pr"], p["installation"]
    out: list[Task] = []
    older = await rs.set_head(repo, pr, sha, p["base_ref"], inst)
    if cfg.jobs.cancel_superseded:
        out += [task.successor("cancel", _routing(p, sha=old, reason=f"superseded by {sha[:7]}"), key=old)
                for old in older]
    trusted = decisions.is_trusted(p.get("fork", False), p.get("author_association", ""),
                                   cfg.github.trusted_associations)
    approved = p.get("approved") or (await rs.pr(repo, pr)).get("approved") == sha
    if not trusted and not approved:
        await checks.find_or_create_check(
            gh, inst, repo, sha, "litci", "fork-approval", status="completed", conclusion=decisions.ACTION_REQUIRED,
            output=report.fork_approval_output(cfg.github.command_prefix))
        log.info("fork PR from an untrusted author: waiting for ok-to-test", author=p.get("author"))
        return out
    # An untrusted fork's workflow files always come from the base branch (SPEC §5).
    files = await checks.workflow_files(gh, inst, repo, sha if trusted else p["base_ref"])
    if not trusted:  # approved: its runs may use only limits.untrusted_machines without approve-cost
        await rs.set_sha_fields(repo, sha, untrusted=1)
    plan = workflows.plan(files, p["base_ref"], await _defaults(s))
    for err in plan.errors:
        await checks.find_or_create_check(
            gh, inst, repo, sha, f"litci: {err.file}", f"error:{err.file}", status="completed",
            conclusion=decisions.FAILURE, output=report.error_check_output(err.file, err.line, err.message))
        log.warning("invalid workflow file", file=err.file, line=err.line, error=err.message)
    if not files:
        await checks.find_or_create_check(gh, inst, repo, sha, "litci", "no-workflows", status="completed",
                                          conclusion=decisions.NEUTRAL, output=report.no_workflows_output())
    new = await rs.add_runs(repo, sha, plan.runs, pr, owner=task.id)
    recorded = await rs.runs(repo, sha)
    for run in plan.runs:
        attempt = new.get(run.key)
        if attempt is None and p.get("action") == "reopened":
            # Runs that closing the PR cancelled start again when it is reopened.
            attempt = await rs.owned_attempt(repo, sha, run.key, task.id)
            last = await rs.get(RunRef(repo, sha, run.key, recorded[run.key][1]))
            if attempt is None and decisions.restart_on_reopen(last.get("conclusion")):
                attempt = await rs.new_attempt(repo, sha, run.key, task.id)
        if attempt is not None:
            out.append(await _queue_run(s, task, p, run, attempt))
    log.info("workflows planned", runs=len(plan.runs), started=sum(t.kind == "start_job" for t in out),
             errors=len(plan.errors), skipped=len(plan.skipped))
    return out + await _comment_soon(task, s, repo, pr, inst)


async def new_commit(task: Task, s: Services) -> list[Task]:
    """merge_group checks_requested / push: the workflows read at the commit, planned for the
    event and branch. Only people with write access push or queue, so no fork rules apply; no PR,
    so no comment; a later push does not cancel this one's runs. Check names match the PR's, so
    required checks are satisfied on the queue's commit."""
    p = task.payload
    gh, rs = _gh(s), RunState(s.queue)
    repo, sha, inst, event = p["repo"], p["sha"], p["installation"], p["event"]
    files = await checks.workflow_files(gh, inst, repo, sha)
    plan = workflows.plan(files, p["branch"], await _defaults(s), event=event)
    for err in plan.errors:
        await checks.find_or_create_check(
            gh, inst, repo, sha, f"litci: {err.file}", f"error:{err.file}", status="completed",
            conclusion=decisions.FAILURE, output=report.error_check_output(err.file, err.line, err.message))
        log.warning("invalid workflow file", file=err.file, line=err.line, error=err.message)
    if not files and event == "merge_group":  # a queue waiting on litbotd's checks learns why none came
        await checks.find_or_create_check(gh, inst, repo, sha, "litci", "no-workflows", status="completed",
                                          conclusion=decisions.NEUTRAL, output=report.no_workflows_output())
    new = await rs.add_runs(repo, sha, plan.runs, None, owner=task.id)
    out = [await _queue_run(s, task, p, run, new[run.key]) for run in plan.runs if run.key in new]
    log.info("workflows planned", trigger=event, branch=p["branch"], runs=len(plan.runs), started=len(out),
             errors=len(plan.errors), skipped=len(plan.skipped))
    return out


async def start_job(task: Task, s: Services) -> list[Task]:
    p = task.payload
    cfg, rs = s.config, RunState(s.queue)
    repo, sha, key, attempt = p["repo"], p["sha"], p["run"], p["attempt"]
    ref = RunRef(repo, sha, key, attempt)
    run, _ = (await rs.runs(repo, sha))[key]
    row = functools.partial(_report_row, run, attempt)
    if not decisions.may_start(st := await rs.get(ref)):
        await spendgate.not_started(task, s, ref, st, row)  # cancelled (or held) before it started
        return []
    if (not_now := await spendgate.before_start(task, s, ref, run, row)) is not None:
        return not_now + await _comment_soon(task, s, repo, await _pr_of(s, p), p["installation"])
    name = decisions.job_name(repo, sha, key, attempt)
    token = await _gh(s).scoped_token(p["installation"], repo) if decisions.needs_token(p.get("private")) else None
    if not decisions.may_start(await rs.get(ref)):
        await spendgate.ended(s, ref)
        return []  # cancelled while the token was minted: start nothing
    spec = JobSpec(name=name, repo=repo, sha=sha, archive_url=f"{cfg.github.api_url}{checks.repo_path(repo)}/tarball/{sha}",
                   script=run.script, image=run.image, machine=run.machine, interruptible=run.interruptible,
                   timeout=run.timeout, env=run.env, token=token, reports=run.reports)
    with logs.context(job=name):
        status = await s.backend.start(spec)
        metrics.JOBS.labels(s.backend.name, status.state).inc()
        now = time.time()
        # One atomic step: a run that a racing cancel ended (or is ending) never goes back to running.
        # in_progress again: this task re-executed after a crash (the job name is deterministic).
        if not await rs.transition(ref, ("queued", "", "in_progress"), status="in_progress", job=name, started_at=now,
                                   url=status.url or ""):
            await s.backend.stop(name)  # a cancel raced our start: it could not see the job yet
            log.info("run cancelled while its job started; job stopped")
            await spendgate.ended(s, ref)
            return []
        fields: dict[str, Any] = {"status": "in_progress", "started_at": checks.iso(now)}
        if status.url and status.url.startswith(("http://", "https://")):
            fields["details_url"] = status.url
        try:
            await checks.update_check(_gh(s), p["installation"], repo, int(p["check_run_id"]), "progress",
                                      defer=True, **fields)
            await rs.count_write(ref)
        except PaceDeferred:
            # Results first: the conclusion will carry the details link; this update is skipped.
            log.info("in_progress update skipped: the pacing budget is kept for results")
        if (await rs.get(ref)).get("conclusion"):
            # Concluded while our in_progress write was in flight: make sure the last write is the conclusion.
            await _report_completed(s, p, ref)
            return []
        log.info("job started", state=status.state, url=status.url)
    poll = cfg.jobs.poll_interval
    return [task.successor("wait_job", {**p, "job": name, "poll": poll, "queued_at": now}, run_at=now + poll,
                           key=name), *await _comment_soon(task, s, repo, await _pr_of(s, p), p["installation"])]


async def wait_job(task: Task, s: Services) -> list[Task]:
    p = task.payload
    cfg, rs = s.config, RunState(s.queue)
    ref = RunRef(p["repo"], p["sha"], p["run"], p["attempt"])
    state = await rs.get(ref)
    if state.get("conclusion"):
        if state["conclusion"] == decisions.CANCELLED:
            await s.backend.stop(p["job"])
        return []
    try:
        status = await s.backend.status(p["job"])
    except JobNotFound:
        status = JobStatus(state="unknown", exit_code=None, url=None, message="the job no longer exists")
    now = time.time()
    running_since = p.get("running_since") or (now if status.state in ("running", "stopping") else None)
    run, _ = (await rs.runs(p["repo"], p["sha"]))[p["run"]]
    d = decisions.decide_wait(status.state, now, p["queued_at"], running_since, run.timeout,
                              cfg.jobs.queue_timeout, grace=cfg.jobs.poll_interval_max)
    if d.action == "poll":
        poll = decisions.next_poll(p["poll"], cfg.jobs.poll_interval, cfg.jobs.poll_interval_max)
        return [task.successor("wait_job", {**p, "poll": poll, "running_since": running_since},
                               run_at=now + poll, key=str(now))]
    if d.action == "stop":
        log.warning("stopping the job", reason=d.message)
        await s.backend.stop(p["job"])
        return [task.successor("results", {**p, "timed_out": d.conclusion == decisions.TIMED_OUT,
                                           "message": d.message}, key="results")]
    return [task.successor("results", p, key="results")]


async def results(task: Task, s: Services) -> list[Task]:
    p = task.payload
    rs = RunState(s.queue)
    ref = RunRef(p["repo"], p["sha"], p["run"], p["attempt"])
    lines = s.config.report.log_tail_lines
    try:
        status = await s.backend.status(p["job"])
        # One read for both: workflow commands anywhere in the last SCAN_LINES, the tail shown.
        log_text = await s.backend.log_tail(p["job"], max(lines, annotations.SCAN_LINES))
    except JobNotFound:
        status, log_text = JobStatus(state="unknown", exit_code=None, url=None, message="the job no longer exists"), ""
    found = await asyncio.to_thread(annotations.scan, log_text)  # megabytes of log: not on the loop
    tail = _last_lines(log_text, lines)
    timed_out = bool(p.get("timed_out") or status.timed_out)
    conclusion = decisions.conclusion_for(status.state, status.exit_code, timed_out)
    message = p.get("message") or status.message
    conclusion, message = await rs.conclude(ref, conclusion, message, time.time())
    metrics.JOBS.labels(s.backend.name, conclusion).inc()
    await spendgate.ended(s, ref, status.cost)
    await _report_completed(s, p, ref, tail, found)
    log.info("run finished", conclusion=conclusion, exit_code=status.exit_code, job=p["job"],
             annotations=len(found.annotations), tests=found.tests_text or None)
    return await _comment_soon(task, s, p["repo"], await _pr_of(s, p), p["installation"])


async def _pr_of(s: Services, p: dict[str, Any]) -> int | None:
    """The PR whose comment shows a run: the task's, else the one recorded for its commit since
    (a push started the runs, then the PR's event for the same commit found them running)."""
    return p.get("pr") or await RunState(s.queue).pr_of(p["repo"], p["sha"])


def _last_lines(text: str, n: int) -> str:
    """The last `n` lines (split on newlines only: `\r` redraws are report.tail's business)."""
    parts = text.split("\n")
    if parts and parts[-1] == "":
        parts.pop()
    return "\n".join(parts[-n:])


async def _report_completed(s: Services, p: dict[str, Any], ref: RunRef, tail: str = "",
                            found: annotations.Scan | None = None) -> None:
    """Complete the check run from the recorded state, then append its annotations 50 at a time;
    repeating it writes the same thing, and sends only the annotations GitHub does not hold yet."""
    rs = RunState(s.queue)
    state = await rs.get(ref)
    run, _ = (await rs.runs(ref.repo, ref.sha))[ref.key]
    row = _report_row(run, ref.attempt, state, tail)
    if found is not None:
        row = dataclasses.replace(row, tests=found.tests_text, annotations=len(found.annotations),
                                  notes=tuple(a.as_note() for a in found.messages))
    check_id = int(state.get("check_run_id") or p["check_run_id"])
    output = report.check_output(row)
    gh, inst = _gh(s), p["installation"]
    fields: dict[str, Any] = {}
    if row.details_url and row.details_url.startswith(("http://", "https://")):
        fields["details_url"] = row.details_url  # also when its in_progress update was skipped
    await checks.update_check(gh, inst, ref.repo, check_id, status="completed",
                              conclusion=row.conclusion, completed_at=checks.iso(time.time()), output=output,
                              **fields)
    writes = await rs.count_write(ref)
    if not state.get("reported"):
        metrics.RUN_WRITES.observe(writes)
    if found is not None and found.annotations:
        sent = await checks.annotations_sent(gh, inst, ref.repo, check_id)
        todo = found.annotations[sent:]
        taken = await checks.add_annotations(gh, inst, ref.repo, check_id, output, annotations.batches(todo))
        if taken < len(todo):
            log.warning("GitHub refused some annotations", refused=len(todo) - taken)
    await rs.update(ref, reported=1)


async def cancel(task: Task, s: Services) -> list[Task]:
    """Stop the runs of one SHA (superseded, /litci cancel) or of every SHA of a PR (closed)."""
    p = task.payload
    rs = RunState(s.queue)
    repo = p["repo"]
    closed = p["reason"] == "closed"
    reason = "the pull request was closed" if closed else p["reason"]
    shas = await rs.pr_shas(repo, p["pr"]) if closed or p.get("all_shas") else [p["sha"]]
    stopped = 0
    for sha in shas:
        for key, (run, attempt) in (await rs.runs(repo, sha)).items():
            ref = RunRef(repo, sha, key, attempt)
            state = await rs.get(ref)
            if decisions.cancel_skips(state):
                continue
            await rs.request_cancel(ref, reason)
            state = await rs.get(ref)  # the job a start may have recorded meanwhile
            if state.get("job"):
                await s.backend.stop(state["job"])
            conclusion, _ = await rs.conclude(ref, decisions.CANCELLED, reason, time.time())
            await spendgate.ended(s, ref)
            if conclusion == decisions.CANCELLED and state.get("check_run_id"):
                await _report_completed(s, {**p, "check_run_id": state["check_run_id"]}, ref)
            stopped += 1
    log.info("runs cancelled", runs=stopped, reason=reason)
    return await _comment_soon(task, s, repo, p.get("pr"), p["installation"])


async def rerun(task: Task, s: Services) -> list[Task]:
    """check_run re-requested: that one run again; check_suite re-requested: every run of the SHA."""
    p = task.payload
    rs = RunState(s.queue)
    repo, sha = p["repo"], p["sha"]
    recorded = await rs.runs(repo, sha)
    if p.get("check_run_id"):
        parsed = decisions.parse_external_id(p.get("external_id"))
        keys = [parsed[0]] if parsed and parsed[0] in recorded else []
    else:
        keys = sorted(recorded)
    if not keys:
        log.info("re-run requested for a check litbotd has no run for; nothing to do",
                 check=p.get("check_name"), external_id=p.get("external_id"))
        return []
    pr = p.get("pr") or await rs.pr_of(repo, sha)
    base = _routing(p, pr=pr)
    out = [await _queue_run(s, task, base, recorded[k][0], await rs.new_attempt(repo, sha, k, task.id)) for k in keys]
    return out + await _comment_soon(task, s, repo, pr, p["installation"])


async def command(task: Task, s: Services) -> list[Task]:
    """`/litci run [NAME…]`, `/litci cancel`, `/litci ok-to-test`, from a user who may write."""
    p = task.payload
    cfg, gh, rs = s.config, _gh(s), RunState(s.queue)
    repo, inst, pr = p["repo"], p["installation"], p["pr"]
    cmd = decisions.parse_command(p.get("body", ""), cfg.github.command_prefix)
    if cmd is None:
        return []
    perm, role = await checks.permission(gh, inst, repo, p["user"])
    if not decisions.may_command(perm, role) or cmd.verb == "unknown":
        why = "unknown command" if cmd.verb == "unknown" else f"@{p['user']} lacks write permission ({perm})"
        log.info("command refused", command=cmd.text, reason=why)
        await checks.react(gh, inst, repo, p["comment_id"], "confused")
        return []
    pull = await checks.pull(gh, inst, repo, pr)
    head = pull["head"]["sha"]
    event = {**_routing(p, sha=head, private=pull["base"]["repo"].get("private", False)),
             "base_ref": pull["base"]["ref"], "author": pull["user"]["login"],
             "author_association": pull.get("author_association", "NONE"), "action": "command",
             "fork": (pull["head"].get("repo") or {}).get("full_name") != pull["base"]["repo"]["full_name"]}
    out: list[Task] = []
    if cmd.verb == "cancel":
        out.append(task.successor("cancel", {**event, "all_shas": True, "reason": f"cancelled by @{p['user']}"}))
    elif cmd.verb == "ok-to-test":
        await rs.set_pr_field(repo, pr, approved=head)
        out.append(task.successor("new_event", {**event, "approved": True}))
    elif cmd.verb == "approve-cost":
        # Recorded with who gave it; the runs a limit held start again as new attempts.
        held = await spendgate.approve(s, repo, head, p["user"])
        recorded = await rs.runs(repo, head)
        out += [await _queue_run(s, task, event, recorded[k][0], await rs.new_attempt(repo, head, k, task.id))
                for k in held]
        out += await _comment_soon(task, s, repo, pr, inst)
    else:
        recorded = await rs.runs(repo, head)
        if not recorded:
            out.append(task.successor("new_event", event))  # never planned: plan it (fork rules apply)
        else:
            keys, unknown = decisions.select_runs({k: r.check_name for k, (r, _) in recorded.items()}, cmd.names)
            if unknown or not keys:
                log.info("command refused", command=cmd.text, reason=f"no run named {', '.join(unknown)}")
                await checks.react(gh, inst, repo, p["comment_id"], "confused")
                return []
            out += [await _queue_run(s, task, event, recorded[k][0], await rs.new_attempt(repo, head, k, task.id)) for k in keys]
            out += await _comment_soon(task, s, repo, pr, inst)
    await checks.react(gh, inst, repo, p["comment_id"], "+1")
    log.info("command accepted", command=cmd.text, user=p["user"])
    return out


async def on_dead(task: Task, s: Services) -> None:
    """A task given up on: complete its check run so the PR does not hang (SPEC §6)."""
    p = task.payload
    message = f"litbotd gave up after {task.attempt} attempts: {task.error}"
    ended = decisions.dead_task_conclusion(task.kind, task.attempt, task.error or "")
    if ended and p.get("run"):
        ref = RunRef(p["repo"], p["sha"], p["run"], p["attempt"])
        await RunState(s.queue).conclude(ref, *ended, time.time())
        await spendgate.ended(s, ref)
        await _report_completed(s, p, ref)
        await s.queue.enqueue(*await _comment_soon(task, s, p["repo"], p.get("pr"), p["installation"]))
    elif task.kind in ("new_event", "new_commit"):
        await checks.find_or_create_check(
            _gh(s), p["installation"], p["repo"], p["sha"], "litci", "event-failed", status="completed",
            conclusion=decisions.FAILURE, output={"title": "litbotd could not process this push", "summary": message})


def _ends_when_gone(handler: Handler) -> Handler:
    """A removed installation or a deleted repository ends the task with one log line: GitHub
    will never answer otherwise, so no retries, no dead letter, no traceback (SPEC §8)."""
    @functools.wraps(handler)
    async def run(task: Task, s: Services) -> Sequence[Task] | None:
        try:
            return await handler(task, s)
        except Gone as e:
            why = str(e)
        except GitHubError as e:
            repo = task.payload.get("repo")
            if e.status != 404 or not repo or not await _gh(s).repository_gone(checks.repo_path(repo)):
                raise
            why = f"repository {repo} no longer exists or the App was removed from it ({e})"
        log.warning("task ends: GitHub says it is gone", reason=why)
        return []
    return run


REGISTRY = Registry(
    handlers={kind: _ends_when_gone(h) for kind, h in {
        "new_event": new_event, "start_job": start_job, "wait_job": wait_job, "results": results,
        "new_commit": new_commit, "cancel": cancel, "rerun": rerun, "command": command,
        "comment": comment}.items()},
    on_dead=on_dead,
)

