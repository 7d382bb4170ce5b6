"""A loopback stand-in for the Lightning AI REST endpoints lightning-sdk calls for jobs and prices.

It runs an aiohttp app on its own event loop in a background thread, because the SDK keeps a
process-wide cached client (host and auth header fixed at first use): one server for the whole
test session keeps that cache valid. Tests reset its state between cases with `reset()`, and
check `unknown` (requests nothing here models) is empty when they end.

Endpoints (found by reading lightning_sdk 2026.10.13 and by logging unknown requests):
  GET  /v1/orgs/?name=OWNER                     org lookup (teamspace "owner/name")
  GET  /v1/auth/user                            the authenticated user
  GET  /v1/memberships?filterByUserId=true      teamspaces the user belongs to
  GET  /v1/projects/{id}                        one teamspace
  GET  /v1/projects/{p}/jobs/find?name=N        job by name (404 when absent)
  GET  /v1/projects/{p}/multi-machine-jobs/{name}/getbyname
                                                the SDK's multi-machine fallback of a lookup (404)
  POST /v1/projects/{p}/jobs                    create (a taken name is renamed, like the server)
  GET  /v1/projects/{p}/jobs/{id}               job by id
  PUT  /v1/projects/{p}/jobs/{id}               update, {"state": "stop"} stops
  GET  /v1/projects/{p}/page-logs?jobIds=ID     log lines
  GET  /v1/projects/{p}/jobs/{id}/download-logs the saved log file's URL (asked when page-logs is
                                                empty), then a plain GET of that URL
  GET  /v1/projects/{p}/clusters                the teamspace's own clusters (none)
  GET  /v1/core/clusters?projectId=P            the global clusters (one, AWS)
  GET  /v1/core/accelerators?cloudProvider=AWS  the machines with their prices (Teamspace.list_machines)
  POST /v1/sdk-command-history                  the SDK's telemetry of failed calls
Anything else is recorded in `unknown` and answered 404.

What it models besides answering:
- jobs' states as the server names them ("pending", "running", "restarting", "completed",
  "failed", "stopped", …, or any other string: a state litbotd does not know);
- `totalCost`: the machine's price (spot price for an interruptible job) × the time it ran;
- a preemption: `notice()` (interruptionNoticeReceived), then `preempt()`: the attempt fails, and
  the server restarts the job (restartCount, currentRunAttempt) while `maxRunAttempts` allows,
  else the job ends "failed" with the server's message;
- `fail_with()`: a job failing with a server message (`message`, `serverError`);
- faults: `fail()` answers matching requests with a status (5xx), `slow()` answers them late,
  `hang()` holds them until `release()`;
- `autorun`: jobs that run and finish by themselves, driven by the SDK's own reads.
"""
from __future__ import annotations

import asyncio
import itertools
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

ORG_ID = "org-acme"
OWNER = "acme"
TEAMSPACE = "ci"
PROJECT_ID = "proj-ci"
USER_ID = "user-1"
CLUSTER_ID = "lightning-public-prod"
PREEMPTED_MESSAGE = "The interruptible machine was reclaimed by the cloud provider"


@dataclass
class FakeMachine:
    """One row of the accelerator listing: `name` is the SDK's Machine constant it matches."""
    name: str
    slug: str
    family: str
    count: int
    cost: float               # USD per hour, on demand
    spot: float | None        # USD per hour, interruptible (None: not offered)
    gpu: bool = True
    out_of_capacity: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "acceleratorType": "GPU" if self.gpu else "CPU",
            "clusterId": CLUSTER_ID,
            "cost": self.cost,
            **({"spotPrice": self.spot} if self.spot is not None else {}),
            "enabled": True,
            "family": self.family,
            "instanceId": f"{self.slug}.instance",
            "slug": self.slug,
            "slugMultiCloud": self.slug,
            "outOfCapacity": self.out_of_capacity,
            "provider": "AWS",
            "resources": {"gpu": self.count, "cpu": 8} if self.gpu else {"gpu": 0, "cpu": self.count},
        }


def default_machines() -> list[FakeMachine]:
    return [
        FakeMachine("CPU", "cpu-4", "CPU", 4, cost=0.2, spot=0.08, gpu=False),
        FakeMachine("L4", "lit-l4-1", "L4", 1, cost=4.0, spot=1.6),
        FakeMachine("A100_X_8", "lit-a100-8", "A100", 8, cost=30.0, spot=12.0),
    ]


