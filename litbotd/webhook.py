"""HTTP: webhook intake, /healthz, /metrics (SPEC §5, §6, §7, §8).

The webhook handler answers in milliseconds: it checks, verifies, maps the delivery to tasks
(events.tasks_for) and queues them with one atomic Redis step; it never calls GitHub. A refused
request queues nothing. A refusal that leaves the body unread answers `Connection: close` and
closes (lingering_time 0): an oversized body is never drained.
"""
from __future__ import annotations

import asyncio
import collections
import time
import urllib.parse
from typing import Any, Callable

import orjson
from aiohttp import web
from gidgethub import ValidationFailure
from gidgethub.sansio import validate_event

from . import logs, metrics
from .context import Current, Liveness
from .events import PayloadError, tasks_for
from .pages.app import add_routes as add_pages
from .pages.ctx import Pages
from .redisconn import REDIS_UNAVAILABLE

log = logs.get(__name__)

HEALTH_TIMEOUT = 1.0
JSON_TYPES = ("application/json", "application/x-www-form-urlencoded")
MAX_DELIVERY_ID = 128        # GitHub's are 36-character UUIDs; the id becomes part of a Redis key
UNVERIFIED = "-"             # metric label before the signature is checked: unauthenticated
                             # callers must not be able to mint label values
LINES_PER_SECOND = 20        # per-delivery info lines; past this in one second, debug (see _Lines)


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


