"""Run pages' files (SPEC §9): the kept logs, their index, the link key. A thin file adapter.

    {report.logs_dir}/{job}/log.txt    the whole log, kept once the job ended (`report.keep_logs`)
    {report.logs_dir}/{job}/live.txt   a Lightning job's log while it runs, re-read every poll
    {report.logs_dir}/{job}/meta.json  what the page shows of a finished run (survives Redis' 30 days)

`LogSource` is the ONE place a run page reads a job's log: the page, the earlier-lines JSON, the
live events and the raw download all go through `LogSource._read`. A log is never read whole:
reads are bounded chunks, and the index (line count, a checkpoint per chunk, the annotation marks)
is built once, incrementally, as the file grows. Everything here blocks: callers run it with
`asyncio.to_thread`.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import threading
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from . import config
from .config import Config
from .logview import Marks, split_lines
from .runlink import KEY_BYTES

CHUNK = 1024 * 1024              # index checkpoint spacing and read size
# A line that starts (after blanks and colour codes) with `::` or `litci-`: what logview.Marks reads.
# Searched after a newline (a literal first byte: several times faster than a MULTILINE `^`).
_COMMAND_START = rb"[ \t]*(?:\x1b\[[0-?]*[ -/]*[@-~][ \t]*)*(?:::|litci-)"
_CANDIDATE_AT = re.compile(_COMMAND_START)
_CANDIDATE = re.compile(rb"\n" + _COMMAND_START)


def _candidates(data: bytes) -> Iterator[int]:
    """Where the lines that may be commands start."""
    if _CANDIDATE_AT.match(data):
        yield 0
    for m in _CANDIDATE.finditer(data):
        yield m.start() + 1
LINK_KEY_CREDENTIAL = "litbotd-link-key"
LINK_KEY_FILE = "link-key"


# -- the link key -------------------------------------------------------------------------------
def logs_dir(cfg: Config, env: Mapping[str, str] | None = None) -> str:
    """Where run pages are kept (config.logs_dir), under this process's $STATE_DIRECTORY."""
    return config.logs_dir(cfg, os.environ if env is None else env)


def load_link_key(env: Mapping[str, str] | None, fallback_dir: str) -> bytes:
    """The credential `litbotd-link-key` when present, else `link-key` in $STATE_DIRECTORY (or
    `fallback_dir`), created with KEY_BYTES (32) random bytes, mode 0600, the first time. `env`: os.environ
    unless given."""
    env = os.environ if env is None else env
    creds = env.get("CREDENTIALS_DIRECTORY")
    if creds and os.path.exists(os.path.join(creds, LINK_KEY_CREDENTIAL)):
        key = Path(creds, LINK_KEY_CREDENTIAL).read_bytes().strip()
        if len(key) < 16:
            raise ValueError(f"credential {LINK_KEY_CREDENTIAL}: shorter than 16 bytes")
        return key
    directory = Path(env.get("STATE_DIRECTORY", "").split(":")[0] or fallback_dir)
    path = directory / LINK_KEY_FILE
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{LINK_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(KEY_BYTES))
    try:
        os.link(tmp, path)  # two daemons starting at once: the first one's key wins
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return _read_key(path)


def link_key_problem(env: Mapping[str, str] | None, fallback_dir: str) -> str | None:
    """Why `load_link_key` would fail, without making anything (for check-config), or None."""
    env = os.environ if env is None else env
    creds = env.get("CREDENTIALS_DIRECTORY")
    if creds and os.path.exists(os.path.join(creds, LINK_KEY_CREDENTIAL)):
        path = Path(creds, LINK_KEY_CREDENTIAL)
    else:
        path = Path(env.get("STATE_DIRECTORY", "").split(":")[0] or fallback_dir) / LINK_KEY_FILE
    try:
        if len(path.read_bytes().strip()) < 16:
            return f"server.public_url: the run pages' link key {path} is shorter than 16 bytes"
        return None
    except FileNotFoundError:
        pass
    except OSError as e:
        return f"server.public_url: cannot read the run pages' link key {path}: {e.strerror or e}"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"server.public_url: cannot create the run pages' link key {path}: {parent} is not writable"
    return None


