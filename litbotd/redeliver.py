"""The redelivery sweeper (SPEC §5): ask GitHub again for webhooks that never reached litbotd.

GitHub never retries a failed delivery by itself. Every `redeliver_interval` the daemon lists the
App's recent deliveries (newest first, cursor pagination) back to `redeliver_window`, groups them
by `guid` (each redelivery attempt is its own entry with `redelivery: true` and the same guid) and
asks for a redelivery of each guid that
  - has no successful attempt (a 2xx/3xx answer; `status_code` 0 means no connection),
  - was never accepted by litbotd (the webhook intake remembers every delivery id it queued), and
  - nobody asked for yet: a Redis claim `SET NX` on `<queue>:redeliver:<guid>` (TTL: the window)
    makes it exactly one request across all daemons and all rounds.
"""
from __future__ import annotations

import time
from contextlib import aclosing
from datetime import datetime
from typing import Any

from . import logs
from .context import Context
from .github import GitHubError

log = logs.get("litbotd.redeliver")


def _succeeded(delivery: dict[str, Any]) -> bool:
    return 200 <= int(delivery.get("status_code") or 0) < 400


async def redeliver_once(ctx: Context) -> int:
    """One sweep. Returns how many redeliveries were asked for."""
    gh = ctx.github_app
    if gh is None:
        return 0
    window = ctx.config.github.redeliver_window
    cutoff = time.time() - window
    attempts: dict[str, list[dict[str, Any]]] = {}
    async with aclosing(gh.paginate("/app/hook/deliveries", None, {"per_page": 100})) as deliveries:
        async for d in deliveries:
            if datetime.fromisoformat(d["delivered_at"].replace("Z", "+00:00")).timestamp() < cutoff:
                break  # newest first: everything after this is older still
            attempts.setdefault(d["guid"], []).append(d)
    asked = 0
    for guid, tries in attempts.items():
        if any(_succeeded(t) for t in tries) or await ctx.queue.delivery_seen(guid):
            continue
        claim = ctx.queue.key("redeliver", guid)
        if not await ctx.redis.set(claim, "1", nx=True, ex=max(1, int(window))):
            continue
        newest = tries[0]
        try:
            await gh.post(f"/app/hook/deliveries/{newest['id']}/attempts", None)
        except GitHubError as e:
            # Not asked after all: let the next round (here or elsewhere) try again.
            await ctx.redis.delete(claim)
            log.warning("redelivery request failed", delivery=guid, status=e.status, error=e.message)
            continue
        asked += 1
        log.info("asked GitHub to redeliver a failed webhook", delivery=guid, event=newest.get("event"),
                 status_code=newest.get("status_code"))
    return asked
