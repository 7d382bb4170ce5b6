"""What the limits gate costs: one run past spend.Spend.gate and spend.Spend.finish, against a
run's other Redis work, measured in the same run.

    .venv/bin/python tests/bench/limits_gate.py [--runs 256] [--concurrency 8] [--json]

A private redis-server; `--runs` runs of one commit (a 256-cell matrix, the most one event may
plan), each gated then finished by `--concurrency` coroutines at once, under per_pr_usd (the
plan read for every gate) and max_parallel_per_machine = {L4 = 4} (most of them wait and are
woken). Baseline: the same number of RunState.transition calls (one Lua call each, what every
start already pays). Prints the time per gate and per finish, the compare-and-set retries, and
the ratio to the baseline. Not a test: pytest does not collect it.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from helpers.net import free_port  # noqa: E402
from litbotd import limits  # noqa: E402
from litbotd import spend as spend_mod  # noqa: E402
from litbotd.queue import Queue, connect  # noqa: E402
from litbotd.runstate import RunRef, RunState  # noqa: E402
from litbotd.tasks import Task  # noqa: E402
from litbotd.workflows import Run  # noqa: E402


async def bench(url: str, n: int, conc: int) -> dict[str, float]:
    r = connect(url)
    q = Queue(r, "bench")
    rs = RunState(q)
    sha = "d" * 40
    runs = [Run(workflow="gpu", file="gpu.yaml", check_name=f"gpu ({i})", key=f"k{i}", cell={}, image="img",
                machine="L4", interruptible=False, timeout=3600.0, env={}, script="true") for i in range(n)]
    await rs.add_runs("o/r", sha, runs, 1, owner="ev")
    refs = [RunRef("o/r", sha, f"k{i}", 1) for i in range(n)]
    sp = spend_mod.Spend(q)
    lim = limits.Limits(per_pr_usd=10_000.0, max_parallel_per_machine={"L4": 4})
    price = lambda m, i: 4.0  # noqa: E731
    sem = asyncio.Semaphore(conc)
    tries = {"n": 0}
    original = sp._apply

    async def counting(*a, **kw):
        tries["n"] += 1
        return await original(*a, **kw)

    sp._apply = counting  # type: ignore[method-assign]

    async def one(fn, *a):
        async with sem:
            await fn(*a)

    async def gate(ref: RunRef) -> None:
        c = limits.Candidate(spend_mod.run_id(ref), ref.repo, ref.sha, ref.key, "L4", 4.0, 3600.0, "t")
        await sp.gate(c, ref, lim, Task(kind="start_job"), price, True)

    async def transition(ref: RunRef) -> None:
        await rs.transition(ref, ("", "queued"), status="queued")

    t0 = time.perf_counter()
    await asyncio.gather(*(one(transition, ref) for ref in refs))
    base = time.perf_counter() - t0
    t0 = time.perf_counter()
    await asyncio.gather(*(one(gate, ref) for ref in refs))
    gated = time.perf_counter() - t0
    applies = tries["n"]
    t0 = time.perf_counter()
    await asyncio.gather(*(one(sp.finish, ref, lim, spend_mod.Ledger(1.0, "2026-12-03")) for ref in refs))
    finished = time.perf_counter() - t0
    retries = tries["n"] - 2 * n
    counted = await spend_mod.spend_on(q, "2026-12-03")
    await r.aclose()
    assert counted == {"o/r": float(n)}, counted
    return {"runs": n, "concurrency": conc, "baseline_ms": 1000 * base / n, "gate_ms": 1000 * gated / n,
            "finish_ms": 1000 * finished / n, "cas_retries": retries, "gate_commits": applies,
            "ratio_gate": gated / base, "ratio_finish": finished / base}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=256)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="litbotd-gate-") as tmp:
        port = free_port()
        redis = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
                                  "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp],
                                 stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            res = asyncio.run(bench(f"redis://127.0.0.1:{port}/0", args.runs, args.concurrency))
        finally:
            redis.terminate()
            redis.wait(10)
    print(f"{res['runs']} runs, {res['concurrency']} at once: baseline (one transition) {res['baseline_ms']:.2f} ms/run; "
          f"gate {res['gate_ms']:.2f} ms/run ({res['ratio_gate']:.1f}x), finish {res['finish_ms']:.2f} ms/run "
          f"({res['ratio_finish']:.1f}x); compare-and-set retries {res['cas_retries']}")
    if args.json:
        print(json.dumps(res))


if __name__ == "__main__":
    main()
