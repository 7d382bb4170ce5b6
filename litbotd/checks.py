"""The GitHub side of a PR: workflow files at a ref, check runs, the sticky comment, reactions.

Thin: each function is one or two REST calls through GitHubApp, written so that repeating it
after a crash finds what the first attempt created instead of creating it again.
"""
from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

from . import paths
from .github import GitHubApp, GitHubError
from .report import MARKER
from .workflows import MAX_FILE_BYTES, ROOT_FILES, WORKFLOW_DIR, is_workflow_path

RAW = "application/vnd.github.raw+json"


def repo_path(repo: str) -> str:
    """`/repos/OWNER/NAME`, each part percent-encoded: nothing from a payload shapes a path."""
    owner, _, name = repo.partition("/")
    return f"/repos/{quote(owner, safe='')}/{quote(name, safe='')}"


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


async def _get_or_none(gh: GitHubApp, path: str, inst: int, **kw: Any) -> Any:
    try:
        return await gh.get(path, inst, **kw)
    except GitHubError as e:
        if e.status == 404:
            return None
        raise


async def workflow_files(gh: GitHubApp, inst: int, repo: str, ref: str) -> dict[str, bytes]:
    """The workflow files at `ref`, by the contents API: one listing plus one call per file, however
    large the repository (the job fetches the code itself)."""
    files: dict[str, bytes] = {}
    params = {"ref": ref}
    for name in ROOT_FILES:
        body = await _get_or_none(gh, f"{repo_path(repo)}/contents/{name}", inst, params=params, accept=RAW)
        if body is not None:
            files[name] = _as_bytes(body)
    listing = await _get_or_none(gh, f"{repo_path(repo)}/contents/{WORKFLOW_DIR.rstrip('/')}", inst, params=params)
    for entry in listing if isinstance(listing, list) else []:
        path = entry.get("path", "")
        if entry.get("type") != "file" or not is_workflow_path(path):
            continue
        if int(entry.get("size", 0)) > MAX_FILE_BYTES:
            # Don't download it: the planner rejects any file over the limit by its size.
            files[path] = b" " * (MAX_FILE_BYTES + 1)
            continue
        files[path] = _as_bytes(await gh.get(f"{repo_path(repo)}/contents/{quote(path)}", inst, params=params, accept=RAW))
    return files