@dataclass
class FakeJob:
    id: str
    name: str
    state: str
    spec: dict[str, Any]
    logs: list[str] = field(default_factory=list)
    interruption_notice_received: bool = False
    message: str = ""
    server_error: str = ""
    restart_count: int = 0
    total_cost: float | None = None  # fixed cost; None: price × time running
    price: float = 0.0               # USD per hour of the machine it runs on
    running_since: float | None = None
    ran: float = 0.0                 # seconds run before running_since
    reads: int = 0

    def to_json(self) -> dict[str, Any]:
        out = {
            "id": self.id,
            "name": self.name,
            "projectId": PROJECT_ID,
            "state": self.state,
            "spec": self.spec,
            "interruptionNoticeReceived": self.interruption_notice_received,
            "restartCount": self.restart_count,
            "totalCost": self.cost(),
        }
        if self.message:
            out["message"] = self.message
        if self.server_error:
            out["serverError"] = self.server_error
        return out

    def cost(self) -> float:
        if self.total_cost is not None:
            return self.total_cost
        seconds = self.ran + (time.time() - self.running_since if self.running_since is not None else 0.0)
        return round(self.price * seconds / 3600, 6)

    def set_state(self, state: str) -> None:
        running = state in ("running", "restarting")
        if running and self.running_since is None:
            self.running_since = time.time()
        elif not running and self.running_since is not None:
            self.ran += time.time() - self.running_since
            self.running_since = None
        self.state = state


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    status: int | None = None     # answer with this status
    delay: float = 0.0            # answer after this many seconds
    hang: bool = False            # answer only after release()
    times: int | None = 1         # how many requests it hits (None: all)
    hits: int = 0
    reached: threading.Event = field(default_factory=threading.Event)  # set at its first hit


FINAL = ("completed", "failed", "stopped")


