"""A run's page, its raw log, earlier lines and live log (SPEC §9).

    GET /runs/{owner}/{name}/{sha}/{run}/{attempt}/{mac}/          the page (streamed HTML)
    GET …/{mac}/log.txt        the raw log            GET …/{mac}/lines?from=&to=   lines as JSON
    GET …/{mac}/events?offset=&line=                  new lines as server-sent events

Every route resolves the run the same way (`_resolve`): a URL litbotd does not make, a key that
`access.can_view` refuses and a run nobody recorded are one and the same 404. The page is streamed:
its summary goes out before the log is indexed, and at most `runview.PAGE_LINES` lines (about
`PAGE_BYTES`) are rendered, tail first; earlier parts come on demand. Every log read goes through
`logstore.LogSource`.
"""
from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp_jinja2
import orjson
from aiohttp import ClientConnectionResetError, web
from aiohttp_sse import sse_response
from markupsafe import Markup

from .. import decisions, logs, runlink, runview
from ..backends.base import JobNotFound
from ..logstore import LogSource
from ..logview import Mark, Renderer, Segment, html_lines
from ..redisconn import REDIS_UNAVAILABLE
from ..runstate import RunRef, RunState
from . import access
from .ctx import PAGES, Pages

log = logs.get(__name__)

RENDER_BATCH = 500          # lines rendered per thread hop
RAW_CHUNK = 1024 * 1024
LOCAL_FOLLOW_INTERVAL = 0.2  # a local job's log file is looked at this often while someone follows it
STATE_INTERVAL = 1.0        # the run's state (has it ended?) is read this often while following


class NotFound(Exception):
    pass


@dataclass(frozen=True)
class Resolved:
    run: runlink.RunId
    job: str
    state: dict[str, str]
    spec: dict[str, Any]
    kept: bool              # the run ended and its page was kept (meta.json)
    marks: list[Mark] | None
    tests: str | None


async def _resolve(request: web.Request) -> Resolved:
    m = request.match_info
    run = runlink.parse(m["owner"], m["name"], m["sha"], m["run"], m["attempt"])
    if run is None or not await access.can_view(request, run):
        raise NotFound
    pages = request.app[PAGES]
    job = decisions.job_name(run.repo, run.sha, run.run, run.attempt)
    meta = await asyncio.to_thread(pages.store.read_meta, job)
    if meta is not None:
        return Resolved(run, job, dict(meta.get("state") or {}), dict(meta.get("spec") or {}), True,
                        [Mark.from_json(x) for x in meta.get("marks") or []], str(meta.get("tests") or ""))
    rs = RunState(pages.queue())
    ref = RunRef(run.repo, run.sha, run.run, run.attempt)
    state = await rs.get(ref)
    if not state:
        raise NotFound
    # The job's name is derived, never read from Redis: it becomes a path.
    return Resolved(run, job, state, await spec_of(rs, ref, pages), False, None, None)


async def spec_of(rs: RunState, ref: RunRef, pages: Pages) -> dict[str, Any]:
    """What the run was started with, as the page shows it (no env, no script, no token)."""
    entry = (await rs.runs(ref.repo, ref.sha)).get(ref.key)
    out: dict[str, Any] = {"pr": await rs.pr_of(ref.repo, ref.sha)}
    backend = pages.backend()
    out["backend"] = backend.name if backend is not None else pages.config().jobs.backend
    if entry is not None:
        r, _ = entry
        out.update(check_name=r.check_name, machine=r.machine, image=r.image)
    return out


async def _log_path(pages: Pages, r: Resolved) -> tuple[Path, bool]:
    """The file the page reads, and whether it is a Lightning mirror to refresh."""
    kept = pages.store.log_path(r.job)
    if r.kept or await asyncio.to_thread(kept.exists):
        return kept, False
    backend = pages.backend()
    log_file = getattr(backend, "log_file", None)
    if log_file is not None:
        return Path(log_file(r.job)), False   # a local job: its own log file
    cfg = pages.config()
    if backend is None and cfg.jobs.backend == "local":  # a listener without workers, beside them
        return Path(cfg.jobs.local.workdir) / r.job / "log.txt", False
    return pages.store.live_path(r.job), backend is not None


