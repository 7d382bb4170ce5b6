"""What the local jobs' sandbox costs per job: start to final status of a job running `true`.

    .venv/bin/python tests/bench/sandbox_overhead.py [-n 20]

Modes, each N jobs one after the other through LocalBackend (detached runner, bootstrap fetching a
small tarball from a loopback server, the script, the final status), interleaved round by round so
machine noise hits them alike:
- sandbox = false                      (the baseline)
- sandbox = true, network = "none"     (bwrap alone)
- sandbox = true, network = "isolated" (bwrap + slirp4netns, the default)
Prints the median and p90 of each and the ratio of the medians to the baseline.
Also the log cap: the time to write a 30 MiB log capped at 10 MiB vs. the same log uncapped (a
max_log_bytes above its size), and the bytes left on disk.
Not a test: pytest does not collect it.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(HERE, ".."))

from litbotd.backends.base import JobSpec  # noqa: E402
from litbotd.backends.local import LocalBackend  # noqa: E402
from tarball_server import REPO, SHA, TarballServer, github_tarball  # noqa: E402

MODES = {"unsandboxed (baseline)": {"sandbox": False}, "bwrap, network none": {"network": "none"},
         "bwrap + slirp4netns": {"network": "isolated"}}
BIG = "seq -f '%099g' 1 314573\n"  # 30 MiB of 100-byte lines


async def one(b: LocalBackend, server: TarballServer, name: str, script: str = "true\n") -> float:
    spec = JobSpec(name=name, repo=REPO, sha=SHA, archive_url=server.archive_url(), script=script,
                   image="-", machine="CPU", interruptible=False, timeout=120, env={})
    t0 = time.monotonic()
    await b.start(spec)
    while not (st := await b.status(name)).final:
        await asyncio.sleep(0.005)
    assert st.state == "succeeded", (name, st)
    return time.monotonic() - t0


async def main(n: int) -> None:
    server = await TarballServer(github_tarball({"hello.txt": "hello\n"})).start()
    root = tempfile.mkdtemp(prefix="litbotd-bench-")
    backends = {m: LocalBackend(f"{root}/{i}", 1, **kw) for i, (m, kw) in enumerate(MODES.items())}
    times: dict[str, list[float]] = {m: [] for m in MODES}
    try:
        for r in range(n):
            for m, b in backends.items():
                times[m].append(await one(b, server, f"job-{r}"))
        base = statistics.median(times["unsandboxed (baseline)"])
        print(f"job start to final status, {n} jobs per mode (median / p90):")
        for m, ts in times.items():
            med, p90 = statistics.median(ts), sorted(ts)[int(0.9 * (len(ts) - 1))]
            print(f"  {m:24s} {med * 1000:7.0f} ms / {p90 * 1000:6.0f} ms   ratio {med / base:4.2f}"
                  f"   (+{(med - base) * 1000:.0f} ms)")
        capped = LocalBackend(f"{root}/capped", 1, network="none", max_log_bytes=10 << 20)
        uncapped = LocalBackend(f"{root}/uncapped", 1, network="none", max_log_bytes=64 << 20)
        t_cap = await one(capped, server, "big", BIG)
        t_unc = await one(uncapped, server, "big", BIG)
        size = os.path.getsize(f"{root}/capped/big/log.txt")
        print(f"30 MiB log: capped at 10 MiB {t_cap:.2f} s, {size} bytes on disk; "
              f"uncapped {t_unc:.2f} s, {os.path.getsize(f'{root}/uncapped/big/log.txt')} bytes; "
              f"ratio {t_cap / t_unc:.2f}")
        for b in (*backends.values(), capped, uncapped):
            await b.close()
    finally:
        await server.close()
        import shutil
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("-n", type=int, default=20)
    asyncio.run(main(p.parse_args().n))
