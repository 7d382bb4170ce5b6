"""Secrets out of text: the one place that knows what a secret looks like (SPEC §7, §8). Pure.

Used for every log line (logs.py), every message a job backend raises (backends/) and the
effective config that `check-config` prints (config.py).
"""
from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"
# GitHub tokens (installation ghs_, user gho_/ghu_, PATs ghp_/github_pat_), JWTs, PEM bodies.
TOKEN_RE = re.compile(
    r"(gh[opsur]_[A-Za-z0-9]{16,}|github_pat_[A-Za-z0-9_]{20,}|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(-----END [A-Z ]*PRIVATE KEY-----|$))"
)
# The password in a URL such as redis://:pass@host or rediss://user:pass@host.
_URL_PASSWORD_RE = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^/\s@]+@", re.I)


def mask_url(text: str) -> str:
    """The password of every URL in `text` replaced by ***."""
    return _URL_PASSWORD_RE.sub(rf"\1{MASK}@", text)


def secret_parts(values: Iterable[str]) -> list[str]:
    """What to look for, longest first, given secret values: each value and, for a PEM, each of
    its body lines (a key also leaks line by line in tracebacks and wrapped output)."""
    parts: set[str] = set()
    for v in values:
        v = v.strip()
        if len(v) >= 4:
            parts.add(v)
            parts.update(ln.strip() for ln in v.splitlines() if len(ln.strip()) >= 16 and not ln.startswith("-----"))
    return sorted(parts, key=len, reverse=True)


def redact(text: str, parts: Iterable[str] = ()) -> str:
    """Tokens, keys and URL passwords by their shape, then the given `secret_parts`."""
    # Shapes first: a whole PEM block becomes one *** (also in its repr, newlines escaped).
    text = TOKEN_RE.sub(MASK, text)
    if "://" in text:  # the URL pattern is the slow one: most lines hold no URL
        text = mask_url(text)
    for s in parts:
        if s in text:
            text = text.replace(s, MASK)
    return text


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret value (a job's token, its env values) in a message with ***."""
    for s in sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True):
        text = text.replace(s, MASK)
    return text
