"""`paths`, `paths-ignore`, `needs` and flaky runs end to end (SPEC §4, §5): real redis-server, the
GitHub stand-in (every request validated against GitHub's OpenAPI description, the pulls files and
compare endpoints paged like GitHub's), the local backend, the daemon in this process.

The repository is laid out like Lightning-AI/pytorch-lightning: src/, tests/, docs/, *.md, with a
cheap `lint` workflow and an expensive `gpu` matrix that needs it.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from fake_github import REPO, GitHubWorld
from helpers.configs import config_data
from helpers.e2e import InProcessDaemon, comment_payload, pr_payload, rerequested_payload, sha_of
from helpers.wait import wait_until
from litbotd import decisions, workflows
from test_commits_e2e import merge_group_payload, push_payload

BASE = {"src/lightning/trainer.py": "x = 1\n", "tests/test_trainer.py": "def test(): pass\n",
        "docs/source/index.rst": "Docs\n", "README.md": "# Lightning\n"}
GPU_NAMES = ("gpu (12.1)", "gpu (12.4)")


def lint(gate: Path | None = None, flaky_marker: Path | None = None) -> str:
    """Fails when the checkout holds src/broken.py; with `gate`, waits for that file first; with
    `flaky_marker`, fails the first time it runs and passes the next."""
    wait = f"while [ ! -f {gate} ]; do sleep 0.05; done\n  " if gate else ""
    flaky = (f"if [ ! -f {flaky_marker} ]; then touch {flaky_marker}; echo flaked; exit 1; fi\n  "
             if flaky_marker else "")
    return f"""\
name: lint
paths-ignore: ["docs/**", "*.md"]
env: {{WF: lint}}
run: |
  {wait}{flaky}test ! -f src/broken.py
"""


GPU = """\
name: gpu
paths: ["src/**", "tests/**"]
needs: [lint]
env: {WF: gpu}
parametrize:
  matrix: {cuda: ["12.1", "12.4"]}
run: |
  echo "gpu on cuda $cuda"
