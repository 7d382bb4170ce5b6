"""A run page's address and its link key (SPEC §9, `server.auth = "link"`). Pure.

    {public_url}/runs/{owner}/{name}/{sha}/{run}/{attempt}/{mac}/            the page
    …/{mac}/log.txt   the raw log        …/{mac}/lines   earlier lines (JSON)
    …/{mac}/events    the live log (server-sent events)

`mac` is an HMAC-SHA256 of the run's identity (repository, commit, run key, attempt) under the
daemon's link key, cut to 128 bits: whoever sees a check run can open its page, and nothing in one
URL helps to make another's. Every segment is checked against a strict pattern before anything
else looks at it: a `..`, a slash, an odd character or a wrong key are the same 404.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import urllib.parse
from dataclasses import dataclass

MAC_HEX = 32
KEY_BYTES = 32
_OWNER = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$")
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_SHA = re.compile(r"^[0-9a-f]{40}$")
_RUN = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_ATTEMPT = re.compile(r"^[1-9][0-9]{0,5}$")
_MAC = re.compile(rf"^[0-9a-f]{{{MAC_HEX}}}$")


@dataclass(frozen=True)
class RunId:
    repo: str      # "owner/name"
    sha: str
    run: str       # the run's key (workflows.Run.key)
    attempt: int

    def message(self) -> bytes:
        return f"litbotd-run-page\n{self.repo}\n{self.sha}\n{self.run}\n{self.attempt}".encode()


def parse(owner: str, name: str, sha: str, run: str, attempt: str) -> RunId | None:
    """The run named by a URL's segments, or None when any of them is not what litbotd makes."""
    if not (_OWNER.match(owner) and _NAME.match(name) and name not in (".", "..") and _SHA.match(sha)
            and _RUN.match(run) and _ATTEMPT.match(attempt)):
        return None
    return RunId(f"{owner}/{name}", sha, run, int(attempt))


def mac(key: bytes, run: RunId) -> str:
    return hmac.new(key, run.message(), hashlib.sha256).hexdigest()[:MAC_HEX]


def verify(key: bytes, run: RunId, given: str) -> bool:
    """Constant time; a malformed `given` is simply wrong."""
    if not isinstance(given, str) or not _MAC.match(given):
        return False
    return hmac.compare_digest(mac(key, run), given)


def path(key: bytes, run: RunId) -> str:
    """The page's path (ends with '/'), every segment percent-encoded."""
    owner, name = run.repo.split("/", 1)
    parts = (owner, name, run.sha, run.run, str(run.attempt), mac(key, run))
    return "/runs/" + "/".join(urllib.parse.quote(p, safe="") for p in parts) + "/"


def url(public_url: str, key: bytes, run: RunId) -> str:
    return public_url.rstrip("/") + path(key, run)


@dataclass(frozen=True)
class Links:
    """The run pages' addresses, for check runs' `details_url` (server.public_url + the link key)."""
    public_url: str
    key: bytes

    def __repr__(self) -> str:  # the key never reaches a log
        return f"Links({self.public_url!r})"

    def url(self, repo: str, sha: str, run: str, attempt: int) -> str:
        return url(self.public_url, self.key, RunId(repo, sha, run, attempt))
