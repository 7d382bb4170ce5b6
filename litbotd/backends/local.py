"""Jobs on this machine (`[jobs.local]`): one directory per job, one detached runner per job.

Layout of `{workdir}/{name}/` (mode 0700):
  run.json     what the runner runs: bootstrap argv, environment (no token), slot settings
  token        the GITHUB_TOKEN, mode 0600; the runner reads and deletes it at once
  status.json  state, pid, pgid, exit_code, message, timed_out, created/started/finished
               (written atomically: temp file + rename, by the daemon once, then by the runner)
  log.txt      the job's combined stdout and stderr
  result.json  the bootstrap's result (exit code, timeout, fetch error, stopped)
  stop         exists once `stop` was called
`{workdir}/.ended` is a FIFO: each runner writes its job's name there as its last act, and the
daemon, reading it (`ended`), reports the job at once; its polls are the safety net (a daemon
that was down, a full pipe).
`os.mkdir` of the directory is the start-or-find lock: whoever creates it starts the job; anyone
else finds it. Slots for `max_parallel` are flock'ed files in `{workdir}/.slots/`.

  home/        the job's HOME
The job secrets released to the run never touch the disk: the daemon writes them (JSON) to the
runner's stdin when it spawns it; the runner puts them in the job's environment only and masks
them in log.txt.
The job's environment is built from scratch (PATH, LANG, HOME, CI=true, the workflow env), never
inherited from the daemon, whose environment holds its secrets. `image`, `machine` and
`interruptible` do not apply: the job runs on this machine, as the daemon's user.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import litbotd

from ..procinfo import boot_id, process_start
from ..redaction import scrub
from . import sandbox
from .base import (
    FINAL_STATES,
    NAME_RE,
    Backend,
    BackendError,
    JobNotFound,
    JobSpec,
    JobStatus,
    Offload,
    Price,
    check_name,
)
from .bootstrap import job_argv, job_env
from .localrun import ENDED_FIFO, write_json_atomic

# A job whose runner has not recorded its pid this long after the directory was made never
# started (the daemon died between mkdir and spawn).
NEVER_STARTED_AFTER = 60.0
TAIL_BLOCK = 64 * 1024
TAIL_MAX_BYTES = 8 * 1024 * 1024


class LocalBackend(Backend):
    name = "local"
    reports_end = True  # its runners announce their end (`ended`); False when the FIFO cannot be used
    prunes = True  # finished job directories older than `keep`

    def __init__(self, workdir: str, max_parallel: int, *, python: str = sys.executable,
                 grace: float = 10.0, threads: int = 4, call_timeout: float = 30.0,
                 sandbox: bool = True, network: str = "isolated", writable_paths: Sequence[str] = (),
                 hidden: Sequence[str] = (), max_log_bytes: int = 10 * 1024 * 1024,
                 keep: float = 24 * 3600.0) -> None:
        self.workdir = Path(workdir)
        self.max_parallel = max_parallel
        self.python = python
        self.grace = grace  # SIGTERM -> SIGKILL delay when a script times out
        self.sandbox = sandbox
        self.network = network
        self.writable_paths = tuple(writable_paths)
        self.hidden = tuple(hidden)  # the daemon's config file, key, credentials: masked in the sandbox
        self.max_log_bytes = max_log_bytes
        self.keep = keep
        self._offload = Offload(threads, call_timeout, "litci-local")
        self._ends_fds: tuple[int, int] | None = None  # the FIFO, read end and our own write end
        self._ends: list[str] = []
        self._ends_partial = b""
        self._ends_ready: asyncio.Event | None = None

    # --- interface ---------------------------------------------------------------------------
    async def start(self, spec: JobSpec) -> JobStatus:
        check_name(spec.name)
        try:
            return await self._offload.run(self._start, spec)
        except (BackendError, JobNotFound):
            raise
        except OSError as e:
            raise BackendError(scrub(f"cannot start local job {spec.name}: {e}", spec.secrets())) from None

    async def status(self, name: str) -> JobStatus:
        check_name(name)
        return await self._offload.run(self._status, name)

    async def log_tail(self, name: str, lines: int) -> str:
        check_name(name)
        return await self._offload.run(self._log_tail, name, lines)

    async def stop(self, name: str) -> None:
        check_name(name)
        await self._offload.run(self._stop, name)

    def log_file(self, name: str) -> str:
        """The job's own log file (for its run page, which reads it while the job runs)."""
        return str(self.workdir / check_name(name) / "log.txt")

    async def copy_log(self, name: str, dest: str, mask: Callable[[str], str] | None = None) -> bool:
        """`mask` is not needed: the runner masked the log as it wrote it."""
        check_name(name)
        return await self._offload.run(self._copy_log, name, dest, timeout=600.0)

    async def prune(self) -> int:
        """Delete the directories of jobs that finished more than `keep` ago; returns how many."""
        return await self._offload.run(self._prune, time.time() - self.keep, timeout=600.0)

    async def prices(self) -> dict[str, Price]:
        """Local jobs list no prices: `limits.prices` may price them (SPEC §11)."""
        return {}

    async def ended(self, timeout: float) -> list[str]:
        """Names of jobs whose runner announced its end since the last call; waits up to
        `timeout` seconds for the first. [] when nothing ended (or the FIFO cannot be used)."""
        if self._ends_ready is None:
            self._ends_ready = asyncio.Event()
            try:
                self._ends_fds = await asyncio.to_thread(self._open_ends)
            except OSError as e:
                self.reports_end = False
                raise BackendError(f"jobs.local.workdir: cannot use {self.workdir / ENDED_FIFO} to learn of "
                                   f"ended jobs, polling instead: {e.strerror or e}") from None
            asyncio.get_running_loop().add_reader(self._ends_fds[0], self._read_ends)
        if not self._ends and self._ends_fds is not None:
            try:
                await asyncio.wait_for(self._ends_ready.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        elif self._ends_fds is None:
            await asyncio.sleep(timeout)
        out, self._ends = self._ends, []
        self._ends_ready.clear()
        return out

    def _open_ends(self) -> tuple[int, int]:
        """mkfifo (0600) once; read it non-blocking, and hold a write end ourselves so the read end
        never sees EOF between runners."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / ENDED_FIFO
        try:
            os.mkfifo(path, 0o600)
        except FileExistsError:
            pass
        if not stat.S_ISFIFO(os.lstat(path).st_mode):
            raise OSError(f"{path} exists and is not a FIFO")
        rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        wfd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        return rfd, wfd

    def _read_ends(self) -> None:
        assert self._ends_fds is not None and self._ends_ready is not None
        data = self._ends_partial
        while True:
            try:
                chunk = os.read(self._ends_fds[0], 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        *lines, partial = data.split(b"\n")
        self._ends_partial = partial[-256:]  # a name is at most 60 characters: the rest is noise
        names = [n for n in (line.decode("ascii", "replace") for line in lines) if NAME_RE.match(n)]
        if names:
            self._ends += names
            self._ends_ready.set()

    async def close(self) -> None:
        if self._ends_fds is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._ends_fds[0])
            except RuntimeError:  # no running loop (closed from a thread at exit)
                pass
            for fd in self._ends_fds:
                os.close(fd)
            self._ends_fds = None
        self._offload.close()

    # --- blocking parts (run on the thread pool) ---------------------------------------------
    def _start(self, spec: JobSpec) -> JobStatus:
        slots = self.workdir / ".slots"
        slots.mkdir(parents=True, exist_ok=True)
        jobdir = self.workdir / spec.name
        try:
            jobdir.mkdir(mode=0o700)
        except FileExistsError:
            return self._status(spec.name)  # someone started it already: find, don't start
        home = jobdir / "home"  # not the job dir itself: a script must not trip over status.json
        home.mkdir()
        # The token and the secrets go through their own 0600 files, never run.json.
        public = {k: v for k, v in job_env(spec).items() if k != "GITHUB_TOKEN" and k not in spec.secret_env}
        env = {"PATH": os.environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
               "HOME": str(home), "CI": "true", **public}
        write_json_atomic(jobdir / "run.json", {
            "argv": job_argv(spec, python=self.python, workdir=str(jobdir), result_file=str(jobdir / "result.json"),
                             grace=self.grace, sandbox=self._sandbox_argv(home)),
            "env": env, "slots_dir": str(slots), "max_parallel": self.max_parallel,
            "max_log_bytes": self.max_log_bytes,
        })
        if spec.token:
            _write_private(jobdir / "token", spec.token)
        write_json_atomic(jobdir / "status.json", {"state": "pending", "pid": None, "created": time.time()})
        pkg_root = str(Path(litbotd.__file__).resolve().parent.parent)
        runner_env = {"PATH": env["PATH"], "LANG": "C.UTF-8", "PYTHONPATH": pkg_root}
        try:
            first = subprocess.Popen([self.python, "-m", "litbotd.backends.localrun", str(jobdir)],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, cwd=jobdir, env=runner_env,
                                     start_new_session=True)
            # The secrets through a pipe: no file, no argv, no environment of a process but the job's.
            # The runner reads them, forks the real runner and exits at once.
            first.communicate(json.dumps({"secrets": spec.secret_env}).encode(), timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            message = scrub(f"failed to start: cannot run the local runner: {e}", spec.secrets())
            write_json_atomic(jobdir / "status.json", {"state": "failed", "pid": None, "exit_code": None,
                                                       "message": message, "finished": time.time()})
            return JobStatus("failed", None, None, message)
        return JobStatus("pending", None, None)

    def _sandbox_argv(self, home: Path) -> list[str] | None:
        """The sandbox wrapper's command, which the bootstrap puts before the script. sandbox.py
        is run as a file (stdlib only): importing the litbotd package would cost ~0.3 s a job."""
        if not self.sandbox:
            return None
        return [self.python, "-I", sandbox.__file__,
                sandbox.encode_spec(self.network, [str(home), *self.writable_paths], self.hidden)]

    def _read_status(self, jobdir: Path) -> dict[str, Any] | None:
        try:
            data = json.loads((jobdir / "status.json").read_text())
        except FileNotFoundError:
            return None
        return data if isinstance(data, dict) else None

    def _alive(self, st: dict[str, Any]) -> bool:
        pid = st.get("pid")
        if not isinstance(pid, int):
            return False
        if st.get("boot_id") and st["boot_id"] != boot_id():
            return False  # the machine rebooted since
        if st.get("proc_start"):
            return process_start(pid) == st["proc_start"]  # "" when gone; differs when reused
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _status(self, name: str) -> JobStatus:
        jobdir = self.workdir / name
        if not jobdir.is_dir():
            raise JobNotFound(name)
        st = self._read_status(jobdir)
        if st is None:  # between mkdir and the first status write, or the daemon died there
            age = time.time() - jobdir.stat().st_mtime
            if age < NEVER_STARTED_AFTER:
                return JobStatus("pending", None, None)
            st = {"state": "pending", "pid": None, "created": jobdir.stat().st_mtime}
        if st.get("state") in ("succeeded", "failed", "stopped"):
            return self._to_status(st)
        stop_requested = (jobdir / "stop").exists()
        if not self._alive(st):
            st2 = self._read_status(jobdir) or st  # it may have just written its final status
            if st2.get("state") in ("succeeded", "failed", "stopped"):
                return self._to_status(st2)
            if st2.get("pid") is None and time.time() - float(st2.get("created") or 0) < NEVER_STARTED_AFTER:
                return JobStatus("stopping" if stop_requested else "pending", None, None)
            (jobdir / "token").unlink(missing_ok=True)
            if stop_requested:
                return JobStatus("stopped", None, None, "stopped")
            if st2.get("pid") is None:
                return JobStatus("failed", None, None, "failed to start: the local runner never started")
            return JobStatus("failed", None, None,
                             "the local runner died without a final status (machine reboot or killed)")
        if stop_requested:
            return JobStatus("stopping", None, None, "stop requested")
        return self._to_status(st)

    @staticmethod
    def _to_status(st: dict[str, Any]) -> JobStatus:
        code = st.get("exit_code")
        return JobStatus(state=st["state"], exit_code=code if isinstance(code, int) else None, url=None,
                         message=str(st.get("message") or ""), timed_out=bool(st.get("timed_out")))

    def _prune(self, before: float) -> int:
        removed = 0
        try:
            entries = list(os.scandir(self.workdir))
        except FileNotFoundError:
            return 0
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False) or not NAME_RE.match(entry.name):
                continue  # .slots and anything that is not a job
            jobdir = Path(entry.path)
            st = self._read_status(jobdir)
            if st is None:  # never started: judged by the directory's age
                done, when = True, jobdir.stat().st_mtime
            elif st.get("state") in FINAL_STATES:
                done, when = True, float(st.get("finished") or st.get("created") or 0)
            else:  # a runner that died without a final status is over too; a live one never is
                done, when = not self._alive(st), float(st.get("started") or st.get("created") or 0)
            if done and when < before:
                _rmtree(jobdir)
                removed += 1
        return removed

    def _stop(self, name: str) -> None:
        jobdir = self.workdir / name
        if not jobdir.is_dir():
            return
        (jobdir / "stop").touch()  # seen by a runner that has not started the script yet
        st = self._read_status(jobdir)
        if st is None or st.get("state") in ("succeeded", "failed", "stopped") or not self._alive(st):
            return
        pgid = st.get("pgid")
        if isinstance(pgid, int) and pgid > 1:
            try:
                os.killpg(pgid, signal.SIGTERM)  # the runner and the bootstrap; it kills the script's group
            except ProcessLookupError:
                pass

    def _copy_log(self, name: str, dest: str) -> bool:
        src = self.workdir / name / "log.txt"
        if not src.exists():
            return False
        out = Path(dest)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.{os.getpid()}"
        shutil.copyfile(src, tmp)
        os.replace(tmp, out)
        return True

    def _log_tail(self, name: str, lines: int) -> str:
        jobdir = self.workdir / name
        if not jobdir.is_dir():
            raise JobNotFound(name)
        if lines <= 0:
            return ""
        try:
            f = open(jobdir / "log.txt", "rb")
        except FileNotFoundError:
            return ""
        with f:
            end = f.seek(0, os.SEEK_END)
            pos, data = end, b""
            # read backwards block by block: a huge log is never read whole
            while pos > 0 and data.count(b"\n") <= lines and end - pos < TAIL_MAX_BYTES:
                step = min(TAIL_BLOCK, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
        text = data.decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def _write_private(path: Path, text: str) -> None:
    """A file only this user may read, created here and nowhere else (O_EXCL)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _rmtree(path: Path) -> None:
    """Delete a job directory, also where the job left directories without write permission."""
    def fix(func: Any, p: str, exc: Any) -> None:
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
                shutil.rmtree(p, ignore_errors=True)
            else:
                func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=fix)
