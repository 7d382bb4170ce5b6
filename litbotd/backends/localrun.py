"""`python -m litbotd.backends.localrun DIR`: the detached runner of one local job.

Started by `LocalBackend.start` in a new session; it forks once more and the first process exits,
so the runner belongs to no daemon process: a daemon restart, even SIGKILL, neither kills it nor
loses what it writes. Everything about the job lives in DIR (see local.py for the layout).

The runner: reads the job's secrets from its stdin (the daemon writes them there, JSON, and closes
it), records its identity in status.json, takes the GITHUB_TOKEN from the 0600 token file
(deleting it at once), waits for one of `max_parallel` slots (an flock on one of N lock files,
held until it exits), runs the bootstrap with stdout+stderr to log.txt, and writes the final
status from the bootstrap's result file. The job's output passes a streaming masker
(masking.py) on its way to log.txt: the secrets and the token are `***` in the log on disk, and so
in everything read from it (check output, annotations, comment, run page). SIGTERM (sent by `stop` to the runner's process group,
which the bootstrap shares) ends a pending job at once and a running one via the bootstrap,
which kills the script's process group.
"""
from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..masking import ByteStreamMasker, Masker
from ..procinfo import boot_id, process_start
from .bootstrap import result_from_json

SLOT_POLL = 0.2  # seconds between tries for a free slot
DRAIN_AFTER_EXIT = 2.0  # seconds the output pipe is still read after the bootstrap exited
ENDED_FIFO = ".ended"  # in the workdir: a FIFO the daemon reads; a runner writes its job's name there last