def _as_bytes(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    raise GitHubError(500, "expected raw file content from the contents API")


async def find_or_create_check(gh: GitHubApp, inst: int, repo: str, sha: str, name: str, external_id: str,
                               priority: str = "conclusion", **fields: Any) -> int:
    """A check run identified by (SHA, name, external_id): found again if it exists, else created.
    `priority`: a `completed` check is a result; a `queued` one is paced as "create"."""
    found = await gh.get(f"{repo_path(repo)}/commits/{sha}/check-runs", inst,
                         params={"check_name": name, "filter": "all", "per_page": 100})
    for run in (found or {}).get("check_runs", []):
        if run.get("external_id") == external_id:
            if fields:
                await update_check(gh, inst, repo, run["id"], priority, **fields)
            return int(run["id"])
    created = await gh.post(f"{repo_path(repo)}/check-runs", inst, priority=priority,
                            data={"name": name, "head_sha": sha, "external_id": external_id, **fields})
    return int(created["id"])


async def update_check(gh: GitHubApp, inst: int, repo: str, check_id: int, priority: str = "conclusion",
                       defer: bool = False, **fields: Any) -> None:
    """With `defer`, a write the pacing budget has no room for raises github.PaceDeferred."""
    await gh.patch(f"{repo_path(repo)}/check-runs/{check_id}", inst, data=fields, priority=priority, defer=defer)


async def annotations_sent(gh: GitHubApp, inst: int, repo: str, check_id: int) -> int:
    """How many annotations the check run holds: after a crash, the ones not to send again."""
    run = await gh.get(f"{repo_path(repo)}/check-runs/{check_id}", inst)
    return int(((run or {}).get("output") or {}).get("annotations_count") or 0)


async def add_annotations(gh: GitHubApp, inst: int, repo: str, check_id: int, output: dict[str, Any],
                          batches: list[list[dict[str, Any]]]) -> int:
    """Append annotations to a check run, one PATCH per batch (GitHub takes at most 50 per request
    and appends them). A batch GitHub refuses (422) is skipped: the result is already reported and
    must not be retried into the dead letter for a bad line number. Returns how many were taken."""
    taken = 0
    for batch in batches:
        try:
            await gh.patch(f"{repo_path(repo)}/check-runs/{check_id}", inst,
                           data={"output": {**output, "annotations": batch}})
            taken += len(batch)
        except GitHubError as e:
            if e.status != 422:
                raise
    return taken


async def permission(gh: GitHubApp, inst: int, repo: str, user: str) -> tuple[str | None, str | None]:
    body = await _get_or_none(gh, f"{repo_path(repo)}/collaborators/{quote(user, safe='')}/permission", inst)
    if not body:
        return None, None
    return body.get("permission"), body.get("role_name")


async def repository_access(gh: GitHubApp, repo: str) -> tuple[int, bool] | None:
    """The repository's installation id and whether it is public, asked as the App: its
    installation, then a token scoped to it with `metadata: read` only, whose answer lists the
    repository with its visibility. None when the App is not installed on it (404)."""
    try:
        inst = await gh.get(f"{repo_path(repo)}/installation", None)
    except GitHubError as e:
        if e.status == 404:
            return None
        raise
    body = await gh.post(f"/app/installations/{int(inst['id'])}/access_tokens", None,
                         data={"repositories": [repo.split("/")[1]], "permissions": {"metadata": "read"}})
    listed = [r for r in body.get("repositories") or [] if r.get("full_name", "").lower() == repo.lower()]
    return int(inst["id"]), bool(listed) and listed[0].get("private") is False


async def react(gh: GitHubApp, inst: int, repo: str, comment_id: int, content: str) -> None:
    """Acknowledge a command. A comment deleted meanwhile (404) must not undo the command."""
    try:
        await gh.post(f"{repo_path(repo)}/issues/comments/{comment_id}/reactions", inst, data={"content": content})
    except GitHubError as e:
        if e.status != 404:
            raise


async def pull(gh: GitHubApp, inst: int, repo: str, pr: int) -> dict[str, Any]:
    return await gh.get(f"{repo_path(repo)}/pulls/{pr}", inst)


async def upsert_comment(gh: GitHubApp, inst: int, repo: str, pr: int, body: str, known_id: int | None) -> int:
    """Edit the PR's summary comment in place, creating it once. The caller holds the PR's comment
    claim (one writer per PR, locks.FencedLock); the hidden marker finds the comment again when the
    remembered id is lost. The lowest write priority, never waited for: github.PaceDeferred when
    the budget has no room (the caller comes back later with the then latest state)."""
    comment_id = known_id or await _find_comment(gh, inst, repo, pr)
    if comment_id:
        try:
            await gh.patch(f"{repo_path(repo)}/issues/comments/{comment_id}", inst, data={"body": body},
                           priority="comment", defer=True)
            return comment_id
        except GitHubError as e:
            if e.status != 404:
                raise
            # Deleted by a person: make a new one.
    created = await gh.post(f"{repo_path(repo)}/issues/{pr}/comments", inst, data={"body": body},
                            priority="comment", defer=True)
    return int(created["id"])


async def _find_comment(gh: GitHubApp, inst: int, repo: str, pr: int) -> int | None:
    async for comment in gh.paginate(f"{repo_path(repo)}/issues/{pr}/comments", inst, params={"per_page": 100}):
        if MARKER in (comment.get("body") or ""):
            return int(comment["id"])
    return None



async def pull_change(gh: GitHubApp, inst: int, repo: str, pr: int) -> paths.Change:
    """The files a pull request touches (the pulls files API, every page; GitHub lists at most
    3000, so a PR at that count is one it cannot list in full)."""
    entries: list[dict[str, Any]] = []
    async for entry in gh.paginate(f"{repo_path(repo)}/pulls/{pr}/files", inst, params={"per_page": 100}):
        entries.append(entry)
        if len(entries) >= paths.PULL_FILES_LIMIT:
            break
    return paths.from_pull_files(entries)


async def compare_change(gh: GitHubApp, inst: int, repo: str, base: str, head: str) -> paths.Change:
    """The files between two commits (the compare API's first page holds them, at most 300). A
    comparison GitHub refuses (a `before` gone after a force-push: 404; too big: 422…) runs all."""
    try:
        body = await gh.get(f"{repo_path(repo)}/compare/{quote(base, safe='')}...{quote(head, safe='')}", inst,
                            params={"per_page": 1})
    except GitHubError as e:
        if e.status not in (404, 422):
            raise
        return paths.Change(None, f"GitHub could not compare {base[:7]}...{head[:7]} ({e.status})")
    return paths.from_compare(body if isinstance(body, dict) else {})
