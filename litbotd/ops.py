"""Operator commands (SPEC §2): status, dead, replay, lint, check-config --online."""
from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

from .config import Config
from .events import tasks_for
from .queue import Queue, connect


async def _queue(cfg: Config) -> Queue:
    return Queue(connect(cfg.redis.url), cfg.redis.queue)


async def status(cfg: Config, as_json: bool) -> int:
    q = await _queue(cfg)
    try:
        depths = await q.depths()
        by_kind = await q.queued_by_kind()
        workers = await q.worker_infos()
        oldest = await q.oldest_age()
    finally:
        await q.redis.aclose()
    if as_json:
        print(json.dumps({
            **depths, "queued_by_phase": by_kind, "oldest_task_age_s": oldest,
            "workers": [{"id": w.id, "host": w.host, "pid": w.pid, "alive": w.alive, "task": w.task,
                         "busy_s": w.busy_s, "processing": w.processing} for w in workers],
        }, sort_keys=True))
        return 0
    phases = ", ".join(f"{k} {v}" for k, v in sorted(by_kind.items())) or "none"
    print(f"queue {cfg.redis.queue}: queued {depths['queued']} ({phases}), delayed {depths['delayed']}, "
          f"dead {depths['dead']}" + (f", oldest {oldest:.0f}s" if oldest is not None else ""))
    alive = [w for w in workers if w.alive]
    print(f"workers: {len(alive)} alive")
    for w in alive:
        doing = f"task {w.task} for {w.busy_s:.0f}s" if w.task and w.busy_s is not None else "idle"
        print(f"  {w.id}  {doing}")
    dead = [w for w in workers if not w.alive]
    if dead:
        print(f"dead workers awaiting recovery: {len(dead)}")
        for w in dead:
            print(f"  {w.id}  {w.processing} task(s) to requeue")
    return 0


async def dead(cfg: Config, action: str, task_id: str | None, every: bool) -> int:
    q = await _queue(cfg)
    try:
        if action == "list":
            entries = await q.dead_tasks()
            for raw, task in entries:
                if task is None:
                    print(f"(malformed) {raw[:200]}")
                else:
                    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(task.created))
                    ctx = " ".join(f"{k}={v}" for k, v in task.context().items() if k != "task")
                    print(f"{task.id}  {when}Z  attempts={task.attempt}  {ctx}\n    error: {task.error}")
            print(f"{len(entries)} dead task(s)")
            return 0
        if action == "retry":
            n = await q.dead_retry(None if every else task_id)
            print(f"requeued {n} task(s)")
            return 0 if n or every else 1
        n = await q.dead_purge()
        print(f"purged {n} task(s)")
        return 0
    finally:
        await q.redis.aclose()


async def replay(cfg: Config, path: str, event: str, delivery: str | None) -> int:
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        print(f"litbotd: cannot read {path}: {e}", file=sys.stderr)
        return 1
    delivery = delivery or f"replay-{uuid.uuid4()}"
    try:
        tasks, reason = tasks_for(event, payload, delivery, command_prefix=cfg.github.command_prefix)
    except ValueError as e:
        print(f"litbotd: {path}: {e}", file=sys.stderr)
        return 1
    if not tasks:
        print(f"nothing to queue: {reason}")
        return 0
    q = await _queue(cfg)
    try:
        fresh = await q.enqueue_delivery(delivery, tasks)
    finally:
        await q.redis.aclose()
    if not fresh:
        print(f"delivery {delivery} was already processed; nothing queued")
        return 0
    for t in tasks:
        print(f"queued {t.kind} task {t.id} (delivery {delivery})")
    return 0


def lint(directory: str, base: str, cfg: Config) -> int:
    from . import workflows

    root = Path(directory)
    if not root.is_dir():
        print(f"litbotd: {directory} is not a directory", file=sys.stderr)
        return 1
    paths = workflows.discover(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    files = {p: (root / p).read_bytes() for p in paths}
    defaults = workflows.Defaults(image=cfg.jobs.lightning.default_image, machine=cfg.jobs.lightning.default_machine,
                                  timeout=cfg.jobs.default_timeout, machines=_machines())
    plan = workflows.plan(files, base, defaults)
    if not paths:
        print("no workflow files (.litci.yaml, .litci.yml or .lightning/workflows/*.y[a]ml): nothing would run")
        return 0
    for err in plan.errors:
        print(f"error: {err}")
    for name in plan.skipped:
        print(f"skipped (trigger does not match base {base!r}): {name}")
    for run in plan.runs:
        print(f"{run.check_name}\n    file={run.file} machine={run.machine} image={run.image} "
              f"timeout={run.timeout:g}s interruptible={str(run.interruptible).lower()}"
              + "".join(f"\n    env {k}={v}" for k, v in run.env.items()))
    print(f"{len(plan.runs)} run(s) from {len(paths)} file(s), {len(plan.errors)} error(s)")
    return 1 if plan.errors else 0


def _machines() -> frozenset[str] | None:
    try:
        from .backends import machine_names
        return machine_names()
    except Exception:  # lint also works where the SDK cannot load
        return None


async def check_online(cfg: Config) -> int:
    ok = True
    q = await _queue(cfg)
    try:
        await q.redis.ping()
        print(f"redis: ok ({cfg.redis.queue}: {await q.depths()})")
    except Exception as e:
        ok = False
        print(f"redis: FAILED: {type(e).__name__}: {e}")
    finally:
        await q.redis.aclose()
    return 0 if ok else 1
