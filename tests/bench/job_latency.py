"""Job exit → check-run conclusion, with the default config (issue 17, SPEC §3 `poll_interval`).

    .venv/bin/python tests/bench/job_latency.py [-n 8] [--rounds 2] [--json]

Each round runs `-n` pull requests, each one local job that ends at once (`run: 'true'`), through
the real daemon (in this process), a real redis-server and the GitHub stand-in, twice:
"announced" (as shipped: the job's runner announces its end, its wait_job is brought forward) and
"poll-only" (the same daemon with the announcement switched off: the wait_job's poll, every
`poll_interval` = 10 s by default, finds the end — the path before issue 17). Exit time is the
runner's `finished` in status.json; conclusion time is when the stand-in received the completed
check run. Also printed: the bare job time (runner started → finished), for scale.
Goal: announced p50 ≤ 1 s.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import RedisServer  # noqa: E402
from fake_github import REPO, GitHubWorld  # noqa: E402
from helpers.configs import config_data  # noqa: E402
from helpers.e2e import InProcessDaemon, pr_payload, sha_of  # noqa: E402
from litbotd import decisions  # noqa: E402
from litbotd.backends.local import LocalBackend  # noqa: E402

GOAL_P50 = 1.0


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


async def one_round(redis_url: str, workdir: Path, n: int, label: str, tag: str) -> tuple[list[float], list[float]]:
    world = GitHubWorld()
    shas = [sha_of(f"{tag}-{label}-{i}") for i in range(n)]
    await world.start({sha: {".litci.yaml": "name: quick\nrun: 'true'\n"} for sha in shas})
    for i, sha in enumerate(shas, 1):
        world.pull(sha, pr=i)
    data = config_data(redis_url, world.url, workdir, workers={"count": 4})
    for k in ("poll_interval", "poll_interval_max"):
        data["jobs"].pop(k)  # the defaults: 10 s and 30 s
    concluded: dict[str, float] = {}
    try:
        async with InProcessDaemon(data) as d:
            for i, sha in enumerate(shas, 1):
                assert await d.send("pull_request", pr_payload("opened", sha, pr=i)) == 202
            deadline = time.monotonic() + 120
            while len(concluded) < n and time.monotonic() < deadline:
                for r in world.runs():
                    if r.get("conclusion") and r["head_sha"] not in concluded:
                        concluded[r["head_sha"]] = time.time()
                await asyncio.sleep(0.005)
            assert len(concluded) == n, f"{label}: only {len(concluded)} of {n} concluded"
    finally:
        await world.close()
    latencies, bare = [], []
    for r in world.runs():
        key, attempt = decisions.parse_external_id(r["external_id"])
        st = json.loads((workdir / decisions.job_name(REPO, r["head_sha"], key, attempt) / "status.json").read_text())
        latencies.append(concluded[r["head_sha"]] - float(st["finished"]))
        bare.append(float(st["finished"]) - float(st["started"]))
    return latencies, bare


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=8, help="pull requests per round and mode")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results: dict[str, list[float]] = {"announced": [], "poll-only": []}
    bare: list[float] = []
    with tempfile.TemporaryDirectory(prefix="litbotd-joblat-") as tmp:
        redis = RedisServer(Path(tmp))
        redis.start()
        original_ended = LocalBackend.ended
        try:
            for rnd in range(args.rounds):
                for label in results:  # interleaved: a neighbour's load spreads over both
                    if label == "poll-only":
                        async def never(self, timeout: float) -> list[str]:
                            await asyncio.sleep(timeout)
                            return []
                        LocalBackend.ended = never  # type: ignore[method-assign]
                        LocalBackend.reports_end = False
                    else:
                        LocalBackend.ended = original_ended  # type: ignore[method-assign]
                        LocalBackend.reports_end = True
                    redis.client().flushall()
                    lat, b = await one_round(redis.url, Path(tmp) / f"jobs-{rnd}-{label}", args.n, label, str(rnd))
                    results[label] += lat
                    bare += b
                    print(f"round {rnd + 1} {label:9s}: p50 {statistics.median(lat):6.3f}s  max {max(lat):6.3f}s",
                          flush=True)
        finally:
            LocalBackend.ended = original_ended  # type: ignore[method-assign]
            LocalBackend.reports_end = True
            redis.stop(kill=True)
    out = {label: {"p50": statistics.median(v), "p95": pct(v, 0.95), "n": len(v)} for label, v in results.items()}
    out["bare_job"] = {"p50": statistics.median(bare), "p95": pct(bare, 0.95), "n": len(bare)}
    ratio = out["poll-only"]["p50"] / out["announced"]["p50"]
    print(f"\njob exit → conclusion, default config (poll_interval 10s), {args.n} PRs x {args.rounds} rounds:")
    for label in ("announced", "poll-only", "bare_job"):
        name = "bare job (started→finished)" if label == "bare_job" else label
        print(f"  {name:28s} p50 {out[label]['p50']:6.3f}s   p95 {out[label]['p95']:6.3f}s   (n={out[label]['n']})")
    print(f"  poll-only / announced p50: {ratio:.1f}x")
    ok = out["announced"]["p50"] <= GOAL_P50
    print(f"verdict: {'meets' if ok else 'MISSES'} the goal p50 <= {GOAL_P50:g}s")
    if args.json:
        print(json.dumps({**out, "ratio_p50": ratio, "goal_met": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
