"""What each task kind needs in its payload, checked before its handler runs (SPEC §8). Pure.

A handler declares its payload next to itself:

    @needs(repo=REPO, sha=SHA, run=STR, attempt=INT, installation=ID, pr=opt(ID))
    async def start_job(task, ctx): ...

Each field is required and non-null unless wrapped in `opt()` (then it may be absent or null);
fields a schema does not name are let through (an older or newer litbotd may add some). A payload
that does not fit is not retried: `check` raises PayloadInvalid naming the first field that does
not fit, and the worker sends the task to the dead letter at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, TypeVar

from .events import FULL_NAME_RE, SHA_RE
from .tasks import shown, type_name


class PayloadInvalid(ValueError):
    """A task payload that its kind's handler cannot work with; the message names the field."""


@dataclass(frozen=True)
class Kind:
    """One field's type: `ok(value)` says whether a value fits; `what` says what fits."""
    what: str
    ok: Callable[[Any], bool]
    optional: bool = False


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


STR = Kind("a string", lambda v: isinstance(v, str))
INT = Kind("an integer", _int)
ID = Kind("a positive integer", lambda v: _int(v) and v > 0)  # GitHub's ids and numbers
NUM = Kind("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
BOOL = Kind("true or false", lambda v: isinstance(v, bool))
REPO = Kind("owner/name", lambda v: isinstance(v, str) and FULL_NAME_RE.fullmatch(v) is not None)
SHA = Kind("a commit SHA (40 hex digits)", lambda v: isinstance(v, str) and SHA_RE.fullmatch(v) is not None)
LIST = Kind("a list", lambda v: isinstance(v, list))


def opt(kind: Kind) -> Kind:
    """The same type, or absent, or null."""
    return Kind(f"{kind.what} or null", kind.ok, optional=True)


@dataclass(frozen=True)
class Schema:
    fields: Mapping[str, Kind]

    def check(self, payload: Mapping[str, Any]) -> None:
        """PayloadInvalid naming the first field that is missing or of the wrong type."""
        for name, kind in self.fields.items():
            if name not in payload or payload[name] is None:
                if kind.optional:
                    continue
                raise PayloadInvalid(f"payload field {name}: missing" if name not in payload
                                     else f"payload field {name}: expected {kind.what}, got null")
            value = payload[name]
            if not kind.ok(value):
                raise PayloadInvalid(f"payload field {name}: expected {kind.what}, got {type_name(value)} "
                                     f"{shown(value, 40)!r}")


F = TypeVar("F", bound=Callable[..., Any])


def needs(**fields: Kind) -> Callable[[F], F]:
    """Declare a handler's payload: sets `handler.payload_schema` (functools.wraps keeps it)."""
    def mark(handler: F) -> F:
        vars(handler)["payload_schema"] = Schema(fields)  # the function's own __dict__, which wraps() copies
        return handler
    return mark


def schema_of(handler: Any) -> Schema | None:
    return getattr(handler, "payload_schema", None)