def announce_end(jobdir: Path) -> None:
    """The runner's last act: its job's name, one line, into the workdir's FIFO, so a daemon that
    is listening reports the job at once. Best effort, never blocking: with no daemon reading
    (ENXIO), a full pipe or no FIFO, nothing happens and the daemon's poll finds the end instead.
    One line is under PIPE_BUF, so lines of runners ending together never interleave."""
    try:
        fd = os.open(jobdir.parent / ENDED_FIFO, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.write(fd, jobdir.name.encode() + b"\n")
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Readers see the old or the new file, never a half-written one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CappedLog:
    """log.txt kept under about `limit` bytes (SPEC §3 max_log_bytes): its head and its tail.

    The first half of the limit is kept as written; then a marker line; then the newest output.
    When the tail part reaches the other half, it is cut back to its last quarter (from a line
    start), so the file never exceeds limit + the marker, and rewriting costs O(1) per byte.
    """

    def __init__(self, path: Path, limit: int) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self.limit = limit
        self.head = limit // 2
        self.size = os.fstat(self.fd).st_size
        self.cut: int | None = None  # where the tail part starts, once the head is full
        self.dropped = 0

    def write(self, data: bytes) -> None:
        if self.cut is None:
            room = max(self.head - self.size, 0)
            self._append(data[:room])
            data = data[room:]
            if not data:
                return
            self._append(f"\n[litci: the log passed max_log_bytes={self.limit}: its middle is dropped, "
                         "its tail follows]\n".encode())
            self.cut = self.size
        self._append(data)
        if self.size - self.cut > self.limit - self.head:
            keep = self.limit // 4
            tail = os.pread(self.fd, keep, self.size - keep)
            nl = tail.find(b"\n")
            if 0 <= nl < len(tail) - 1:
                tail = tail[nl + 1:]  # start at a line
            self.dropped += self.size - self.cut - len(tail)
            os.ftruncate(self.fd, self.cut)
            self.size = self.cut
            self._append(tail)

    def _append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
            self.size += n

    def close(self) -> None:
        os.close(self.fd)


class Runner:
    def __init__(self, jobdir: Path, secrets: dict[str, str] | None = None) -> None:
        self.dir = jobdir
        self.secrets = dict(secrets or {})  # NAME -> value: in this process's memory only
        self.run: dict[str, Any] = {}
        self.status: dict[str, Any] = {}
        self.stop_requested = False
        self.child: subprocess.Popen[bytes] | None = None

    def on_signal(self, signum: int, frame: Any) -> None:
        self.stop_requested = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)  # in case only the runner was signalled

    def stopping(self) -> bool:
        return self.stop_requested or (self.dir / "stop").exists()

    def write(self, **fields: Any) -> None:
        self.status.update(fields)
        write_json_atomic(self.dir / "status.json", self.status)

    def log(self, line: str) -> None:
        with open(self.dir / "log.txt", "a") as f:
            f.write(line + "\n")

    def take_slot(self) -> int | None:
        """Blocks until a slot is free (returns its fd, kept open) or a stop is requested (None)."""
        slots = Path(self.run["slots_dir"])
        waiting_said = False
        while not self.stopping():
            for i in range(int(self.run["max_parallel"])):
                fd = os.open(slots / f"slot-{i}.lock", os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return fd
                except BlockingIOError:
                    os.close(fd)
            if not waiting_said:
                self.log(f"litci: waiting for a free slot (max_parallel={self.run['max_parallel']})")
                waiting_said = True
            time.sleep(SLOT_POLL)
        return None

    def main(self) -> None:
        self.run = json.loads((self.dir / "run.json").read_text())
        self.status = json.loads((self.dir / "status.json").read_text())
        self.write(state="pending", pid=os.getpid(), pgid=os.getpgid(0), boot_id=boot_id(),
                   proc_start=process_start(os.getpid()))
        token_file = self.dir / "token"
        token = ""
        if token_file.exists():
            token = token_file.read_text()
            token_file.unlink()
        masker = Masker([token, *self.secrets.values()])
        if self.take_slot() is None or self.stopping():  # the slot stays held until this process exits
            self.write(state="stopped", message="stopped before it started", finished=time.time())
            return
        env = {**self.run["env"], **self.secrets}
        if token:
            env["GITHUB_TOKEN"] = token
        self.write(state="running", started=time.time())
        log = CappedLog(self.dir / "log.txt", int(self.run.get("max_log_bytes") or 10 * 1024 * 1024))
        try:
            self.child = subprocess.Popen(self.run["argv"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, env=env, cwd=self.dir)
            self.copy_output(self.child, log, ByteStreamMasker(masker))
        finally:
            log.close()
        rc = self.child.wait()
        self.write(finished=time.time(), **self.outcome(rc))

    @staticmethod
    def copy_output(child: subprocess.Popen[bytes], log: CappedLog, masker: ByteStreamMasker) -> None:
        """The child's output, masked, into the capped log, until EOF — or DRAIN_AFTER_EXIT after it
        exited: an unsandboxed job's `setsid` leftovers may hold the pipe open forever."""
        out = child.stdout
        if out is None:
            raise ValueError("copy_output needs a child started with stdout=PIPE")
        fd = out.fileno()
        deadline = None
        while True:
            if deadline is None and child.poll() is not None:
                deadline = time.monotonic() + DRAIN_AFTER_EXIT
            wait = 0.5 if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                break
            if select.select([fd], [], [], wait)[0]:
                data = os.read(fd, 1 << 16)
                if not data:
                    break
                log.write(masker.feed(data))
        log.write(masker.flush())
        out.close()

    def outcome(self, rc: int) -> dict[str, Any]:
        try:
            result = result_from_json(json.loads((self.dir / "result.json").read_text()))
        except (OSError, ValueError):
            result = None
        if result is None:
            if self.stopping():
                return {"state": "stopped", "exit_code": None, "message": "stopped"}
            return {"state": "failed", "exit_code": None,
                    "message": f"the job's bootstrap ended with status {rc} without a result (killed?)"}
        if result.kind == "exit":
            ok = result.exit_code == 0
            return {"state": "succeeded" if ok else "failed", "exit_code": result.exit_code,
                    "message": f"exit code {result.exit_code}"}
        if result.kind == "timeout":
            return {"state": "failed", "exit_code": None, "timed_out": True,
                    "message": f"timed out after {result.detail}s"}
        if result.kind == "error":
            return {"state": "failed", "exit_code": None, "message": f"failed to start: {result.detail}"}
        return {"state": "stopped", "exit_code": None, "message": "stopped"}


def _read_secrets(stream: Any) -> dict[str, str]:
    """The job's secrets, as the daemon wrote them to stdin ({} when stdin is empty or not ours)."""
    try:
        data = json.loads(stream.read(1 << 20) or b"{}")
    except (OSError, ValueError):
        return {}
    secrets = data.get("secrets") if isinstance(data, dict) else None
    if not isinstance(secrets, dict):
        return {}
    return {k: v for k, v in secrets.items() if isinstance(k, str) and isinstance(v, str)}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m litbotd.backends.localrun JOBDIR", file=sys.stderr)
        return 2
    secrets = _read_secrets(sys.stdin.buffer)  # before the fork: the starter waits for this process
    # Detach: the starter waits only for this first process; the runner is the forked child.
    if os.fork() > 0:
        return 0
    runner = Runner(Path(argv[0]), secrets)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, runner.on_signal)
    try:
        runner.main()
    except Exception as e:  # an unexpected failure must still end in a final status
        runner.write(state="failed", exit_code=None, finished=time.time(),
                     message=f"the local runner failed: {type(e).__name__}: {e}")
        return 1
    finally:
        announce_end(runner.dir)  # after the final status.json: a reader of it sees the end
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
