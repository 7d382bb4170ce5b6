"""Jobs on Lightning AI through lightning-sdk (`[jobs.lightning]`).

What the SDK does that shapes this module (read from lightning-sdk 2026.10.13):
- every call is blocking HTTP (and `Job.async_wait` blocks the loop too): everything here runs on
  a bounded thread pool, each call under a time limit;
- `import lightning_sdk` asks PyPI for a newer version, with no timeout, unless
  LIGHTNING_DISABLE_VERSION_CHECK=1 is set first: set it, and import lazily;
- without LIGHTNING_USER_ID + LIGHTNING_API_KEY (or LIGHTNING_AUTH_TOKEN) the SDK opens a browser
  login: the constructor checks for them and fails with a clear BackendError instead;
- `Job.run` with a taken name succeeds: the server renames the new job and the SDK only warns.
  So `start` looks the name up first, and when what it created came back renamed (another daemon
  won the race) it stops that duplicate and reports the original;
- `Machine.from_str` accepts any string: machine names are checked against the SDK's constants;
- `job.stop()` waits without bound until the job has stopped: `stop` sends the same stop request
  (`jobs_service_update_job`, state "stop") and returns once Lightning has accepted it;
- reading `job.logs` of a running job blocks for at least 5 s: logs are read for final jobs and
  for `log_tail` only; a job whose lines are not in the logs API falls back to a plain `urlopen`
  of its saved log file, with no timeout: `_import_sdk` gives that call one (LOG_DOWNLOAD_TIMEOUT),
  so it can no longer hold a pool thread for good;
- the public `Job` has no field for the raw state, the server's `message` / `serverError`,
  `restartCount` or `interruptionNoticeReceived`: the job's record (`V1Job`, the REST model, whose
  fields are all public) is read with `JobApiV2.get_job_by_name`, the call `Job(name)` makes, once
  per poll. `Job.status` maps any state it does not know to Pending; litbotd reads the raw state
  (infra.lightning_verdict), so a new state is "unknown", logged once by name, never pending.
  `Job.total_cost` and `Job.current_run_attempt` are that record's `total_cost` and
  `spec.current_run_attempt` (tests/test_backend_lightning.py checks they agree);
- jobs are created with `max_run_attempts=1`: Lightning cannot tell a test failure from a lost
  machine, so it never retries by itself; litbotd retries infrastructure failures (SPEC §11), each
  try a job of its own name;
- `Teamspace.list_machines()` lists machine prices (`cost`, `interruptible_cost`), without the
  machines out of capacity at that moment: `prices` keeps the last price it saw of each;
- a failing SDK call sends its arguments, `env` included, to Lightning's telemetry: the job's env
  holds nothing but the workflow env and the short-lived, repo-scoped GITHUB_TOKEN.
The script's exit status comes from the bootstrap's last log line (see bootstrap.py).
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import urllib.request
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

from .. import infra
from ..redaction import scrub
from .base import Backend, BackendError, JobNotFound, JobSpec, JobStatus, Offload, Price, check_name
from .bootstrap import job_env, parse_result, shell_command

log = logging.getLogger(__name__)

FINAL_CACHE = 4096      # final statuses kept in memory (they never change)
MESSAGE_MAX = 400       # SDK error texts carry whole HTTP responses: keep the start
LOG_LINES_FOR_RESULT = 50
LOG_UNAVAILABLE = " (log unavailable)"
INFRA_FAILED = "job failed before the script finished; its log could not be read"
LOG_DOWNLOAD_TIMEOUT = 30.0  # seconds: the SDK's saved-log download (a bare urlopen) gets this
# Raw states in which a stop request is still needed (the SDK's stop_job sends none in the others).
_STOPPABLE = frozenset({"pending", "creating", "running", "restarting"})


def _urlopen(url: Any, data: Any = None, timeout: float | None = None, **kw: Any) -> Any:
    """urllib's urlopen, with a timeout when the caller gave none (the SDK's log fallback)."""
    return urllib.request.urlopen(url, data, LOG_DOWNLOAD_TIMEOUT if timeout is None else timeout, **kw)


def _import_sdk() -> Any:
    """Import lightning_sdk without its PyPI version check (a request with no timeout)."""
    os.environ["LIGHTNING_DISABLE_VERSION_CHECK"] = "1"
    import lightning_sdk
    from lightning_sdk.api import job_api

    # The SDK logs "Job was successfully launched" on its own handler, and warns about renamed
    # jobs, which start() handles itself.
    logging.getLogger("lightning_sdk.job").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"Job name '.*' was already taken")
    # The saved-log download calls urlopen(url) with no timeout.
    job_api.urlopen = _urlopen
    return lightning_sdk


def machine_names() -> frozenset[str]:
    """Valid Lightning machine names (`CPU`, `L4`, `A100_X_8`, …) from the SDK's constants."""
    if not _MACHINES:
        machine_cls = _import_sdk().Machine
        _MACHINES.append(frozenset(m.name for m in vars(machine_cls).values() if isinstance(m, machine_cls)))
    return _MACHINES[0]


