"""The one backoff: how long to wait before trying again (task retries, worker and loop restarts,
Redis reconnects, GitHub retries). Pure."""
from __future__ import annotations

import random


def backoff(attempt: int, base: float, cap: float, rng: random.Random | None = None, *,
            jitter: bool = True) -> float:
    """Delay before retry number `attempt` (1-based; 0 counts as the first): `base` doubling per
    attempt, at most `cap`. With `jitter`, a random share in [0.5, 1.0] of that, so that many
    failing callers do not retry in lockstep."""
    raw = min(cap, base * 2.0 ** min(max(0, attempt - 1), 64))  # the exponent bounded: no overflow
    return raw * (0.5 + 0.5 * (rng or random).random()) if jitter else raw
