"""What litbotd remembers about pull requests and runs, in Redis (a thin adapter).

    q:sha:<repo>@<sha>                 hash  spec:<run> -> JSON {run, check_name}, attempt:<run> -> int,
                                             spent, untrusted, cost_approved_by (spend.py, SPEC §11)
    q:run:<repo>@<sha>:<run>:<attempt> hash  status, check_run_id, job, times, url, message,
                                             cancel_reason, conclusion (set once: first terminal wins),
                                             try (the infrastructure try now, 1 when absent), tries
                                             (how many it may have),
                                             try:<n> (how try n ended, SPEC §11), try_cost:<n>
                                             (what it cost, when the backend said),
                                             price, projected, held, spent (the sum of spent:<try>, each
                                             set once: spend.py's ledger), spent_day
    q:pr:<repo>#<pr>                   hash  head, base_ref, installation, comment_id, approved,
                                             version (changes), commented (version shown)
    q:pr:<repo>#<pr>:shas              set   every head SHA seen, for supersede and close

Everything expires after 30 days; GitHub keeps the durable record (check runs, the comment).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

from redis.typing import EncodableT, FieldT

from .queue import Queue
from .workflows import Run, run_from_jsonable, to_jsonable

TTL = 30 * 24 * 3600
# Replies are str (every client decodes: redisconn.connect); redis-py types them bytes | str,
# hence the casts marked "decoded".

# KEYS: sha hash. ARGV: run key, owner task id, ttl.
_NEW_ATTEMPT = """
local mine = 'by:' .. ARGV[2] .. ':' .. ARGV[1]
local n = redis.call('HGET', KEYS[1], mine)
if n then return tonumber(n) end
n = redis.call('HINCRBY', KEYS[1], 'attempt:' .. ARGV[1], 1)
redis.call('HSET', KEYS[1], mine, n)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return n
"""

_CONCLUDE = """
if redis.call('HSETNX', KEYS[1], 'conclusion', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'message', ARGV[2], 'finished_at', ARGV[3], 'status', 'completed')
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
return redis.call('HMGET', KEYS[1], 'conclusion', 'message')
"""


# KEYS: run hash. ARGV: allowed statuses, comma-separated ('' = none recorded yet), ttl, then field,
# value pairs. A run that has concluded, or whose cancel was requested, takes no transition: it
# never goes back to running (only _CONCLUDE ends a run).
_TRANSITION = """
if redis.call('HEXISTS', KEYS[1], 'conclusion') == 1 or redis.call('HEXISTS', KEYS[1], 'cancel_reason') == 1 then
  return 0
end
local status = redis.call('HGET', KEYS[1], 'status') or ''
if not string.find(',' .. ARGV[1] .. ',', ',' .. status .. ',', 1, true) then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: run hash. ARGV: reason, ttl. 1 if the cancel was recorded, 0 if the run had already ended.
_REQUEST_CANCEL = """
if redis.call('HEXISTS', KEYS[1], 'conclusion') == 1 then return 0 end
redis.call('HSETNX', KEYS[1], 'cancel_reason', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


# KEYS: run hash. ARGV: the try that ended, how it ended (one line), ttl, tries in all, its cost
# (USD, '' when unknown). The try now in force:
# from + 1 when this call (or an earlier run of the same task) advanced it, another number when a
# different task did; 0 when the run has concluded or is being cancelled (no further try).
_ADVANCE_TRY = """
if redis.call('HEXISTS', KEYS[1], 'conclusion') == 1 or redis.call('HEXISTS', KEYS[1], 'cancel_reason') == 1 then
  return 0
