"""A finished local job is reported at once (SPEC §3 `poll_interval`, issue 17): the job's runner
announces its end as its last act, and the daemon brings the run's waiting wait_job forward; the
poll is only the safety net. Here the poll is a minute away, so only the announcement can
conclude a run in time: real redis-server, the GitHub stand-in, real detached runners."""
from __future__ import annotations

import os
import time
from pathlib import Path

from helpers.configs import config_data
from helpers.e2e import InProcessDaemon, pr_payload, sha_of
from helpers.wait import wait_until
from litbotd.backends.local import LocalBackend
from litbotd.backends.localrun import ENDED_FIFO, announce_end
from litbotd.lifecycle import comments
from tarball_server import TarballServer, github_tarball
from test_backend_local import spec

POLL = 60.0  # the wait_job poll, far beyond every deadline below


def slow_and_quick(release: Path) -> dict[str, str]:
    return {".lightning/workflows/quick.yaml": "name: quick\nrun: 'true'\n",
            ".lightning/workflows/slow.yaml": f"name: slow\nrun: |\n  while [ ! -f {release} ]; do sleep 0.05; done\n"}


async def test_a_finished_job_is_reported_before_its_poll_also_across_a_daemon_restart(redis_server, world, tmp_path,
                                                                                       monkeypatch):
    # The comment's edits are spaced a minute apart here: only the last one may skip the spacing.
    monkeypatch.setattr(comments, "COMMENT_EDIT_INTERVAL", POLL)
    sha = sha_of("ends")
    release = tmp_path / "release"
    await world.start({sha: slow_and_quick(release)})
    world.pull(sha)
    data = config_data(redis_server.url, world.url, tmp_path / "jobs", jobs={"poll_interval": POLL,
                                                                             "poll_interval_max": POLL})
    async with InProcessDaemon(data) as d:
        assert await d.send("pull_request", pr_payload("opened", sha)) == 202
        # A job that ends at once: its end may come before its wait_job is even queued.
        await wait_until(lambda: world.conclusions(sha).get("quick") == "success", POLL / 2, "quick to conclude")
        await wait_until(lambda: world.conclusions(sha).get("slow", "") is None and
                         any(r["status"] == "in_progress" for r in world.runs(sha)), POLL / 2, "slow to run")
    # The daemon restarted while the slow job runs (detached, it goes on): the new one hears its end.
    async with InProcessDaemon(data) as d:
        release.touch()
        began = time.monotonic()
        await wait_until(lambda: world.conclusions(sha).get("slow") == "success", POLL / 2, "slow to conclude")
        assert time.monotonic() - began < POLL / 2
        # Every run concluded: the comment's last edit goes out now, not after the edit spacing.
        await wait_until(lambda: world.gh.comments and "**2 runs**: ✅ 2 passed" in world.gh.comments[0]["body"],
                         POLL / 2, "the comment's last edit")
    world.assert_no_duplicates()


async def test_the_runner_announces_its_end_after_its_final_status(tmp_path: Path) -> None:
    server = await TarballServer(github_tarball({"hello.txt": "hi\n"})).start()
    b = LocalBackend(str(tmp_path / "jobs"), 2, grace=1.0, sandbox=False)
    try:
        assert await b.ended(0.01) == []  # opens the FIFO: from now on ends are heard
        assert (tmp_path / "jobs" / ENDED_FIFO).is_fifo()
        await b.start(spec(server, "litci-announced", "echo hi\n"))
        got: list[str] = []
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            got = await b.ended(1.0)
        assert got == ["litci-announced"]
        assert (await b.status("litci-announced")).state == "succeeded"  # the end is final when heard
    finally:
        await b.close()
        await server.close()


def test_announcing_with_no_daemon_listening_neither_blocks_nor_fails(tmp_path: Path) -> None:
    jobdir = tmp_path / "litci-x"
    jobdir.mkdir()
    announce_end(jobdir)  # no FIFO at all
    os.mkfifo(tmp_path / ENDED_FIFO)
    announce_end(jobdir)  # a FIFO nobody reads: ENXIO, at once (O_NONBLOCK: it cannot hang)
    (tmp_path / ENDED_FIFO).unlink()
    (tmp_path / ENDED_FIFO).write_text("")
    announce_end(jobdir)  # a regular file where the FIFO should be: left alone
    assert (tmp_path / ENDED_FIFO).read_text() == ""
