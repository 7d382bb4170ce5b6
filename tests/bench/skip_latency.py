"""How fast a docs-only PR's checks are completed `skipped` (issue 22's target: within 2 s).

    .venv/bin/python tests/bench/skip_latency.py [--rounds 3] [--cells 16]

The tests' parts: a private redis-server, the GitHub stand-in (OpenAPI-validated), the local
backend, the daemon in this process. Each round, interleaved:

- skip: a PR touching docs/ and README.md only, `lint` (paths-ignore docs/**, *.md) and a `gpu`
  matrix of N cells (paths src/**, tests/**, needs lint): time from the webhook's 202 until every
  check run is `completed` / `skipped`;
- baseline: the same workflows, a PR touching src/: time until every check run exists (`queued`,
  the gpu ones waiting for lint), the least any PR event costs (the same check-run creations,
  one each). Lint fails there, so no gpu job starts in either.

Prints both medians and the ratio skip / baseline (taken within each round). Not a test: pytest
does not collect it.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import RedisServer  # noqa: E402
from fake_github import REPO, GitHubWorld  # noqa: E402
from helpers.configs import config_data  # noqa: E402
from helpers.e2e import InProcessDaemon, pr_payload, sha_of  # noqa: E402
from helpers.wait import wait_until  # noqa: E402

LINT = "name: lint\npaths-ignore: ['docs/**', '*.md']\nrun: exit 1\n"
GPU = ("name: gpu\npaths: ['src/**', 'tests/**']\nneeds: [lint]\n"
       "parametrize: {{matrix: {{cuda: [{cells}]}}}}\nrun: 'true'\n")
BASE = {"src/a.py": "1\n", "tests/test_a.py": "def test(): pass\n", "docs/index.rst": "Docs\n", "README.md": "#\n"}


async def one(tmp: Path, redis_url: str, cells: int, filtered: bool, label: str) -> float:
    gpu = GPU.format(cells=", ".join(f"'c{i}'" for i in range(cells)))
    wf = {".lightning/workflows/lint.yaml": LINT, ".lightning/workflows/gpu.yaml": gpu}
    base, head = sha_of(f"{label}-base"), sha_of(f"{label}-head")
    change = {"docs/index.rst": "More\n", "README.md": "##\n"} if filtered else {"src/a.py": "2\n"}
    world = GitHubWorld()
    await world.start({base: {**BASE, **wf}, head: {**BASE, **wf, **change}})
    world.gh.add_pull(REPO, 1, head_sha=head, base_sha=base)
    data = config_data(redis_url, world.url, tmp / label / "jobs")
    data["jobs"]["local"]["sandbox"] = False
    try:
        async with InProcessDaemon(data) as d:
            t0 = time.monotonic()
            assert await d.send("pull_request", pr_payload("opened", head)) == 202
            if filtered:
                await wait_until(lambda: len(world.runs(head)) == cells + 1
                                 and all(r["conclusion"] == "skipped" for r in world.runs(head)), 60, "all skipped")
            else:
                await wait_until(lambda: len(world.runs(head)) == cells + 1, 60, "all queued")
            elapsed = time.monotonic() - t0
            await wait_until(d.idle, 60, "idle")
    finally:
        await world.close()
    return elapsed


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cells", type=int, default=16)
    args = ap.parse_args()
    skip, base, ratios = [], [], []
    with tempfile.TemporaryDirectory(prefix="litbotd-skip-") as tmp:
        for r in range(args.rounds):
            redis = RedisServer(Path(tmp) / f"redis{r}")
            redis.dir.mkdir()
            redis.start()
            try:
                s = await one(Path(tmp), redis.url, args.cells, True, f"skip{r}")
                b = await one(Path(tmp), redis.url, args.cells, False, f"base{r}")
            finally:
                redis.stop(kill=True)
            skip.append(s)
            base.append(b)
            ratios.append(s / b)
            print(f"round {r + 1}: skipped in {s:.3f}s, baseline queued in {b:.3f}s, ratio {s / b:.2f}")
    print(f"{args.cells + 1} check runs: all skipped in {statistics.median(skip):.3f}s (median; target 2 s), "
          f"baseline all queued in {statistics.median(base):.3f}s, ratio {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
