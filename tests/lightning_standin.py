"""A loopback stand-in for the few Lightning AI REST endpoints lightning-sdk calls for jobs.

It runs an aiohttp app on its own event loop in a background thread, because the SDK keeps a
process-wide cached client (host and auth header fixed at first use): one server for the whole
test session keeps that cache valid. Tests reset its state between cases with `reset()`.

Endpoints (found by reading lightning_sdk 2026.10.13 and by logging unknown requests):
  GET  /v1/orgs/?name=OWNER                     org lookup (teamspace "owner/name")
  GET  /v1/auth/user                            the authenticated user
  GET  /v1/memberships?filterByUserId=true      teamspaces the user belongs to
  GET  /v1/projects/{id}                        one teamspace
  GET  /v1/projects/{p}/jobs/find?name=N        job by name (404 when absent)
  GET  /v1/projects/{p}/multi-machine-jobs/...  multi-machine fallback of the lookup (404 here)
  POST /v1/projects/{p}/jobs                    create (a taken name is renamed, like the server)
  GET  /v1/projects/{p}/jobs/{id}               job by id
  PUT  /v1/projects/{p}/jobs/{id}               update, {"state": "stop"} stops
  GET  /v1/projects/{p}/page-logs?jobIds=ID     log lines
  GET  /v1/projects/{p}/jobs/{id}/download-logs the saved log file's URL (asked when page-logs is
                                                empty), then a plain GET of that URL
  POST /v1/sdk-command-history                  the SDK's telemetry of failed calls
Anything else is recorded in `unknown` and answered 404.
"""
from __future__ import annotations

import asyncio
import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

ORG_ID = "org-acme"
OWNER = "acme"
TEAMSPACE = "ci"
PROJECT_ID = "proj-ci"
USER_ID = "user-1"


@dataclass
class FakeJob:
    id: str
    name: str
    state: str
    spec: dict[str, Any]
    logs: list[str] = field(default_factory=list)
    interruption_notice_received: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "projectId": PROJECT_ID,
            "state": self.state,
            "spec": self.spec,
            "interruptionNoticeReceived": self.interruption_notice_received,
        }


