"""A real litbotd daemon with a small test registry, for the operations tests (SPEC §7).

    python tests/helpers/ops_daemon.py -c CONFIG.toml

It runs `litbotd.daemon.run` — uvloop, signals, sd_notify, reload, drain — exactly as `litbotd run`
does, with these task kinds instead of the CI phases:

    sleep  {"s": seconds}   await asyncio.sleep; records its id in <queue>:test:done (a set) and
                            counts runs in <queue>:test:runs (duplicates show as runs > done)
    chain  {"s": seconds, "n": k}  as sleep, then returns its successor with n-1, until n is 1
    block  {"s": seconds}   time.sleep: blocks the event loop; sends X_BLOCK=start / X_BLOCK=end
                            to $NOTIFY_SOCKET around it, so a test sees where the block falls
                            among the WATCHDOG=1 datagrams
    fail   {"message": m}   raises RuntimeError(m) (retried, then dead-lettered)
    log    {"message": m}   writes an info line and an error line holding m
    leak   {"what": w}      raises an error holding a secret the daemon knows but the task does
                            not carry: w = "webhook_secret", "private_key" (its body lines), or
                            "token" ($TEST_INSTALLATION_TOKEN)
    github {"path": p}      GET p from the GitHub API as the App (the test's FakeGitHub answers 401,
                            echoing a token in its message)

The test side (its config, start, status, the CLI, a systemd stand-in) lives here too, so each
test reads as its scenario; the process is a helpers/daemon.DaemonProcess.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


# -- the daemon side --------------------------------------------------------------------------------
def _registry() -> Any:
    from litbotd import logs, systemd
    from litbotd.context import Context
    from litbotd.tasks import Task
    from litbotd.worker import Registry

    log = logs.get("litbotd.test")

    async def sleep(task: Task, services: Context) -> None:
        await asyncio.sleep(float(task.payload.get("s", 0)))
        q = services.queue
        async with services.redis.pipeline(transaction=True) as p:
            p.sadd(q.key("test", "done"), task.id).incr(q.key("test", "runs"))
            await p.execute()
        if runs_file := os.environ.get("TEST_RUNS_FILE"):  # outside Redis: survives a lost write
            with open(runs_file, "a") as f:
                f.write(task.id + "\n")

    async def chain(task: Task, services: Context) -> list[Task]:
        """Like sleep, then its successor, until payload["n"] links are done (successors in flight)."""
        await sleep(task, services)
        n = int(task.payload["n"])
        return [task.successor("chain", {**task.payload, "n": n - 1}, key="next")] if n > 1 else []

    async def block(task: Task, services: Context) -> None:
        systemd.notify("X_BLOCK=start")
        time.sleep(float(task.payload["s"]))  # on purpose: the event loop stops here
        systemd.notify("X_BLOCK=end")

    async def fail(task: Task, services: Context) -> None:
        raise RuntimeError(task.payload["message"])

    async def log_lines(task: Task, services: Context) -> None:
        log.info("handler says", detail=task.payload["message"])
        log.error(f"handler failed: {task.payload['message']}")

    async def leak(task: Task, services: Context) -> None:
        gh = services.config.github
        secret = {"webhook_secret": gh.webhook_secret, "private_key": gh.private_key,
                  "token": os.environ.get("TEST_INSTALLATION_TOKEN", "")}[task.payload["what"]]
        log.info("about to fail", detail=secret)
        raise RuntimeError(f"signature check against {secret!r} failed")

    async def github(task: Task, services: Context) -> None:
        assert services.github_app is not None, "no [github] app_id and key configured"
        await services.github.get(task.payload["path"], None)

    return Registry(handlers={"sleep": sleep, "chain": chain, "block": block, "fail": fail, "log": log_lines, "leak": leak,
                              "github": github})


def main(argv: Sequence[str]) -> int:
    sys.path.insert(0, str(ROOT))
    from litbotd import config, configfile, daemon

    path = argv[argv.index("-c") + 1]
    try:
        cfg = configfile.load(path)
        return daemon.run(cfg, _registry(), path)
    except config.ConfigError as e:
        print(f"litbotd: config error: {e}", file=sys.stderr)
        return 1


# -- the test side ----------------------------------------------------------------------------------
def write_config(path: Path, redis_url: str, *, workers: int = 2, server_port: int | None = None,
                 log_format: str = "text") -> Path:
    """The operations tests' config (helpers/configs.py's, with these): no listener unless
    `server_port`, a webhook secret in the file, fast heartbeats, two attempts a task."""
    from helpers.configs import write_config as write

    return write(path, redis_url, server={"enabled": server_port is not None, "port": server_port or 0},
                 github={"webhook_secret": "test-webhook-secret"},
                 workers={"count": workers, "heartbeat_interval": "0.25s", "lease_timeout": "2s", "max_attempts": 2,
                          "retry_backoff": "0.05s", "shutdown_grace": "10s"},
                 log={"format": log_format})


def start(config: Path, log_path: Path, **env: str) -> Any:
    """This daemon as a child process, started (not waited for: see DaemonProcess.start)."""
    from helpers.daemon import OPS_HELPER, DaemonProcess

    return DaemonProcess(config, log_path, program=OPS_HELPER, env=env, name="ops daemon").start(wait=False)


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -m litbotd ARGS` as an operator would run it."""
    from helpers.env import scrubbed_env

    return subprocess.run([sys.executable, "-m", "litbotd", *args], capture_output=True, text=True,
                          env=env or scrubbed_env(), cwd=ROOT, timeout=timeout)


def status(config: Path) -> dict[str, Any]:
    r = cli("status", "--json", "-c", str(config))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def alive_workers(config: Path, pid: int) -> int:
    return sum(1 for w in status(config)["workers"] if w["alive"] and w.get("pid") == pid)


class FakeSystemd:
    """Receives sd_notify datagrams on a thread (so a blocked daemon cannot delay the receiver)
    and keeps each with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._recv, daemon=True)
        self._thread.start()

    def _recv(self) -> None:
        while not self._done.is_set():
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            with self._lock:
                self.messages.append((time.monotonic(), data.decode()))

    def lines(self) -> list[tuple[float, str]]:
        """Every field of every datagram, in order (one datagram may hold several)."""
        with self._lock:
            return [(t, f) for t, m in self.messages for f in m.split("\n")]

    def wait_field(self, pred: Callable[[str], bool], after: int = 0, timeout: float = 20.0) -> int:
        """Index (in lines()) of the first field at or after `after` that satisfies pred."""
        def probe() -> int | None:
            for i, (_, f) in enumerate(self.lines()[after:], after):
                if pred(f):
                    return i + 1  # truthy even for index 0
            return None
        from helpers.wait import wait_until_sync

        return wait_until_sync(probe, timeout, "a notify field", every=0.02) - 1

    def close(self) -> None:
        self._done.set()
        self._thread.join(2)
        self.sock.close()

if __name__ == "__main__":
    sys.exit(main(sys.argv))