"""


def tree(lint_text: str, **changes: str) -> dict[str, str]:
    return {**BASE, ".lightning/workflows/lint.yaml": lint_text, ".lightning/workflows/gpu.yaml": GPU, **changes}


def cfg(redis_url: str, api_url: str, tmp: Path) -> dict[str, Any]:
    data = config_data(redis_url, api_url, tmp / "jobs")
    data["jobs"]["local"]["sandbox"] = False
    return data


def jobs(tmp: Path, wf: str | None = None) -> list[dict[str, Any]]:
    """The local jobs started, with their run.json and status.json (optionally of one workflow)."""
    out = []
    for d in sorted((tmp / "jobs").glob("litci-*")):
        if not (d / "run.json").exists():
            continue
        run = json.loads((d / "run.json").read_text())
        status = json.loads((d / "status.json").read_text()) if (d / "status.json").exists() else {}
        if wf is None or run.get("env", {}).get("WF") == wf:
            out.append({"run": run, "status": status, "dir": d})
    return out


def by_name(world: GitHubWorld, sha: str) -> dict[str, dict[str, Any]]:
    """The latest check run of each name (a re-run creates a new one)."""
    out: dict[str, dict[str, Any]] = {}
    for r in sorted(world.runs(sha), key=lambda r: r["id"]):
        out[r["name"]] = r
    return out


def all_completed(world: GitHubWorld, sha: str, n: int = 3) -> bool:
    runs = by_name(world, sha)
    return len(runs) >= n and all(r["status"] == "completed" for r in runs.values())


async def test_a_docs_only_pr_starts_nothing_and_completes_every_check_skipped(redis_server, world, tmp_path):
    base, head = sha_of("base"), sha_of("docs-only")
    await world.start({base: tree(lint()), head: tree(lint(), **{"docs/source/index.rst": "Better docs\n",
                                                                 "README.md": "# Lightning!\n"})})
    world.gh.add_pull(REPO, 1, head_sha=head, base_sha=base)
    async with InProcessDaemon(cfg(redis_server.url, world.url, tmp_path)) as d:
        t0 = time.monotonic()
        assert await d.send("pull_request", pr_payload("opened", head)) == 202
        await wait_until(lambda: all_completed(world, head), 30, "every check run completed")
        elapsed = time.monotonic() - t0
        await wait_until(lambda: world.gh.comments and "skipped" in world.gh.comments[0]["body"], 30, "the comment")
        await wait_until(d.idle, 20, "the daemon to go idle")
    print(f"\ndocs-only PR: every check run completed `skipped` {elapsed:.2f}s after the webhook")
    runs = by_name(world, head)
    assert {n: r["conclusion"] for n, r in runs.items()} == {"lint": "skipped", **{n: "skipped" for n in GPU_NAMES}}
    assert "paths-ignore (docs/**, *.md) matches every one of the 2 changed files" in runs["lint"]["output"]["summary"]
    for n in GPU_NAMES:
        assert "matches paths (src/**, tests/**)" in runs[n]["output"]["summary"]
        assert len(runs[n]["history"]) == 1  # created completed: one write, never `queued`
    assert jobs(tmp_path) == []
    assert world.gh.count("GET", r"/pulls/1/files$") >= 1
    world.assert_no_duplicates()


async def test_lint_fails_so_no_gpu_job_starts_and_their_checks_name_lint(redis_server, world, tmp_path):
    base, head = sha_of("base"), sha_of("broken")
    await world.start({base: tree(lint()), head: tree(lint(), **{"src/broken.py": "oops\n"})})
    world.gh.add_pull(REPO, 1, head_sha=head, base_sha=base)
    async with InProcessDaemon(cfg(redis_server.url, world.url, tmp_path)) as d:
        assert await d.send("pull_request", pr_payload("opened", head)) == 202
        await wait_until(lambda: all_completed(world, head), 60, "every check run completed")
        await wait_until(lambda: world.gh.comments and "Queued" not in world.gh.comments[0]["body"]
                         and "Waiting" not in world.gh.comments[0]["body"], 30, "the final comment")
        await wait_until(d.idle, 20, "the daemon to go idle")
    runs = by_name(world, head)
    assert runs["lint"]["conclusion"] == "failure"
    for n in GPU_NAMES:
        assert runs[n]["conclusion"] == "skipped"
        assert "needs lint, which did not succeed: lint (failure)" in runs[n]["output"]["summary"]
        # queued "waiting for lint" first, then completed skipped: no in_progress in between
        assert [h.get("status") for h in runs[n]["history"]] == ["queued", "completed"]
        assert runs[n]["history"][0]["output"]["title"] == "Waiting for lint"
    assert len(jobs(tmp_path, "lint")) == 1 and jobs(tmp_path, "gpu") == []
    world.assert_no_duplicates()


async def test_lint_passes_and_the_gpu_jobs_start_only_after_its_conclusion(redis_server, world, tmp_path):
    gate = tmp_path / "lint-may-finish"
    base, head = sha_of("base"), sha_of("feature")
    await world.start({base: tree(lint(gate)), head: tree(lint(gate), **{"src/lightning/new.py": "y = 2\n"})})
    world.gh.add_pull(REPO, 1, head_sha=head, base_sha=base)
    async with InProcessDaemon(cfg(redis_server.url, world.url, tmp_path)) as d:
        assert await d.send("pull_request", pr_payload("opened", head)) == 202
        await wait_until(lambda: by_name(world, head).get("lint", {}).get("status") == "in_progress", 30,
                         "lint running")
        await wait_until(lambda: world.gh.comments and "Waiting for lint" in world.gh.comments[0]["body"], 30,
                         "the comment to show the waiting runs")
        runs = by_name(world, head)
        assert [runs[n]["status"] for n in GPU_NAMES] == ["queued", "queued"]
        assert all(runs[n]["output"]["title"] == "Waiting for lint" for n in GPU_NAMES)
        assert jobs(tmp_path, "gpu") == []  # lint is running: no GPU job yet
        gate.touch()
        await wait_until(lambda: all_completed(world, head), 60, "every check run completed")
        await wait_until(d.idle, 20, "the daemon to go idle")
    runs = by_name(world, head)
    assert {n: r["conclusion"] for n, r in runs.items()} == {"lint": "success", **{n: "success" for n in GPU_NAMES}}
    for n in GPU_NAMES:  # once started, the check no longer says it waits
        started = next(h for h in runs[n]["history"] if h.get("status") == "in_progress")
        assert started["output"]["title"].startswith("Running on"), started
    lint_done = runs["lint"]["concluded_at"]
    gpu_jobs = jobs(tmp_path, "gpu")
    assert len(gpu_jobs) == 2
    for j in gpu_jobs:
        created = (j["dir"] / "run.json").stat().st_mtime
        assert created >= lint_done, f"a gpu job was created {lint_done - created:.3f}s before lint concluded"
    world.assert_no_duplicates()


@pytest.mark.parametrize("how", ["check_run", "command"])
async def test_a_flaky_lint_rerun_rearms_the_gpu_runs_and_is_named_in_the_comment(how, redis_server, world, tmp_path):
    from litbotd.runstate import FlakyStat, flaky_stats

    marker = tmp_path / "lint-flaked-once"
    base, head = sha_of("base"), sha_of("flaky")
    await world.start({base: tree(lint(flaky_marker=marker)),
                       head: tree(lint(flaky_marker=marker), **{"tests/test_new.py": "def test(): pass\n"})})
    world.gh.add_pull(REPO, 1, head_sha=head, base_sha=base)
    async with InProcessDaemon(cfg(redis_server.url, world.url, tmp_path)) as d:
        assert await d.send("pull_request", pr_payload("opened", head)) == 202
        await wait_until(lambda: all_completed(world, head), 60, "the first attempt to complete")
        first = by_name(world, head)
        assert first["lint"]["conclusion"] == "failure" and all(first[n]["conclusion"] == "skipped" for n in GPU_NAMES)
        # Re-run lint only (the checks tab's "Re-run", or `/litci run lint`): the gpu runs it
        # skipped come back with it.
        if how == "check_run":
            assert await d.send("check_run", rerequested_payload(first["lint"])) == 202
        else:
            world.gh.set_permission(REPO, "alice", "write")
            assert await d.send("issue_comment", comment_payload("/litci run lint", "alice")) == 202
        await wait_until(lambda: len(world.runs(head)) == 6 and all_completed(world, head), 60,
                         "the re-run and the re-armed gpu runs to complete")
        await wait_until(lambda: world.gh.comments and "**Flaky**" in world.gh.comments[0]["body"]
                         and "Queued" not in world.gh.comments[0]["body"], 30, "the comment to name the flaky run")
        await wait_until(d.idle, 20, "the daemon to go idle")
        counts = await flaky_stats(d.daemon.ctx.queue)
    runs = by_name(world, head)
    assert {n: r["conclusion"] for n, r in runs.items()} == {"lint": "success", **{n: "success" for n in GPU_NAMES}}
    body = world.gh.comments[0]["body"]
    assert "**Flaky** (failed, then passed on a re-run of this commit): `lint`" in body
    assert "gpu" not in body.split("**Flaky**")[1].split("\n")[0]  # the gpu runs never failed: not flaky
    assert counts == {REPO: FlakyStat(flaky=1, runs=4)}  # lint twice, each gpu run once (skipped ones ran no job)
    assert len(jobs(tmp_path, "lint")) == 2 and len(jobs(tmp_path, "gpu")) == 2
    world.assert_no_duplicates()


async def test_a_docs_only_merge_group_completes_its_checks_skipped(redis_server, world, tmp_path):
    base, head = sha_of("main"), sha_of("queue-docs")
    await world.start({base: tree(lint()), head: tree(lint(), **{"docs/source/new.rst": "New\n"})})
    payload = merge_group_payload("checks_requested", head)
    payload["merge_group"]["base_sha"] = base
    async with InProcessDaemon(cfg(redis_server.url, world.url, tmp_path)) as d:
        assert await d.send("merge_group", payload) == 202
        await wait_until(lambda: all_completed(world, head), 30, "every check run completed")
        await wait_until(d.idle, 20, "the daemon to go idle")
    runs = by_name(world, head)
    assert {n: r["conclusion"] for n, r in runs.items()} == {"lint": "skipped", **{n: "skipped" for n in GPU_NAMES}}
    assert jobs(tmp_path) == [] and world.gh.comments == []
    assert world.gh.count("GET", rf"/compare/{base}\.\.\.{head}$") == 1
    world.assert_no_duplicates()


async def test_a_forced_push_runs_everything_and_says_why(redis_server, world, tmp_path):
    base, head = sha_of("main"), sha_of("pushed-docs")
    triggered = {p: ("trigger: {push: {branches: [main]}}\n" + t if p.startswith(".lightning/") else t)
                 for p, t in tree(lint()).items()}
    await world.start({base: triggered, head: {**triggered, "docs/source/index.rst": "Only docs\n"}})
    async with InProcessDaemon(cfg(redis_server.url, world.url, tmp_path)) as d:
        # An ordinary push of docs only: skipped, compared before..after.
        ordinary = {**push_payload("main", head), "before": base}
        assert await d.send("push", ordinary) == 202
        await wait_until(lambda: all_completed(world, head), 30, "the push's checks completed")
        assert {r["conclusion"] for r in world.runs(head)} == {"skipped"}
        # The same content force-pushed as another commit: GitHub cannot say what changed, so all run.
        forced_sha = sha_of("forced")
        world.gh.repos[REPO].trees[forced_sha] = world.gh.repos[REPO].trees[head]
        assert await d.send("push", {**push_payload("main", forced_sha), "before": base, "forced": True}) == 202
        await wait_until(lambda: all_completed(world, forced_sha), 60, "the forced push's checks completed")
        await wait_until(d.idle, 20, "the daemon to go idle")
    runs = by_name(world, forced_sha)
    assert {n: r["conclusion"] for n, r in runs.items()} == {"lint": "success", **{n: "success" for n in GPU_NAMES}}
    for r in runs.values():
        assert "not applied: the push was forced" in r["output"]["summary"]
    assert len(jobs(tmp_path)) == 3
    world.assert_no_duplicates()


async def test_a_pr_over_githubs_file_limit_runs_everything_and_says_why(redis_server, world, tmp_path):
    base, head = sha_of("base"), sha_of("huge")
    generated = {f"docs/generated/page{i:04}.rst": "" for i in range(3000)}
    await world.start({base: tree(lint()), head: tree(lint(), **generated)})
    world.gh.add_pull(REPO, 1, head_sha=head, base_sha=base)
    async with InProcessDaemon(cfg(redis_server.url, world.url, tmp_path)) as d:
        assert await d.send("pull_request", pr_payload("opened", head)) == 202
        await wait_until(lambda: all_completed(world, head), 90, "every check run completed")
        await wait_until(d.idle, 20, "the daemon to go idle")
    runs = by_name(world, head)
    assert {n: r["conclusion"] for n, r in runs.items()} == {"lint": "success", **{n: "success" for n in GPU_NAMES}}
    assert "GitHub lists at most 3000 files of a pull request" in runs["lint"]["output"]["summary"]
    assert world.gh.count("GET", r"/pulls/1/files$") == 30  # every page, 100 a page, up to the cap


async def test_needs_across_a_cancelled_commit(redis_server, world, tmp_path):
    """A push to the PR while lint runs: the old commit's waiting gpu runs end cancelled without
    starting, and the new commit's gpu runs wait for the new commit's lint."""
    gate_old = tmp_path / "never"   # the old commit's lint never finishes by itself
    gate = tmp_path / "new-lint-may-finish"
    base, old, new = sha_of("base"), sha_of("old"), sha_of("new")
    await world.start({base: tree(lint(gate_old)), old: tree(lint(gate_old), **{"src/a.py": "1\n"}),
                       new: tree(lint(gate), **{"src/a.py": "2\n"})})
    world.gh.add_pull(REPO, 1, head_sha=old, base_sha=base)
    async with InProcessDaemon(cfg(redis_server.url, world.url, tmp_path)) as d:
        assert await d.send("pull_request", pr_payload("opened", old)) == 202
        await wait_until(lambda: by_name(world, old).get("lint", {}).get("status") == "in_progress", 30, "old lint running")
        world.gh.add_pull(REPO, 1, head_sha=new, base_sha=base)
        assert await d.send("pull_request", pr_payload("synchronize", new)) == 202
        await wait_until(lambda: all_completed(world, old), 30, "the old commit's checks cancelled")
        await wait_until(lambda: by_name(world, new).get("lint", {}).get("status") == "in_progress", 30, "new lint running")
        assert [by_name(world, new)[n]["status"] for n in GPU_NAMES] == ["queued", "queued"]
        gate.touch()
        await wait_until(lambda: all_completed(world, new), 60, "the new commit's checks completed")
        await wait_until(d.idle, 20, "the daemon to go idle")
    assert set(world.conclusions(old).values()) == {"cancelled"}
    assert world.conclusions(new) == {"lint": "success", **{n: "success" for n in GPU_NAMES}}
    gpu = jobs(tmp_path, "gpu")
    expected = {decisions.job_name(REPO, new, workflows.run_key(".lightning/workflows/gpu.yaml", n), 1)
                for n in GPU_NAMES}
    assert {j["dir"].name for j in gpu} == expected  # the new commit's only
    assert len(jobs(tmp_path, "lint")) == 2
    world.assert_no_duplicates()


async def test_a_merge_group_whose_lint_fails_skips_the_gpu_runs_and_posts_no_comment(redis_server, world, tmp_path):
    base, head = sha_of("main"), sha_of("queue-broken")
    await world.start({base: tree(lint()), head: tree(lint(), **{"src/broken.py": "oops\n"})})
    payload = merge_group_payload("checks_requested", head)
    payload["merge_group"]["base_sha"] = base
    async with InProcessDaemon(cfg(redis_server.url, world.url, tmp_path)) as d:
        assert await d.send("merge_group", payload) == 202
        await wait_until(lambda: all_completed(world, head), 60, "every check run completed")
        await wait_until(d.idle, 20, "the daemon to go idle")
    runs = by_name(world, head)
    assert runs["lint"]["conclusion"] == "failure"
    assert all(runs[n]["conclusion"] == "skipped" and "needs lint" in runs[n]["output"]["summary"] for n in GPU_NAMES)
    assert jobs(tmp_path, "gpu") == [] and world.gh.comments == []
    world.assert_no_duplicates()
