"""The job-backend interface: where a CI job runs (SPEC §1, §4, §6).

Two backends implement it: `local` (this machine) and `lightning` (Lightning AI). Both run the
same job command, `bootstrap.py`, which fetches the code at the head SHA, runs the workflow's
script with `bash -eo pipefail` under a time limit and ends with one result line.

Outcome fields of `JobStatus`, decided here so callers need not know the backend:
- `state` "succeeded": the script exited 0.
- `state` "failed" + `exit_code` N: the script exited N ("exit code N").
- `state` "failed" + `timed_out` True: the script ran past `JobSpec.timeout` and its whole process
  group was killed; `message` starts with "timed out".
- `state` "failed" + `exit_code` None, `timed_out` False: the script never finished for another
  reason; `message` says why ("failed to start: …", "preempted …", "runner died …").
- `state` "stopped": someone called `stop`.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, TypeVar

T = TypeVar("T")

STATES = ("pending", "running", "stopping", "succeeded", "failed", "stopped", "unknown")
FINAL_STATES = frozenset({"succeeded", "failed", "stopped"})
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,59}$")


class JobNotFound(Exception):
    """No job with that name exists in the backend."""


class BackendError(Exception):
    """The backend could not do what was asked. Messages never contain a token or env values."""


def check_name(name: str) -> str:
    """Job names become directory names and Lightning job names: keep them boring."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise BackendError(f"invalid job name {name!r}: expected [a-z0-9-], at most 60 characters")
    return name


@dataclass(frozen=True)
class JobSpec:
    name: str              # deterministic, chosen by the caller: [a-z0-9-], <= 60 chars
    repo: str              # "owner/name"
    sha: str               # 40-hex head SHA
    archive_url: str       # tarball of the code at sha (GitHub answers 302 to codeload)
    script: str            # the workflow's `run` text
    image: str
    machine: str
    interruptible: bool
    timeout: float         # seconds the script may run
    env: dict[str, str]    # the workflow/cell env
    # Short-lived, repo-scoped, contents:read installation token, or None for a public repo.
    # Only ever placed in the job's environment as GITHUB_TOKEN; repr=False keeps it out of logs.
    token: str | None = field(default=None, repr=False)
    reports: tuple[str, ...] = ()  # JUnit XML globs the job reads after the script (bootstrap.py)
    # The job secrets released to this run (jobsecrets.release), NAME -> value: environment
    # variables of the job's script only; masked in its log. repr=False keeps them out of logs.
    secret_env: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        check_name(self.name)
        if not self.archive_url.startswith(("http://", "https://")):
            raise BackendError("archive_url must be an http(s) URL")
        if self.timeout <= 0:
            raise BackendError(f"timeout must be more than 0, got {self.timeout!r}")

    def secrets(self) -> list[str]:
        """Values that must never appear in a message: the token, every env value and secret."""
        return [v for v in (self.token, *self.env.values(), *self.secret_env.values()) if v]

    def masked(self) -> list[str]:
        """Values masked in the job's log: its secrets and its token."""
        return [v for v in (self.token, *self.secret_env.values()) if v]


@dataclass(frozen=True)
class JobStatus:
    state: str              # one of STATES
    exit_code: int | None   # the script's exit status when known
    url: str | None         # details_url for the check run (http/https only; None for local)
    message: str = ""       # human text: "exit code 2", "preempted", "failed to start: …"
    timed_out: bool = False  # the script hit JobSpec.timeout (state is then "failed")
    infra: str = ""         # the kind of infrastructure failure (infra.KINDS), "" when none
    cost: float | None = None  # USD, as the backend reports it once the job is final

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"unknown job state {self.state!r}")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            object.__setattr__(self, "url", None)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


@dataclass(frozen=True)
class Price:
    """What one machine costs, in USD per hour, as the backend lists it (SPEC §11)."""
    machine: str                  # the workflow's machine name: "CPU", "L4", "A100_X_8"
    on_demand: float
    interruptible: float | None   # None: not offered interruptible


class Backend(Protocol):
    name: str  # "local" | "lightning"

    async def start(self, spec: JobSpec) -> JobStatus:
        """START-OR-FIND: when a job named spec.name exists, return its status and start nothing."""

    async def status(self, name: str) -> JobStatus:
        """The job's current status; JobNotFound when there is no such job."""

    async def log_tail(self, name: str, lines: int) -> str:
        """The last `lines` lines of the job's log ("" when there is none yet)."""

    async def copy_log(self, name: str, dest: str, mask: Callable[[str], str] | None = None) -> bool:
        """Write the job's whole log so far to the file `dest` (replaced atomically), for its run
        page; False when there is no log yet. Blocking work runs off the event loop. `mask`: the
        job secrets masking (SPEC §10), applied before the log is stored (a backend whose logs are
        masked as they are written, like local's, need not)."""

    async def stop(self, name: str) -> None:
        """Ask the job to stop. Idempotent; returns within a bounded time, the job may still be stopping.
        BackendError when the backend refused or failed the request (the caller retries)."""

    async def prices(self) -> dict[str, Price]:
        """The backend's machine prices by machine name; {} when it lists none (local)."""

    async def close(self) -> None:
        """Release threads and connections. Jobs keep running."""

    # Optional: a backend that keeps finished jobs' files sets `prunes = True` and deletes them in
    # prune() (the pool's prune loop calls it); the others keep these defaults.
    prunes: bool = False

    async def prune(self) -> int:
        """Delete what finished jobs left behind (older than the backend's keep time); how many."""
        return 0

    # Optional: a backend whose jobs announce their own end sets `reports_end = True` and returns
    # their names from ended() (the pool's job-ends loop brings their wait_jobs forward); its
    # wait_job polls are then only the safety net and back off (decisions.next_poll).
    reports_end: bool = False

    async def ended(self, timeout: float) -> list[str]:
        """Names of jobs that ended since the last call, waiting up to `timeout` seconds for one."""
        await asyncio.sleep(timeout)
        return []


class Offload:
    """Runs blocking calls on a bounded thread pool, each under a time limit.

    A call that times out keeps its thread until it returns by itself (Python threads cannot be
    killed); the pool bound keeps such leftovers from growing without limit.
    """

    def __init__(self, threads: int, timeout: float, prefix: str) -> None:
        self.timeout = timeout
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix=prefix)

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        loop = asyncio.get_running_loop()
        try:
            fut = loop.run_in_executor(self._pool, fn, *args)
        except RuntimeError:  # shut down: a reload replaced this backend
            raise BackendError("the backend is closed") from None
        return await asyncio.wait_for(fut, timeout or self.timeout)

    def close(self) -> None:
        # Calls already queued still finish: tasks in flight during a reload keep their answers.
        self._pool.shutdown(wait=False)
