"""SIGKILL while a merge queue's commit is planned, and while its annotations are being sent: after
a restart every run completes once, and the check run holds each annotation exactly once.

`litbotd run` runs as a subprocess; the GitHub stand-in parks the chosen request, the daemon is
killed, then GitHub applies the parked request (it did the work, the daemon never heard back).
"""
from __future__ import annotations

from typing import Any

import pytest

from fake_github import GitHubWorld
from helpers.configs import write_config
from helpers.daemon import DaemonProcess
from helpers.e2e import DAEMON_ENV, post_webhook, sha_of
from helpers.net import free_port
from helpers.wait import wait_until
from test_commits_e2e import merge_group_payload

NOTICES = 120  # three requests: 50 + 50 + 20
WORKFLOW = f"""\
name: ci
parametrize:
  matrix: {{case: ["pass", "fail"]}}
run: |
  for i in $(seq 1 {NOTICES}); do echo "::notice file=README.md,line=$i::$case $i"; done
  test "$case" = pass
"""
EXPECTED = {"ci (pass)": "success", "ci (fail)": "failure"}


def _has_annotations(body: Any) -> bool:
    return bool(isinstance(body, dict) and (body.get("output") or {}).get("annotations"))


@pytest.mark.parametrize("phase", ["new_commit", "annotations"])
async def test_sigkill_during_a_merge_group(phase, redis_server, tmp_path):
    sha = sha_of(f"queue-crash-{phase}")
    world = GitHubWorld()
    await world.start({sha: {".lightning/workflows/ci.yaml": WORKFLOW, "README.md": "x\n" * NOTICES}})
    cfg_path = write_config(tmp_path / "litbotd.toml", redis_server.url, world.url, server={"port": free_port()},
                            workers={"count": 2})
    daemon = DaemonProcess(cfg_path, tmp_path / "daemon.log", env=DAEMON_ENV)
    try:
        if phase == "new_commit":
            hold = world.gh.hold("POST", r"/check-runs$")  # creating the first check run
        else:
            hold = world.gh.hold("PATCH", r"/check-runs/\d+$", when=_has_annotations)  # the first batch
        daemon.start(wait=False)
        port = await daemon.ready()
        assert await post_webhook(port, "merge_group", merge_group_payload("checks_requested", sha)) == 202
        await wait_until(hold.reached.is_set, 60, f"the daemon to reach {phase}")
        daemon.kill()
        hold.release()
        daemon.start(wait=False)
        await daemon.ready()
        await wait_until(lambda: len(world.runs(sha)) == 2
                         and all(len(r["annotations"]) >= NOTICES for r in world.runs(sha)), 60,
                         "every run to complete with its annotations after the restart")
        assert daemon.term() == 0
    finally:
        daemon.close()
        await world.close()
    assert world.conclusions(sha) == EXPECTED
    for run in world.runs(sha):
        case = run["name"][len("ci ("):-1]
        assert [a["message"] for a in run["annotations"]] == [f"{case} {i}" for i in range(1, NOTICES + 1)]
    world.assert_no_duplicates()
    jobs = sorted((tmp_path / "jobs").glob("litci-*"))
    assert len(jobs) == 2 and all((j / "log.txt").read_text().count("running the script") == 1 for j in jobs)
