"""A `litbotd run` with a TEST registry, for the crash-recovery tests (tests/test_daemon_recovery.py).

    python tests/helpers/queue_daemon.py -c CONFIG.toml

Task kinds:
- "count": appends {"ev": "start", ...} to the Redis list `test:events`, sleeps payload["sleep"]
  seconds (if any; payload["first_sleep"] instead on the task's very first start, so a test can keep
  a task in flight in one daemon and let its re-run elsewhere be quick), appends {"ev": "done", ...} and the task id to `test:done`, and returns the
  successors listed in payload["then"] ([{"kind", "payload", "key"}, ...]).
- "fail": raises RuntimeError(payload.get("msg", "boom")).
Every event carries the worker id and the pid, so a test can tell which process ran what.
"""
from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from litbotd import config as config_mod  # noqa: E402
from litbotd import (
    configfile,  # noqa: E402
    logs,
)
from litbotd.context import Context  # noqa: E402
from litbotd.daemon import Daemon  # noqa: E402
from litbotd.tasks import Task  # noqa: E402
from litbotd.worker import Registry  # noqa: E402

DAEMON: Daemon | None = None


def _worker_of(task: Task) -> str:
    for w in DAEMON.live_workers() if DAEMON else ():
        if w.task is task:
            return w.id
    return "?"


async def _event(s: Context, ev: str, task: Task, wid: str) -> None:
    await s.redis.rpush("test:events", json.dumps(
        {"ev": ev, "id": task.id, "wid": wid, "pid": os.getpid(), "t": time.time(), "attempt": task.attempt}))


async def count(task: Task, s: Context):
    wid = _worker_of(task)
    await _event(s, "start", task, wid)
    sleep = task.payload.get("sleep", 0)
    if "first_sleep" in task.payload and await s.redis.sadd("test:started", task.id):
        sleep = task.payload["first_sleep"]
    if sleep:
        await asyncio.sleep(float(sleep))
    async with s.redis.pipeline(transaction=True) as p:
        p.rpush("test:events", json.dumps({"ev": "done", "id": task.id, "wid": wid, "pid": os.getpid(),
                                           "t": time.time(), "attempt": task.attempt}))
        p.rpush("test:done", task.id)
        await p.execute()
    return [task.successor(t["kind"], t.get("payload", {}), key=t.get("key", str(i)))
            for i, t in enumerate(task.payload.get("then", []))]


async def fail(task: Task, s: Context):
    raise RuntimeError(task.payload.get("msg", "boom"))


REGISTRY = Registry(handlers={"count": count, "fail": fail})


def _dump_tasks() -> None:
    for t in asyncio.all_tasks():
        print(f"--- {t!r}", file=sys.stderr)
        t.print_stack(file=sys.stderr)
    sys.stderr.flush()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("-c", "--config", required=True)
    args = p.parse_args()
    cfg = configfile.load(args.config)
    logs.setup(cfg.log.level, "text", config_mod.secrets_of(cfg))
    faulthandler.enable()

    async def run() -> int:
        global DAEMON
        # For a test that sees a hang: SIGUSR2 prints every asyncio task's stack to stderr.
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, _dump_tasks)
        DAEMON = Daemon(cfg, REGISTRY, args.config)
        return await DAEMON.run()

    import uvloop
    return uvloop.run(run())


if __name__ == "__main__":
    sys.exit(main())
