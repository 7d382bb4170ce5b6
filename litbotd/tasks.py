"""The task envelope: what sits in `bot_queue` as readable JSON (SPEC §6). Pure.

A task is {"v": 1, "id", "kind", "payload", "attempt", "created", "run_at", "error"}.
`kind` names the phase or command ("new_event", "start_job", "wait_job", "results", ...);
`payload` holds what the handler needs; `run_at` > now sends it to the delayed set.
"""
from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

VERSION = 1
# Payload keys copied into every log line of the task (SPEC §7).
CONTEXT_KEYS = ("delivery", "repo", "pr", "sha", "run", "job")
ID_MAX = 200      # characters: ours are 32 hex digits; anything much longer is not one of ours
KIND_MAX = 64
SHOWN_MAX = 100   # characters of a task field in a log line (ids, kinds, payload values)


def shown(value: Any, limit: int = SHOWN_MAX) -> Any:
    """A task field as a log line shows it: ints, floats and bools as they are, anything else as a
    string cut to `limit` characters (a 100 kB id or a list must not fill every line)."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    s = value if isinstance(value, str) else repr(value)
    return s if len(s) <= limit else f"{s[:limit]}…[{len(s)} chars]"


def type_name(value: Any) -> str:
    return "null" if value is None else {bool: "bool", int: "int", float: "float", str: "string", list: "list",
                                          dict: "object"}.get(type(value), type(value).__name__)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# The envelope's fields besides v: (check, what it must be). Missing ones take their defaults.
_ENVELOPE: dict[str, tuple[Any, str]] = {
    "id": (lambda v: isinstance(v, str) and 0 < len(v) <= ID_MAX, f"a string of 1 to {ID_MAX} characters"),
    "kind": (lambda v: isinstance(v, str) and 0 < len(v) <= KIND_MAX, f"a string of 1 to {KIND_MAX} characters"),
    "payload": (lambda v: isinstance(v, dict), "an object"),
    "attempt": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer, 0 or more"),
    "created": (_number, "a number (epoch seconds)"),
    "run_at": (_number, "a number (epoch seconds)"),
    "error": (lambda v: v is None or isinstance(v, str), "a string or null"),
}


class TaskFormatError(ValueError):
    """A queue entry that is not a task envelope this version understands."""


class Permanent(Exception):
    """A failure that retrying cannot fix: the task goes straight to the dead letter."""


@dataclass(frozen=True)
class Task:
    kind: str
    payload: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    attempt: int = 0          # failed attempts so far
    created: float = field(default_factory=time.time)
    run_at: float = 0.0       # epoch seconds; 0 = now
    error: str | None = None  # last error, set on retry and in the dead letter
    v: int = VERSION

    def to_json(self) -> str:
        # Not dataclasses.asdict: it deep-copies the payload, a measurable cost on the webhook path.
        d = {"attempt": self.attempt, "created": self.created, "error": self.error, "id": self.id,
             "kind": self.kind, "payload": self.payload, "run_at": self.run_at, "v": self.v}
        return orjson.dumps(d, option=orjson.OPT_SORT_KEYS).decode()

    @classmethod
    def from_json(cls, raw: str | bytes) -> "Task":
        try:
            d = orjson.loads(raw)
        except ValueError as e:  # orjson.JSONDecodeError, invalid UTF-8 included
            raise TaskFormatError(f"not JSON: {e}") from None
        if not isinstance(d, dict):
            raise TaskFormatError("not a JSON object")
        if d.get("v") != VERSION or isinstance(d.get("v"), bool):
            raise TaskFormatError(f"unsupported task version {shown(d.get('v'), 20)!r} (this litbotd reads v{VERSION})")
        for name in ("id", "kind"):
            if name not in d:
                raise TaskFormatError(f"field '{name}': missing")
        for name, (ok, what) in _ENVELOPE.items():
            if name in d and not ok(d[name]):
                value = d[name]
                size = f" of {len(value)} characters" if isinstance(value, str) else ""
                raise TaskFormatError(f"field '{name}': expected {what}, got {type_name(value)}{size}")
        return cls(**{k: v for k, v in d.items() if k in _ENVELOPE or k == "v"})

    def later(self, run_at: float) -> "Task":
        """The same task, to run again at `run_at` (a retry)."""
        return replace(self, run_at=run_at)

    def successor(self, kind: str, payload: dict[str, Any], run_at: float = 0.0, key: str = "") -> "Task":
        """A new task that follows this one. Its id derives from this one's (and `key`, which tells
        siblings apart), so the log lines of a chain can be followed by id."""
        return Task(kind=kind, payload=payload, id=derive_id(self.id, kind, key), run_at=run_at)

    def context(self) -> dict[str, Any]:
        """The fields every log line about this task carries, each cut to SHOWN_MAX characters."""
        ctx: dict[str, Any] = {"task": shown(self.id), "phase": shown(self.kind)}
        for k in CONTEXT_KEYS:
            if self.payload.get(k) not in (None, ""):
                ctx[k] = shown(self.payload[k])
        return ctx


def derive_id(parent: str, kind: str, extra: Any = "") -> str:
    """32 hex digits, like a fresh id; a hash, so the same inputs give the same id."""
    return hashlib.blake2b(f"{parent}/{kind}/{extra}".encode(), digest_size=16).hexdigest()