async def _source(pages: Pages, r: Resolved, final: bool) -> LogSource:
    path, mirrored = await _log_path(pages, r)
    backend = pages.backend()
    if mirrored and backend is not None:
        try:
            await pages.mirrors.refresh(r.job, backend, path, pages.config().jobs.poll_interval,
                                        pages.mask() if pages.mask is not None else None)
        except JobNotFound:
            pass  # not started yet: nothing to show
        except Exception as e:  # the page still shows what was read before
            log.warning("reading a job's log for its page failed", job=r.job,
                        error=logs.redact(f"{type(e).__name__}: {e}"))
    src = pages.sources.get(path)
    await asyncio.to_thread(src.refresh, final)
    return src


def _render(lines: list[str], renderer: Renderer) -> list[list[Segment]]:
    return [renderer.line(line) for line in lines]


def _render_html(first: int, lines: list[str], renderer: Renderer) -> Markup:
    return html_lines(first, _render(lines, renderer))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _answers(handler: Handler) -> Handler:
    """Every run-page route answers the same 404 for a run it may not show, and 503 while Redis is
    unavailable (which says nothing about the run)."""
    @functools.wraps(handler)
    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except NotFound:
            return not_found(request)
        except REDIS_UNAVAILABLE:
            return web.Response(status=503, text="Redis is unavailable; try again in a moment.",
                                headers={"Retry-After": "5"})
    return answer


def not_found(request: web.Request) -> web.Response:
    return web.Response(status=404, text=_NOT_FOUND, content_type="text/html", charset="utf-8")


_NOT_FOUND = ("<!doctype html><html lang=en><head><meta charset=utf-8><title>Not found</title>"
              "<link rel=stylesheet href=/static/litbotd.css></head><body><main><h1>Not found</h1>"
              "<p>There is no page at this address.</p></main></body></html>")


class _Part:
    """The part of the log a page shows, for the template."""

    def __init__(self, request: web.Request, r: Resolved, pages: Pages) -> None:
        self.request, self.r, self.pages = request, r, pages
        self.final = runview.final(r.state)

    async def load(self) -> "_Part":
        src = await _source(self.pages, self.r, self.final)
        self.src = src
        ix = src.index
        self.total, self.end, self.next = ix.lines, ix.end, ix.lines + 1
        self.marks = self.r.marks if self.r.marks is not None else list(ix.marks.marks)
        self.marks_dropped = 0 if self.r.marks is not None else ix.marks.dropped
        self.tests = self.r.tests if self.r.tests is not None else ix.marks.tests
        asked = self.request.query.get("from")
        win = runview.window(self.total, asked)
        if asked is None or win.later == 0:  # the tail (live lines follow it)
            self.first, self._lines = await asyncio.to_thread(src.tail, runview.PAGE_LINES, runview.PAGE_BYTES)
            self.later = 0
        else:
            self._lines, _ = await asyncio.to_thread(src.lines, win.first, runview.PAGE_LINES, runview.PAGE_BYTES)
            self.first = win.first
            self.later = win.first + len(self._lines)
        self.earlier = max(1, self.first - runview.PAGE_LINES)
        self.win = runview.Window(self.first, len(self._lines), self.earlier, self.later)
        return self

    def href(self, line: int) -> str:
        return runview.line_href(line, self.win)

    async def lines(self) -> AsyncIterator[Markup]:
        """The lines as HTML, RENDER_BATCH at a time, rendered and escaped off the event loop."""
        renderer = Renderer()
        for i in range(0, len(self._lines), RENDER_BATCH):
            yield await asyncio.to_thread(_render_html, self.first + i, self._lines[i:i + RENDER_BATCH], renderer)


@_answers
async def page(request: web.Request) -> web.StreamResponse:
    r = await _resolve(request)
    pages = request.app[PAGES]
    env = aiohttp_jinja2.get_env(request.app)
    facts = runview.facts(r.run.repo, r.run.sha, r.run.attempt, r.state, r.spec)
    resp = web.StreamResponse(headers={"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"})
    await resp.prepare(request)
    buf: list[str] = []

    async def flush() -> str:
        if buf:
            await resp.write("".join(buf).encode("utf-8", "surrogatepass"))
            buf.clear()
        return ""

    part = _Part(request, r, pages)

    async def window() -> _Part:
        return await part.load()

    template = env.get_template("run.html")
    size = 0
    try:
        async for piece in template.generate_async(run=facts, flush=flush, window=window):
            buf.append(piece)
            size += len(piece)
            if size >= 64 * 1024:
                await flush()
                size = 0
        await flush()
        await resp.write_eof()
    except (ConnectionResetError, ClientConnectionResetError):
        pass  # the reader went away mid-page
    return resp


