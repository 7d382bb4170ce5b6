"""The one way the tests run a daemon as a child process: `DaemonProcess`.

    with DaemonProcess(config, log).start() as d:        # `litbotd run -c config`, ready when it says so
        ...d.port, d.pid, d.output(), d.send_signal(signal.SIGHUP)...
        assert d.term() == 0                              # SIGTERM: drained and exited

`program` picks what runs: LITBOTD (the real CLI, the default), OPS_HELPER (litbotd's daemon with
the operations tests' registry: helpers/ops_daemon.py) or QUEUE_HELPER (the crash tests' registry:
helpers/queue_daemon.py); each takes `-c CONFIG`. The child gets the scrubbed environment
(helpers/env.py) plus `env`, and writes stdout and stderr to `log` (appended: a restart keeps the
earlier runs; `output()` is this run's). Leaving the `with` block kills what still runs.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any, Mapping, Sequence

from helpers.env import scrubbed_env
from helpers.wait import wait_until, wait_until_sync

ROOT = Path(__file__).resolve().parents[2]
HELPERS = Path(__file__).resolve().parent
LITBOTD = (sys.executable, "-m", "litbotd", "run")
OPS_HELPER = (sys.executable, str(HELPERS / "ops_daemon.py"))
QUEUE_HELPER = (sys.executable, str(HELPERS / "queue_daemon.py"))
_READY_TEXT = re.compile(r"\blitbotd\.daemon ready\b.*\bpid=(\d+)(?:.*\blisten=\S*:(\d+))?")


class DaemonProcess:
    def __init__(self, config: Path, log: Path, *, program: Sequence[str] = LITBOTD,
                 env: Mapping[str, str] | None = None, name: str = "litbotd", cwd: Path = ROOT) -> None:
        self.config, self.log, self.program, self.name, self.cwd = config, log, tuple(program), name, cwd
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.runs = 0
        self._out: IO[bytes] | None = None
        self._offset = 0

    # -- running --------------------------------------------------------------------------------
    def start(self, wait: bool = True, timeout: float = 20.0) -> DaemonProcess:
        """Start it (again); with `wait`, return once it logged its ready line."""
        self.runs += 1
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        self._out = open(self.log, "ab")
        self.proc = subprocess.Popen([*self.program, "-c", str(self.config)], stdin=subprocess.DEVNULL,
                                     stdout=self._out, stderr=subprocess.STDOUT, cwd=self.cwd,
                                     env=scrubbed_env(PYTHONUNBUFFERED="1", **self.env))
        if wait:
            wait_until_sync(self._ready, timeout, f"{self.name} to log its ready line")
        return self

    async def ready(self, timeout: float = 20.0) -> int | None:
        """Async tests: wait for the ready line; the listening port (None without a listener)."""
        await wait_until(self._ready, timeout, f"{self.name} to log its ready line")
        return self.port

    def _ready(self) -> bool:
        assert self.proc is not None, "not started"
        for line in self.output().splitlines():
            pid, port = _ready_fields(line)
            if pid == self.proc.pid:
                self.port = port
                return True
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited {self.proc.returncode} before it was ready:\n"
                                 f"{self.output()[-3000:]}")
        return False

    def output(self) -> str:
        """What this run wrote (stdout and stderr)."""
        return self.log.read_bytes()[self._offset:].decode(errors="replace") if self.log.exists() else ""

    @property
    def url(self) -> str:
        """The listener's base URL (after ready)."""
        assert self.port is not None, "no listener (or not ready yet)"
        return f"http://127.0.0.1:{self.port}"

    # -- the process ----------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None, "not started"
        self.proc.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        assert self.proc is not None, "not started"
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.poll() is None:
            self.send_signal(signal.SIGKILL)
        self.wait(10)
        self._close_log()

    def term(self, timeout: float = 30.0) -> int:
        """SIGTERM and its exit status. Past `timeout` it dumps its stacks (SIGUSR2: asyncio tasks, for
        the helpers; SIGABRT: faulthandler's threads) and fails with its output."""
        if self.poll() is None:
            self.send_signal(signal.SIGTERM)
        try:
            rc = self.wait(timeout)
        except subprocess.TimeoutExpired:
            for sig in (signal.SIGUSR2, signal.SIGABRT):
                self.send_signal(sig)
                try:
                    self.wait(0.5)
                except subprocess.TimeoutExpired:
                    pass
            self.kill()
            raise AssertionError(f"{self.name} did not exit {timeout:g}s after SIGTERM:\n"
                                 f"{self.output()[-12000:]}") from None
        self._close_log()
        return rc

    def close(self) -> None:
        """Kill it if it still runs (a failed test leaks no daemon)."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        self._close_log()

    def _close_log(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _ready_fields(line: str) -> tuple[int | None, int | None]:
    """(pid, listening port) of a daemon's ready line, text or JSON; (None, None) for other lines."""
    if line.startswith("{"):
        try:
            rec = json.loads(line)
        except ValueError:
            return None, None
        if (rec.get("logger"), rec.get("msg")) != ("litbotd.daemon", "ready"):
            return None, None
        listen = str(rec.get("listen") or "")
        return int(rec["pid"]), int(listen.rsplit(":", 1)[1]) if ":" in listen else None
    m = _READY_TEXT.search(line)
    if m is None:
        return None, None
    return int(m.group(1)), int(m.group(2)) if m.group(2) else None