end
local cur = tonumber(redis.call('HGET', KEYS[1], 'try') or '1')
if cur == tonumber(ARGV[1]) then
  cur = cur + 1
  redis.call('HSET', KEYS[1], 'try', cur, 'try:' .. ARGV[1], ARGV[2], 'tries', ARGV[4])
  if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'try_cost:' .. ARGV[1], ARGV[5]) end
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return cur
"""


@dataclass(frozen=True)
class RunRef:
    repo: str
    sha: str
    key: str
    attempt: int


class RunState:
    def __init__(self, queue: Queue) -> None:
        self.q = queue
        self.r = queue.redis
        self._new_attempt = self.r.register_script(_NEW_ATTEMPT)
        self._transition = self.r.register_script(_TRANSITION)
        self._conclude = self.r.register_script(_CONCLUDE)
        self._request_cancel = self.r.register_script(_REQUEST_CANCEL)

    def _sha(self, repo: str, sha: str) -> str:
        return self.q.key("sha", f"{repo}@{sha}")

    def _run(self, ref: RunRef) -> str:
        return self.q.key("run", f"{ref.repo}@{ref.sha}", ref.key, str(ref.attempt))

    def _pr(self, repo: str, pr: int) -> str:
        return self.q.key("pr", f"{repo}#{pr}")

    def run_key(self, ref: RunRef) -> str:
        """The run's hash, for spend.py's ledger (its `spent` is set once)."""
        return self._run(ref)

    def sha_key(self, repo: str, sha: str) -> str:
        """The commit's hash, for spend.py's ledger (its `spent`)."""
        return self._sha(repo, sha)

    def pr_key(self, repo: str, pr: int) -> str:
        """The PR's hash, for a write fenced by the comment claim (locks.FencedLock.commit)."""
        return self._pr(repo, pr)

    # -- runs of a SHA --------------------------------------------------------------------------------
    async def add_runs(self, repo: str, sha: str, runs: list[Run], pr: int | None, owner: str) -> dict[str, int]:
        """Record the runs planned for a SHA by task `owner`; returns {run key: attempt} of the runs
        this task is to start: the ones it recorded first — also when it runs again after a crash,
        since its successors were never committed — but not those of another event for the SHA."""
        key = self._sha(repo, sha)
        async with self.r.pipeline(transaction=True) as p:
            for run in runs:
                p.hsetnx(key, f"spec:{run.key}", json.dumps(to_jsonable(run)))
                p.hsetnx(key, f"attempt:{run.key}", 1)
                p.hsetnx(key, f"owner:{run.key}:1", owner)
            if pr is not None:
                p.hset(key, "pr", pr)  # a fork PR's check_run events carry no PR number
            p.expire(key, TTL)
            await p.execute()
        owners = await self.r.hmget(key, [f"owner:{run.key}:1" for run in runs]) if runs else []
        return {run.key: 1 for run, o in zip(runs, owners, strict=True) if o == owner}

    async def runs(self, repo: str, sha: str) -> dict[str, tuple[Run, int]]:
        """Every run recorded for a SHA with its latest attempt."""
        raw = cast(dict[str, str], await self.r.hgetall(self._sha(repo, sha)))  # decoded
        out = {}
        for field, value in raw.items():
            if field.startswith("spec:"):
                k = field[5:]
                out[k] = (run_from_jsonable(json.loads(value)), int(raw.get(f"attempt:{k}", 1)))
        return out

    async def sha_info(self, repo: str, sha: str) -> dict[str, str]:
        """The commit's own fields (not its runs): pr, spent, untrusted, cost_approved_by/_at."""
        raw = cast(dict[str, str], await self.r.hgetall(self._sha(repo, sha)))  # decoded
        return {k: v for k, v in raw.items() if not k.startswith(("spec:", "attempt:", "owner:", "by:"))}

    async def set_sha_fields(self, repo: str, sha: str, **fields: Any) -> None:
        async with self.r.pipeline(transaction=True) as p:
            values: dict[FieldT, EncodableT] = {k: v for k, v in fields.items()}
            p.hset(self._sha(repo, sha), mapping=values)
            p.expire(self._sha(repo, sha), TTL)
            await p.execute()

    async def pr_of(self, repo: str, sha: str) -> int | None:
        pr = await self.r.hget(self._sha(repo, sha), "pr")
        return int(pr) if pr else None

    async def owned_attempt(self, repo: str, sha: str, key: str, owner: str) -> int | None:
        n = await self.r.hget(self._sha(repo, sha), f"by:{owner}:{key}")
        return int(n) if n else None

    async def new_attempt(self, repo: str, sha: str, key: str, owner: str) -> int:
        """The next attempt of a run, for task `owner`; the same number if that task asks again."""
        return int(await self._new_attempt(keys=[self._sha(repo, sha)], args=[key, owner, TTL]))

    # -- one attempt of a run ---------------------------------------------------------------------------
    async def get(self, ref: RunRef) -> dict[str, str]:
        return cast(dict[str, str], await self.r.hgetall(self._run(ref)))  # decoded

    async def update(self, ref: RunRef, **fields: Any) -> None:
        values: dict[FieldT, EncodableT] = {k: ("" if v is None else v) for k, v in fields.items()}
        async with self.r.pipeline(transaction=True) as p:
            p.hset(self._run(ref), mapping=values)
            p.expire(self._run(ref), TTL)
            await p.execute()

    async def transition(self, ref: RunRef, allowed_from: tuple[str, ...], **fields: Any) -> bool:
        """Set `fields` in one atomic step if the run's status is one of `allowed_from` ("" = none
        yet) and it has neither concluded nor been asked to cancel. False when refused."""
        args: list[Any] = [",".join(allowed_from), TTL]
        for k, v in fields.items():
            args += [k, "" if v is None else v]
        return bool(await self._transition(keys=[self._run(ref)], args=args))

    async def count_write(self, ref: RunRef) -> int:
        """Count one check-run write for this run (for the writes-per-run metric); the total."""
        async with self.r.pipeline(transaction=True) as p:
            p.hincrby(self._run(ref), "writes", 1)
            p.expire(self._run(ref), TTL)
            n, _ = await p.execute()
        return int(n)

    async def conclude(self, ref: RunRef, conclusion: str, message: str, finished_at: float) -> tuple[str, str]:
        """Record the conclusion unless the run already has one (a cancel and a result racing:
        the first decides). Returns the conclusion and message in force."""
        got = await self._conclude(keys=[self._run(ref)], args=[conclusion, message, repr(finished_at), TTL])
        return got[0], got[1] or ""

    async def advance_try(self, ref: RunRef, ended: int, line: str, total: int, cost: float | None = None) -> int:
        """Record how infrastructure try `ended` ended and move the run to the next try, once:
        a repeated call (the same task after a crash) gets the same answer. Returns the try in
        force, ended + 1 when this is the one to start; 0 when the run concluded or is cancelled.
        The ended try's cost, when the backend reported it, stays as `try_cost:<ended>` (spend)."""
        script = self.r.register_script(_ADVANCE_TRY)
        return int(await script(keys=[self._run(ref)], args=[ended, line, TTL, total,
                                                            "" if cost is None else repr(float(cost))]))

    async def request_cancel(self, ref: RunRef, reason: str) -> bool:
        """Mark a run cancelled for the phases that will see it next; False if it already ended."""
        return bool(await self._request_cancel(keys=[self._run(ref)], args=[reason, TTL]))

    # -- pull requests ------------------------------------------------------------------------------------
    async def set_head(self, repo: str, pr: int, sha: str, base_ref: str, installation: int) -> list[str]:
        """Record a PR's new head; returns its older head SHAs (for cancel_superseded)."""
        key = self._pr(repo, pr)
        async with self.r.pipeline(transaction=True) as p:
            p.hset(key, mapping={"head": sha, "base_ref": base_ref, "installation": installation})
            p.sadd(f"{key}:shas", sha)
            p.smembers(f"{key}:shas")
            p.expire(key, TTL)
            p.expire(f"{key}:shas", TTL)
            res = await p.execute()
        return sorted(s for s in res[2] if s != sha)

    async def pr(self, repo: str, pr: int) -> dict[str, str]:
        return cast(dict[str, str], await self.r.hgetall(self._pr(repo, pr)))  # decoded

    async def pr_shas(self, repo: str, pr: int) -> list[str]:
        return sorted(cast(set[str], await self.r.smembers(f"{self._pr(repo, pr)}:shas")))  # decoded

    async def bump_version(self, repo: str, pr: int) -> int:
        """Count a change worth showing in the PR's summary comment."""
        async with self.r.pipeline(transaction=True) as p:
            p.hincrby(self._pr(repo, pr), "version", 1)
            p.expire(self._pr(repo, pr), TTL)
            n, _ = await p.execute()
        return int(n)

    async def set_pr_field(self, repo: str, pr: int, **fields: Any) -> None:
        async with self.r.pipeline(transaction=True) as p:
            values: dict[FieldT, EncodableT] = {k: v for k, v in fields.items()}
            p.hset(self._pr(repo, pr), mapping=values)
            p.expire(self._pr(repo, pr), TTL)
            await p.execute()