@_answers
async def raw_log(request: web.Request) -> web.StreamResponse:
    r = await _resolve(request)
    pages = request.app[PAGES]
    src = await _source(pages, r, runview.final(r.state))
    end = await asyncio.to_thread(src.size) if runview.final(r.state) else src.index.end
    name = f"{r.job}-log.txt"
    resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store",
                                       "Content-Disposition": f'inline; filename="{name}"'})
    await resp.prepare(request)
    offset = 0
    while offset < end:
        data, after = await asyncio.to_thread(src.raw, offset, min(RAW_CHUNK, end - offset))
        if after <= offset:
            break
        await resp.write(data)
        offset = after
    await resp.write_eof()
    return resp


def _int(value: str | None, default: int, lo: int = 0, hi: int = 10 ** 12) -> int:
    if value is None or not value.isdigit() or len(value) > 13:
        return default
    return max(lo, min(int(value), hi))


@_answers
async def lines_json(request: web.Request) -> web.Response:
    r = await _resolve(request)
    pages = request.app[PAGES]
    src = await _source(pages, r, runview.final(r.state))
    first = _int(request.query.get("from"), 1, lo=1)
    to = _int(request.query.get("to"), first + runview.PAGE_LINES, lo=first)
    count = min(to - first, runview.PAGE_LINES)
    text, _ = await asyncio.to_thread(src.lines, first, count, runview.PAGE_BYTES) if count > 0 else ([], 0)
    segs = await asyncio.to_thread(_render, text, Renderer())
    return web.Response(body=orjson.dumps({"first": first, "lines": segs}), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


@_answers
async def events(request: web.Request) -> web.StreamResponse:
    """New lines after byte `offset` (line number `line`), until the run has ended and its log is read."""
    r = await _resolve(request)
    pages = request.app[PAGES]
    offset = _int(request.query.get("offset"), 0)
    line = _int(request.query.get("line"), 1, lo=1)
    # A reconnecting EventSource says where it was (each event's id is "offset:line"): no line twice.
    last, _, last_line = request.headers.get("Last-Event-ID", "").partition(":")
    if last.isdigit() and last_line.isdigit() and len(last) < 14 and len(last_line) < 14:
        offset, line = int(last), max(1, int(last_line))
    ref = RunRef(r.run.repo, r.run.sha, r.run.run, r.run.attempt)
    path, mirrored = await _log_path(pages, r)
    interval = pages.config().jobs.poll_interval if mirrored else LOCAL_FOLLOW_INTERVAL
    renderer = Renderer()
    async with sse_response(request, headers={"Cache-Control": "no-store"}) as resp:
        try:
            await _follow(resp, pages, r, ref, path, mirrored, interval, renderer, offset, line)
        except (ConnectionResetError, ClientConnectionResetError):
            pass  # the reader went away (closed the page, navigated)
    return resp


async def _follow(resp: Any, pages: Pages, r: Resolved, ref: RunRef, path: Path, mirrored: bool, interval: float,
                  renderer: Renderer, offset: int, line: int) -> None:
    """Send new lines as they come; stale state is re-read every STATE_INTERVAL; `end` once the
    run has concluded and its log is read to the end."""
    state = r.state
    final = runview.final(state)
    checked = time.monotonic()
    while resp.is_connected():
        if mirrored and not final:
            src = await _source(pages, r, final)
        else:
            src = pages.sources.get(path)
        text, after = await asyncio.to_thread(src.new_lines, offset, final)
        if text:
            segs = await asyncio.to_thread(_render, text, renderer)
            await resp.send(orjson.dumps({"first": line, "lines": segs}).decode(), event="lines",
                            id=f"{after}:{line + len(text)}")
            offset, line = after, line + len(text)
            continue
        if final:
            text_, badge = runview.status(state)
            await resp.send(orjson.dumps({"status_text": text_, "badge": badge}).decode(), event="end")
            break
        await asyncio.sleep(interval)
        if time.monotonic() - checked >= STATE_INTERVAL:
            checked = time.monotonic()
            try:
                state = await RunState(pages.queue()).get(ref) or state
            except REDIS_UNAVAILABLE:
                continue
            if runview.final(state):
                final = True
                if mirrored:  # one last read of the whole log
                    pages.mirrors.forget(r.job)
                    await _source(pages, r, False)


