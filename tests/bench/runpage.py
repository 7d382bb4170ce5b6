"""Run page benchmark (a script, not a test): a 100 MB log through the real daemon's run page.

    .venv/bin/python tests/bench/runpage.py [--mb 100] [--lines 60] [--rounds 3] [--json]

Starts a private redis-server and `python -m litbotd run` (local backend, server.public_url set),
records a running run in Redis whose local job log is a generated file of --mb MB (coloured
pytest-like lines, ~100 bytes each), and, as the baseline in the same round, a plain aiohttp
process that serves the same file with `web.FileResponse` and follows it with a minimal
aiohttp-sse handler polling the file as often as litbotd does (0.2 s). Measured, per round:

  ttfb       time to the first byte of the run page (cold: the first request, which indexes the
             log; warm: the next ones) against the FileResponse's first byte; and to its last byte
  follow     a line appended to the log → that line received through the page's SSE stream
             (p50, p95 over --lines lines written every 50 ms), against the minimal SSE tail
  raw        the whole log.txt downloaded, against the FileResponse
  rss        the daemon's RSS growth from before the first page request to after everything
             (pages, raw download, follow), against the baseline server's after its download

Medians over rounds; ratios taken within a round. --json ends with one JSON line.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from helpers.net import free_port  # noqa: E402

REPO, SHA, RUN_KEY = "octo-org/widgets", "e" * 40, "tests-3-12"
POLL = 0.2


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def make_log(path: Path, mb: int) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    block = []
    for i in range(1000):
        if i % 10 == 0:
            block.append(f"\x1b[32mPASSED\x1b[0m tests/test_mod_{i % 97}.py::test_case_{i} [{i % 100:3d}%]  " + "x" * 30)
        else:
            block.append(f"tests/test_mod_{i % 97}.py::test_case_{i} some output line with text " + "y" * 40)
    chunk = ("\n".join(block) + "\n").encode()
    with open(path, "wb") as f:
        written = 0
        while written < mb * 1024 * 1024:
            f.write(chunk)
            written += len(chunk)
    return written


# -- the baseline server -----------------------------------------------------------------------
def baseline(port: int, path: str) -> None:
    from aiohttp import web
    from aiohttp_sse import sse_response

    async def file(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(path)

    async def events(request: web.Request) -> web.StreamResponse:
        offset = int(request.query.get("offset", "0"))
        async with sse_response(request) as resp:
            with open(path, "rb") as f:
                while resp.is_connected():
                    f.seek(offset)
                    data = f.read(1 << 20)
                    cut = data.rfind(b"\n") + 1
                    if cut:
                        await resp.send(data[:cut].decode("utf-8", "replace"), event="lines")
                        offset += cut
                        continue
                    await asyncio.sleep(POLL)
        return resp

    app = web.Application()
    app.router.add_get("/log.txt", file)
    app.router.add_get("/events", events)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# -- the client --------------------------------------------------------------------------------
async def ttfb(url: str, whole: list[float] | None = None) -> float:
    """Time to the first byte; the time to the last one is appended to `whole`."""
    import aiohttp
    async with aiohttp.ClientSession() as http:
        t0 = time.perf_counter()
        async with http.get(url) as resp:
            assert resp.status == 200, (url, resp.status)
            await resp.content.readany()
            first = time.perf_counter() - t0
            async for _ in resp.content.iter_chunked(1 << 20):
                pass
    if whole is not None:
        whole.append(time.perf_counter() - t0)
    return first


async def download(url: str) -> tuple[float, int]:
    import aiohttp
    n = 0
    async with aiohttp.ClientSession() as http:
        t0 = time.perf_counter()
        async with http.get(url) as resp:
            async for chunk in resp.content.iter_chunked(1 << 20):
                n += len(chunk)
    return time.perf_counter() - t0, n


async def follow(url: str, log: Path, lines: int) -> list[float]:
    """Append `lines` lines "tick N", each 50 ms apart; the latency of each one's arrival."""
    import aiohttp
    sent: dict[int, float] = {}
    got: dict[int, float] = {}
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            assert resp.status == 200, resp.status

            async def write() -> None:
                for i in range(lines):
                    with open(log, "ab") as f:
                        sent[i] = time.perf_counter()
                        f.write(f"tick {i}\n".encode())
                    await asyncio.sleep(0.05)

            writer = asyncio.create_task(write())
            async for raw in resp.content:
                line = raw.decode("utf-8", "replace")
                now = time.perf_counter()
                for part in line.split("tick ")[1:]:
                    digits = "".join(c for c in part[:8] if c.isdigit())
                    if digits:
                        got.setdefault(int(digits), now)
                if len(got) >= lines:
                    break
            await writer
    return [got[i] - sent[i] for i in range(lines)]


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


