"""Prometheus metrics (SPEC §7), served by GET /metrics. Names start with `litbotd_`."""
from __future__ import annotations

import functools

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

WEBHOOKS = Counter("litbotd_webhooks", "Webhook deliveries by event and outcome", ["event", "outcome"], registry=REGISTRY)
TASKS = Counter("litbotd_tasks", "Tasks handled by phase and outcome (done, retry, dead, lost)", ["phase", "outcome"], registry=REGISTRY)
TASK_SECONDS = Histogram("litbotd_task_seconds", "Time a handler took, by phase", ["phase"], registry=REGISTRY,
                         buckets=(0.005, 0.02, 0.1, 0.5, 1, 2, 5, 15, 60, 300))
QUEUE_DEPTH = Gauge("litbotd_queue_depth", "Tasks waiting, by list (queued, delayed, dead)", ["queue"], registry=REGISTRY)
REQUEUED = Counter("litbotd_requeued_orphans", "Tasks put back on the queue from dead workers", registry=REGISTRY)
RATELIMIT_REMAINING = Gauge("litbotd_github_ratelimit_remaining", "GitHub API calls left in the current window",
                            registry=REGISTRY)
GITHUB_WRITES = Counter("litbotd_github_writes", "Content-creating GitHub calls by priority and pacing outcome "
                        "(sent, deferred: skipped or postponed while the budget is spent)", ["priority", "outcome"],
                        registry=REGISTRY)
PACE_WAIT = Histogram("litbotd_github_pace_wait_seconds", "Waits for the pacing budget before a GitHub write",
                      registry=REGISTRY, buckets=(0.1, 0.5, 1, 2, 5, 15, 60, 300, 900))
RUN_WRITES = Histogram("litbotd_check_run_writes", "Check-run writes (create, in_progress, completed) per run, "
                       "observed when the run is reported completed", registry=REGISTRY,
                       buckets=(1, 2, 3, 4, 5, 6, 8, 12))
JOBS = Counter("litbotd_jobs", "Jobs seen by backend and status", ["backend", "status"], registry=REGISTRY)
REPLICAS_CONNECTED = Gauge("litbotd_redis_replicas_connected", "Replicas in sync with the Redis primary "
                           "(with redis.sentinels; 0: deliveries are not replicated)", registry=REGISTRY)
SPEND = Counter("litbotd_spend_usd", "USD the runs that ended cost, by repository, as counted in the ledger "
                "by this process (SPEC §11)", ["repo"], registry=REGISTRY)
WORKERS = Gauge("litbotd_workers", "Worker coroutines running in this process", registry=REGISTRY)


# Bound children, looked up once per label set: labels() costs a lock and a dict walk per call,
# a measurable share of a task's cost on the worker path. Bounded: kinds come from the queue.
@functools.lru_cache(maxsize=256)
def tasks(kind: str, outcome: str) -> Counter:
    return TASKS.labels(kind, outcome)


@functools.lru_cache(maxsize=256)
def task_seconds(kind: str) -> Histogram:
    return TASK_SECONDS.labels(kind)


@functools.lru_cache(maxsize=256)
def webhooks(event: str, outcome: str) -> Counter:
    return WEBHOOKS.labels(event, outcome)


def render() -> bytes:
    return generate_latest(REGISTRY)
