"""Webhook ingress benchmark (a script, not a test): how close litbotd's intake comes to the least
a webhook receiver must do.

    .venv/bin/python tests/bench/ingress.py [--requests N] [--seconds S] [--concurrency C] [--rounds R]
                                            [--rate 200] [--paced-seconds 10] [--json]

Starts a private redis-server on a free loopback port, then in turn, each as its own process:
  bare     aiohttp on uvloop: read the body, answer 200
  minimal  aiohttp on uvloop: read the body, HMAC-SHA256 check (hmac.compare_digest), LPUSH it
  litbotd  `python -m litbotd run` with workers.count = 0 (the real daemon)
and drives each from a separate load process: signed ~28 KB pull_request payloads, a distinct
X-GitHub-Delivery per request (dedup must not short-circuit), C keep-alive connections, until N
requests or S seconds. The load generator writes raw HTTP/1.1 on uvloop streams so that it, not
the server, is the cheaper side. Then, on the same litbotd process, a paced run: an open-loop
schedule of --rate requests/s (a realistic busy installation) for --paced-seconds, latency from
each send. Rounds are interleaved; medians are reported, each ratio taken within a round first.
Prints requests/s, p50/p99 latency, server CPU per request, litbotd's RSS after the load, the
ratios and a verdict against issue 13's goals (litbotd >= 0.8x minimal's req/s; paced p99 < 20
ms; RSS < 80 MB). --json ends with one line: {"bare": {"rps", "p99_ms"}, "minimal": {...},
"litbotd": {...}, "paced": {"rate", "p99_ms"}, ...}.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import redis as syncredis

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from helpers.env import scrubbed_env  # noqa: E402
from helpers.net import free_port  # noqa: E402

PAYLOAD = ROOT / "tests" / "data" / "webhooks" / "pull_request.synchronize.1.json"
SECRET = "bench-secret"
WARMUP = 500


# -- the comparison servers ---------------------------------------------------------------------
def serve(kind: str, port: int, redis_url: str) -> None:
    import redis.asyncio as aioredis
    import uvloop
    from aiohttp import web

    async def bare(request: web.Request) -> web.Response:
        await request.read()  # every receiver must take the body off the socket
        return web.Response(text="ok")

    async def minimal(request: web.Request) -> web.Response:
        body = await request.read()
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get("X-Hub-Signature-256", ""), expected):
            return web.Response(status=401)
        await app["redis"].lpush("bench_minimal", body)
        return web.Response(status=202, text="queued")

    async def main() -> None:
        app["redis"] = aioredis.Redis.from_url(redis_url)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    app = web.Application()
    app.router.add_post("/", bare if kind == "bare" else minimal)
    app.router.add_get("/healthz", lambda _: web.Response(text="ok"))  # type: ignore[arg-type, return-value]
    uvloop.run(main())


# -- the load process ---------------------------------------------------------------------------
def _signed_request(port: int) -> tuple[bytes, bytes]:
    """The webhook body and its request head up to the delivery id (each request sends its own)."""
    body = PAYLOAD.read_bytes()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    head = (f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"X-GitHub-Event: pull_request\r\nX-Hub-Signature-256: {signature}\r\n"
            f"Content-Length: {len(body)}\r\nX-GitHub-Delivery: ").encode()
    return body, head


def load(port: int, requests: int, seconds: float, concurrency: int, tag: str) -> None:
    import uvloop

    body, head = _signed_request(port)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = iter(range(WARMUP + requests))
    window = [0.0, 0.0]  # first measured send, last measured answer

    async def client(deadline: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in counter:
            if time.monotonic() > deadline:
                break
            t0 = time.perf_counter()
            if i == WARMUP:
                window[0] = t0
            writer.write(b"%s%s-%d\r\n\r\n%s" % (head, tag.encode(), i, body))
            answer = await reader.readuntil(b"\r\n\r\n")
            length = int(answer.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            if i >= WARMUP:
                window[1] = time.perf_counter()
                latencies.append(window[1] - t0)
                status = int(answer[9:12])
                statuses[status] = statuses.get(status, 0) + 1
        writer.close()

    async def main() -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(client(deadline) for _ in range(concurrency)))

    uvloop.run(main())
    latencies.sort()
    n = len(latencies)
    if n == 0:
        raise SystemExit("no request measured: raise --seconds")
    json.dump({"n": n, "rps": n / (window[1] - window[0]), "p50_ms": latencies[n // 2] * 1000,
               "p99_ms": latencies[int(n * 0.99)] * 1000, "statuses": statuses}, sys.stdout)


def paced(port: int, rate: float, seconds: float, tag: str) -> None:
    """Requests sent on a fixed schedule (not when the previous one is answered), over a pool of
    keep-alive connections; the first second is warm-up."""
    import uvloop

    body, head = _signed_request(port)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    total = int(rate * (seconds + 1))

    async def main() -> None:
        free: asyncio.Queue = asyncio.Queue()
        for _ in range(32):
            free.put_nowait(await asyncio.open_connection("127.0.0.1", port))
        start = time.perf_counter() + 0.1

        async def one(i: int) -> None:
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            reader, writer = await free.get()
            t0 = time.perf_counter()
            writer.write(b"%s%s-%d\r\n\r\n%s" % (head, tag.encode(), i, body))
            answer = await reader.readuntil(b"\r\n\r\n")
            length = int(answer.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            if i >= rate:
                latencies.append(time.perf_counter() - t0)
                statuses[int(answer[9:12])] = statuses.get(int(answer[9:12]), 0) + 1
            free.put_nowait((reader, writer))

        await asyncio.gather(*(one(i) for i in range(total)))

    uvloop.run(main())
    latencies.sort()
    n = len(latencies)
    json.dump({"n": n, "rate": rate, "p50_ms": latencies[n // 2] * 1000, "p99_ms": latencies[int(n * 0.99)] * 1000,
               "max_ms": latencies[-1] * 1000, "statuses": statuses}, sys.stdout)


# -- orchestration ------------------------------------------------------------------------------
def wait_http(url: str, proc: subprocess.Popen, deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url} not ready after {deadline_s}s")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process: per-request CPU is robust where wall rates are not
    (a busy shared machine)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def run_one(name: str, cmd: list[str], env: dict[str, str], port: int, args: argparse.Namespace,
            log: Path) -> dict:
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        cpu0 = cpu_s(proc.pid)
        out = subprocess.run(
            [sys.executable, __file__, "_load", str(port), str(args.requests), str(args.seconds),
             str(args.concurrency), name], env=env, capture_output=True, text=True, check=True,
            timeout=args.seconds + 60)
        result = json.loads(out.stdout)
        result["cpu_us"] = (cpu_s(proc.pid) - cpu0) / (result["n"] + WARMUP) * 1e6
        if name.startswith("litbotd"):
            out = subprocess.run(
                [sys.executable, __file__, "_paced", str(port), str(args.rate), str(args.paced_seconds), name + "p"],
                env=env, capture_output=True, text=True, check=True, timeout=args.paced_seconds + 60)
            result["paced"] = json.loads(out.stdout)
        result["rss_mib"] = rss_kib(proc.pid) / 1024
        return result
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=10000, help="measured requests per run")
    ap.add_argument("--seconds", type=float, default=20.0, help="upper bound of one run")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    ap.add_argument("--rate", type=float, default=200.0, help="paced run: requests per second (default 200)")
    ap.add_argument("--paced-seconds", type=float, default=10.0, help="paced run: measured seconds (default 10)")
    ap.add_argument("--json", action="store_true", help="end with one JSON line of the medians")
    args = ap.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH")
    names = ("bare", "minimal", "litbotd")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="litbotd-bench-") as tmp_s:
        tmp = Path(tmp_s)
        redis_port = free_port()
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        redis = subprocess.Popen([binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", tmp_s], stdout=subprocess.DEVNULL)
        env = scrubbed_env(GH_WEBHOOK_SECRET=SECRET)
        try:
            # Interleaved rounds: a neighbour's burst of CPU use spreads over all three servers.
            for rnd in range(args.rounds):
                for name in names:
                    port = free_port()
                    if name == "litbotd":
                        cfg = tmp / "litbotd.toml"
                        cfg.write_text(f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
                                       f'[redis]\nurl = "{redis_url}"\n[workers]\ncount = 0\n'
                                       '[github]\nredeliver_interval = 0\n[log]\nformat = "text"\n')
                        cmd = [sys.executable, "-m", "litbotd", "run", "-c", str(cfg)]
                    else:
                        cmd = [sys.executable, __file__, "_serve", name, str(port), redis_url]
                    r = run_one(f"{name}{rnd}", cmd, env, port, args, tmp / f"{name}.log")
                    runs[name].append(r)
                    print(f"round {rnd} {name:8} {r['n']:6d} req {r['rps']:7.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
                          f"p99 {r['p99_ms']:6.2f} ms  server CPU {r['cpu_us']:5.0f} us/req  "
                          f"RSS {r['rss_mib']:5.1f} MiB  {r['statuses']}", flush=True)
                    if "paced" in r:
                        pc = r["paced"]
                        print(f"round {rnd} {'paced':8} {pc['n']:6d} req at {pc['rate']:.0f}/s  p50 {pc['p50_ms']:6.2f} ms  "
                              f"p99 {pc['p99_ms']:6.2f} ms  max {pc['max_ms']:6.1f} ms  {pc['statuses']}", flush=True)
                syncredis.Redis(port=redis_port).flushall()  # the minimal handler's bodies add up
        finally:
            redis.terminate()
            redis.wait(10)
    med = {n: {k: statistics.median(r[k] for r in runs[n]) for k in ("rps", "p50_ms", "p99_ms", "cpu_us", "rss_mib")}
           for n in names}
    paced_p99 = statistics.median(r["paced"]["p99_ms"] for r in runs["litbotd"])
    paced_p50 = statistics.median(r["paced"]["p50_ms"] for r in runs["litbotd"])

    def ratio(a: str, b: str, key: str = "rps") -> float:
        """Median over rounds of the ratio within each round."""
        return statistics.median(x[key] / y[key] for x, y in zip(runs[a], runs[b], strict=True))

    print(f"\nmedians of {args.rounds} rounds, {args.requests} signed {PAYLOAD.stat().st_size // 1024} KB "
          f"pull_request deliveries each, {args.concurrency} connections:")
    for n in names:
        m = med[n]
        print(f"  {n:8} {m['rps']:7.0f} req/s  p50 {m['p50_ms']:6.2f} ms  p99 {m['p99_ms']:6.2f} ms  "
              f"server CPU {m['cpu_us']:5.0f} us/req  RSS {m['rss_mib']:5.1f} MiB")
    print(f"  paced    {args.rate:7.0f} req/s  p50 {paced_p50:6.2f} ms  p99 {paced_p99:6.2f} ms  (litbotd)")
    lit_mini, by_cpu = ratio("litbotd", "minimal"), 1 / ratio("litbotd", "minimal", "cpu_us")
    mini_bare = ratio("minimal", "bare")
    rss = med["litbotd"]["rss_mib"]
    print(f"  litbotd/minimal {lit_mini:.2f}x req/s ({by_cpu:.2f}x by server CPU); minimal/bare {mini_bare:.2f}x req/s")
    goals = [(f"litbotd/minimal req/s {lit_mini:.2f}x (goal >= 0.8x)", lit_mini >= 0.8),
             (f"paced p99 at {args.rate:.0f} req/s {paced_p99:.1f} ms (goal < 20 ms)", paced_p99 < 20),
             (f"litbotd RSS after load {rss:.1f} MiB (goal < 80 MB)", rss * 1.048576 < 80)]
    print("\nverdict (issue 13's goals):")
    for text, ok in goals:
        print(f"  {text}: {'met' if ok else 'NOT met'}")
    if args.json:
        out = {n: {"rps": round(med[n]["rps"]), "p99_ms": round(med[n]["p99_ms"], 2), "p50_ms": round(med[n]["p50_ms"], 2),
                   "cpu_us": round(med[n]["cpu_us"])} for n in names}
        out["litbotd"]["rss_mib"] = round(rss, 1)
        out["paced"] = {"rate": args.rate, "p99_ms": round(paced_p99, 2), "p50_ms": round(paced_p50, 2)}
        out["ratios"] = {"litbotd/minimal": round(lit_mini, 3), "litbotd/minimal_cpu": round(by_cpu, 3),
                         "minimal/bare": round(mini_bare, 3)}
        out["rounds"] = args.rounds
        print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1:2] == ["_serve"]:
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif sys.argv[1:2] == ["_load"]:
        a = sys.argv[2:]
        load(int(a[0]), int(a[1]), float(a[2]), int(a[3]), a[4])
    elif sys.argv[1:2] == ["_paced"]:
        a = sys.argv[2:]
        paced(int(a[0]), float(a[1]), float(a[2]), a[3])
    else:
        main()