class _Lines:
    """The level of a delivery's info line. Up to `limit` a second stay at info; past that (a burst,
    a flood) they go to debug and one info line a second counts them by outcome. Writing a line is
    one of the larger costs of an intake near the bare minimum; refusals are warnings and always
    written."""

    def __init__(self, limit: int = LINES_PER_SECOND, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.clock = clock
        self.second = 0
        self.used = 0
        self.quieted: collections.Counter[str] = collections.Counter()

    def level(self, outcome: str) -> str:
        second = int(self.clock())
        if second != self.second:
            self.second, self.used = second, 0
        self.used += 1
        if self.used <= self.limit:
            return "info"
        if not self.quieted:
            asyncio.get_running_loop().call_later(1.0, self.flush)
        self.quieted[outcome] += 1
        return "debug"

    def flush(self) -> None:
        log.info("webhooks under load: the rest of the last second's lines went to debug", **self.quieted)
        self.quieted.clear()


class _Refused(Exception):
    """A refused webhook: status, metric outcome and the reason given to the caller."""

    def __init__(self, status: int, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.outcome, self.reason = status, outcome, reason


async def _read_limited(request: web.Request, limit: int) -> bytes:
    """The body, or _Refused(413) as soon as more than `limit` bytes have arrived (chunked or lying
    Content-Length): nothing past the limit is read."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > limit:
            raise _Refused(413, "too_large", f"body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(body: bytes, content_type: str) -> Any:
    """JSON, or GitHub's form mode `payload=<urlencoded JSON>`. ValueError when it is neither."""
    if content_type == "application/x-www-form-urlencoded":
        form = urllib.parse.parse_qs(body.decode("utf-8"), max_num_fields=16)
        if "payload" not in form:
            raise ValueError("form body without payload=")
        return orjson.loads(form["payload"][0])
    # orjson: parsing the payload is the largest cost of a webhook after the signature.
    return orjson.loads(body)


def _answer(label: str, outcome: str, status: int, body: dict[str, Any], fields: dict[str, Any],
            started: float, *, level: str = "info", **extra: Any) -> web.Response:
    """The one metric and the one log line of every webhook request, then its response."""
    metrics.webhooks(label, outcome).inc()
    # Never the body: only what identifies the delivery (SPEC §8).
    if log.enabled(level):
        getattr(log, level)("webhook", **{k: v for k, v in fields.items() if v is not None}, outcome=outcome,
                            status=status, ms=round((time.perf_counter() - started) * 1000, 1), **extra)
    return _json(status, body)


def make_app(current: Current, live: Liveness, pages: Pages | None = None) -> web.Application:
    """The aiohttp application: POST [server] path (fixed at startup), GET /healthz, GET /metrics,
    and with `pages` (server.public_url set) the run pages (pages/app.py). Each request reads the
    context in force from `current`; `live` is the worker pool's liveness."""
    app = web.Application(handler_args={"lingering_time": 0})
    lines = _Lines()

    def refuse_early(request: web.Request) -> _Refused | None:
        if live.draining:
            return _Refused(503, "draining", "shutting down")
        limit = current.ctx.config.server.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return _Refused(413, "too_large", f"body over {limit} bytes")
        return None

    async def expect_handler(request: web.Request) -> None:
        # "Expect: 100-continue": invite the body only when it would be read.
        if request.version >= (1, 1) and refuse_early(request) is None:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def webhook(request: web.Request) -> web.Response:
        started = time.perf_counter()
        headers = request.headers
        delivery = headers.get("X-GitHub-Delivery", "")
        event = headers.get("X-GitHub-Event", "")
        fields: dict[str, Any] = {"delivery": delivery or None, "event": event or None}
        ctx = current.ctx
        label = UNVERIFIED
        try:
            if refused := refuse_early(request):
                raise refused
            if not event:
                raise _Refused(400, "bad_request", "missing X-GitHub-Event header")
            if not delivery:
                raise _Refused(400, "bad_request", "missing X-GitHub-Delivery header")
            if len(delivery) > MAX_DELIVERY_ID or not delivery.isprintable() or " " in delivery:
                raise _Refused(400, "bad_request", "malformed X-GitHub-Delivery header")
            content_type = request.content_type
            if content_type not in JSON_TYPES:
                raise _Refused(400, "bad_request", f"content type {headers.get('Content-Type')!r} is not "
                                                   "application/json or application/x-www-form-urlencoded")
            body = await _read_limited(request, ctx.config.server.max_body_bytes)
            signature = headers.get("X-Hub-Signature-256")
            secret = ctx.config.github.webhook_secret
            if not secret:  # fail closed; `litbotd run` refuses to start this way anyway
                raise _Refused(401, "bad_signature", "no webhook secret configured")
            if not signature:
                raise _Refused(401, "bad_signature", "missing X-Hub-Signature-256 header")
            # validate_event also accepts "sha1=": this header must carry SHA-256.
            if not signature.startswith("sha256="):
                raise _Refused(401, "bad_signature", "X-Hub-Signature-256 is not sha256=")
            try:
                validate_event(body, signature=signature, secret=secret)
            except ValidationFailure:
                raise _Refused(401, "bad_signature", "signature does not match") from None
            label = event
            try:
                payload = _parse(body, content_type)
            except (ValueError, UnicodeDecodeError):
                raise _Refused(400, "bad_request", "body is not JSON") from None
            if not isinstance(payload, dict):
                raise _Refused(400, "bad_request", "body is not a JSON object")
            action, repo, inst = payload.get("action"), payload.get("repository"), payload.get("installation")
            fields.update(action=action if isinstance(action, str) else None,
                          repo=repo.get("full_name") if isinstance(repo, dict) else None,
                          installation=inst.get("id") if isinstance(inst, dict) else None)
            if event == "ping":
                return _answer(label, "ping", 200, {"ok": True, "zen": payload.get("zen")}, fields, started,
                               level=lines.level("ping"))
            try:
                tasks, reason = tasks_for(event, payload, delivery,
                                          command_prefix=ctx.config.github.command_prefix)
            except PayloadError as e:
                raise _Refused(400, "bad_request", str(e)) from None
            if not tasks:
                # Unclaimed: GitHub may redeliver it harmlessly, and Redis is spared a key per no-op.
                loud = reason == "logged" or "no installation" in reason
                return _answer(label, "ignored", 200, {"delivery": delivery, "ignored": reason}, fields, started,
                               reason=reason, level=lines.level("ignored") if loud else "debug")
            try:  # bounded by queue.CLAIM_TIMEOUT
                fresh = await ctx.queue.enqueue_delivery(delivery, tasks)
            except REDIS_UNAVAILABLE as e:
                raise _Refused(503, "redis_down", f"queue unavailable ({type(e).__name__})") from None
            if not fresh:
                return _answer(label, "duplicate", 200, {"delivery": delivery, "duplicate": True}, fields, started,
                               level=lines.level("duplicate"))
            return _answer(label, "queued", 202, {"delivery": delivery, "queued": len(tasks)}, fields, started,
                           level=lines.level("queued"), tasks=len(tasks))
        except _Refused as r:
            resp = _answer(label, r.outcome, r.status, {"error": r.reason}, fields, started,
                           reason=r.reason, level="warning")
            if not request.content.is_eof():
                resp.force_close()  # the unread rest of the body is never read: say so
            return resp

    async def healthz(request: web.Request) -> web.Response:
        body: dict[str, Any] = {"redis": False, "loop_lag_s": round(live.loop_lag, 3), "queued": None,
                                "delayed": None, "dead": None, "oldest_task_age_s": None,
                                "draining": live.draining}
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):
                depths = await current.ctx.queue.depths()
                oldest = await current.ctx.queue.oldest_age()
            body.update(depths, redis=True, oldest_task_age_s=None if oldest is None else round(oldest, 1))
            if current.ctx.queue.ack_replicas:
                async with asyncio.timeout(HEALTH_TIMEOUT):
                    await current.ctx.queue.connected_replicas()
        except REDIS_UNAVAILABLE:
            pass
        # With Sentinel and no replica connected: answering, but a failover now could lose deliveries.
        body["durability"] = current.ctx.queue.durability()
        # Workers or loops down for longer than a lease: the process is not doing its job.
        body["problem"] = live.health()
        ok = body["redis"] and not live.draining and body["problem"] is None
        return _json(200 if ok else 503, body)

    async def metrics_page(request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):
                depths = await current.ctx.queue.depths()
            for name, value in depths.items():
                metrics.QUEUE_DEPTH.labels(name).set(value)
        except REDIS_UNAVAILABLE:
            pass  # the last known depths stay; the scrape must not fail with Redis
        return web.Response(body=metrics.render(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    app.router.add_post(current.ctx.config.server.path, webhook, expect_handler=expect_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_page)
    if pages is not None:
        add_pages(app, pages)
    return app
