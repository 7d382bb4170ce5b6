"""`paths` and `needs` wired to GitHub and the run state (SPEC §4): which of a commit's runs are
queued to start, wait for their needs, or are completed `skipped` at once.

    change_of       the files the change touches: a PR's (pulls files API, paged), a push's
                    before..after, a merge group's base..head (compare API); only when a run filters
    queue_runs      one check run per run: `queued` + a start_job task, `queued` "waiting for lint",
                    or `completed` / `skipped` naming the filter or the need
    needs_phase     the `needs` phase: after any conclusion on the commit, start the waiting runs
                    whose needs succeeded, skip those whose needs did not
    after_conclusion  the `needs` task a conclusion commits with it (when the commit has needs)
    rerun_runs      new attempts of runs, with the ones skipped for their needs re-armed

Event-driven, and safe across a crash: every conclusion (results, cancel, a dead task) returns a
`needs` task as a successor, committed in the same atomic finish as the conclusion; every run put
to wait is followed by one too. So after the last change on a commit there is always a `needs`
task that sees it. Releasing a run is one Lua step (runstate.release) that only one task wins, and
the task that won it emits the run's start_job again if it runs twice. Nothing polls.
"""
from __future__ import annotations

import time
from typing import Any, Awaitable, Callable, Iterable

from .. import checks, decisions, logs, paths, report
from .. import needs as needs_mod
from ..context import Context
from ..github import GitHubApp
from ..jobsecrets import Origin
from ..payloads import BOOL, ID, REPO, SHA, STR, opt
from ..payloads import needs as payload
from ..runstate import RunRef, RunState
from ..tasks import Task
from ..workflows import Run
from .checkruns import report_completed, report_row
from .checkruns import routing as _routing
from .comments import comment_soon

log = logs.get("litbotd.lifecycle")
SKIPPED = "skipped"


async def change_of(gh: GitHubApp, p: dict[str, Any], runs: Iterable[Run]) -> paths.Change | None:
    """The files the task's change touches, or None when no run has a paths filter (no call)."""
    if not any(r.path_filter.active for r in runs):
        return None
    inst, repo, sha = p["installation"], p["repo"], p["sha"]
    if p.get("event") not in ("push", "merge_group") and p.get("pr"):
        return await checks.pull_change(gh, inst, repo, int(p["pr"]))
    base = p.get("compare_base")
    if not base:
        return paths.Change(None, p.get("compare_why") or "there is no earlier commit to compare with")
    return await checks.compare_change(gh, inst, repo, base, sha)


def _nodes(recorded: dict[str, tuple[Run, int, dict[str, str]]]) -> dict[str, needs_mod.Node]:
    return {k: needs_mod.Node(run.workflow, run.needs, run.check_name) for k, (run, _, _) in recorded.items()}


def pr_origin(p: dict[str, Any]) -> Origin:
    """A pull request's runs, for the secrets they may get: a fork or not (unknown counts as a
    fork), and its author's association."""
    return Origin("pull_request", fork=p.get("fork") is not False, association=str(p.get("author_association") or ""))


def needs_task(task: Task, p: dict[str, Any]) -> Task:
    """The `needs` phase for the task's commit (a successor: committed with the task's finish)."""
    return task.successor("needs", _routing(p), key=f"needs/{p['sha']}")


