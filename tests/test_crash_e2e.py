"""SIGKILL in every phase (SPEC §8): after a restart the same final state, and GitHub saw no
second job, check run or comment for any run.

`litbotd run` runs as a subprocess; the GitHub stand-in parks one chosen request so the daemon
is killed in the middle of a phase, then lets GitHub apply it — the worst case, where GitHub did
the work but the daemon never heard back.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fake_github import GitHubWorld
from helpers.configs import write_config
from helpers.daemon import DaemonProcess
from helpers.e2e import DAEMON_ENV, post_webhook, pr_payload, sha_of
from helpers.net import free_port
from helpers.wait import wait_until

EXPECTED = {"ci (pass)": "success", "ci (fail)": "failure"}


def workflow(release: Path) -> str:
    return f"""\
name: ci
parametrize:
  matrix: {{case: ["pass", "fail"]}}
run: |
  while [ ! -f {release} ]; do sleep 0.05; done
  test "$case" = pass
"""


@pytest.mark.parametrize("phase", ["new_event", "start_job", "wait_job", "results"])
async def test_sigkill_in_each_phase(phase, redis_server, tmp_path):
    release = tmp_path / "release"
    sha = sha_of(f"crash-{phase}")
    world = GitHubWorld()
    await world.start({sha: {".lightning/workflows/ci.yaml": workflow(release)}})
    world.pull(sha)
    cfg_path = write_config(tmp_path / "litbotd.toml", redis_server.url, world.url, server={"port": free_port()},
                            workers={"count": 2})
    daemon = DaemonProcess(cfg_path, tmp_path / "daemon.log", env=DAEMON_ENV)
    try:
        hold = None
        if phase == "new_event":
            hold = world.gh.hold("POST", r"/check-runs$")             # creating the first check run
        elif phase == "start_job":
            hold = world.gh.hold("PATCH", r"/check-runs/\d+$")        # in_progress, after the job started
        daemon.start(wait=False)
        port = await daemon.ready()
        assert await post_webhook(port, "pull_request", pr_payload("opened", sha)) == 202
        if hold is not None:
            await wait_until(hold.reached.is_set, 30, f"the daemon to reach {phase}")
        elif phase == "wait_job":
            await wait_until(lambda: [r["status"] for r in world.runs(sha)] == ["in_progress"] * 2, 30,
                             "both jobs running")
        else:  # results: park the first completion, then let the jobs finish
            await wait_until(lambda: [r["status"] for r in world.runs(sha)] == ["in_progress"] * 2, 30,
                             "both jobs running")
            hold = world.gh.hold("PATCH", r"/check-runs/\d+$")
            release.touch()
            await wait_until(hold.reached.is_set, 30, "the first result being reported")
        daemon.kill()
        if hold is not None:
            hold.release()   # GitHub applies the call the dead daemon never heard back from
        release.touch()
        daemon.start(wait=False)
        await daemon.ready()
        await wait_until(lambda: len(world.runs(sha)) == 2 and all(r["status"] == "completed" for r in world.runs(sha))
                         and world.gh.comments and all(n in world.gh.comments[0]["body"] for n in EXPECTED)
                         and "Queued" not in world.gh.comments[0]["body"] and "Running" not in world.gh.comments[0]["body"],
                         60, "every run to complete after the restart")
        assert daemon.term() == 0
    finally:
        daemon.close()
        await world.close()
    assert world.conclusions(sha) == EXPECTED
    world.assert_no_duplicates()
    jobs = sorted((tmp_path / "jobs").glob("litci-*"))
    assert len(jobs) == 2, f"expected one job per run, found {[j.name for j in jobs]}"
    for job in jobs:
        status = json.loads((job / "status.json").read_text())
        assert status["state"] in ("succeeded", "failed")
        assert (job / "log.txt").read_text().count("running the script") == 1  # started once
