"""Runs stopped and started again: cancel, rerun (re-requested checks), /litci commands."""
from __future__ import annotations

import asyncio
import time

from .. import checks, decisions, logs
from ..backends.base import BackendError
from ..context import Context
from ..payloads import BOOL, ID, REPO, SHA, STR, needs, opt
from ..runstate import RunRef
from ..tasks import Task
from . import ordering, spending
from .checkruns import report_completed, routing
from .comments import comment_soon

log = logs.get("litbotd.lifecycle")


STOPS_AT_ONCE = 8  # the Lightning backend's thread pool


@needs(repo=REPO, installation=ID, reason=STR, sha=opt(SHA), pr=opt(ID), all_shas=opt(BOOL))
async def cancel(task: Task, ctx: Context) -> list[Task]:
    """Stop the runs of one SHA (superseded, /litci cancel) or of every SHA of a PR (closed).

    The machines first, all at once, then GitHub: a check run's completion is a paced
    content-creating call, and a slow GitHub must not keep a GPU running (SPEC §11: superseded
    machines stop within 60 s of the push). A run whose job could not be stopped is not concluded:
    the task fails and is retried with backoff, so the stop is asked again until it is accepted."""
    p = task.payload
    rs = ctx.runs
    repo = p["repo"]
    closed = p["reason"] == "closed"
    reason = "the pull request was closed" if closed else p["reason"]
    shas = await rs.pr_shas(repo, p["pr"]) if closed or p.get("all_shas") else [p["sha"]]
    refs: list[RunRef] = []
    for sha in shas:
        for key, (_run, attempt) in (await rs.runs(repo, sha)).items():
            ref = RunRef(repo, sha, key, attempt)
            if decisions.cancel_skips(await rs.get(ref)):
                continue
            await rs.request_cancel(ref, reason)
            refs.append(ref)
    states = [await rs.get(ref) for ref in refs]  # the job a start may have recorded meanwhile
    gate = asyncio.Semaphore(STOPS_AT_ONCE)

    async def stop(job: str | None) -> BackendError | None:
        if not job:
            return None
        async with gate:
            try:
                await ctx.backend.stop(job)
                return None
            except BackendError as e:
                return e

    errors = await asyncio.gather(*(stop(st.get("job")) for st in states))
    for ref, state, error in zip(refs, states, errors, strict=True):
        if error is not None:
            log.warning("job not stopped; the cancel is tried again", job=state["job"], error=str(error))
            continue
        conclusion, _ = await rs.conclude(ref, decisions.CANCELLED, reason, time.time())
        await spending.ended(ctx, ref)  # its slot and reservation free, its cost counted
        if conclusion == decisions.CANCELLED and state.get("check_run_id"):
            await report_completed(ctx, {**p, "check_run_id": state["check_run_id"]}, ref)
    failed = [e for e in errors if e is not None]
    if failed:
        raise BackendError(f"{len(failed)} of {len(refs)} jobs could not be stopped: {failed[0]}")
    log.info("runs cancelled", runs=len(refs), reason=reason)
    after = [t for sha in shas for t in await ordering.after_conclusion(task, ctx, {**p, "sha": sha})]
    return after + await comment_soon(task, ctx, repo, p.get("pr"), p["installation"])


@needs(repo=REPO, sha=SHA, installation=ID, check_run_id=opt(ID), external_id=opt(STR), check_name=opt(STR),
       pr=opt(ID))
async def rerun(task: Task, ctx: Context) -> list[Task]:
    """check_run re-requested: that one run again; check_suite re-requested: every run of the SHA."""
    p = task.payload
    rs = ctx.runs
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
    base = routing(p, pr=pr)
    out = await ordering.rerun_runs(ctx, task, base, keys, every=not p.get("check_run_id"))
    return out + await comment_soon(task, ctx, repo, pr, p["installation"])


@needs(repo=REPO, installation=ID, pr=ID, user=STR, comment_id=ID, body=opt(STR))
async def command(task: Task, ctx: Context) -> list[Task]:
    """`/litci run [NAME…]`, `/litci cancel`, `/litci ok-to-test`, `/litci approve-cost`, from a
    user who may write."""
    p = task.payload
    cfg, gh, rs = ctx.config, ctx.github, ctx.runs
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
    event = {**routing(p, sha=head, private=pull["base"]["repo"].get("private", False)),
             "base_ref": pull["base"]["ref"], "author": pull["user"]["login"],
             "author_association": pull.get("author_association", "NONE"), "action": "command",
             "fork": (pull["head"].get("repo") or {}).get("full_name") != pull["base"]["repo"]["full_name"]}
    out: list[Task] = []
    if cmd.verb == "cancel":
        out.append(task.successor("cancel", {**event, "all_shas": True, "reason": f"cancelled by @{p['user']}"}))
    elif cmd.verb == "ok-to-test":
        # Recorded per commit (SPEC §10: a new push needs a new approval), with who approved it.
        await rs.set_pr_field(repo, pr, approved=head, **{f"approved:{head}": p["user"]})
        out.append(task.successor("new_event", {**event, "approved": True}))
    elif cmd.verb == "approve-cost":
        # Recorded with who gave it; the runs a limit held start again as new attempts (and the
        # runs skipped because one of them did not succeed wait for them again).
        held = await spending.approve(ctx, repo, head, p["user"])
        out += await ordering.rerun_runs(ctx, task, event, held, every=False) if held else []
        out += await comment_soon(task, ctx, repo, pr, inst)
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
            out += await ordering.rerun_runs(ctx, task, event, keys, every=not cmd.names,
                                             origin=ordering.pr_origin(event))
            out += await comment_soon(task, ctx, repo, pr, inst)
    await checks.react(gh, inst, repo, p["comment_id"], "+1")
    log.info("command accepted", command=cmd.text, user=p["user"])
    return out
