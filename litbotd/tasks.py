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
        if d.get("v") != VERSION:
            raise TaskFormatError(f"unsupported task version {d.get('v')!r} (this litbotd reads v{VERSION})")
        if not isinstance(d.get("kind"), str) or not isinstance(d.get("id"), str):
            raise TaskFormatError("missing 'kind' or 'id'")
        if not isinstance(d.get("payload", {}), dict):
            raise TaskFormatError("'payload' is not an object")
        known = {"v", "id", "kind", "payload", "attempt", "created", "run_at", "error"}
        return cls(**{k: v for k, v in d.items() if k in known})

    def later(self, run_at: float) -> "Task":
        """The same task, to run again at `run_at` (a retry)."""
        return replace(self, run_at=run_at)

    def successor(self, kind: str, payload: dict[str, Any], run_at: float = 0.0, key: str = "") -> "Task":
        """A new task that follows this one. Its id derives from this one's (and `key`, which tells
        siblings apart), so the log lines of a chain can be followed by id."""
        return Task(kind=kind, payload=payload, id=derive_id(self.id, kind, key), run_at=run_at)

    def context(self) -> dict[str, Any]:
        ctx: dict[str, Any] = {"task": self.id, "phase": self.kind}
        for k in CONTEXT_KEYS:
            if self.payload.get(k) not in (None, ""):
                ctx[k] = self.payload[k]
        return ctx


def derive_id(parent: str, kind: str, extra: Any = "") -> str:
    """32 hex digits, like a fresh id; a hash, so the same inputs give the same id."""
    return hashlib.blake2b(f"{parent}/{kind}/{extra}".encode(), digest_size=16).hexdigest()
