"""SIGKILL in the middle of an infrastructure retry (SPEC §8, §11): after a restart every run ends
the same, with one check run, one job per try and no try started twice.

`litbotd run` runs as a subprocess with the real lightning-sdk aimed at the Lightning stand-in.
The daemon is killed while a request of the retry is parked — the retry's note on the check run
(GitHub), or the next try's create (Lightning) — and the parked request is then applied: the
worst case, where the other side did the work but the daemon never heard back."""
from __future__ import annotations

from collections import Counter

import pytest

from fake_github import GitHubWorld
from helpers.configs import write_config
from helpers.daemon import DaemonProcess
from helpers.e2e import DAEMON_ENV, post_webhook, pr_payload, sha_of
from helpers.net import free_port
from helpers.wait import wait_until

MATRIX = """\
name: gpu
machine: L4
interruptible: true
image: python:3.12-slim
parametrize:
  matrix: {shard: ["1", "2"]}
run: pytest -q --shard $shard
"""


@pytest.mark.parametrize("where", ["retry_note", "retry_create"])
async def test_sigkill_during_an_infrastructure_retry(where, redis_server, lightning, tmp_path):
    sha = sha_of(f"crash-retry-{where}")
    world = GitHubWorld()
    await world.start({sha: {".lightning/workflows/gpu.yaml": MATRIX}})
    world.pull(sha)
    cfg_path = write_config(tmp_path / "litbotd.toml", redis_server.url, world.url, server={"port": free_port()},
                            workers={"count": 2}, jobs={"backend": "lightning", "lightning": {"teamspace": "acme/ci"}})
    daemon = DaemonProcess(cfg_path, tmp_path / "daemon.log", env={**DAEMON_ENV, **lightning.sdk_env(str(tmp_path))})
    try:
        daemon.start(wait=False)
        port = await daemon.ready(60)
        assert await post_webhook(port, "pull_request", pr_payload("opened", sha)) == 202
        await wait_until(lambda: len(lightning.creates) == 2, 60, "both first tries")
        await wait_until(lambda: [r["status"] for r in world.runs(sha)] == ["in_progress"] * 2, 30, "both running")
        if where == "retry_note":
            hold = world.gh.hold("PATCH", r"/check-runs/\d+$",
                                 when=lambda b: "attempt 1 of 3" in ((b or {}).get("output") or {}).get("summary", ""))
            reached = hold.reached.is_set
        else:
            fault = lightning.hang("POST", r"/jobs$")
            reached = fault.reached.is_set
        for c in list(lightning.creates):
            lightning.set_state(c["name"], "running")
            lightning.preempt(c["name"])
        await wait_until(reached, 60, f"the daemon to reach {where}")
        daemon.kill()
        if where == "retry_note":
            hold.release()
        else:
            lightning.release()  # Lightning creates the job the dead daemon asked for
        daemon.start(wait=False)
        await daemon.ready(60)
        await wait_until(lambda: len(lightning.creates) >= 4, 60, "both second tries")
        for c in lightning.creates[2:]:
            lightning.set_state(c["name"], "running")
            lightning.finish(c["name"], 0)
        await wait_until(lambda: len(world.runs(sha)) == 2 and all(r["status"] == "completed" for r in world.runs(sha)),
                         60, "both runs to complete")
        assert daemon.term() == 0
    finally:
        daemon.close()
        await world.close()
    names = Counter(c["name"] for c in lightning.creates)
    assert len(names) == 4, f"a try was created twice: {names}"  # the server renames a taken name
    assert all(j.name in names for j in lightning.jobs.values()), "a renamed duplicate job exists"
    assert [r["conclusion"] for r in world.runs(sha)] == ["success", "success"]
    assert all("attempt 1 of 3: preempted" in r["output"]["summary"] for r in world.runs(sha))
    world.assert_no_duplicates()
