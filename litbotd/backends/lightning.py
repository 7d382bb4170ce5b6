"""Jobs on Lightning AI through lightning-sdk (`[jobs.lightning]`).

What the SDK does that shapes this module (read from lightning-sdk 2026.10.13):
- every call is blocking HTTP (and `Job.async_wait` blocks the loop too): everything here runs on
  a bounded thread pool, each call under a time limit;
- `import lightning_sdk` asks PyPI for a newer version, with no timeout, unless
  LIGHTNING_DISABLE_VERSION_CHECK=1 is set first: set it, and import lazily;
- without LIGHTNING_USER_ID + LIGHTNING_API_KEY (or LIGHTNING_AUTH_TOKEN) the SDK opens a browser
  login: the constructor checks for them and fails with a clear BackendError instead;
- `Job.run` with a taken name succeeds: the server renames the new job and the SDK only warns.
  So `start` looks the name up first (`Job(name, teamspace=…)` raises ValueError when absent),
  and when what it created came back renamed (another daemon won the race) it stops that
  duplicate and reports the original;
- `Machine.from_str` accepts any string: machine names are checked against the SDK's constants;
- `job.stop()` waits without bound until the job has stopped: it runs on its own thread and
  `stop` waits for it only `stop_wait` seconds;
- reading `job.logs` of a running job blocks for at least 5 s: logs are read for final jobs and
  for `log_tail` only;
- a failing SDK call sends its arguments, `env` included, to Lightning's telemetry: the job's env
  holds nothing but the workflow env and the short-lived, repo-scoped GITHUB_TOKEN.
The script's exit status comes from the bootstrap's last log line (see bootstrap.py).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Any, Mapping

from ..redaction import scrub
from .base import Backend, BackendError, JobNotFound, JobSpec, JobStatus, Offload, check_name
from .bootstrap import job_env, parse_result, shell_command

log = logging.getLogger(__name__)

FINAL_CACHE = 4096      # final statuses kept in memory (they never change)
MESSAGE_MAX = 400       # SDK error texts carry whole HTTP responses: keep the start
LOG_LINES_FOR_RESULT = 50
PREEMPTED = "preempted: the interruptible machine was reclaimed before the script finished"
LOG_UNAVAILABLE = " (log unavailable)"
INFRA_FAILED = "job failed before the script finished (infrastructure or preemption)"


def _import_sdk() -> Any:
    """Import lightning_sdk without its PyPI version check (a request with no timeout)."""
    os.environ["LIGHTNING_DISABLE_VERSION_CHECK"] = "1"
    import lightning_sdk

    # The SDK logs "Job was successfully launched" on its own handler, and warns about renamed
    # jobs, which start() handles itself.
    logging.getLogger("lightning_sdk.job").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"Job name '.*' was already taken")
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


def _resolve(fut: asyncio.Future[None]) -> None:
    """Done, unless it already is (cancelled by a waiter that gave up)."""
    if not fut.done():
        fut.set_result(None)


def _short(e: BaseException, secrets: list[str] | tuple[str, ...] = ()) -> str:
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    text = scrub(text, secrets)
    return text if len(text) <= MESSAGE_MAX else text[:MESSAGE_MAX] + "…"


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
        self._ts_lock = threading.Lock()
        self._final: collections.OrderedDict[str, JobStatus] = collections.OrderedDict()
        self._stopping: dict[str, asyncio.Future[None]] = {}

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
        except asyncio.TimeoutError:
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

    async def copy_log(self, name: str, dest: str) -> bool:
        check_name(name)
        return bool(await self._call(self._copy_log, name, dest))

    async def stop(self, name: str) -> None:
        check_name(name)
        fut = self._stopping.get(name)
        if fut is None or fut.done():
            fut = asyncio.get_running_loop().create_future()
            self._stopping[name] = fut
            # job.stop() waits until the job has stopped, without bound: give it its own thread,
            # not one of the pool's, and wait for it only a little.
            threading.Thread(target=self._stop_thread, args=(name, fut, asyncio.get_running_loop()),
                             name=f"litci-stop-{name}", daemon=True).start()
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.stop_wait)
        except asyncio.TimeoutError:
            log.info("lightning stop still in progress job=%s", name)
        else:
            if self._stopping.get(name) is fut:
                del self._stopping[name]

    async def close(self) -> None:
        self._offload.close()

    # --- helpers -----------------------------------------------------------------------------
    async def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return await self._offload.run(fn, *args)
        except (BackendError, JobNotFound):
            raise
        except asyncio.TimeoutError:
            raise BackendError(f"Lightning did not answer within {self._offload.timeout:g}s") from None
        except Exception as e:
            raise BackendError(f"Lightning: {_short(e)}") from None

    def _teamspace(self) -> Any:
        with self._ts_lock:
            if self._ts is None:
                self._sdk = _import_sdk()
                try:
                    self._ts = self._sdk.Teamspace(self.teamspace)
                except Exception as e:
                    raise BackendError(f"cannot use Lightning teamspace {self.teamspace!r}: {_short(e)}") from None
            return self._ts

    def _find(self, name: str) -> Any:
        ts = self._teamspace()
        try:
            return self._sdk.Job(name, teamspace=ts)
        except ValueError:  # the SDK's "Job … does not exist"
            return None

    def _stop_thread(self, name: str, fut: asyncio.Future[None], loop: asyncio.AbstractEventLoop) -> None:
        try:
            job = self._find(name)
            if job is not None:
                job.stop()
        except Exception as e:  # logged; stop() stays idempotent and quiet
            log.warning("lightning stop failed job=%s error=%s", name, _short(e))
        finally:
            try:
                loop.call_soon_threadsafe(_resolve, fut)
            except RuntimeError:  # the loop is closed: nobody is waiting
                pass

    def _start(self, spec: JobSpec) -> JobStatus:
        existing = self._find(spec.name)
        if existing is not None:
            return self._status_of(existing)
        sdk = self._sdk
        job = sdk.Job.run(
            name=spec.name,
            machine=sdk.Machine.from_str(spec.machine),
            image=spec.image,
            command=shell_command(spec),
            env=job_env(spec),
            interruptible=spec.interruptible,
            teamspace=self._teamspace(),
        )
        if job.name != spec.name:
            # Another starter created spec.name between our lookup and our create; the server
            # renamed ours. Stop the duplicate and report the original.
            log.warning("lightning duplicate job=%s duplicate=%s: stopping the duplicate", spec.name, job.name)
            threading.Thread(target=self._stop_quietly, args=(job,), daemon=True).start()
            original = self._find(spec.name)
            if original is None:
                raise BackendError(f"job {spec.name} was renamed to {job.name} but {spec.name} cannot be found")
            return self._status_of(original)
        return JobStatus("pending", None, self._link(job))

    @staticmethod
    def _stop_quietly(job: Any) -> None:
        try:
            job.stop()
        except Exception as e:
            log.warning("lightning stop of duplicate failed job=%s error=%s", job.name, _short(e))

    @staticmethod
    def _link(job: Any) -> str | None:
        try:
            return str(job.link)
        except Exception:
            return None

    def _status(self, name: str) -> JobStatus:
        job = self._find(name)
        if job is None:
            raise JobNotFound(name)
        return self._status_of(job)

    def _status_of(self, job: Any) -> JobStatus:
        state = str(job.status)  # "NotCreated" | "Pending" | "Running" | "Stopping" | final
        url = self._link(job)
        if state in ("NotCreated", "Pending"):
            return JobStatus("pending", None, url)
        if state == "Running":
            return JobStatus("running", None, url)
        if state == "Stopping":  # logs are still settling: not final yet
            return JobStatus("stopping", None, url)
        # Not in the public Job API: the raw job record says whether a spot machine got its
        # interruption notice. Read defensively.
        preempted = bool(getattr(getattr(job, "_job", None), "interruption_notice_received", False))
        if state == "Completed":
            return JobStatus("succeeded", 0, url, "exit code 0")
        if state == "Stopped":
            if preempted:
                return JobStatus("failed", None, url, PREEMPTED)
            return JobStatus("stopped", None, url, "stopped")
        if state != "Failed":
            return JobStatus("unknown", None, url, f"unknown Lightning state {state}")
        try:
            result = parse_result(str(job.logs(tail=LOG_LINES_FOR_RESULT)))
        except Exception as e:
            log.warning("lightning logs unavailable job=%s error=%s", job.name, _short(e))
            return JobStatus("failed", None, url, f"{PREEMPTED if preempted else INFRA_FAILED}{LOG_UNAVAILABLE}")
        # Failed means the bootstrap exited non-zero: a result line saying 0 or "stopped" cannot
        # be its own; trust only the ones consistent with a failure.
        if result is not None and result.kind == "exit" and result.exit_code:
            return JobStatus("failed", result.exit_code, url, f"exit code {result.exit_code}")
        if result is not None and result.kind == "timeout":
            return JobStatus("failed", None, url, f"timed out after {result.detail}s", timed_out=True)
        if result is not None and result.kind == "error":
            return JobStatus("failed", None, url, f"failed to start: {result.detail}")
        return JobStatus("failed", None, url, PREEMPTED if preempted else INFRA_FAILED)

    def _copy_log(self, name: str, dest: str) -> bool:
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
