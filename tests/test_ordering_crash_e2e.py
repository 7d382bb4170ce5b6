"""SIGKILL in the middle of `needs` (SPEC §4, §8): whatever the moment, after a restart no check
run stays `queued`, the gpu runs start after lint (or end skipped naming it), and no job, check
run or comment is made twice.

`litbotd run` runs as a subprocess; the GitHub stand-in parks one chosen request so the daemon is
killed at that moment, then lets GitHub apply it (GitHub did the work, the daemon never heard).
"""
from __future__ import annotations

import pytest

from fake_github import REPO, GitHubWorld
from helpers.configs import write_config
from helpers.daemon import DaemonProcess
from helpers.e2e import DAEMON_ENV, post_webhook, pr_payload, sha_of
from helpers.net import free_port
from helpers.wait import wait_until
from test_ordering_e2e import GPU_NAMES, by_name, jobs, lint, tree


def completed(r: dict) -> bool:
    return r.get("status") == "completed"


@pytest.mark.parametrize("moment", [
    "lint_result",   # lint's completion PATCH: the conclusion recorded, its `needs` successor not yet committed
    "needs_start",   # the `needs` phase released the gpu runs; a gpu run's in_progress PATCH parked
    "needs_skip",    # lint failed; the `needs` phase's first `skipped` completion parked
])
async def test_sigkill_around_needs(moment, redis_server, tmp_path):
    gate = tmp_path / "lint-may-finish"
    base, head = sha_of("base"), sha_of(f"crash-{moment}")
    changes = {"src/broken.py": "x\n"} if moment == "needs_skip" else {"src/new.py": "y\n"}
    world = GitHubWorld()
    await world.start({base: tree(lint(gate)), head: tree(lint(gate), **changes)})
    world.gh.add_pull(REPO, 1, head_sha=head, base_sha=base)
    cfg_path = write_config(tmp_path / "litbotd.toml", redis_server.url, world.url, server={"port": free_port()},
                            workers={"count": 2})
    daemon = DaemonProcess(cfg_path, tmp_path / "daemon.log", env=DAEMON_ENV)
    ids: dict[str, int] = {}
    try:
        daemon.start(wait=False)
        port = await daemon.ready()
        assert await post_webhook(port, "pull_request", pr_payload("opened", head)) == 202
        await wait_until(lambda: by_name(world, head).get("lint", {}).get("status") == "in_progress", 30, "lint running")
        ids = {n: r["id"] for n, r in by_name(world, head).items()}
        if moment == "lint_result":
            hold = world.gh.hold("PATCH", rf"/check-runs/{ids['lint']}$", when=lambda b: (b or {}).get("status") == "completed")
        elif moment == "needs_start":
            gpu = "|".join(str(ids[n]) for n in GPU_NAMES)
            hold = world.gh.hold("PATCH", rf"/check-runs/({gpu})$", when=lambda b: (b or {}).get("status") == "in_progress")
        else:
            gpu = "|".join(str(ids[n]) for n in GPU_NAMES)
            hold = world.gh.hold("PATCH", rf"/check-runs/({gpu})$", when=lambda b: (b or {}).get("conclusion") == "skipped")
        gate.touch()
        await wait_until(hold.reached.is_set, 30, f"the daemon to reach {moment}")
        daemon.kill()
        hold.release()
        daemon.start(wait=False)
        await daemon.ready()
        await wait_until(lambda: len(by_name(world, head)) == 3 and all(completed(r) for r in by_name(world, head).values())
                         and world.gh.comments and "Queued" not in world.gh.comments[0]["body"]
                         and "Waiting" not in world.gh.comments[0]["body"]
                         and "Running" not in world.gh.comments[0]["body"], 60, "every run to complete after the restart")
        assert daemon.term() == 0
    finally:
        daemon.close()
        await world.close()
    runs = by_name(world, head)
    assert not [r for r in world.runs(head) if r["status"] != "completed"], "a check run stayed queued"
    if moment == "needs_skip":
        assert {n: r["conclusion"] for n, r in runs.items()} == {"lint": "failure", **{n: "skipped" for n in GPU_NAMES}}
        assert all("needs lint" in runs[n]["output"]["summary"] for n in GPU_NAMES)
        assert jobs(tmp_path, "gpu") == []
    else:
        assert {n: r["conclusion"] for n, r in runs.items()} == {"lint": "success", **{n: "success" for n in GPU_NAMES}}
        gpu_jobs = jobs(tmp_path, "gpu")
        assert len(gpu_jobs) == 2, f"expected one job per gpu run, found {len(gpu_jobs)}"
        for j in gpu_jobs:
            assert (j["dir"] / "log.txt").read_text().count("running the script") == 1  # started once
            assert j["status"]["state"] == "succeeded"
            assert (j["dir"] / "run.json").stat().st_mtime >= runs["lint"]["concluded_at"]
    assert len(jobs(tmp_path, "lint")) == 1
    world.assert_no_duplicates()