async def queue_runs(task: Task, p: dict[str, Any], ctx: Context, todo: list[tuple[Run, int]],
                     change: paths.Change | None, origin: Origin | None) -> list[Task]:
    """Create the check runs of `todo` (run, attempt) and the tasks that follow: a start_job for
    each run that may start now, a `needs` task when some wait. A run that will run links its run
    page from the start (SPEC §9). `origin` (what started the runs: the job secrets they may get,
    SPEC §10) is recorded with each attempt; None: each keeps its attempt before's (a re-run)."""
    if not todo:
        return []
    gh, rs = ctx.github, ctx.runs
    repo, sha, inst = p["repo"], p["sha"], p["installation"]
    recorded = await rs.latest_states(repo, sha)
    new = {run.key for run, _ in todo}
    states = {k: needs_mod.state_of(st) for k, (_, _, st) in recorded.items() if k not in new}
    skips = {run.key: why for run, _ in todo
             if change is not None and (why := paths.decide(run.path_filter, change)) is not None}
    plan = needs_mod.plan_new(_nodes(recorded), states, new, skips)
    out: list[Task] = []
    waiting = False  # some run waits, or a skip concluded one that others may need
    for run, attempt in todo:
        d = plan[run.key]
        ref = RunRef(repo, sha, run.key, attempt)
        st: dict[str, str] = {}
        if d.action == "wait":
            st["waiting"] = d.reason
        if change is not None and (note := paths.note(run.path_filter, change)):
            st["note"] = note
        if d.action == "skip":
            st.update(status="completed", conclusion=SKIPPED, message=d.reason)
            fields: dict[str, Any] = dict(status="completed", conclusion=SKIPPED,
                                          completed_at=checks.iso(time.time()))
        else:
            fields = dict(status="queued")
            if page := ctx.page_url(repo, sha, run.key, attempt):
                fields["details_url"] = page
        check_id = await checks.find_or_create_check(
            gh, inst, repo, sha, run.check_name, decisions.external_id(run.key, attempt),
            priority="conclusion" if d.action == "skip" else "create",
            output=report.check_output(report_row(run, attempt, st)), **fields)
        await rs.count_write(ref)
        queued = {k: v for k, v in st.items() if k in ("waiting", "note")}
        trust = origin
        if trust is None:  # a re-run: the same code, the same trust as the attempt before
            trust = Origin.from_fields(await rs.get(RunRef(repo, sha, run.key, attempt - 1)) if attempt > 1 else {})
        if not await rs.transition(ref, ("", "queued"), status="queued", check_run_id=check_id,
                                   queued_at=time.time(), **queued, **trust.to_fields()):
            await rs.update(ref, check_run_id=check_id)  # repeated after a cancel ended it: keep its state
        if d.action == "skip":
            await rs.update(ref, skip_kind="paths" if run.key in skips else "needs", reported=1)
            await rs.conclude(ref, SKIPPED, d.reason, time.time())
            waiting = waiting or any(n.needs for n in (r for r, _, _ in recorded.values()))
            log.info("run skipped", run=run.key, check=run.check_name, attempt=attempt, reason=d.reason)
        elif d.action == "wait":
            waiting = True
            log.info("run waiting", run=run.key, check=run.check_name, attempt=attempt, reason=d.reason)
        else:
            log.info("run queued", run=run.key, check=run.check_name, attempt=attempt)
            out.append(task.successor("start_job", _routing(p, run=run.key, attempt=attempt, check_run_id=check_id),
                                      key=f"{run.key}/{attempt}"))
    if waiting:
        # Needs may have concluded while this task ran, and a skip here concludes a run others
        # may wait on: a `needs` task after this one looks again.
        out.append(needs_task(task, p))
    return out


@payload(repo=REPO, sha=SHA, installation=ID, pr=opt(ID), private=opt(BOOL), delivery=opt(STR))
async def needs_phase(task: Task, ctx: Context) -> list[Task]:
    """The `needs` phase (task kind "needs"): start the commit's waiting runs whose needs succeeded (a start_job
    each), skip those whose needs did not; then the summary comment, when anything changed."""
    out, changed = await release(task, ctx.runs, lambda p, ref: report_completed(ctx, p, ref))
    p = task.payload
    if changed:
        out += await comment_soon(task, ctx, p["repo"], p.get("pr") or await ctx.runs.pr_of(p["repo"], p["sha"]),
                                  p["installation"])
    return out


async def after_conclusion(task: Task, ctx: Context, p: dict[str, Any]) -> list[Task]:
    """A conclusion on a commit whose runs have `needs`: the `needs` phase decides the waiting
    runs, as a successor committed in the same atomic finish (never lost, nothing polls)."""
    return [needs_task(task, p)] if await needs_any(ctx.runs, p["repo"], p["sha"]) else []


