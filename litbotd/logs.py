"""Logs an operator can read at 3 a.m. (SPEC §7).

One line per event: a message, then `key=value` fields. The fields of the task being handled
(delivery, task, phase, repo, pr, sha, run, job) come from a context variable, so every line
written while a task runs carries them. Under systemd (`JOURNAL_STREAM` set) lines get journald's
`<N>` priority prefix; `format = "json"` writes one JSON object per line. Every line passes a
redactor that removes configured secrets and anything shaped like a GitHub token, and masks every
value of the job secrets store in each of its forms (masking.py), whatever logged it.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import sys
import time
import types
from typing import Any, Iterable, Iterator, Mapping, TextIO

from . import masking, redaction

_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "litbotd_log_context", default=types.MappingProxyType({}))  # read-only: every context() sets a new one
_secrets: list[str] = []  # redaction.secret_parts of the configured secrets
_JOURNAL_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


_job_masker: list[masking.Masker] = [masking.Masker(())]  # the job secrets store's values


def set_secrets(values: list[str]) -> None:
    """Remember the secret values to scrub (called at start and on reload)."""
    _secrets[:] = redaction.secret_parts(values)


def set_job_secrets(values: Iterable[str]) -> None:
    """Mask these job secret values in every line from now on (at start, and when a reload
    brings a new store: the old values stay masked as well, a job may still print them)."""
    _job_masker[0] = masking.Masker({*values, *_job_masker[0].values})


def redact(text: str) -> str:
    text = redaction.redact(text, _secrets)
    return _job_masker[0].mask(text) if _job_masker[0] else text


safe_url = redaction.mask_url  # a URL fit for a log line or a message: its password replaced by ***


@contextlib.contextmanager
def context(**fields: Any) -> Iterator[None]:
    """Add fields to every log line written inside the block (per asyncio task)."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


_NEEDS_QUOTES = re.compile(r'[\s"=]')


def _value(v: Any) -> str:
    s = str(v)
    if s == "" or _NEEDS_QUOTES.search(s):
        return json.dumps(s)
    return s


class _Formatter(logging.Formatter):
    def __init__(self, style: str) -> None:
        super().__init__()
        self.style_name = style

    def format(self, record: logging.LogRecord) -> str:
        fields = {**getattr(record, "ctx", {}), **getattr(record, "kv", {})}
        msg = record.getMessage()
        exc = record.exc_text or (self.formatException(record.exc_info) if record.exc_info else "")
        if self.style_name == "json":
            # Redacted before encoding: JSON escaping would hide a secret holding a quote or newline.
            obj = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
                   "msg": redact(msg), **{k: v if v is None or isinstance(v, (int, float, bool)) else redact(str(v))
                                          for k, v in fields.items()}}
            if exc:
                obj["exc"] = redact(exc)
            return json.dumps(obj)
        kv = " ".join(f"{k}={_value(v)}" for k, v in fields.items())
        line = f"{msg} {kv}".rstrip()
        if exc:
            line += "\n  " + exc.replace("\n", "\n  ")  # indented: the traceback reads as one event
        if self.style_name == "journal":
            # journald makes an entry of every line: each one needs the prefix, or the traceback
            # under an error would be logged at info and vanish from `journalctl -p err`.
            prefix = f"<{_JOURNAL_PRIORITY.get(record.levelno, 6)}>"
            return prefix + redact(line).replace("\n", "\n" + prefix)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return redact(f"{ts}Z {record.levelname:<7} {record.name} {line}")


def _scrubbed_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
    """Record factory: the message and traceback are redacted when the record is made, so every
    handler (pytest's caplog, a syslog handler someone adds) sees them scrubbed, not only ours."""
    record = _base_factory(*args, **kwargs)
    try:
        record.msg, record.args = redact(record.getMessage()), None
    except Exception:  # a bad %-format: leave it to logging's own error report
        return record
    if record.exc_info and record.exc_info[0] is not None:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    return record


_base_factory = logging.getLogRecordFactory()


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.ctx = _context.get()
        return True


def _on_journal(stream: TextIO) -> bool:
    """systemd sets JOURNAL_STREAM to "<dev>:<inode>" of the stderr it connected to journald. A
    child whose stderr was redirected elsewhere inherits the variable, so compare the two."""
    want = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


def resolve_format(fmt: str, stream: TextIO | None = None) -> str:
    """"auto" is "journal" when stderr goes to journald, else "text"."""
    if fmt == "auto":
        return "journal" if _on_journal(stream or sys.stderr) else "text"
    return fmt


class _Handler(logging.StreamHandler[TextIO]):
    """litbotd's own handler on the root logger: setup() finds it again on a reload."""
    litbotd = True  # the mark on the handler (tests count handlers by it)


def setup(level: str = "info", fmt: str = "auto", secrets: list[str] | None = None,
          stream: TextIO | None = None) -> None:
    """Configure the root logger (idempotent: reload calls it again with new values).
    `stream` defaults to stderr; tests pass their own."""
    set_secrets(secrets or [])
    # Lines carry no file, line, thread or process fields: skip computing them for every record
    # (the logging HOWTO's "Optimization" settings; this matters on the webhook path).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    if logging.getLogRecordFactory() is not _scrubbed_record:
        logging.setLogRecordFactory(_scrubbed_record)
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _Handler)), None)
    if handler is None:
        handler = _Handler(stream or sys.stderr)
        handler.addFilter(_ContextFilter())
        root.addHandler(handler)
    elif stream is not None:
        handler.setStream(stream)
    handler.setFormatter(_Formatter(resolve_format(fmt, handler.stream)))
    root.setLevel(level.upper())
    # Third-party libraries stay quiet unless debugging litbotd itself.
    for noisy in ("aiohttp.access", "asyncio", "lightning_sdk", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class Log:
    """logging.Logger with key=value fields: `log.info("job started", run=key, job=name)`."""

    def __init__(self, name: str) -> None:
        self._log = logging.getLogger(name)

    def _emit(self, level: int, msg: str, exc_info: bool, kv: dict[str, Any]) -> None:
        # Fields are redacted by the formatter, with the whole line: once per line is enough.
        if self._log.isEnabledFor(level):
            self._log.log(level, msg, exc_info=exc_info, extra={"kv": kv})

    def enabled(self, level: str) -> bool:
        """Whether a line at `level` ("debug", "info", ...) would be written: skip building it if not."""
        return self._log.isEnabledFor(_LEVELS[level])

    def debug(self, msg: str, **kv: Any) -> None:
        self._emit(logging.DEBUG, msg, False, kv)

    def info(self, msg: str, **kv: Any) -> None:
        self._emit(logging.INFO, msg, False, kv)

    def warning(self, msg: str, **kv: Any) -> None:
        self._emit(logging.WARNING, msg, False, kv)

    def error(self, msg: str, **kv: Any) -> None:
        self._emit(logging.ERROR, msg, False, kv)

    def exception(self, msg: str, **kv: Any) -> None:
        self._emit(logging.ERROR, msg, True, kv)


def get(name: str) -> Log:
    return Log(name)
