"""The GitHub stand-in of `litbotd demo`: only the REST calls a pull request's run makes.

One repository, served from a local git repository; state in memory, for the demo to print:

    POST  /app/installations/{id}/access_tokens       a token
    GET   /repos/{o}/{r}/contents/{path}?ref=         a file (raw media type) or a directory listing
    GET   /repos/{o}/{r}/commits/{ref}/check-runs      check runs: list for a ref (by check_name),
    POST  /repos/{o}/{r}/check-runs                      create, get, update (annotations appended)
    GET   /repos/{o}/{r}/check-runs/{id}
    PATCH /repos/{o}/{r}/check-runs/{id}
    GET   /repos/{o}/{r}/issues/{n}/comments            the PR's comments: list, create, update
    POST  /repos/{o}/{r}/issues/{n}/comments
    PATCH /repos/{o}/{r}/issues/comments/{id}
    GET   /repos/{o}/{r}/tarball/{ref}                  302 to a gzip tarball of the commit

Anything else answers 404 and is kept in `unexpected`. The tests use a stricter stand-in
(tests/fake_github.py: every request checked against GitHub's OpenAPI description, App JWTs
verified, faults injected, requests held).
"""
from __future__ import annotations

import asyncio
import itertools
import re
import secrets
import time
from typing import Any

from aiohttp import web

_REPO = r"/repos/(?P<repo>[^/]+/[^/]+)"


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