async def rerun_runs(ctx: Context, task: Task, p: dict[str, Any], keys: list[str], every: bool,
                     origin: Origin | None = None) -> list[Task]:
    """New attempts of `keys`, and of the runs skipped because one of them did not succeed
    (re-armed: they wait for it again). Re-running every run leaves out those the paths filter
    skipped: the change still does not touch them."""
    rs = ctx.runs
    repo, sha = p["repo"], p["sha"]
    latest = await rs.latest_states(repo, sha)
    if every:
        keys = [k for k in keys if latest[k][2].get("skip_kind") != "paths"]
    keys = sorted(set(keys) | set(await rearmed(rs, repo, sha, keys)))
    todo = [(latest[k][0], await rs.new_attempt(repo, sha, k, task.id)) for k in keys]
    return await queue_runs(task, p, ctx, todo, None, origin)


Complete = Callable[[dict[str, Any], RunRef], Awaitable[None]]


async def release(task: Task, rs: RunState, complete: Complete) -> tuple[list[Task], bool]:
    """Start or skip the commit's waiting runs whose needs have concluded. Returns the start_job
    tasks and whether anything changed (for the summary comment)."""
    p = task.payload
    repo, sha = p["repo"], p["sha"]
    recorded = await rs.latest_states(repo, sha)
    states = {k: needs_mod.state_of(st) for k, (_, _, st) in recorded.items()}
    out: list[Task] = []
    changed = False
    for key, (_, attempt, st) in sorted(recorded.items()):
        if st.get("released_by") != task.id:
            continue
        # Released by this very task before a crash (its successors were never committed): the
        # release stands, so finish it — start the run, or report its skip.
        ref = RunRef(repo, sha, key, attempt)
        if st.get("conclusion") == SKIPPED:
            await complete({**p, "check_run_id": st["check_run_id"]}, ref)
        elif not st.get("conclusion"):
            out.append(_start(task, p, key, attempt, st))
        changed = True
    for key, d in sorted(needs_mod.decide(_nodes(recorded), states).items()):
        run, attempt, st = recorded[key]
        ref = RunRef(repo, sha, key, attempt)
        if d.action == "start":
            if await rs.release(ref, task.id, "start"):
                log.info("needs met: run starts", run=key, check=run.check_name, attempt=attempt)
                out.append(_start(task, p, key, attempt, st))
                changed = True
        elif d.action == "skip":
            if await rs.release(ref, task.id, "skip", d.reason, time.time()):
                log.info("needs not met: run skipped", run=key, check=run.check_name, attempt=attempt,
                         reason=d.reason)
                await complete({**p, "check_run_id": st["check_run_id"]}, ref)
                changed = True
    return out, changed


def _start(task: Task, p: dict[str, Any], key: str, attempt: int, st: dict[str, str]) -> Task:
    return task.successor("start_job", _routing(p, run=key, attempt=attempt, check_run_id=int(st["check_run_id"])),
                          key=f"{key}/{attempt}")


async def give_up(task: Task, rs: RunState, complete: Complete, message: str) -> int:
    """A `needs` task given up on (dead letter): its commit's waiting runs end `neutral` with the
    reason, so no check run stays queued. Returns how many."""
    p = task.payload
    ended = 0
    for key, (_, attempt, st) in (await rs.latest_states(p["repo"], p["sha"])).items():
        if needs_mod.state_of(st) != needs_mod.WAITING:
            continue
        ref = RunRef(p["repo"], p["sha"], key, attempt)
        conclusion, _ = await rs.conclude(ref, decisions.NEUTRAL, message, time.time())
        if conclusion == decisions.NEUTRAL:
            await complete({**p, "check_run_id": st["check_run_id"]}, ref)
            ended += 1
    return ended


async def rearmed(rs: RunState, repo: str, sha: str, keys: Iterable[str]) -> list[str]:
    """The runs to re-run along with `keys`: those skipped because a re-run one did not succeed."""
    recorded = await rs.latest_states(repo, sha)
    skipped = [k for k, (_, _, st) in recorded.items()
               if st.get("conclusion") == SKIPPED and st.get("skip_kind") == "needs"]
    return sorted(needs_mod.rearm(_nodes(recorded), keys, skipped))


async def needs_any(rs: RunState, repo: str, sha: str) -> bool:
    """Whether any run of the commit waits on others (a conclusion then calls for a `needs` task)."""
    return any(run.needs for run, _ in (await rs.runs(repo, sha)).values())
