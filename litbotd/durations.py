"""The one duration grammar, for the config and for workflow files (SPEC §3, §4). Pure.

A duration is one or more `<number><unit>` parts, units ms, s, m, h, d, with optional spaces:
"15s", "250ms", "5m", "1h30m", "1h 30m 15s". A bare number is accepted only where the caller says
what unit it counts in (config: seconds; a workflow's `timeout`: minutes, as a YAML number only).
"""
from __future__ import annotations

import re

UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)"
_WHOLE = re.compile(rf"\s*(?:{_PART}\s*)+\Z")
_PARTS = re.compile(_PART)
_BARE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*\Z")


def seconds(text: str, bare_unit: str | None = None) -> float | None:
    """`text` in seconds, or None when it is not a duration. A bare number ("7") counts in
    `bare_unit`; without one it is not a duration."""
    if bare_unit is not None and (m := _BARE.match(text)):
        return float(m.group(1)) * UNIT_SECONDS[bare_unit]
    if not _WHOLE.match(text):
        return None
    return sum(float(n) * UNIT_SECONDS[u] for n, u in _PARTS.findall(text))
