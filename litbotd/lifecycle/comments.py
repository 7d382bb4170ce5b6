"""The sticky summary comment of a PR: one fenced, coalesced writer.

Every change of a PR's runs bumps the PR's version and schedules a `comment` task a moment later
(`comment_soon`); the `comment` task edits the comment only if nothing newer has been shown yet,
at most once per COMMENT_EDIT_INTERVAL, under the PR's fenced claim (locks.FencedLock) — except
the last edit, once every run of the head has concluded, which goes out at once (SPEC §5).
"""
from __future__ import annotations

import dataclasses
import time

from .. import checks, logs, report
from ..context import Context
from ..github import PaceDeferred
from ..locks import FencedLock
from ..payloads import ID, REPO, needs
from ..runstate import TTL, RunRef, RunState
from ..tasks import Task
from .checkruns import report_row

log = logs.get("litbotd.lifecycle")
COMMENT_DEBOUNCE = 1.0  # seconds
COMMENT_CLAIM_TTL = 30.0  # seconds; renewed while held, so only a dead holder's claim lapses
COMMENT_EDIT_INTERVAL = 10.0  # seconds between two edits of one PR's comment
COMMENT_RETRY_MAX = 5.0  # seconds: how long a comment edit postponed for the pacing budget waits at most


async def _render_comment(ctx: Context, repo: str, pr: int, head: str | None) -> str | None:
    """The PR's summary comment as of now, from the run states of its latest head SHA; None when
    there is nothing to show yet. Each row links to its run page when pages are served (SPEC §5)."""
    if not head:
        return None
    rows = []
    rs = ctx.runs
    flaky = await rs.flaky(repo, head)
    for key, (run, attempt, st) in sorted((await rs.latest_states(repo, head)).items()):
        row = report_row(run, attempt, st, flaky=key in flaky)
        if page := ctx.page_url(repo, head, key, attempt):
            row = dataclasses.replace(row, details_url=page)
        rows.append(row)
    return report.summary_comment(repo, pr, head, rows) if rows else None


async def _all_concluded(rs: RunState, repo: str, head: str | None) -> bool:
    """Every run of the PR's head commit has concluded: the comment's last edit is due."""
    if not head:
        return False
    runs = await rs.runs(repo, head)
    for key, (_, attempt) in runs.items():
        if not (await rs.get(RunRef(repo, head, key, attempt))).get("conclusion"):
            return False
    return bool(runs)


async def comment_soon(task: Task, ctx: Context, repo: str, pr: int | None, inst: int,
                       sha: str | None = None) -> list[Task]:
    """A coalesced summary-comment edit: each change bumps the PR's version and schedules a
    `comment` task a moment later, which edits the comment only if nothing newer has been shown.
    A burst of run changes (a matrix starting) costs one edit, not one per run and phase. A
    conclusion (`sha` given) that leaves every run of the head concluded schedules it now: the
    last edit waits neither for the debounce nor for the edit spacing (SPEC §5)."""
    if pr is None or not ctx.config.report.comment:
        return []
    rs = ctx.runs
    await rs.bump_version(repo, pr)
    last = sha is not None and sha == (await rs.pr(repo, pr)).get("head") and await _all_concluded(rs, repo, sha)
    return [task.successor("comment", {"repo": repo, "pr": pr, "installation": inst},
                           run_at=0.0 if last else time.time() + COMMENT_DEBOUNCE, key="comment")]


@needs(repo=REPO, pr=ID, installation=ID)
async def comment(task: Task, ctx: Context) -> list[Task]:
    """Edit the summary comment, unless an earlier comment task already showed this version.

    One writer per PR by construction: the writer holds the PR's fenced claim (renewed while GitHub
    takes its time) and records the comment id only if its claim still stands. A task that finds
    the claim taken does not wait for it: it comes back a moment later, and shows whatever is
    newest then, so edits coalesce into the latest state."""
    p = task.payload
    repo, pr, inst = p["repo"], p["pr"], p["installation"]
    rs = ctx.runs
    info = await rs.pr(repo, pr)
    if _comment_version_due(info) is None:
        return []
    next_edit = float(info.get("commented_at") or 0) + COMMENT_EDIT_INTERVAL
    if next_edit > time.time() and not await _all_concluded(rs, repo, info.get("head")):
        # Edits of one comment coalesce: at most one per interval, showing the latest state.
        return [task.successor("comment", p, run_at=next_edit, key="coalesced")]
    claim = FencedLock(ctx.redis, ctx.queue.key("lock", "comment", f"{repo}#{pr}"), COMMENT_CLAIM_TTL)
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
        body = await _render_comment(ctx, repo, pr, info.get("head"))
        body = None if body is None else ctx.masker.mask(body)
        try:
            comment_id = known if body is None else await checks.upsert_comment(ctx.github, inst, repo, pr, body, known)
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
