"""github.classify: what one response means for a call, as a table. No HTTP, no Redis."""
from __future__ import annotations

import random
from typing import Any

import pytest

from litbotd import github
from litbotd.github import MAX_ATTEMPTS, MAX_WAIT, Fail, Ok, Reauthenticate, Tries, Wait, classify

NOW = 1_000_000.0
LAST = MAX_ATTEMPTS - 1  # tries spent before the last attempt


class _NoJitter(random.Random):
    def random(self) -> float:
        return 1.0  # backoff's jitter at its top: the full doubling


ROWS: list[tuple[str, int, dict[str, str], Any, Tries, github.Verdict]] = [
    ("success", 200, {}, {"id": 1}, Tries(), Ok()),
    ("not modified is an answer", 304, {}, None, Tries(), Ok()),
    ("unreachable: back off", 0, {}, "ClientConnectorError", Tries(), Wait(1.0, github.UNREACHABLE)),
    ("unreachable again: doubled", 0, {}, "ServerTimeoutError", Tries(failures=2), Wait(4.0, github.UNREACHABLE)),
    ("unreachable, attempts spent", 0, {}, "ClientConnectorError", Tries(failures=LAST),
     Fail(f"ClientConnectorError after {MAX_ATTEMPTS} attempts")),
    ("server error: back off", 502, {}, "Bad Gateway", Tries(), Wait(1.0, github.SERVER_ERROR)),
    ("server error, fourth try", 503, {}, "", Tries(failures=LAST - 1), Wait(8.0, github.SERVER_ERROR)),
    ("server error, attempts spent", 500, {}, {"message": "boom"}, Tries(failures=LAST), Fail("500 boom")),
    ("Retry-After", 403, {"retry-after": "42"}, {"message": "x"}, Tries(), Wait(42.0, github.RATE_LIMIT)),
    ("Retry-After on a 429", 429, {"retry-after": "7"}, None, Tries(), Wait(7.0, github.RATE_LIMIT)),
    ("primary limit: until the reset", 403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(NOW) + 30)},
     {"message": "API rate limit exceeded"}, Tries(), Wait(31.0, github.RATE_LIMIT)),
    ("primary limit, reset already past", 403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(NOW) - 5)},
     {"message": "API rate limit exceeded"}, Tries(), Wait(1.0, github.RATE_LIMIT)),
    ("an unreadable Retry-After falls back to the reset", 403,
     {"retry-after": "soon", "x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(NOW) + 9)}, None, Tries(),
     Wait(10.0, github.RATE_LIMIT)),
    ("secondary limit: a minute", 403, {}, {"message": "You have exceeded a secondary rate limit"}, Tries(),
     Wait(60.0, github.RATE_LIMIT)),
    ("429 without headers: a minute, doubling", 429, {}, None, Tries(limited=2), Wait(240.0, github.RATE_LIMIT)),
    ("no wait beyond MAX_WAIT", 429, {"retry-after": "100000"}, None, Tries(), Wait(MAX_WAIT, github.RATE_LIMIT)),
    ("rate-limit waits spent", 429, {"retry-after": "1"}, {"message": "slow down"}, Tries(limited=LAST),
     Fail("429 slow down")),
    ("a plain 403 is a permission problem", 403, {"x-ratelimit-remaining": "4000"},
     {"message": "Resource not accessible by integration"}, Tries(),
     Fail("403 Resource not accessible by integration")),
    ("401 with a cached token: mint again", 401, {}, {"message": "Bad credentials"}, Tries(can_reauth=True),
     Reauthenticate()),
    ("401 once re-authenticated (or as the App)", 401, {}, {"message": "Bad credentials"}, Tries(),
     Fail("401 Bad credentials")),
    ("404", 404, {}, {"message": "Not Found"}, Tries(failures=1), Fail("404 Not Found")),
    ("422 with a text body", 422, {}, "Validation Failed", Tries(), Fail("422 Validation Failed")),
    ("an error without a message", 410, {}, None, Tries(), Fail("410 None")),
]


@pytest.mark.parametrize("status,headers,body,tries,expected", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_classify(status: int, headers: dict[str, str], body: Any, tries: Tries, expected: github.Verdict) -> None:
    assert classify(status, headers, body, tries, NOW, _NoJitter()) == expected


def test_backoff_is_jittered_between_half_and_all_of_the_doubling() -> None:
    waits = [classify(502, {}, "", Tries(failures=1), NOW) for _ in range(200)]
    assert all(isinstance(w, Wait) and 1.0 <= w.seconds <= 2.0 for w in waits)
    assert len({w.seconds for w in waits if isinstance(w, Wait)}) > 1


AFTER = [
    (Tries(), Wait(1.0, github.UNREACHABLE), Tries(failures=1)),
    (Tries(failures=1), Wait(2.0, github.SERVER_ERROR), Tries(failures=2)),
    (Tries(failures=1), Wait(60.0, github.RATE_LIMIT), Tries(failures=1, limited=1)),
    (Tries(can_reauth=True), Reauthenticate(), Tries(can_reauth=False)),
    (Tries(limited=2), Ok(), Tries(limited=2)),
]


@pytest.mark.parametrize("before,verdict,after", AFTER)
def test_tries_after_a_verdict(before: Tries, verdict: github.Verdict, after: Tries) -> None:
    assert before.after(verdict) == after


def test_a_call_ends_within_its_attempts() -> None:
    """Walking classify as request does, any steady failure ends in Fail within the bounds."""
    for status, headers in ((0, {}), (503, {}), (429, {}), (401, {}), (403, {"retry-after": "1"})):
        tries, seen = Tries(can_reauth=True), 0
        while not isinstance(verdict := classify(status, headers, "e", tries, NOW), Fail):
            assert not isinstance(verdict, Ok)
            tries, seen = tries.after(verdict), seen + 1
        assert seen <= MAX_ATTEMPTS, status