_MACHINES: list[frozenset[str]] = []


def credentials_problem(env: Mapping[str, str]) -> str | None:
    """Why the SDK would fall back to a browser login, or None when credentials are set."""
    if env.get("LIGHTNING_AUTH_TOKEN"):
        return None
    missing = [k for k in ("LIGHTNING_USER_ID", "LIGHTNING_API_KEY") if not env.get(k)]
    if not missing:
        return None
    return ("Lightning credentials are missing: set " + " and ".join(missing) +
            " (or LIGHTNING_AUTH_TOKEN) in the daemon's environment")


def _short(e: BaseException, secrets: list[str] | tuple[str, ...] = ()) -> str:
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    text = scrub(text, secrets)
    return text if len(text) <= MESSAGE_MAX else text[:MESSAGE_MAX] + "…"


def _text(value: Any) -> str:
    """A server text field, scrubbed of token shapes and capped (it is shown on GitHub)."""
    text = scrub(" ".join(str(value or "").split()), ())
    return text if len(text) <= MESSAGE_MAX else text[:MESSAGE_MAX] + "…"


def prices_of(listing: list[Any], constants: list[Any]) -> dict[str, Price]:
    """`Teamspace.list_machines()` → prices by the SDK's machine names. A listing is one cloud's
    offer (name = its instance type, slug = the provider-agnostic one): it prices every constant
    with its slug (`CPU` and `CPU_X_4` are both `cpu-4`), else the first the SDK calls equal. When
    several clouds list one machine, the dearest price counts: caps must not be undercut."""
    out: dict[str, Price] = {}
    for m in listing:
        if m.cost is None:
            continue
        named = [c for c in constants if c.slug == m.slug] or [c for c in constants if c == m][:1]
        for c in named:
            on, spot = float(m.cost), float(m.interruptible_cost) if m.interruptible_cost else None
            old = out.get(c.name)
            if old is not None:
                on = max(on, old.on_demand)
                spot = max((p for p in (spot, old.interruptible) if p is not None), default=None)
            out[c.name] = Price(c.name, on, spot)
    return out