def _read_key(path: Path) -> bytes:
    key = path.read_bytes()
    if len(key) < 16:
        raise ValueError(f"{path}: the link key is shorter than 16 bytes")
    return key


# -- kept logs ----------------------------------------------------------------------------------
class Store:
    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def dir(self, job: str) -> Path:
        return self.root / job

    def log_path(self, job: str) -> Path:
        return self.dir(job) / "log.txt"

    def live_path(self, job: str) -> Path:
        return self.dir(job) / "live.txt"

    def read_meta(self, job: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.dir(job) / "meta.json").read_bytes())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_meta(self, job: str, meta: dict[str, Any]) -> None:
        d = self.dir(job)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".meta.{secrets.token_hex(4)}"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, d / "meta.json")

    def prepare(self, job: str) -> Path:
        self.dir(job).mkdir(parents=True, exist_ok=True, mode=0o750)
        return self.dir(job)

    def prune(self, keep: float, now: float | None = None) -> int:
        """Delete the kept pages of runs that finished more than `keep` seconds ago (by the time
        their log was kept; a running Lightning job's mirror is kept while it is refreshed)."""
        now = time.time() if now is None else now
        removed = 0
        root = Path(self.root)
        kept = [d for d in root.glob("litci-*") if d.is_dir() and not d.is_symlink()] if root.is_dir() else []
        for entry in kept:
            newest = 0.0
            for f in ("meta.json", "log.txt", "live.txt"):
                try:
                    newest = max(newest, (entry / f).stat().st_mtime)
                except FileNotFoundError:
                    pass
            if newest == 0.0:
                newest = entry.lstat().st_mtime
            if newest < now - keep:
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        return removed


# -- reading a log ------------------------------------------------------------------------------
@dataclass
class Index:
    """Line starts at chunk boundaries, the number of complete lines, and the marks."""
    checkpoints: list[tuple[int, int]] = field(default_factory=lambda: [(0, 1)])  # (offset, line number)
    end: int = 0           # bytes indexed: always the end of a complete line (or of the file when final)
    lines: int = 0         # lines in [0, end)
    marks: Marks = field(default_factory=Marks)