class LightningStandIn:
    def __init__(self) -> None:
        self.url = ""
        self.jobs: dict[str, FakeJob] = {}
        self.machines: list[FakeMachine] = default_machines()
        self.creates: list[dict[str, Any]] = []
        self.updates: list[tuple[str, dict[str, Any]]] = []
        self.stops: list[tuple[str, float]] = []   # (job name, time.time() of the stop request)
        self.telemetry: list[dict[str, Any]] = []
        self.unknown: list[str] = []
        self.requests: list[str] = []
        self.faults: list[Fault] = []
        self.stop_to = "stopped"   # state a stop request moves a job to
        self.rename_on_create: str | None = None  # simulate a create racing another creator
        self.fail_create: int | None = None        # answer creates with this HTTP status
        # Jobs that run by themselves: called with a job once it has run `autorun_reads` reads,
        # returns the exit code its log ends with (None: it keeps running).
        self.autorun: Callable[[FakeJob], int | None] | None = None
        self.autorun_reads = 2
        self.peak_running: dict[str, int] = {}     # machine slug → most jobs running at once
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._loop = asyncio.new_event_loop()
        self._release: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    # --- control -----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)

    def close(self) -> None:
        self.release()
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def reset(self) -> None:
        self.release()
        with self._lock:
            self.jobs.clear()
            self.machines = default_machines()
            self.creates.clear()
            self.updates.clear()
            self.stops.clear()
            self.telemetry.clear()
            self.unknown.clear()
            self.requests.clear()
            self.faults.clear()
            self.peak_running.clear()
            self.stop_to = "stopped"
            self.rename_on_create = None
            self.fail_create = None
            self.autorun = None
            self.autorun_reads = 2

    def sdk_env(self, home: str) -> dict[str, str]:
        """The environment that aims a litbotd process's lightning-sdk at this stand-in."""
        return {"LIGHTNING_CLOUD_URL": self.url, "LIGHTNING_USER_ID": USER_ID,
                "LIGHTNING_API_KEY": "lightning-api-key-must-stay-home", "HOME": home}

    def fail(self, method: str, path: str, status: int = 503, times: int | None = 1) -> Fault:
        """Answer the next `times` requests whose path matches the regex `path` with `status`."""
        return self._fault(Fault(method, re.compile(path), status=status, times=times))

    def slow(self, method: str, path: str, seconds: float, times: int | None = 1) -> Fault:
        """Answer the next `times` matching requests `seconds` late (then normally)."""
        return self._fault(Fault(method, re.compile(path), delay=seconds, times=times))

    def hang(self, method: str, path: str, times: int | None = 1) -> Fault:
        """Hold the next `times` matching requests until `release()` (or reset/close)."""
        return self._fault(Fault(method, re.compile(path), hang=True, times=times))

    def release(self) -> None:
        """Answer every request held by hang(); later hangs hold again."""
        def swap() -> None:
            if self._release is not None:
                self._release.set()
            self._release = asyncio.Event()
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(swap)

    def _fault(self, f: Fault) -> Fault:
        with self._lock:
            self.faults.append(f)
        return f

    def add_job(self, name: str, state: str = "running", logs: list[str] | None = None, *,
                machine: str = "CPU", interruptible: bool = False, max_run_attempts: int | None = None) -> FakeJob:
        m = self.machine(machine)
        with self._lock:
            spec: dict[str, Any] = {"image": "python:3.11-slim", "command": "true", "env": [],
                                    "instanceName": m.slug, "spot": interruptible}
            if max_run_attempts:
                spec["maxRunAttempts"] = max_run_attempts
                spec["currentRunAttempt"] = 1
            job = FakeJob(id=f"job-{next(self._ids)}", name=name, state="pending", spec=spec, logs=logs or [],
                          price=self._price(m.slug, interruptible))
            self.jobs[job.id] = job
            self._set(job, state)
            return job

    def machine(self, name: str) -> FakeMachine:
        return next(m for m in self.machines if m.name == name)

    def by_name(self, name: str) -> FakeJob | None:
        return next((j for j in self.jobs.values() if j.name == name), None)

    def job(self, name: str) -> FakeJob:
        job = self.by_name(name)
        assert job is not None, f"no job named {name}"
        return job

    def running(self, slug: str | None = None) -> int:
        return sum(j.state in ("running", "restarting") and (slug is None or j.spec.get("instanceName") == slug)
                   for j in self.jobs.values())

    # --- what happens to jobs ------------------------------------------------------------------
    def set_state(self, name: str, state: str) -> FakeJob:
        with self._lock:
            job = self.job(name)
            self._set(job, state)
            return job

    def finish(self, name: str, exit_code: int = 0, lines: tuple[str, ...] = ("ok",)) -> FakeJob:
        """The job's script ended with `exit_code`: the bootstrap's result line ends the log."""
        with self._lock:
            job = self.job(name)
            job.logs = [*job.logs, *lines, f"litci-exit-code: {exit_code}"]
            self._set(job, "completed" if exit_code == 0 else "failed")
            return job

    def notice(self, name: str) -> FakeJob:
        """The cloud announced it will reclaim the job's interruptible machine."""
        with self._lock:
            job = self.job(name)
            job.interruption_notice_received = True
            return job

    def preempt(self, name: str, message: str = PREEMPTED_MESSAGE) -> FakeJob:
        """The machine is gone with the attempt on it: the server restarts the job on a new one
        while its maxRunAttempts allows (restartCount, currentRunAttempt), else the job fails."""
        with self._lock:
            job = self.job(name)
            job.interruption_notice_received = True
            job.logs = [*job.logs, "Killed"]
            attempt = int(job.spec.get("currentRunAttempt") or 1)
            if attempt < int(job.spec.get("maxRunAttempts") or 1):
                job.restart_count += 1
                job.spec["currentRunAttempt"] = attempt + 1
                job.interruption_notice_received = False
                self._set(job, "restarting")
            else:
                job.message = message
                self._set(job, "failed")
            return job

    def fail_with(self, name: str, message: str, server_error: str = "", state: str = "failed") -> FakeJob:
        """The platform ends the job with its own reason (image pull, capacity, budget…)."""
        with self._lock:
            job = self.job(name)
            job.message = message
            job.server_error = server_error
            self._set(job, state)
            return job

    def _set(self, job: FakeJob, state: str) -> None:
        job.set_state(state)
        slug = str(job.spec.get("instanceName", ""))
        self.peak_running[slug] = max(self.peak_running.get(slug, 0), self.running(slug))

    def _price(self, slug: str, spot: bool) -> float:
        m = next((m for m in self.machines if slug in (m.slug, f"{m.slug}.instance")), None)
        if m is None:
            return 0.0
        return (m.spot if spot and m.spot is not None else m.cost)

    def _advance(self, job: FakeJob) -> None:
        """autorun: pending → running at the first read, then the end after autorun_reads reads."""
        if self.autorun is None or job.state in FINAL:
            return
        job.reads += 1
        if job.state == "pending":
            self._set(job, "running")
        elif job.state in ("running", "restarting") and job.reads > self.autorun_reads:
            code = self.autorun(job)
            if code is not None:
                self.finish(job.name, code)

    # --- server ------------------------------------------------------------------------------
    async def _serve(self) -> None:
        self._release = asyncio.Event()
        app = web.Application(middlewares=[self._record])
        routes = [("GET", "/v1/orgs/", self._org), ("GET", "/v1/orgs/{id}", self._org),
                  ("GET", "/v1/auth/user", self._user), ("GET", "/v1/memberships", self._memberships),
                  ("GET", "/v1/projects/{pid}", self._project), ("GET", "/v1/projects/{pid}/jobs/find", self._find),
                  ("GET", "/v1/projects/{pid}/multi-machine-jobs/{name}/getbyname", self._not_found),
                  ("POST", "/v1/projects/{pid}/jobs", self._create), ("GET", "/v1/projects/{pid}/jobs/{id}", self._get),
                  ("PUT", "/v1/projects/{pid}/jobs/{id}", self._update),
                  ("GET", "/v1/projects/{pid}/page-logs", self._page_logs),
                  ("GET", "/v1/projects/{pid}/jobs/{id}/download-logs", self._download_logs),
                  ("GET", "/v1/projects/{pid}/clusters", self._project_clusters),
                  ("GET", "/v1/core/clusters", self._clusters), ("GET", "/v1/core/accelerators", self._accelerators),
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
        with self._lock:
            fault = next((f for f in self.faults if f.method == request.method and f.pattern.search(request.path)
                          and (f.times is None or f.hits < f.times)), None)
            if fault is not None:
                fault.hits += 1
                fault.reached.set()
        if fault is not None:
            if fault.hang and self._release is not None:
                await self._release.wait()
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.status is not None:
                return web.json_response({"code": 14, "message": "unavailable"}, status=fault.status)
        return await handler(request)

    async def _unknown(self, request: web.Request) -> web.Response:
        self.unknown.append(f"{request.method} {request.path_qs}")
        return web.json_response({"code": 5, "message": "not found"}, status=404)

    async def _not_found(self, request: web.Request) -> web.Response:
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
        with self._lock:
            job = self.by_name(request.query.get("name", ""))
            if job is None:
                return web.json_response({"code": 5, "message": "job not found"}, status=404)
            self._advance(job)
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
                taken = FakeJob(id=f"job-{next(self._ids)}", name=name, state="pending", spec=body["spec"])
                self.jobs[taken.id] = taken
                self._set(taken, self.rename_on_create)
            taken_names = {j.name for j in self.jobs.values()}
            n = 1
            while name in taken_names:  # the server renames rather than refusing
                name = f"{body['name']}-{n}"
                n += 1
            spec = dict(body["spec"])
            if spec.get("maxRunAttempts"):
                spec["currentRunAttempt"] = 1
            job = FakeJob(id=f"job-{next(self._ids)}", name=name, state="pending", spec=spec,
                          price=self._price(str(spec.get("instanceName", "")), bool(spec.get("spot"))))
            self.jobs[job.id] = job
        return web.json_response(job.to_json())

    async def _get(self, request: web.Request) -> web.Response:
        with self._lock:
            job = self.jobs.get(request.match_info["id"])
            if job is None:
                return web.json_response({"code": 5, "message": "not found"}, status=404)
            return web.json_response(job.to_json())

    async def _update(self, request: web.Request) -> web.Response:
        body = await request.json()
        with self._lock:
            job = self.jobs.get(request.match_info["id"])
            if job is None:
                return web.json_response({"code": 5, "message": "not found"}, status=404)
            self.updates.append((job.name, body))
            if body.get("state") == "stop":
                self.stops.append((job.name, time.time()))
                self._set(job, self.stop_to)
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

    async def _project_clusters(self, request: web.Request) -> web.Response:
        return web.json_response({"clusters": []})

    async def _clusters(self, request: web.Request) -> web.Response:
        return web.json_response({"clusters": [
            {"id": CLUSTER_ID, "name": CLUSTER_ID,
             "spec": {"clusterType": "CLUSTER_TYPE_GLOBAL", "driver": "AWS", "awsV1": {"region": "us-east-1"}}}]})

    async def _accelerators(self, request: web.Request) -> web.Response:
        if request.query.get("cloudProvider") != "AWS":
            return web.json_response({"accelerator": []})
        return web.json_response({"accelerator": [m.to_json() for m in self.machines]})

    async def _telemetry(self, request: web.Request) -> web.Response:
        self.telemetry.append(await request.json())
        return web.json_response({})
