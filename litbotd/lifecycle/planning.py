"""Planning: a PR head or a commit's workflows read and planned, one check run per run — `queued`
with its start_job task, `queued` waiting for its needs, or `skipped` at once (ordering.py) —
(new_event, new_commit)."""
from __future__ import annotations

import dataclasses
from typing import Any

from .. import checks, decisions, logs, report, workflows
from ..context import Context
from ..github import GitHubApp
from ..jobsecrets import Origin
from ..payloads import BOOL, ID, REPO, SHA, STR, needs, opt
from ..runstate import RunRef
from ..tasks import Task
from . import ordering
from .checkruns import routing
from .comments import comment_soon
from .ordering import pr_origin

log = logs.get("litbotd.lifecycle")


async def _report_plan(gh: GitHubApp, inst: int, repo: str, sha: str, plan: workflows.Plan,
                       no_workflows: bool) -> None:
    """One completed check run per invalid workflow file, and with `no_workflows` the neutral
    "no workflows" check run (a PR, or a merge queue waiting on litbotd's checks, learns why none came)."""
    for err in plan.errors:
        await checks.find_or_create_check(
            gh, inst, repo, sha, f"litci: {err.file}", f"error:{err.file}", status="completed",
            conclusion=decisions.FAILURE, output=report.error_check_output(err.file, err.line, err.message))
        log.warning("invalid workflow file", file=err.file, line=err.line, error=err.message)
    if no_workflows:
        await checks.find_or_create_check(gh, inst, repo, sha, "litci", "no-workflows", status="completed",
                                          conclusion=decisions.NEUTRAL, output=report.no_workflows_output())


async def _base_secrets(ctx: Context, p: dict[str, Any], plan: workflows.Plan) -> workflows.Plan:
    """A fork PR whose author is trusted runs its own workflow files, but the secrets a run may
    ask for are those the base branch's workflow of the same run names (SPEC §10): a fork cannot
    name a secret the repository's own workflow does not. A run the base does not have asks for none."""
    base = workflows.plan(await checks.workflow_files(ctx.github, p["installation"], p["repo"], p["base_ref"]),
                          p["base_ref"], ctx.defaults)
    names = {r.key: r.secrets for r in base.runs}
    return dataclasses.replace(plan, runs=[dataclasses.replace(r, secrets=names.get(r.key, ())) for r in plan.runs])


@needs(repo=REPO, sha=SHA, pr=ID, installation=ID, base_ref=STR, fork=opt(BOOL), author_association=opt(STR),
       author=opt(STR), action=opt(STR), private=opt(BOOL))
async def new_event(task: Task, ctx: Context) -> list[Task]:
    p = task.payload
    cfg, gh, rs = ctx.config, ctx.github, ctx.runs
    repo, sha, pr, inst = p["repo"], p["sha"], p["pr"], p["installation"]
    out: list[Task] = []
    older = await rs.set_head(repo, pr, sha, p["base_ref"], inst)
    if cfg.jobs.cancel_superseded:
        out += [task.successor("cancel", routing(p, sha=old, reason=f"superseded by {sha[:7]}"), key=old)
                for old in older]
    trusted = decisions.is_trusted(p.get("fork", False), p.get("author_association", ""),
                                   cfg.github.trusted_associations)
    approved = p.get("approved") or (await rs.pr(repo, pr)).get("approved") == sha
    if not trusted and not approved:
        await checks.find_or_create_check(
            gh, inst, repo, sha, "litci", "fork-approval", status="completed", conclusion=decisions.ACTION_REQUIRED,
            output=report.fork_approval_output(cfg.github.command_prefix, cfg.secrets.forks))
        log.info("fork PR from an untrusted author: waiting for ok-to-test", author=p.get("author"))
        return out
    # An untrusted fork's workflow files always come from the base branch (SPEC §5).
    files = await checks.workflow_files(gh, inst, repo, sha if trusted else p["base_ref"])
    if not trusted:  # approved: its runs may use only limits.untrusted_machines without approve-cost
        await rs.set_sha_fields(repo, sha, untrusted=1)
    plan = workflows.plan(files, p["base_ref"], ctx.defaults)
    origin = pr_origin(p)
    if origin.fork and trusted:
        plan = await _base_secrets(ctx, p, plan)
    await _report_plan(gh, inst, repo, sha, plan, no_workflows=not files)
    new = await rs.add_runs(repo, sha, plan.runs, pr, owner=task.id)
    recorded = await rs.runs(repo, sha)
    todo = []
    for run in plan.runs:
        attempt = new.get(run.key)
        if attempt is None and p.get("action") == "reopened":
            # Runs that closing the PR cancelled start again when it is reopened.
            attempt = await rs.owned_attempt(repo, sha, run.key, task.id)
            last = await rs.get(RunRef(repo, sha, run.key, recorded[run.key][1]))
            if attempt is None and decisions.restart_on_reopen(last.get("conclusion")):
                attempt = await rs.new_attempt(repo, sha, run.key, task.id)
        if attempt is not None:
            todo.append((run, attempt))
    change = await ordering.change_of(gh, p, [r for r, _ in todo])
    out += await ordering.queue_runs(task, p, ctx, todo, change, origin)
    log.info("workflows planned", runs=len(plan.runs), started=sum(t.kind == "start_job" for t in out),
             errors=len(plan.errors), skipped=len(plan.skipped))
    return out + await comment_soon(task, ctx, repo, pr, inst)


@needs(repo=REPO, sha=SHA, installation=ID, event=STR, branch=STR, pr=opt(ID), private=opt(BOOL))
async def new_commit(task: Task, ctx: Context) -> list[Task]:
    """merge_group checks_requested / push: the workflows read at the commit, planned for the
    event and branch. Only people with write access push or queue, so no fork rules apply; no PR,
    so no comment; a later push does not cancel this one's runs. Check names match the PR's, so
    required checks are satisfied on the queue's commit."""
    p = task.payload
    gh, rs = ctx.github, ctx.runs
    repo, sha, inst, event = p["repo"], p["sha"], p["installation"], p["event"]
    files = await checks.workflow_files(gh, inst, repo, sha)
    plan = workflows.plan(files, p["branch"], ctx.defaults, event=event)
    await _report_plan(gh, inst, repo, sha, plan, no_workflows=not files and event == "merge_group")
    new = await rs.add_runs(repo, sha, plan.runs, None, owner=task.id)
    todo = [(run, new[run.key]) for run in plan.runs if run.key in new]
    origin = Origin(event)  # a push or a merge queue: only people with write access
    out = await ordering.queue_runs(task, p, ctx, todo, await ordering.change_of(gh, p, [r for r, _ in todo]),
                                    origin)
    log.info("workflows planned", trigger=event, branch=p["branch"], runs=len(plan.runs),
             started=sum(t.kind == "start_job" for t in out),
             errors=len(plan.errors), skipped=len(plan.skipped))
    return out
