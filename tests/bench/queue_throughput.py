"""Queue throughput: litbotd's reliable queue against arq and saq, on one private redis-server.

    .venv/bin/python tests/bench/queue_throughput.py [-n 20000] [-k 1,8,32] [--only litbotd]

Each round pushes N no-op tasks first (not timed), then times K concurrent consumers draining them:
- litbotd/queue:  K coroutines doing Queue.take → Queue.finish (BLMOVE + one EVALSHA per task)
- litbotd/worker: K litbotd Worker coroutines (the daemon's path: envelope parsing, log context,
                  metrics, handler dispatch, finish) with a no-op handler
- arq:            arq Worker(burst=True, max_jobs=K, poll_delay=0, keep_result=0)
- saq:            saq Worker(burst=True, concurrency=K)
FLUSHALL between rounds. arq and saq are benchmark-only (pip install arq saq), not dependencies.
Not a test: pytest does not collect it.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import redis as syncredis  # noqa: E402

from litbotd import config as config_mod  # noqa: E402
from litbotd.queue import Queue, connect  # noqa: E402
from litbotd.services import Services  # noqa: E402
from litbotd.tasks import Task  # noqa: E402
from litbotd.worker import Registry, Worker  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="litbotd-bench-")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", self.dir, "--save", "", "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        c = syncredis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                c.ping()
                break
            except syncredis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.sync = c

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def flush(self) -> None:
        self.sync.flushall()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


# -- litbotd ---------------------------------------------------------------------------------------
async def _fill_litbotd(q: Queue, n: int) -> None:
    batch = 1000
    for i in range(0, n, batch):
        await q.enqueue(*[Task(kind="noop", payload={"i": j}) for j in range(i, min(n, i + batch))])


async def bench_litbotd_queue(url: str, n: int, k: int) -> float:
    r = connect(url)
    # A pool as large as the concurrency, like any of the three needs.
    r.connection_pool.max_connections = max(k + 4, 10)
    q = Queue(r)
    await _fill_litbotd(q, n)
    assert await r.llen("bot_queue") == n

    async def consumer(wid: str) -> int:
        done = 0
        while True:
            raw = await q.take(wid, 0.05)
            if raw is None:
                return done
            await q.finish(wid, raw)
            done += 1

    t0 = time.perf_counter()
    counts = await asyncio.gather(*[consumer(f"w{i}") for i in range(k)])
    elapsed = time.perf_counter() - t0 - 0.05  # the last empty BLMOVE's wait is not work
    assert sum(counts) == n, sum(counts)
    await r.aclose()
    return n / elapsed


async def bench_litbotd_worker(url: str, n: int, k: int) -> float:
    r = connect(url)
    cfg = config_mod.parse({"workers": {"count": k, "lease_timeout": "10s"}}, env={})
    s = Services(config=cfg, redis=r, queue=Queue(r))
    await _fill_litbotd(s.queue, n)
    done = 0
    all_done = asyncio.Event()

    async def noop(task: Task, _s):
        nonlocal done
        done += 1
        if done == n:
            all_done.set()
        return None

    registry = Registry(handlers={"noop": noop})
    workers = [Worker(f"w{i}", s, registry) for i in range(k)]
    t0 = time.perf_counter()
    tasks = [asyncio.create_task(w.run()) for w in workers]
    await all_done.wait()
    # the last finish is committed when the workers' queues are empty and the processing lists too
    while await r.llen("bot_queue") or any([await r.llen(s.queue.processing(w.id)) for w in workers]):
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - t0
    for w in workers:
        w.stop()
    await asyncio.gather(*tasks)
    await r.aclose()
    return n / elapsed


# -- arq -------------------------------------------------------------------------------------------
async def arq_noop(ctx):
    return None


async def bench_arq(url: str, n: int, k: int, port: int) -> float:
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.worker import Worker as ArqWorker

    settings = RedisSettings(host="127.0.0.1", port=port)
    pool = await create_pool(settings)
    batch = 50  # arq's pool caps its connections
    for i in range(0, n, batch):
        await asyncio.gather(*[pool.enqueue_job("arq_noop") for _ in range(i, min(n, i + batch))])
    assert await pool.zcard("arq:queue") == n
    w = ArqWorker(functions=[arq_noop], redis_pool=pool, burst=True, max_jobs=k, poll_delay=0.0,
                  keep_result=0, handle_signals=False, log_results=False, job_timeout=60,
                  queue_read_limit=max(k * 4, 100))
    t0 = time.perf_counter()
    await w.main()
    elapsed = time.perf_counter() - t0
    assert w.jobs_complete == n, (w.jobs_complete, w.jobs_failed)
    await w.close()
    return n / elapsed


# -- saq -------------------------------------------------------------------------------------------
async def saq_noop(ctx):
    return None


async def bench_saq(url: str, n: int, k: int) -> float:
    from saq import Queue as SaqQueue
    from saq import Worker as SaqWorker

    q = SaqQueue.from_url(url, name="bench")
    await q.connect()
    batch = 50
    for i in range(0, n, batch):
        await asyncio.gather(*[q.enqueue("saq_noop") for _ in range(i, min(n, i + batch))])
    assert (await q.count("queued")) == n
    finished = 0
    all_done = asyncio.Event()

    async def after(ctx):
        nonlocal finished
        finished += 1
        if finished == n:
            all_done.set()

    w = SaqWorker(q, functions=[saq_noop], concurrency=k, burst=True, dequeue_timeout=0.05,
                  after_process=after)
    t0 = time.perf_counter()
    runner = asyncio.create_task(w.start())
    await all_done.wait()
    elapsed = time.perf_counter() - t0
    await asyncio.wait_for(runner, 30)
    assert (await q.count("queued")) == 0
    await q.disconnect()
    return n / elapsed


# -- main ------------------------------------------------------------------------------------------
async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20_000, help="tasks per round (default 20000)")
    ap.add_argument("-k", default="1,8,32", help="concurrencies (default 1,8,32)")
    ap.add_argument("--only", default="", help="comma-separated subset: litbotd-queue,litbotd-worker,arq,saq")
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # arq and saq log every job at INFO
    ks = [int(x) for x in args.k.split(",")]
    only = set(filter(None, args.only.split(",")))
    server = Server()
    results: dict[tuple[str, int], float] = {}
    runners = {
        "litbotd-queue": lambda k: bench_litbotd_queue(server.url, args.n, k),
        "litbotd-worker": lambda k: bench_litbotd_worker(server.url, args.n, k),
        "arq": lambda k: bench_arq(server.url, args.n, k, server.port),
        "saq": lambda k: bench_saq(server.url, args.n, k),
    }
    try:
        import uvloop
        print(f"redis-server {server.sync.info('server')['redis_version']}, python {sys.version.split()[0]}, "
              f"uvloop {uvloop.__version__}, N={args.n}")
        for k in ks:
            for name, fn in runners.items():
                if only and name not in only:
                    continue
                server.flush()
                try:
                    results[name, k] = await fn(k)
                except ImportError as e:
                    print(f"  {name}: skipped ({e})")
                    continue
                print(f"K={k:<3} {name:<15} {results[name, k]:>9,.0f} tasks/s", flush=True)
    finally:
        server.close()
    print()
    print(f"{'K':>3}  {'litbotd queue':>13}  {'litbotd worker':>14}  {'arq':>9}  {'saq':>9}  "
          f"{'worker/arq':>10}  {'worker/saq':>10}  {'queue/arq':>9}  {'queue/saq':>9}")
    for k in ks:
        g = lambda name: results.get((name, k))  # noqa: E731
        ratio = lambda a, b: f"{g(a) / g(b):.2f}x" if g(a) and g(b) else "-"  # noqa: E731
        cell = lambda name: f"{g(name):,.0f}" if g(name) else "-"  # noqa: E731
        print(f"{k:>3}  {cell('litbotd-queue'):>13}  {cell('litbotd-worker'):>14}  {cell('arq'):>9}  "
              f"{cell('saq'):>9}  {ratio('litbotd-worker', 'arq'):>10}  {ratio('litbotd-worker', 'saq'):>10}  "
              f"{ratio('litbotd-queue', 'arq'):>9}  {ratio('litbotd-queue', 'saq'):>9}")
    return 0


if __name__ == "__main__":
    import uvloop

    sys.exit(uvloop.run(main()))
