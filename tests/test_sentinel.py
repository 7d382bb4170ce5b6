"""Redis Sentinel (SPEC §3 redis.sentinels, §6) with real processes: a primary, a replica and one
Sentinel, all started here. A daemon and the CLI find the primary through Sentinel; a forced
`SENTINEL FAILOVER` with tasks in flight loses no acknowledged task; what runs again is bounded and
measured (printed with -s)."""
from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis as syncredis
from redis.sentinel import Sentinel

from conftest import RedisServer
from helpers import ops_daemon as od
from helpers.net import free_port
from helpers.wait import wait_until_sync
from litbotd.tasks import Task

pytestmark = pytest.mark.slow
MASTER = "mymaster"


class Replica(RedisServer):
    def __init__(self, workdir: Path, primary_port: int, min_replicas: int) -> None:
        super().__init__(workdir)
        self.primary_port, self.min_replicas = primary_port, min_replicas

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--save", "", "--replicaof", "127.0.0.1", str(self.primary_port),
             "--min-replicas-to-write", str(self.min_replicas),
             "--logfile", str(self.dir / "redis.log")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        c = syncredis.Redis(port=self.port, decode_responses=True, socket_connect_timeout=0.2)
        wait_until_sync(lambda: _safe(lambda: c.info("replication").get("master_link_status") == "up"), 20,
                        "the replica in sync")
        c.close()


def _safe(fn):
    try:
        return fn()
    except (syncredis.ConnectionError, syncredis.TimeoutError, OSError):
        return None