async def _git(git_dir: str, *args: str) -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec("git", "-C", git_dir, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out


class DemoGitHub:
    def __init__(self, repo: str, git_dir: str) -> None:
        self.repo = repo
        self.git_dir = git_dir
        self.url = ""
        self.check_runs: list[dict[str, Any]] = []   # each with "annotations" and "history"
        self.comments: list[dict[str, Any]] = []     # each with "history"
        # What changed, as it was received (time.monotonic(), text, check run name, its state):
        # the demo's narration prints these, each at the time it happened here.
        self.events: list[tuple[float, str, str | None, str | None]] = []
        self.unexpected: list[str] = []
        self._ids = itertools.count(1000)
        self._runner: web.AppRunner | None = None
        self._routes = [(method, re.compile(pattern + r"\Z"), handler) for method, pattern, handler in [
            ("POST", r"/app/installations/(?P<inst>\d+)/access_tokens", self._token),
            ("GET", _REPO + r"/contents/(?P<path>.*)", self._contents),
            ("GET", _REPO + r"/commits/(?P<ref>[^/]+)/check-runs", self._list_runs),
            ("POST", _REPO + r"/check-runs", self._create_run),
            ("GET", _REPO + r"/check-runs/(?P<id>\d+)", self._get_run),
            ("PATCH", _REPO + r"/check-runs/(?P<id>\d+)", self._update_run),
            ("GET", _REPO + r"/issues/(?P<n>\d+)/comments", self._list_comments),
            ("POST", _REPO + r"/issues/(?P<n>\d+)/comments", self._create_comment),
            ("PATCH", _REPO + r"/issues/comments/(?P<id>\d+)", self._update_comment),
            ("GET", _REPO + r"/tarball/(?P<ref>[^/]+)", self._tarball),
            ("GET", r"/_codeload/(?P<sha>[0-9a-f]{40})\.tar\.gz", self._codeload),
        ]]

    async def start(self) -> str:
        app = web.Application(client_max_size=30 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        for method, pattern, handler in self._routes:
            m = pattern.match(request.path) if method == request.method else None
            if m is not None and m.groupdict().get("repo", self.repo) == self.repo:
                return await handler(request, m.groupdict(), body)
        self.unexpected.append(f"{request.method} {request.path}")
        return web.json_response({"message": "Not Found"}, status=404)

    # -- the App ------------------------------------------------------------------------------------
    async def _token(self, request: web.Request, args: dict[str, str], body: Any) -> web.Response:
        return web.json_response({"token": "ghs_" + secrets.token_hex(18), "expires_at": _iso(time.time() + 3600)},
                                 status=201)

    # -- the repository, from git -------------------------------------------------------------------
    async def _contents(self, request: web.Request, args: dict[str, str], body: Any) -> web.StreamResponse:
        spec = f"{request.query.get('ref', 'HEAD')}:{args['path'].strip('/')}"
        rc, kind = await _git(self.git_dir, "cat-file", "-t", spec)
        if rc != 0:
            return web.json_response({"message": "Not Found"}, status=404)
        if kind.strip() == b"blob":
            return web.Response(body=(await _git(self.git_dir, "cat-file", "blob", spec))[1],
                                content_type="application/vnd.github.raw")
        listing = []
        for line in (await _git(self.git_dir, "ls-tree", "-l", spec))[1].decode().splitlines():
            meta, name = line.split("\t", 1)
            _, kind_s, obj, size = meta.split()
            listing.append({"type": "dir" if kind_s == "tree" else "file", "name": name, "sha": obj,
                            "path": f"{args['path'].strip('/')}/{name}", "size": 0 if size == "-" else int(size)})
        return web.json_response(listing)

    async def _tarball(self, request: web.Request, args: dict[str, str], body: Any) -> web.Response:
        rc, sha = await _git(self.git_dir, "rev-parse", "--verify", "--quiet", f"{args['ref']}^{{commit}}")
        if rc != 0:
            return web.json_response({"message": "Not Found"}, status=404)
        return web.Response(status=302, headers={"Location": f"{self.url}/_codeload/{sha.decode().strip()}.tar.gz"})

    async def _codeload(self, request: web.Request, args: dict[str, str], body: Any) -> web.Response:
        prefix = f"{self.repo.replace('/', '-')}-{args['sha'][:7]}/"
        rc, data = await _git(self.git_dir, "archive", "--format=tar.gz", f"--prefix={prefix}", args["sha"])
        if rc != 0:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=data, content_type="application/x-gzip")

    # -- check runs ---------------------------------------------------------------------------------
    def _run_json(self, run: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in run.items() if k not in ("history", "annotations", "_state")}
        out["output"] = {**(run.get("output") or {}), "annotations_count": len(run["annotations"])}
        return out

    def _apply(self, run: dict[str, Any], body: dict[str, Any]) -> web.Response:
        output = dict(body.get("output") or {})
        run["annotations"].extend(output.pop("annotations", None) or [])  # appended, as GitHub does
        run.update({k: v for k, v in body.items() if k != "output"})
        if "output" in body:
            run["output"] = output
        if body.get("conclusion"):
            run["status"] = "completed"
        state = run["status"] + (f": {run['conclusion']}" if run.get("conclusion") else "")
        if not run["history"] or run.get("_state") != state:
            run["_state"] = state
            self.events.append((time.monotonic(), f"check run {run.get('name')!r} → {state}", run.get("name"),
                                run["status"]))
        run["history"].append(body)
        return web.json_response(self._run_json(run), status=200 if len(run["history"]) > 1 else 201)

    def _run(self, args: dict[str, str]) -> dict[str, Any] | None:
        return next((r for r in self.check_runs if r["id"] == int(args["id"])), None)

    async def _list_runs(self, request: web.Request, args: dict[str, str], body: Any) -> web.Response:
        runs = [self._run_json(r) for r in self.check_runs if r["head_sha"] == args["ref"]
                and r["name"] == request.query.get("check_name", r["name"])]
        return web.json_response({"total_count": len(runs), "check_runs": runs})

    async def _create_run(self, request: web.Request, args: dict[str, str], body: Any) -> web.Response:
        run = {"id": next(self._ids), "status": "queued", "conclusion": None, "external_id": "", "output": {},
               "annotations": [], "history": []}
        self.check_runs.append(run)
        return self._apply(run, body)

    async def _get_run(self, request: web.Request, args: dict[str, str], body: Any) -> web.Response:
        run = self._run(args)
        return web.json_response(self._run_json(run)) if run else web.json_response({"message": "Not Found"}, status=404)

    async def _update_run(self, request: web.Request, args: dict[str, str], body: Any) -> web.Response:
        run = self._run(args)
        return self._apply(run, body) if run else web.json_response({"message": "Not Found"}, status=404)

    # -- the PR's comments --------------------------------------------------------------------------
    async def _list_comments(self, request: web.Request, args: dict[str, str], body: Any) -> web.Response:
        return web.json_response([{"id": c["id"], "body": c["body"]} for c in self.comments
                                  if c["issue"] == int(args["n"])])

    async def _create_comment(self, request: web.Request, args: dict[str, str], body: Any) -> web.Response:
        c = {"id": next(self._ids), "issue": int(args["n"]), "body": body["body"], "history": [body["body"]]}
        self.comments.append(c)
        self.events.append((time.monotonic(), "PR comment posted (version 1)", None, None))
        return web.json_response({"id": c["id"], "body": c["body"]}, status=201)

    async def _update_comment(self, request: web.Request, args: dict[str, str], body: Any) -> web.Response:
        c = next((c for c in self.comments if c["id"] == int(args["id"])), None)
        if c is None:
            return web.json_response({"message": "Not Found"}, status=404)
        c["body"] = body["body"]
        c["history"].append(body["body"])
        self.events.append((time.monotonic(), f"PR comment edited (version {len(c['history'])})", None, None))
        return web.json_response({"id": c["id"], "body": c["body"]})
