"""No task poisons the pool (SPEC §8, issue 17): tasks that are JSON but not valid tasks of their
kind — put straight into bot_queue, as a bad deploy, a hand-edited key or another version would
leave them — go to the dead letter at once with one ERROR line each, no retry, no traceback; no
worker dies, /healthz stays 200, and a pull request sent after them completes once. The real
`litbotd run` as a subprocess, a real redis-server, the GitHub stand-in."""
from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from fake_github import GitHubWorld
from helpers.configs import write_config
from helpers.daemon import DaemonProcess
from helpers.e2e import DAEMON_ENV, post_webhook, pr_payload, sha_of
from helpers.net import free_port
from helpers.wait import wait_until
from litbotd.tasks import Task

pytestmark = pytest.mark.slow
DEAD_WITHIN = 2.0  # seconds, issue 17


def poison() -> dict[str, str]:
    ok = json.loads(Task(kind="comment", payload={"repo": "octo-org/widgets", "pr": 1, "installation": 77}).to_json())
    return {
        "attempt-string": json.dumps({**ok, "id": "p-attempt", "attempt": "1"}),
        "run_at-string": json.dumps({**ok, "id": "p-run-at", "run_at": "soon"}),
        "created-list": json.dumps({**ok, "id": "p-created", "created": [1, 2]}),
        "unknown-kind": json.dumps({**ok, "id": "p-kind", "kind": "frobnicate"}),
        "100kB-id": json.dumps({**ok, "id": "X" * 100_000}),
        "no-repo": json.dumps({**ok, "id": "p-no-repo", "kind": "start_job", "payload": {"sha": "a" * 40}}),
    }


async def test_poison_tasks_go_to_the_dead_letter_at_once_and_the_pool_carries_on(redis_server, tmp_path):
    sha = sha_of("after-poison")
    world = GitHubWorld()
    await world.start({sha: {".litci.yaml": "name: ci\nrun: echo fine\n"}})
    world.pull(sha)
    port = free_port()
    cfg = write_config(tmp_path / "litbotd.toml", redis_server.url, world.url, server={"port": port},
                       workers={"count": 4, "max_attempts": 5})
    log_path = tmp_path / "daemon.log"
    daemon = DaemonProcess(cfg, log_path, env=DAEMON_ENV)
    health: list[int] = []
    stop = asyncio.Event()

    async def watch_health() -> None:
        async with aiohttp.ClientSession() as http:
            while not stop.is_set():
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    health.append(resp.status)
                await asyncio.sleep(0.05)

    r = redis_server.client()
    try:
        daemon.start(wait=False)
        await daemon.ready()
        watcher = asyncio.create_task(watch_health())
        await wait_until(lambda: len(health) > 2, 10, "/healthz answering")
        bad = poison()
        t0 = time.monotonic()
        r.lpush("bot_queue", *bad.values())
        await wait_until(lambda: r.llen("bot_queue:dead") == len(bad), DEAD_WITHIN, "every poison task dead")
        dead_after = time.monotonic() - t0
        print(f"\n{len(bad)} poison tasks in the dead letter {dead_after:.2f}s after they were queued")
        assert r.zcard("bot_queue:delayed") == 0, "a poison task was scheduled for a retry"
        # Four workers, each with a live lease, and nothing left in their processing lists.
        workers = r.hkeys("bot_queue:workers")
        assert len(workers) == 4 and all(r.exists(f"bot_queue:lease:{w}") for w in workers)
        assert not any(r.llen(f"bot_queue:processing:{w}") for w in workers)
        # A pull request after them: one check run, concluded once.
        assert await post_webhook(port, "pull_request", pr_payload("opened", sha)) == 202
        await wait_until(lambda: world.conclusions(sha) == {"ci": "success"}, 30, "the PR's run to conclude")
        stop.set()
        await watcher
        assert set(health) == {200}, f"/healthz answered {sorted(set(health))}"
        assert daemon.term() == 0
    finally:
        stop.set()
        daemon.close()
        await world.close()
    world.assert_no_duplicates()
    log = log_path.read_text()
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == len(bad), "\n".join(errors)  # one line per poison task, nothing else
    for says in ("field 'attempt'", "field 'run_at'", "field 'created'", "task kind 'frobnicate'", "field 'id'",
                 "payload field repo: missing"):
        assert sum(says in line for line in errors) == 1, (says, errors)
    assert "Traceback" not in log and "failed unexpectedly" not in log and "will retry" not in log
    assert max(len(line) for line in log.splitlines()) < 2000, "a 100 kB field reached a log line"
