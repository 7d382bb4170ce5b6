"""Operator commands (SPEC §2): status, dead, replay, lint, check-config --online.

Each returns the exit status: 0 success, 1 failure (Redis unreachable, no such task, bad file).
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sys
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Concatenate, Coroutine, ParamSpec

from . import logs, opsview, spend
from .config import Config
from .queue import Queue, queue_config
from .redisconn import REDIS_UNAVAILABLE, connect_config
from .runstate import flaky_stats

GITHUB_CHECK_TIMEOUT = 30.0
P = ParamSpec("P")


@contextlib.asynccontextmanager
async def _queue(cfg: Config) -> AsyncIterator[Queue]:
    redis = connect_config(cfg.redis)
    try:
        yield queue_config(redis, cfg.redis)
    finally:
        await redis.aclose()


def _redis_errors(fn: Callable[Concatenate[Config, P], Coroutine[Any, Any, int]]
                  ) -> Callable[Concatenate[Config, P], Coroutine[Any, Any, int]]:
    """An unreachable Redis is a one-line failure (exit 1), not a traceback."""
    @functools.wraps(fn)
    async def wrapper(cfg: Config, /, *args: P.args, **kwargs: P.kwargs) -> int:
        try:
            return await fn(cfg, *args, **kwargs)
        except REDIS_UNAVAILABLE as e:
            print(f"litbotd: redis at {logs.safe_url(cfg.redis.url)} is unreachable: "
                  f"{logs.redact(f'{type(e).__name__}: {e}')}", file=sys.stderr)
            return 1
    return wrapper


@_redis_errors
async def status(cfg: Config, as_json: bool) -> int:
    async with _queue(cfg) as q:
        st = await q.status()
        flaky = await flaky_stats(q)
        spent = await spend.view(q)
    if as_json:
        print(json.dumps(opsview.status_json(st, flaky, spent), sort_keys=True))
    else:
        print("\n".join(opsview.status_text(st, flaky, spent)))
    return 0


@_redis_errors
async def dead(cfg: Config, action: str, task_id: str | None, every: bool) -> int:
    async with _queue(cfg) as q:
        if action == "list":
            rows = [opsview.dead_row(raw, task) for raw, task in await q.dead_tasks()]
            print("\n".join(opsview.dead_text(rows)))
            return 0
        if action == "retry":
            n = await q.dead_retry(None if every else task_id)
            if not n and not every:
                print(f"litbotd: no dead task with id {task_id}", file=sys.stderr)
                return 1
            print(f"requeued {n} task(s)")
            return 0
        n = await q.dead_purge()
        print(f"purged {n} task(s)")
        return 0


@_redis_errors
async def replay(cfg: Config, path: str, event: str, delivery: str | None) -> int:
    from .events import tasks_for  # only replay needs the event rules

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
    async with _queue(cfg) as q:
        fresh = await q.enqueue_delivery(delivery, tasks)
    if not fresh:
        print(f"delivery {delivery} was already processed; nothing queued")
        return 0
    for t in tasks:
        print(f"queued {t.kind} task {t.id} (delivery {delivery})")
    return 0


def lint(directory: str, base: str, cfg: Config, changed: list[str] | None = None) -> int:
    from . import workflows

    root = Path(directory)
    if not root.is_dir():
        print(f"litbotd: {directory} is not a directory", file=sys.stderr)
        return 1
    # Only where workflow files may be: a checkout can be huge (node_modules, data).
    candidates = [*(root / f for f in workflows.ROOT_FILES), *sorted((root / workflows.WORKFLOW_DIR).glob("*"))]
    paths = workflows.discover(str(p.relative_to(root)) for p in candidates if p.is_file())
    files = {p: (root / p).read_bytes() for p in paths}
    defaults = workflows.Defaults.from_config(cfg.jobs, _machines())
    plan = workflows.plan(files, base, defaults)
    if not paths:
        print(f"no workflow files ({workflows.LOCATIONS}): nothing would run")
        return 0
    for err in plan.errors:
        print(f"error: {err}")
    on = {(file, name): what for file, name, what in plan.triggers}
    for name in plan.skipped:
        what = next((w for (_, n), w in on.items() if n == name), "")
        print(f"skipped for pull requests to {base!r}: {name}" + (f" (on: {what})" if what else ""))
    for run in plan.runs:
        print(f"{run.check_name}\n    file={run.file} machine={run.machine} image={run.image} "
              f"timeout={run.timeout:g}s interruptible={str(run.interruptible).lower()}"
              f"\n    on: {on.get((run.file, run.workflow), '?')}"
              + (f"\n    reports: {', '.join(run.reports)}" if run.reports else "")
              + (f"\n    {run.path_filter.describe()}" if run.path_filter.active else "")
              + (f"\n    needs: {', '.join(run.needs)}" if run.needs else "")
              + "".join(f"\n    env {k}={v}" for k, v in run.env.items()))
    print(f"{len(plan.runs)} run(s) from {len(paths)} file(s), {len(plan.errors)} error(s)")
    if changed is not None:
        _would_run(plan.runs, changed)
    return 1 if plan.errors else 0


def _would_run(runs: list[Any], changed: list[str]) -> None:
    """`lint --changed FILE…`: what paths / paths-ignore / needs would do with that change."""
    from . import needs, paths

    change = paths.Change(tuple(sorted({f.removeprefix("./") for f in changed})))
    skips = {r.key: why for r in runs if (why := paths.decide(r.path_filter, change)) is not None}
    nodes = {r.key: needs.Node(r.workflow, r.needs, r.check_name) for r in runs}
    plan = needs.plan_new(nodes, {}, [r.key for r in runs], skips)
    print(f"with the {len(change.files or ())} changed file(s) given:")
    for r in runs:
        d = plan[r.key]
        print(f"  {r.check_name}: " + {"start": "runs", "wait": f"runs after its needs ({d.reason})",
                                       "skip": f"skipped: {d.reason}"}[d.action])
    n = sum(d.action != "skip" for d in plan.values())
    print(f"{n} of {len(runs)} run(s) would start (if the runs they need succeed)")


def _machines() -> frozenset[str] | None:
    try:
        from .backends import machine_names
        return machine_names()
    except Exception:  # lint also works where the SDK cannot load
        return None


async def check_online(cfg: Config) -> int:
    """Redis answers, and GitHub accepts the App's JWT (`GET /app`)."""
    ok = True
    async with _queue(cfg) as q:
        try:
            await q.redis.ping()
            print(f"redis: ok ({logs.safe_url(cfg.redis.url)}, {cfg.redis.queue}: {await q.depths()})")
        except REDIS_UNAVAILABLE as e:
            ok = False
            print(f"redis: FAILED: {logs.safe_url(cfg.redis.url)}: {logs.redact(f'{type(e).__name__}: {e}')}")
        ok = await _check_github(cfg, q) and ok
    return 0 if ok else 1