@pytest.fixture(params=[0, 1], ids=["async", "min-replicas-to-write-1"])
def sentinel_setup(request, tmp_path_factory, redis_server):
    # min-replicas-to-write 1 (docs/operations.md): a primary that has lost its replica (it was just
    # demoted, or is cut off) refuses writes at once, instead of taking writes a failover drops.
    redis_server.client().config_set("min-replicas-to-write", str(request.param))
    replica = Replica(tmp_path_factory.mktemp("replica"), redis_server.port, request.param)
    replica.start()
    sdir = tmp_path_factory.mktemp("sentinel")
    port = free_port()
    conf = sdir / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {sdir}\n"
                    f"sentinel monitor {MASTER} 127.0.0.1 {redis_server.port} 1\n"
                    f"sentinel down-after-milliseconds {MASTER} 1000\n"
                    f"sentinel failover-timeout {MASTER} 4000\n")
    proc = subprocess.Popen([shutil.which("redis-server"), str(conf), "--sentinel", "--logfile", str(sdir / "log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s = syncredis.Redis(port=port, decode_responses=True, socket_connect_timeout=0.2)

    def replica_known():
        reps = s.sentinel_slaves(MASTER)
        return any(r["port"] == replica.port and not r["is_sdown"] for r in reps)
    wait_until_sync(lambda: _safe(replica_known), 20, "Sentinel to discover the replica")
    yield {"sentinel": f"127.0.0.1:{port}", "client": s, "replica": replica, "primary": redis_server,
           "min_replicas": request.param}
    proc.kill()
    proc.wait(10)
    s.close()
    replica.stop(kill=True)


def test_a_forced_failover_under_load_loses_nothing(tmp_path, sentinel_setup):
    st = sentinel_setup
    http = free_port()
    cfg = od.write_config(tmp_path / "litbotd.toml", "redis://127.0.0.1:1/0", workers=4, server_port=http)
    cfg.write_text(cfg.read_text().replace('url = "redis://127.0.0.1:1/0"',
                                           f'url = "redis://127.0.0.1:1/0"\nsentinels = ["{st["sentinel"]}"]')
                   .replace('lease_timeout = "2s"', 'lease_timeout = "5s"').replace("max_attempts = 2", "max_attempts = 8"))
    master = Sentinel([tuple(st["sentinel"].split(":"))], socket_timeout=1).master_for(MASTER, decode_responses=True)
    # A command finds the primary through Sentinel; a delivery is acknowledged once the replica has it.
    r = od.cli("replay", str(Path(__file__).parent / "data" / "webhooks" / "pull_request.opened.4.json"),
               "--event", "pull_request", "-c", str(cfg))
    assert r.returncode == 0 and "queued new_event task" in r.stdout, r.stdout + r.stderr
    replica_view = st["replica"].client()
    assert replica_view.llen("bot_queue") == 1 and st["primary"].client().delete("bot_queue") == 1
    runs_file = tmp_path / "runs.txt"
    proc = od.start(cfg, tmp_path / "daemon.log", TEST_RUNS_FILE=str(runs_file))
    acked: list[Task] = []
    stop = threading.Event()

    def produce() -> None:
        """Enqueue a chain every 20 ms, acknowledged as litbotd's webhook intake does with Sentinel:
        once a replica holds it (WAIT), so that a failover cannot drop it."""
        while not stop.is_set():
            t = Task(kind="chain", payload={"s": 0.05, "n": 3})
            try:
                with master.pipeline(transaction=False) as p:  # WAIT on the connection that wrote
                    _, replicas = p.lpush("bot_queue", t.to_json()).wait(1, 1000).execute()
                if replicas >= 1:
                    acked.append(t)
            except (syncredis.ConnectionError, syncredis.TimeoutError, syncredis.ResponseError):
                pass  # not acknowledged: the producer (like GitHub on a 503) would send it again
            time.sleep(0.02)

    producer = threading.Thread(target=produce, daemon=True)
    try:
        # The CLI finds the primary through Sentinel too.
        wait_until_sync(lambda: od.alive_workers(cfg, proc.pid) == 4, 20,
                        "4 live workers (status through Sentinel)")
        producer.start()
        wait_until_sync(lambda: len(acked) > 20, 20, "tasks in flight")
        r_old = st["primary"].client()
        in_flight = r_old.llen("bot_queue") + sum(r_old.llen(k) for k in r_old.keys("bot_queue:processing:*"))
        t0 = time.monotonic()
        st["client"].execute_command("SENTINEL", "FAILOVER", MASTER)
        new_port = st["replica"].port
        wait_until_sync(lambda: _safe(lambda: int(st["client"].sentinel_get_master_addr_by_name(MASTER)[1]))
                        == new_port, 20, "the replica promoted")
        r_new = st["replica"].client()
        start_runs = int(_safe(lambda: r_new.get("bot_queue:test:runs")) or 0)
        wait_until_sync(lambda: int(_safe(lambda: r_new.get("bot_queue:test:runs")) or 0) > start_runs + 5, 60,
                        "the daemon working on the new primary")
        failover_s = time.monotonic() - t0
        time.sleep(1.0)  # keep producing on the new primary for a moment
        stop.set()
        producer.join(5)
        ids = set()
        for t in acked:  # each chain: its head and two successors
            for _ in range(3):
                ids.add(t.id)
                t = t.successor("chain", {**t.payload, "n": t.payload["n"] - 1}, key="next")

        def settled():
            done = r_new.smembers("bot_queue:test:done")
            return ids <= done and r_new.llen("bot_queue") == 0 and not any(
                r_new.llen(k) for k in r_new.keys("bot_queue:processing:*"))
        try:
            wait_until_sync(lambda: _safe(settled), 60, "every acknowledged task and its successors done")
        except AssertionError:
            missing = ids - r_new.smembers("bot_queue:test:done")
            where = {k: r_new.lrange(k, 0, -1) for k in r_new.keys("bot_queue:processing:*")}
            heads = {t.id for t in acked}
            log_text = (tmp_path / "daemon.log").read_text()
            for m in missing:
                print("DIAG id", m, "head" if m in heads else "successor",
                      [ln for ln in log_text.splitlines() if m in ln][:5])
            print("DIAG dead", r_new.lrange("bot_queue:dead", 0, -1)[:2], "old", _safe(lambda: r_old.info("replication")["role"]),
                  "old has", _safe(lambda: r_old.sismember("bot_queue:test:done", next(iter(missing)))))
            print("DIAG missing", len(missing), "queued", r_new.llen("bot_queue"), "delayed",
                  r_new.zrange("bot_queue:delayed", 0, -1, withscores=True)[:3], "processing", where,
                  "workers", r_new.hgetall("bot_queue:workers"), "role", r_new.info("replication")["role"],
                  (tmp_path / "daemon.log").read_text()[-3000:])
            raise
        runs = int(r_new.get("bot_queue:test:runs"))
        done = r_new.smembers("bot_queue:test:done")
        executed = runs_file.read_text().split()
        repeated = len(executed) - len(set(executed))
        print(f"\nfailover: {failover_s:.2f}s from SENTINEL FAILOVER to work on the new primary; "
              f"{in_flight} tasks queued or in flight at the failover; {len(acked)} chains acknowledged, "
              f"{len(ids)} tasks, {runs} runs recorded in Redis, {runs - len(done)} duplicates there, "
              f"{len(ids - done)} lost; {repeated} handler executions repeated (writes the old primary took "
              f"and the failover dropped)")
        assert ids <= done, f"{len(ids - done)} acknowledged tasks lost"
        # Asynchronous replication: a step whose handler writes reached the replica but whose
        # finish did not runs again on the new primary (every step is idempotent for this). Only
        # a step in flight at the instant of the promotion can straddle it: one per worker at most.
        assert runs - len(done) <= 4, f"{runs - len(done)} tasks completed twice"
        assert r_new.llen("bot_queue:dead") == 0
        if st["min_replicas"]:
            # Only the steps in flight at the instant the replica left can straddle it (the old
            # primary notices the dropped link a moment later): at most one per worker.
            assert repeated <= 4, f"{repeated} steps repeated: the demoted primary kept taking writes"
        status = od.status(cfg)
        assert sum(1 for w in status["workers"] if w["alive"] and w["pid"] == proc.pid) == 4
        assert proc.term() == 0
    finally:
        stop.set()
        proc.close()


async def test_with_require_replica_and_none_a_delivery_is_not_acknowledged(aredis):
    """redis.require_replica: a delivery waits for one replica; with none, the webhook gets a 503
    (the queue raises a Redis error) while the claim stays, so GitHub's redelivery is answered 200,
    queued once."""
    from litbotd.queue import REDIS_UNAVAILABLE, NotReplicated, Queue

    q = Queue(aredis, ack_replicas=1, require_replica=True)
    t = Task(kind="new_event")
    with pytest.raises(NotReplicated) as e:
        await q.enqueue_delivery("d-1", [t])
    assert isinstance(e.value, REDIS_UNAVAILABLE)
    assert await aredis.lrange("bot_queue", 0, -1) == [t.to_json()]
    assert await Queue(aredis).enqueue_delivery("d-1", [Task(kind="new_event")]) is False


async def test_with_no_replica_connected_a_delivery_is_acknowledged_and_durability_says_degraded(aredis):
    from litbotd.queue import Queue

    q = Queue(aredis, ack_replicas=1)
    assert await q.enqueue_delivery("d-2", [Task(kind="new_event")]) is True
    assert q.replicas == 0 and q.durability() == "degraded"


def _signed(body: bytes, delivery: str) -> dict[str, str]:
    import hashlib
    import hmac

    sig = "sha256=" + hmac.new(b"test-webhook-secret", body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-GitHub-Event": "pull_request", "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": sig}


def _http(method: str, port: int, path: str, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, str, float]:
    import http.client

    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(), time.monotonic() - t0
    finally:
        conn.close()


@pytest.mark.parametrize("sentinel_setup", [0], indirect=True, ids=["async"])
@pytest.mark.parametrize("require_replica", [False, True], ids=["default", "require_replica"])
def test_the_primary_dead_for_good_intake_keeps_answering_unless_a_replica_is_required(
        tmp_path, sentinel_setup, require_replica):
    """Issue 17: once Sentinel promoted the replica of a primary SIGKILLed for good, no replica is
    left. By default the webhooks are answered 202 at once (no 1 s WAIT, no 503), one WARNING says
    so, the metric and /healthz too; with redis.require_replica every delivery is a 503."""
    import json as jsonlib

    from litbotd.queue import WAIT_MS

    st = sentinel_setup
    http_port = free_port()
    cfg = od.write_config(tmp_path / "litbotd.toml", "redis://127.0.0.1:1/0", workers=0, server_port=http_port)
    cfg.write_text(cfg.read_text().replace(
        'url = "redis://127.0.0.1:1/0"', f'url = "redis://127.0.0.1:1/0"\nsentinels = ["{st["sentinel"]}"]'
        + ("\nrequire_replica = true" if require_replica else "")))  # the default: not written
    payload = (Path(__file__).parent / "data" / "webhooks" / "pull_request.opened.4.json").read_bytes()
    log_path = tmp_path / "daemon.log"
    proc = od.start(cfg, log_path)
    try:
        wait_until_sync(lambda: _safe(lambda: _http("GET", http_port, "/healthz")[0] == 200), 20, "the daemon up")
        # With the replica there: replicated, acknowledged once it has the delivery.
        status, _, _ = _http("POST", http_port, "/", payload, _signed(payload, "before"))
        assert status == 202
        assert st["replica"].client().exists("bot_queue:delivery:before")
        assert jsonlib.loads(_http("GET", http_port, "/healthz")[1])["durability"] == "replicated"
        st["primary"].stop(kill=True)  # and never started again
        new_port = st["replica"].port
        wait_until_sync(lambda: _safe(
            lambda: int(st["client"].sentinel_get_master_addr_by_name(MASTER)[1]) == new_port), 30, "the replica promoted")
        seen: list = []

        def delivered_after_failover() -> bool:
            got = _safe(lambda: _http("POST", http_port, "/", payload, _signed(payload, f"settle-{len(seen)}")))
            seen.append(got)
            return got is not None and (got[0] == 503 and "NotReplicated" in got[1] if require_replica
                                        else got[0] == 202)
        try:
            wait_until_sync(delivered_after_failover, 30, "the daemon on the new primary")
        except AssertionError:
            raise AssertionError(f"{seen[-3:]} {log_path.read_text()[-2000:]}") from None
        answers = [_http("POST", http_port, "/", payload, _signed(payload, f"after-{i}")) for i in range(5)]
        health_status, health, _ = _http("GET", http_port, "/healthz")
        metrics_text = _http("GET", http_port, "/metrics")[1]
        if require_replica:
            assert [a[0] for a in answers] == [503] * 5, answers
            assert all("NotReplicated" in a[1] for a in answers), answers
        else:
            assert [a[0] for a in answers] == [202] * 5, answers
            # answered without waiting for a replica that is not there (WAIT's timeout)
            assert max(a[2] for a in answers) < WAIT_MS / 1000, answers
            assert st["replica"].client().exists(*(f"bot_queue:delivery:after-{i}" for i in range(5))) == 5
        assert health_status == 200, health
        assert jsonlib.loads(health)["durability"] == "degraded"
        assert "litbotd_redis_replicas_connected 0.0" in metrics_text
        warnings = [line for line in log_path.read_text().splitlines() if "no Redis replica connected" in line]
        assert len(warnings) == 1, warnings  # once a minute, not per delivery
        assert proc.term() == 0
    finally:
        proc.close()