async def one_round(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    import redis.asyncio as aioredis

    from litbotd import decisions, runlink
    from litbotd.queue import Queue
    from litbotd.runstate import RunRef, RunState
    from litbotd.workflows import Run

    rport, dport, bport = free_port(), free_port(), free_port()
    rdir = tmp / "redis"
    rdir.mkdir(exist_ok=True)
    redis_p = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(rdir)], stdout=subprocess.DEVNULL)
    workdir, logs_dir = tmp / "jobs", tmp / "runs"
    job = decisions.job_name(REPO, SHA, RUN_KEY, 1)
    log = workdir / job / "log.txt"
    if log.exists():
        log.unlink()
    size = make_log(log, args.mb)
    logs_dir.mkdir(exist_ok=True)
    key = os.urandom(32)
    (logs_dir / "link-key").write_bytes(key)
    cfg = tmp / "litbotd.toml"
    cfg.write_text(f"""
[server]
host = "127.0.0.1"
port = {dport}
public_url = "http://127.0.0.1:{dport}"
[github]
webhook_secret = "bench"
redeliver_interval = 0
[redis]
url = "redis://127.0.0.1:{rport}/0"
[workers]
count = 1
[jobs]
backend = "local"
[jobs.local]
workdir = "{workdir}"
sandbox = false
[report]
logs_dir = "{logs_dir}"
[log]
level = "warning"
""")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp), "LANG": "C.UTF-8"}
    daemon = subprocess.Popen([sys.executable, "-m", "litbotd", "run", "-c", str(cfg)], env=env, cwd=str(ROOT),
                              stdout=subprocess.DEVNULL, stderr=open(tmp / "daemon.log", "w"))
    base = subprocess.Popen([sys.executable, __file__, "--baseline", str(bport), str(log)], cwd=str(ROOT))
    try:
        r = aioredis.Redis(port=rport, decode_responses=True)
        for _ in range(200):
            try:
                await r.ping()
                break
            except Exception:
                await asyncio.sleep(0.05)
        rs = RunState(Queue(r))
        run = Run(workflow="tests", file=".litci.yaml", check_name="tests (3.12)", key=RUN_KEY, cell={},
                  image="python:3.12-slim", machine="CPU", interruptible=False, timeout=3600.0, env={}, script="")
        await rs.add_runs(REPO, SHA, [run], pr=1, owner="bench")
        await rs.update(RunRef(REPO, SHA, RUN_KEY, 1), status="in_progress", job=job, started_at=time.time())
        await r.aclose()
        import aiohttp
        page = f"http://127.0.0.1:{dport}" + runlink.path(key, runlink.RunId(REPO, SHA, RUN_KEY, 1))
        async with aiohttp.ClientSession() as http:
            for _ in range(400):
                try:
                    async with http.get(f"http://127.0.0.1:{dport}/healthz") as resp, \
                            http.get(f"http://127.0.0.1:{bport}/log.txt", headers={"Range": "bytes=0-0"}):
                        if resp.status in (200, 503):
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        rss0, brss0 = rss_kb(daemon.pid), rss_kb(base.pid)
        cold_whole: list[float] = []
        warm_whole: list[float] = []
        cold = await ttfb(page, cold_whole)
        warm = statistics.median([await ttfb(page, warm_whole) for _ in range(5)])
        base_ttfb = statistics.median([await ttfb(f"http://127.0.0.1:{bport}/log.txt") for _ in range(3)])
        raw_t, raw_n = await download(page + "log.txt")
        base_t, base_n = await download(f"http://127.0.0.1:{bport}/log.txt")
        assert raw_n >= size and base_n >= size, (raw_n, base_n, size)
        async with aiohttp.ClientSession() as http:
            async with http.get(page) as resp:
                body = await resp.text()
        events = body.split('data-events="')[1].split('"')[0].replace("&amp;", "&")
        lat = await follow(page + events, log, args.lines)
        offset = log.stat().st_size
        base_lat = await follow(f"http://127.0.0.1:{bport}/events?offset={offset}", log, args.lines)
        rss1, brss1 = rss_kb(daemon.pid), rss_kb(base.pid)
        return {"ttfb_cold_ms": cold * 1000, "ttfb_warm_ms": warm * 1000, "ttfb_base_ms": base_ttfb * 1000,
                "page_cold_s": cold_whole[0], "page_warm_s": statistics.median(warm_whole),
                "raw_s": raw_t, "raw_base_s": base_t, "page_bytes": len(body.encode()),
                "follow_p50_ms": pct(lat, 50) * 1000, "follow_p95_ms": pct(lat, 95) * 1000,
                "follow_base_p50_ms": pct(base_lat, 50) * 1000, "follow_base_p95_ms": pct(base_lat, 95) * 1000,
                "rss_growth_mb": (rss1 - rss0) / 1024, "rss_base_growth_mb": (brss1 - brss0) / 1024,
                "rss_mb": rss1 / 1024, "log_mb": size / 1024 / 1024}
    finally:
        for p in (daemon, base, redis_p):
            p.terminate()
        for p in (daemon, base, redis_p):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--baseline":
        baseline(int(sys.argv[2]), sys.argv[3])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--lines", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not shutil.which("redis-server"):
        print("needs redis-server on PATH", file=sys.stderr)
        return 1
    rounds = []
    with tempfile.TemporaryDirectory(prefix="litbotd-bench-runpage-") as d:
        for i in range(args.rounds):
            rounds.append(asyncio.run(one_round(args, Path(d))))
            print(f"round {i + 1}: " + ", ".join(f"{k}={v:.1f}" for k, v in rounds[-1].items()), flush=True)

    def med(k: str) -> float:
        return statistics.median(r[k] for r in rounds)

    def ratio(a: str, b: str) -> float:
        return statistics.median(r[a] / r[b] if r[b] else float("inf") for r in rounds)

    print(f"\nmedians of {args.rounds} rounds, a {med('log_mb'):.0f} MB log:")
    print(f"  first byte of the page: cold {med('ttfb_cold_ms'):.1f} ms, warm {med('ttfb_warm_ms'):.1f} ms; "
          f"FileResponse {med('ttfb_base_ms'):.1f} ms (warm ratio {ratio('ttfb_warm_ms', 'ttfb_base_ms'):.2f}x)")
    print(f"  whole page: cold {med('page_cold_s'):.2f} s (indexing the log), warm {med('page_warm_s'):.2f} s; "
          f"{med('page_bytes') / 1024:.0f} KB (the tail; earlier parts on demand)")
    print(f"  line written → shown (SSE): p50 {med('follow_p50_ms'):.0f} ms, p95 {med('follow_p95_ms'):.0f} ms; "
          f"minimal SSE tail p50 {med('follow_base_p50_ms'):.0f} ms, p95 {med('follow_base_p95_ms'):.0f} ms "
          f"(p95 ratio {ratio('follow_p95_ms', 'follow_base_p95_ms'):.2f}x)")
    print(f"  raw log.txt: {med('raw_s'):.2f} s; FileResponse {med('raw_base_s'):.2f} s "
          f"(ratio {ratio('raw_s', 'raw_base_s'):.2f}x)")
    print(f"  daemon RSS growth: {med('rss_growth_mb'):.1f} MB (RSS {med('rss_mb'):.0f} MB); "
          f"FileResponse server's growth {med('rss_base_growth_mb'):.1f} MB")
    ok_ttfb = med("ttfb_cold_ms") < 200 and med("ttfb_warm_ms") < 200
    ok_follow = med("follow_p95_ms") < 1000
    ok_rss = med("rss_growth_mb") < 0.25 * med("log_mb")
    print("\nverdict (issue 19's goals):")
    print(f"  first byte within 200 ms: {'yes' if ok_ttfb else 'NO'}")
    print(f"  a new line within 1 s (p95): {'yes' if ok_follow else 'NO'}")
    print(f"  memory does not grow with the log (growth < 1/4 of the log): {'yes' if ok_rss else 'NO'}")
    if args.json:
        print(json.dumps({k: med(k) for k in rounds[0]} | {"rounds": args.rounds}))
    return 0 if ok_ttfb and ok_follow and ok_rss else 1


if __name__ == "__main__":
    sys.exit(main())