async def _check_github(cfg: Config, q: Queue) -> bool:
    from .github import GitHubApp

    gh_cfg = cfg.github
    if not gh_cfg.app_id or not gh_cfg.private_key:
        print("github: FAILED: github.app_id and the private key (github.private_key_file, GH_PRIVATE_KEY "
              "or the github-app.pem credential) must both be set")
        return False
    # Short waits between retries: an operator is watching, and the reason matters more.
    gh = GitHubApp.on_redis(gh_cfg, q.redis, q.name, sleep=lambda s: asyncio.sleep(min(s, 1.0)))
    try:
        app = await asyncio.wait_for(gh.get("/app", None), GITHUB_CHECK_TIMEOUT)
    except asyncio.TimeoutError:
        print(f"github: FAILED: {gh_cfg.api_url} did not answer within {GITHUB_CHECK_TIMEOUT:g}s")
        return False
    except Exception as e:  # a bad key fails in the JWT signer, a wrong app id at GitHub (401)
        hint = " (is github.app_id right, and is the key this App's?)" if getattr(e, "status", None) == 401 else ""
        print(f"github: FAILED: {logs.redact(f'{type(e).__name__}: {e}')}{hint}")
        return False
    finally:
        await gh.close()
    if not isinstance(app, dict):
        print(f"github: FAILED: GET /app answered {type(app).__name__}, not an App")
        return False
    print(f"github: ok (app {app.get('name')!r}, slug {app.get('slug')}, id {app.get('id')}, {gh_cfg.api_url})")
    return True
