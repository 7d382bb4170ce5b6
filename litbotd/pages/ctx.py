"""What the pages need from the daemon, handed in by the web app builder (no globals)."""
from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from aiohttp import web

from ..backends.base import Backend
from ..config import Config
from ..logstore import LogSource, Store
from ..queue import Queue

SOURCES_KEPT = 64  # log indexes kept in memory (a few KB each, whatever the log's size)
# The masking of job secrets in force (issue 20), asked at each read: None shows the log as written.
Masking = Callable[[], Callable[[str], str] | None]


class Sources:
    """One LogSource per log file, so its index is built once and extended as the file grows."""

    def __init__(self, limit: int = SOURCES_KEPT, mask: Masking | None = None) -> None:
        self.limit = limit
        self.mask = mask
        self._by_path: collections.OrderedDict[Path, LogSource] = collections.OrderedDict()

    def get(self, path: Path) -> LogSource:
        src = self._by_path.get(path)
        if src is None:
            src = self._by_path[path] = LogSource(path, self.mask)
            while len(self._by_path) > self.limit:
                self._by_path.popitem(last=False)
        self._by_path.move_to_end(path)
        return src


class Mirrors:
    """A running Lightning job's log, copied to the VM at most once per `poll_interval`, however
    many people follow it (lightning-sdk returns the whole log at each read)."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._fresh: dict[str, float] = {}

    async def refresh(self, job: str, backend: Backend, dest: Path, interval: float,
                      mask: Callable[[str], str] | None = None) -> None:
        lock = self._locks.setdefault(job, asyncio.Lock())
        async with lock:
            if time.monotonic() - self._fresh.get(job, -interval) < interval:
                return
            try:
                await backend.copy_log(job, str(dest), mask)  # masked before it is stored
            finally:
                self._fresh[job] = time.monotonic()
                if len(self._fresh) > 1024:  # forget the oldest
                    for k in sorted(self._fresh, key=self._fresh.__getitem__)[:512]:
                        self._fresh.pop(k, None)
                        self._locks.pop(k, None)


    def forget(self, job: str) -> None:
        """The next refresh reads again at once (the job has just ended)."""
        self._fresh.pop(job, None)


@dataclass(frozen=True)
class Pages:
    config: Callable[[], Config]                 # the config in force (replaced on SIGHUP)
    queue: Callable[[], Queue]                 # for the run's recorded state
    backend: Callable[[], Backend | None]      # where running jobs' logs are read
    store: Store                                 # kept logs and pages
    link_key: bytes = field(repr=False)
    mask: Masking | None = None                  # job secrets out of everything shown (issue 20)
    sources: Sources = field(default_factory=Sources)
    mirrors: Mirrors = field(default_factory=Mirrors)

    def __post_init__(self) -> None:
        if self.mask is not None:
            self.sources.mask = self.mask


PAGES = web.AppKey("litbotd_pages", Pages)