class LightningStandIn:
    def __init__(self) -> None:
        self.url = ""
        self.jobs: dict[str, FakeJob] = {}
        self.creates: list[dict[str, Any]] = []
        self.updates: list[tuple[str, dict[str, Any]]] = []
        self.telemetry: list[dict[str, Any]] = []
        self.unknown: list[str] = []
        self.requests: list[str] = []
        self.stop_to = "stopped"   # state a stop request moves a job to
        self.rename_on_create: str | None = None  # simulate a create racing another creator
        self.fail_create: int | None = None        # answer creates with this HTTP status
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    # --- control -----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)

    def close(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def reset(self) -> None:
        with self._lock:
            self.jobs.clear()
            self.creates.clear()
            self.updates.clear()
            self.telemetry.clear()
            self.unknown.clear()
            self.requests.clear()
            self.stop_to = "stopped"
            self.rename_on_create = None
            self.fail_create = None

    def add_job(self, name: str, state: str = "running", logs: list[str] | None = None) -> FakeJob:
        with self._lock:
            job = FakeJob(id=f"job-{next(self._ids)}", name=name, state=state,
                          spec={"image": "python:3.11-slim", "command": "true", "env": []}, logs=logs or [])
            self.jobs[job.id] = job
            return job

    def by_name(self, name: str) -> FakeJob | None:
        return next((j for j in self.jobs.values() if j.name == name), None)

    # --- server ------------------------------------------------------------------------------
    async def _serve(self) -> None:
        app = web.Application(middlewares=[self._record])
        routes = [("GET", "/v1/orgs/", self._org), ("GET", "/v1/orgs/{id}", self._org),
                  ("GET", "/v1/auth/user", self._user), ("GET", "/v1/memberships", self._memberships),
                  ("GET", "/v1/projects/{pid}", self._project), ("GET", "/v1/projects/{pid}/jobs/find", self._find),
                  ("POST", "/v1/projects/{pid}/jobs", self._create), ("GET", "/v1/projects/{pid}/jobs/{id}", self._get),
                  ("PUT", "/v1/projects/{pid}/jobs/{id}", self._update),
                  ("GET", "/v1/projects/{pid}/page-logs", self._page_logs),
                  ("GET", "/v1/projects/{pid}/jobs/{id}/download-logs", self._download_logs),
                  ("GET", "/saved-logs/{id}", self._saved_logs), ("POST", "/v1/sdk-command-history", self._telemetry),
                  ("*", "/{tail:.*}", self._unknown)]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path}")
        return await handler(request)

    async def _unknown(self, request: web.Request) -> web.Response:
        # Multi-machine lookups land here too: a 404 is what the real server says for a
        # standalone name there.
        self.unknown.append(f"{request.method} {request.path_qs}")
        return web.json_response({"code": 5, "message": "not found"}, status=404)

    async def _org(self, request: web.Request) -> web.Response:
        if request.query.get("name") != OWNER:
            return web.json_response({"code": 5, "message": "org not found"}, status=404)
        return web.json_response({"id": ORG_ID, "name": OWNER})

    async def _user(self, request: web.Request) -> web.Response:
        return web.json_response({"id": USER_ID, "userId": USER_ID, "username": "bot"})

    async def _memberships(self, request: web.Request) -> web.Response:
        return web.json_response({"memberships": [
            {"projectId": PROJECT_ID, "name": TEAMSPACE, "displayName": TEAMSPACE,
             "ownerId": ORG_ID, "ownerType": "organization"}]})

    async def _project(self, request: web.Request) -> web.Response:
        if request.match_info["pid"] != PROJECT_ID:
            return web.json_response({"code": 5, "message": "not found"}, status=404)
        return web.json_response({"id": PROJECT_ID, "name": TEAMSPACE, "ownerId": ORG_ID,
                                  "ownerType": "organization",
                                  "projectSettings": {"preferredCluster": "cluster-1"}})

    async def _find(self, request: web.Request) -> web.Response:
        job = self.by_name(request.query.get("name", ""))
        if job is None:
            return web.json_response({"code": 5, "message": "job not found"}, status=404)
        return web.json_response(job.to_json())

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.fail_create is not None:
            return web.json_response({"code": 3, "message": "invalid job spec"}, status=self.fail_create)
        with self._lock:
            self.creates.append(body)
            name = body["name"]
            if self.rename_on_create is not None:
                # Another creator took the name between our lookup and our create.
                taken = FakeJob(id=f"job-{next(self._ids)}", name=name, state=self.rename_on_create,
                                spec=body["spec"])
                self.jobs[taken.id] = taken
            taken_names = {j.name for j in self.jobs.values()}
            n = 1
            while name in taken_names:  # the server renames rather than refusing
                name = f"{body['name']}-{n}"
                n += 1
            job = FakeJob(id=f"job-{next(self._ids)}", name=name, state="pending", spec=body["spec"])
            self.jobs[job.id] = job
        return web.json_response(job.to_json())

    async def _get(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return web.json_response({"code": 5, "message": "not found"}, status=404)
        return web.json_response(job.to_json())

    async def _update(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return web.json_response({"code": 5, "message": "not found"}, status=404)
        body = await request.json()
        self.updates.append((job.name, body))
        if body.get("state") == "stop":
            job.state = self.stop_to
        return web.json_response(job.to_json())

    async def _page_logs(self, request: web.Request) -> web.Response:
        ids = request.query.getall("jobIds", [])
        entries = [{"message": line, "line": i + 1}
                   for jid in ids if jid in self.jobs for i, line in enumerate(self.jobs[jid].logs)]
        return web.json_response({"entries": entries})

    async def _download_logs(self, request: web.Request) -> web.Response:
        return web.json_response({"url": f"{self.url}/saved-logs/{request.match_info['id']}"})

    async def _saved_logs(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        return web.Response(text="".join(f"{line}\n" for line in job.logs) if job else "")

    async def _telemetry(self, request: web.Request) -> web.Response:
        self.telemetry.append(await request.json())
        return web.json_response({})