class LightningBackend(Backend):
    name = "lightning"

    def __init__(self, teamspace: str, *, threads: int = 8, call_timeout: float = 120.0,
                 stop_wait: float = 10.0) -> None:
        if not teamspace:
            raise BackendError('jobs.lightning.teamspace is not set: it must name the teamspace as "owner/teamspace"')
        problem = credentials_problem(os.environ)
        if problem:
            raise BackendError(problem)
        self.teamspace = teamspace
        self.stop_wait = stop_wait
        self._offload = Offload(threads, call_timeout, "litci-lightning")
        self._sdk: Any = None
        self._ts: Any = None
        self._jobs_api: Any = None
        self._ts_lock = threading.Lock()
        self._final: collections.OrderedDict[str, JobStatus] = collections.OrderedDict()
        self._links: collections.OrderedDict[str, str | None] = collections.OrderedDict()
        self._prices: dict[str, Price] = {}
        self._unknown_seen: set[str] = set()

    # --- interface ---------------------------------------------------------------------------
    async def start(self, spec: JobSpec) -> JobStatus:
        check_name(spec.name)
        if spec.machine not in await self._offload.run(machine_names):
            raise BackendError(f"unknown Lightning machine {spec.machine!r}")
        if not spec.image:
            raise BackendError("a Lightning job needs an image")
        try:
            return await self._offload.run(self._start, spec)
        except BackendError:
            raise
        except TimeoutError:
            raise BackendError(f"failed to start: Lightning did not answer within {self._offload.timeout:g}s") from None
        except Exception as e:
            raise BackendError(f"failed to start: {_short(e, spec.secrets())}") from None

    async def status(self, name: str) -> JobStatus:
        check_name(name)
        if name in self._final:
            return self._final[name]
        st = await self._call(self._status, name)
        if st.final and not st.message.endswith(LOG_UNAVAILABLE):  # a later poll may read the log
            self._final[name] = st
            while len(self._final) > FINAL_CACHE:
                self._final.popitem(last=False)
        return st

    async def log_tail(self, name: str, lines: int) -> str:
        check_name(name)
        return await self._call(self._log_tail, name, lines)

    async def copy_log(self, name: str, dest: str, mask: Callable[[str], str] | None = None) -> bool:
        check_name(name)
        return bool(await self._call(self._copy_log, name, dest, mask))

    async def stop(self, name: str) -> None:
        """Send the stop request and return once Lightning accepted it (or the job is already
        ending, or gone); BackendError when it could not be sent, so the caller tries again."""
        check_name(name)
        try:
            await self._offload.run(self._stop, name, timeout=self.stop_wait)
        except TimeoutError:
            raise BackendError(f"stop of {name}: Lightning did not answer within {self.stop_wait:g}s") from None
        except (BackendError, JobNotFound):
            raise
        except Exception as e:
            raise BackendError(f"stop of {name}: {_short(e)}") from None

    async def prices(self) -> dict[str, Price]:
        """USD per hour by machine name, from `Teamspace.list_machines()` (SPEC §11)."""
        listed = await self._call(self._list_prices)
        self._prices = {**self._prices, **listed}  # out of capacity now: the last price seen holds
        return dict(self._prices)

    async def close(self) -> None:
        self._offload.close()

    # --- helpers -----------------------------------------------------------------------------
    async def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return await self._offload.run(fn, *args)
        except (BackendError, JobNotFound):
            raise
        except TimeoutError:
            raise BackendError(f"Lightning did not answer within {self._offload.timeout:g}s") from None
        except Exception as e:
            raise BackendError(f"Lightning: {_short(e)}") from None

    def _teamspace(self) -> Any:
        with self._ts_lock:
            if self._ts is None:
                self._sdk = _import_sdk()
                from lightning_sdk.api.job_api import JobApiV2

                try:
                    self._ts = self._sdk.Teamspace(self.teamspace)
                except Exception as e:
                    raise BackendError(f"cannot use Lightning teamspace {self.teamspace!r}: {_short(e)}") from None
                self._jobs_api = JobApiV2()
            return self._ts

    def _find(self, name: str) -> Any:
        """The SDK's Job, for what only it offers (run, logs, link); None when absent."""
        ts = self._teamspace()
        try:
            return self._sdk.Job(name, teamspace=ts)
        except ValueError:  # the SDK's "Job … does not exist"
            return None

    def _record(self, name: str) -> Any:
        """The job's record (V1Job), one request; None when there is no such job."""
        from lightning_sdk.lightning_cloud.openapi.rest import ApiException

        ts = self._teamspace()
        try:
            return self._jobs_api.get_job_by_name(name=name, teamspace_id=ts.id)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def _link(self, name: str, job: Any = None) -> str | None:
        if name in self._links:
            return self._links[name]
        try:
            job = job if job is not None else self._find(name)
            url = str(job.link) if job is not None else None
        except Exception:
            return None
        self._links[name] = url
        while len(self._links) > FINAL_CACHE:
            self._links.popitem(last=False)
        return url

    def _stop(self, name: str) -> None:
        rec = self._record(name)
        if rec is not None:
            self._request_stop(rec)

    def _request_stop(self, rec: Any) -> None:
        if str(rec.state or "") not in _STOPPABLE and str(rec.state or "") in infra.LIGHTNING_STATES:
            return  # ending or ended already (a stop now would relabel a finished job "stopped")
        from lightning_sdk.api.utils import cached_lightning_client
        from lightning_sdk.lightning_cloud.openapi import JobsServiceUpdateJobBody

        cached_lightning_client().jobs_service_update_job(
            body=JobsServiceUpdateJobBody(state="stop"), project_id=self._teamspace().id, id=rec.id)

    def _start(self, spec: JobSpec) -> JobStatus:
        existing = self._record(spec.name)
        if existing is not None:
            return self._status_of(spec.name, existing)
        sdk = self._sdk
        job = sdk.Job.run(
            name=spec.name,
            machine=sdk.Machine.from_str(spec.machine),
            image=spec.image,
            command=shell_command(spec),
            env=job_env(spec),
            interruptible=spec.interruptible,
            max_run_attempts=1,  # litbotd retries, and only what the infrastructure failed
            teamspace=self._teamspace(),
        )
        if job.name != spec.name:
            # Another starter created spec.name between our lookup and our create; the server
            # renamed ours. Stop the duplicate and report the original.
            log.warning("lightning duplicate job=%s duplicate=%s: stopping the duplicate", spec.name, job.name)
            threading.Thread(target=self._stop_quietly, args=(job.name,), daemon=True).start()
            original = self._record(spec.name)
            if original is None:
                raise BackendError(f"job {spec.name} was renamed to {job.name} but {spec.name} cannot be found")
            return self._status_of(spec.name, original)
        return JobStatus("pending", None, self._link(spec.name, job))

    def _stop_quietly(self, name: str) -> None:
        try:
            self._stop(name)
        except Exception as e:
            log.warning("lightning stop of duplicate failed job=%s error=%s", name, _short(e))

    def _status(self, name: str) -> JobStatus:
        rec = self._record(name)
        if rec is None:
            raise JobNotFound(name)
        return self._status_of(name, rec)

    def _status_of(self, name: str, rec: Any) -> JobStatus:
        state = str(rec.state or "")
        message, server_error = _text(rec.message), _text(rec.server_error)
        notice, restarts = bool(rec.interruption_notice_received), int(rec.restart_count or 0)

        def verdict(**more: Any) -> infra.Verdict:
            return infra.lightning_verdict(state, message=message, server_error=server_error,
                                           interruption_notice=notice, restart_count=restarts, **more)

        v = verdict()
        unavailable = False
        if v.needs_log:
            try:
                job = self._find(name)
                result = parse_result(str(job.logs(tail=LOG_LINES_FOR_RESULT))) if job is not None else None
            except Exception as e:
                log.warning("lightning logs unavailable job=%s error=%s", name, _short(e))
                result, unavailable = None, True
            v = verdict(log_read=True, result=(result.kind, result.exit_code, result.detail) if result else None)
            if unavailable and not (notice or message or server_error):
                # Without the log a test failure looks like a lost machine: never retry on a guess.
                v = infra.Verdict("failed", message=INFRA_FAILED)
        if v.state == "unknown" and state not in self._unknown_seen:
            self._unknown_seen.add(state)
            log.warning("lightning job in a state litbotd does not know (treated as running up to "
                        "jobs.queue_timeout) job=%s state=%s", name, state[:60])
        final = v.state in ("succeeded", "failed", "stopped")
        cost = float(rec.total_cost) if final and rec.total_cost is not None else None
        return JobStatus(v.state, v.exit_code, self._link(name), v.message + (LOG_UNAVAILABLE if unavailable else ""),
                         timed_out=v.timed_out, infra=v.infra, cost=cost)

    def _copy_log(self, name: str, dest: str, mask: Callable[[str], str] | None = None) -> bool:
        """The job's whole log so far (the SDK returns it whole), written to `dest` atomically."""
        job = self._find(name)
        if job is None:
            raise JobNotFound(name)
        if str(job.status) in ("NotCreated", "Pending"):
            return False
        try:
            text = str(job.logs)
        except RuntimeError:  # "Logs are not available while the job is …"
            return False
        if text and not text.endswith("\n"):
            text += "\n"  # the SDK's snapshot drops the last newline: lines stay whole
        if mask is not None:
            text = mask(text)  # the job's secrets never reach the VM's disk
        out = Path(dest)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.{os.getpid()}.{threading.get_ident()}"
        tmp.write_text(text, encoding="utf-8", errors="replace")
        os.replace(tmp, out)
        return True

    def _log_tail(self, name: str, lines: int) -> str:
        job = self._find(name)
        if job is None:
            raise JobNotFound(name)
        if lines <= 0 or str(job.status) in ("NotCreated", "Pending"):
            return ""
        try:
            return str(job.logs(tail=lines))
        except RuntimeError:  # "Logs are not available while the job is …"
            return ""

    def _list_prices(self) -> dict[str, Price]:
        ts = self._teamspace()
        machine_cls = self._sdk.Machine
        constants = [m for m in vars(machine_cls).values() if isinstance(m, machine_cls)]
        return prices_of(ts.list_machines(), constants)