class LogSource:
    """A job's log file, read in bounded pieces (the one place the page reads logs)."""

    def __init__(self, path: Path, mask: Callable[[], Callable[[str], str] | None] | None = None) -> None:
        self.path = path
        self._mask = mask  # the masking in force (it changes on SIGHUP): asked at each read
        self.index = Index()
        self._identity: tuple[int, int] | None = None  # (device, inode): a replaced file starts over
        self._lock = threading.Lock()  # refresh runs on worker threads, one at a time per file

    # Every byte comes from `_read` (raw: offsets are file offsets), and everything shown leaves
    # through `_lines` (the page, earlier lines, live events, the marks) or `_raw_out` (log.txt).
    # Those two are where secrets are to be masked (issue 20): reads are cut at line ends.
    def _masking(self) -> Callable[[str], str] | None:
        return self._mask() if self._mask is not None else None

    def _lines(self, data: bytes) -> list[str]:
        lines = split_lines(data)
        mask = self._masking()
        return [mask(line) for line in lines] if mask is not None else lines

    def _raw_out(self, data: bytes) -> bytes:
        mask = self._masking()
        if mask is None:
            return data
        return mask(data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")

    def _read(self, offset: int, size: int) -> bytes:
        try:
            with open(self.path, "rb") as f:
                f.seek(offset)
                return f.read(size)
        except FileNotFoundError:
            return b""

    def size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0

    def exists(self) -> bool:
        return self.path.exists()

    def refresh(self, final: bool = False) -> Index:
        """Index what was appended since the last call (complete lines; with `final`, the last
        partial line too)."""
        with self._lock:
            return self._refresh(final)

    def _refresh(self, final: bool) -> Index:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self.index
        ident = (st.st_dev, st.st_ino)
        if self._identity != ident or st.st_size < self.index.end:  # replaced or truncated
            self.index, self._identity = Index(), ident
        ix = self.index
        while ix.end < st.st_size:
            data = self._read(ix.end, CHUNK)
            if not data:
                break
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                if not final and len(data) < CHUNK:
                    break  # a partial line: wait for its end
                cut = len(data)  # the file's last line, or a line longer than a chunk
            data = data[:cut]
            # Only lines that may be workflow commands or the job's own lines are decoded.
            at, lineno = 0, ix.lines + 1
            for start in _candidates(data):
                lineno += data.count(b"\n", at, start)
                end = data.find(b"\n", start)
                end = len(data) if end < 0 else end
                ix.marks.feed(lineno, (self._lines(data[start:end]) or [""])[0])
                at = start
            ix.lines += data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
            ix.end += cut
            if ix.end - ix.checkpoints[-1][0] >= CHUNK:
                ix.checkpoints.append((ix.end, ix.lines + 1))
        return ix

    def offset_of(self, line: int) -> int:
        """Byte offset where 1-based `line` starts (within the indexed part)."""
        ix = self.index
        line = max(1, min(line, ix.lines + 1))
        i = bisect_right([c[1] for c in ix.checkpoints], line) - 1
        offset, at = ix.checkpoints[i]
        while at < line and offset < ix.end:
            data = self._read(offset, min(CHUNK, ix.end - offset))
            if not data:
                break
            pos = 0
            while at < line:
                nl = data.find(b"\n", pos)
                if nl < 0:
                    break
                pos, at = nl + 1, at + 1
            if at == line:
                return offset + pos
            offset += len(data)  # every newline of this piece counted: on to the next
        return min(offset, ix.end)

    def lines(self, first: int, max_lines: int, max_bytes: int) -> tuple[list[str], int]:
        """Up to `max_lines` indexed lines from `first`, at most about `max_bytes` (at least one
        line); and the byte offset after the last one."""
        start = self.offset_of(first)
        end = min(self.index.end, start + max_bytes)
        data = self._read(start, end - start)
        if end < self.index.end:  # stop at a line end
            cut = data.rfind(b"\n") + 1
            data = data[:cut] if cut else data
        after = _offset_after_lines(data, max_lines)
        if after is not None and after < len(data):
            data = data[:after]
        return self._lines(data), start + len(data)

    def tail(self, max_lines: int, max_bytes: int) -> tuple[int, list[str]]:
        """The last lines of the indexed part, at most about `max_bytes`: (first line number, lines)."""
        ix = self.index
        start = max(0, ix.end - max_bytes)
        data = self._read(start, ix.end - start)
        if start > 0:  # the first line is cut: leave it out
            nl = data.find(b"\n")
            data = data[nl + 1:] if nl >= 0 else b""
        lines = self._lines(data)[-max_lines:]
        return ix.lines - len(lines) + 1, lines

    def raw(self, offset: int, size: int, final: bool = True) -> tuple[bytes, int]:
        """Bytes for the download from `offset`, cut at a line end unless a line is longer than
        `size` (or it is the file's last); and the offset after them."""
        data = self._read(offset, size)
        cut = data.rfind(b"\n") + 1
        if cut == 0 or (final and offset + len(data) >= self.size()):
            cut = len(data)
        return self._raw_out(data[:cut]), offset + cut

    def new_lines(self, offset: int, final: bool = False) -> tuple[list[str], int]:
        """Complete lines written after byte `offset` (bounded), and the offset after them."""
        data = self._read(offset, CHUNK)
        if not data:
            return [], offset
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            if not final and len(data) < CHUNK:
                return [], offset
            cut = len(data)
        return self._lines(data[:cut]), offset + cut


def _offset_after_lines(data: bytes, n: int) -> int | None:
    pos = 0
    for _ in range(n):
        nl = data.find(b"\n", pos)
        if nl < 0:
            return None
        pos = nl + 1
    return pos


def keep_copy(src: Path, dest: Path) -> bool:
    """Copy a finished job's log to where the page keeps it (atomically); False when there is none."""
    if not src.exists():
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{secrets.token_hex(4)}"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    return True
