"""What litbotd remembers about pull requests and runs, in Redis (a thin adapter).

    q:sha:<repo>@<sha>                 hash  spec:<run> -> JSON {run, check_name}, attempt:<run> -> int,
                                             spent, untrusted, cost_approved_by (spend.py, SPEC §11)
    q:run:<repo>@<sha>:<run>:<attempt> hash  status, check_run_id, job, times, url, message,
                                             cancel_reason, conclusion (set once: first terminal wins),
                                             try (the infrastructure try now, 1 when absent), tries
                                             (how many it may have),
                                             try:<n> (how try n ended, SPEC §11), try_cost:<n>
                                             (what it cost, when the backend said),
                                             origin, fork, author_association (what started it: trust),
                                             secrets, secret_notes (job secret NAMES released, and why not),
                                             price, projected, held, spent (the sum of spent:<try>, each
                                             set once: spend.py's ledger), spent_day
    q:pr:<repo>#<pr>                   hash  head, base_ref, installation, comment_id, approved,
                                             approved:<sha> (who said ok-to-test on that commit),
                                             version (changes), commented (version shown)
    q:pr:<repo>#<pr>:shas              set   every head SHA seen, for supersede and close
    q:runs:recent                      zset  JSON [repo, sha, run, attempt] -> time of its last state
                                             change; the newest RECENT only (the dashboard's list)
    q:flaky:<repo>                     zset  "<sha>:<run>" → when it turned flaky (failed, then passed
                                             on a re-run of the same commit); 30 days, ≤ 10,000
    q:flaky                            zset  repository → its latest flaky run (≤ 10,000 repositories)
    q:runs:<repo>                      hash  day number → attempts whose results were reported (≤ 30 days)

A run waiting for its `needs` has `waiting` ("waiting for lint") in its attempt's hash, until the
one task that releases it (`released_by`) clears it; `skip_kind` (paths | needs) says why a
skipped run was skipped. The sha hash counts `failed:<run>` and `flaky:<run>`.

Everything expires after 30 days; GitHub keeps the durable record (check runs, the comment).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, cast

from redis.typing import EncodableT, FieldT

from .queue import Queue
from .workflows import Run, run_from_jsonable, to_jsonable

TTL = 30 * 24 * 3600
# Replies are str (every client decodes: redisconn.connect); redis-py types them bytes | str,
# hence the casts marked "decoded".
RECENT = 100

# The recent-runs index, kept by the same atomic step as the run's state change: the member goes to
# the top, and only the newest ARGV keep stay. Appended to the scripts that record a change.
_RECENT_FN = """
local function note_recent(key, now, member, keep, ttl)
  redis.call('ZADD', key, now, member)
  redis.call('ZREMRANGEBYRANK', key, 0, -tonumber(keep) - 1)
  redis.call('EXPIRE', key, ttl)
end
"""

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

# KEYS: run hash, recent zset. ARGV: conclusion, message, finished_at, ttl, recent member, keep.
_CONCLUDE = _RECENT_FN + """
if redis.call('HSETNX', KEYS[1], 'conclusion', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'message', ARGV[2], 'finished_at', ARGV[3], 'status', 'completed')
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  note_recent(KEYS[2], ARGV[3], ARGV[5], ARGV[6], ARGV[4])
end
return redis.call('HMGET', KEYS[1], 'conclusion', 'message')
"""


# KEYS: run hash, recent zset. ARGV: allowed statuses, comma-separated ('' = none recorded yet), ttl,
# now, recent member, keep, then field, value pairs. A run that has concluded, or whose cancel was
# requested, takes no transition: it never goes back to running (only _CONCLUDE ends a run).
_TRANSITION = _RECENT_FN + """
if redis.call('HEXISTS', KEYS[1], 'conclusion') == 1 or redis.call('HEXISTS', KEYS[1], 'cancel_reason') == 1 then
  return 0
end
local status = redis.call('HGET', KEYS[1], 'status') or ''
if not string.find(',' .. ARGV[1] .. ',', ',' .. status .. ',', 1, true) then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[1], ARGV[2])
note_recent(KEYS[2], ARGV[3], ARGV[4], ARGV[5], ARGV[2])
return 1
"""

# KEYS: run hash. ARGV: reason, ttl. 1 if the cancel was recorded, 0 if the run had already ended.
_REQUEST_CANCEL = """
if redis.call('HEXISTS', KEYS[1], 'conclusion') == 1 then return 0 end
redis.call('HSETNX', KEYS[1], 'cancel_reason', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


# KEYS: run hash. ARGV: releasing task id, ttl, "start" | "skip", skip message, now. Takes a
# waiting run out of its wait: to start, or concluded `skipped` (a need did not succeed). 1 for
# the task that did it (also when it asks again after a crash), 0 if the run was not waiting, has
# ended or been cancelled, or another task released it.
_RELEASE = """
local by = redis.call('HGET', KEYS[1], 'released_by')
if by then
  if by == ARGV[1] then return 1 end
  return 0
end
if redis.call('HEXISTS', KEYS[1], 'conclusion') == 1 or redis.call('HEXISTS', KEYS[1], 'cancel_reason') == 1 then
  return 0
end
if (redis.call('HGET', KEYS[1], 'waiting') or '') == '' then return 0 end
redis.call('HSET', KEYS[1], 'released_by', ARGV[1])
redis.call('HDEL', KEYS[1], 'waiting')
if ARGV[3] == 'skip' then
  redis.call('HSET', KEYS[1], 'conclusion', 'skipped', 'message', ARGV[4], 'finished_at', ARGV[5],
             'status', 'completed', 'skip_kind', 'needs')
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

FLAKY_WINDOW = 30 * 24 * 3600
FLAKY_MAX = 10_000  # members kept per repository, and repositories kept

# KEYS: sha hash, the repository's flaky zset, the flaky-repositories zset, the repository's
# runs-per-day hash, the attempt's run hash. ARGV: run key, conclusion, now, window, ttl, member,
# repository, max, days. Counts the attempt once in its day; a failure (or time-out) marks the run
# failed on this commit; a success after one marks it flaky, once, and counts it. 1 when it
# turned flaky now.
_OUTCOME = """
local failed, flaky = 'failed:' .. ARGV[1], 'flaky:' .. ARGV[1]
if redis.call('HSETNX', KEYS[5], 'counted', 1) == 1 then
  local day = math.floor(tonumber(ARGV[3]) / 86400)
  redis.call('HINCRBY', KEYS[4], day, 1)
  for _, f in ipairs(redis.call('HKEYS', KEYS[4])) do
    if tonumber(f) == nil or tonumber(f) <= day - tonumber(ARGV[9]) then redis.call('HDEL', KEYS[4], f) end
  end
  redis.call('EXPIRE', KEYS[4], ARGV[4])
end
if ARGV[2] == 'failure' or ARGV[2] == 'timed_out' then
  redis.call('HSET', KEYS[1], failed, 1)
  return 0
end
if ARGV[2] ~= 'success' or redis.call('HEXISTS', KEYS[1], failed) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], flaky, ARGV[3]) == 0 then return 0 end
local now, window, max = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[8])
for i, k in ipairs({KEYS[2], KEYS[3]}) do
  redis.call('ZADD', k, now, i == 1 and ARGV[6] or ARGV[7])
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now - window)
  redis.call('ZREMRANGEBYRANK', k, 0, -max - 1)
  redis.call('EXPIRE', k, window)
end
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


@dataclass(frozen=True)
class RecentRun:
    ref: RunRef
    at: float                  # when its state last changed
    state: dict[str, str]      # the attempt's hash (status, conclusion, times, job, ...)
    check_name: str
    machine: str


class RunState:
    def __init__(self, queue: Queue) -> None:
        self.q = queue
        self.r = queue.redis
        self._new_attempt = self.r.register_script(_NEW_ATTEMPT)
        self._transition = self.r.register_script(_TRANSITION)
        self._conclude = self.r.register_script(_CONCLUDE)
        self._request_cancel = self.r.register_script(_REQUEST_CANCEL)
        self._release = self.r.register_script(_RELEASE)
        self._outcome = self.r.register_script(_OUTCOME)

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

    @property
    def _recent(self) -> str:
        return self.q.key("runs", "recent")

    @staticmethod
    def _member(ref: RunRef) -> str:
        return json.dumps([ref.repo, ref.sha, ref.key, ref.attempt], separators=(",", ":"))

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

    async def _set_fields(self, key: str, fields: dict[str, Any]) -> None:
        """HSET the fields and renew the hash's TTL, in one transaction."""
        async with self.r.pipeline(transaction=True) as p:
            values: dict[FieldT, EncodableT] = {k: v for k, v in fields.items()}
            p.hset(key, mapping=values)
            p.expire(key, TTL)
            await p.execute()

    async def set_sha_fields(self, repo: str, sha: str, **fields: Any) -> None:
        await self._set_fields(self._sha(repo, sha), fields)

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
        args: list[Any] = [",".join(allowed_from), TTL, repr(time.time()), self._member(ref), RECENT]
        for k, v in fields.items():
            args += [k, "" if v is None else v]
        return bool(await self._transition(keys=[self._run(ref), self._recent], args=args))

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
        got = await self._conclude(keys=[self._run(ref), self._recent],
                                   args=[conclusion, message, repr(finished_at), TTL, self._member(ref), RECENT])
        return got[0], got[1] or ""

    async def recent(self, limit: int = RECENT) -> list[RecentRun]:
        """The runs whose state changed last, newest first, for the dashboard. A run whose state
        has expired meanwhile is left out."""
        members = cast(list[tuple[str, float]],  # decoded
                       await self.r.zrevrange(self._recent, 0, limit - 1, withscores=True))
        refs: list[tuple[RunRef, float]] = []
        for member, score in members:
            try:
                items: list[Any] = json.loads(member)
                repo, sha, key, attempt = items
                refs.append((RunRef(str(repo), str(sha), str(key), int(attempt)), float(score)))
            except (ValueError, TypeError):
                continue
        if not refs:
            return []
        async with self.r.pipeline(transaction=False) as p:
            for ref, _ in refs:
                p.hgetall(self._run(ref))
                p.hget(self._sha(ref.repo, ref.sha), f"spec:{ref.key}")
            got = await p.execute()
        out = []
        for i, (ref, at) in enumerate(refs):
            state, spec = got[2 * i], got[2 * i + 1]
            if not state:
                continue
            try:
                run = run_from_jsonable(json.loads(spec)) if spec else None
            except (ValueError, TypeError):
                run = None
            out.append(RecentRun(ref, at, state, run.check_name if run else ref.key, run.machine if run else ""))
        return out

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
        await self._set_fields(self._pr(repo, pr), fields)

    # -- needs, flaky runs ------------------------------------------------------------------------------
    async def release(self, ref: RunRef, by: str, action: str, message: str = "", now: float = 0.0) -> bool:
        """Task `by` takes a waiting run out of its wait, to start it (`action` "start") or to
        conclude it `skipped` with `message` ("skip"): True for the one task that did, also when
        it asks again after a crash; False if the run was not waiting or was ended meanwhile."""
        return bool(await self._release(keys=[self._run(ref)], args=[by, TTL, action, message, repr(now)]))

    async def latest_states(self, repo: str, sha: str) -> dict[str, tuple[Run, int, dict[str, str]]]:
        """Every run of a SHA with its latest attempt and that attempt's state."""
        runs = await self.runs(repo, sha)
        async with self.r.pipeline(transaction=False) as p:
            for key, (_, attempt) in runs.items():
                p.hgetall(self._run(RunRef(repo, sha, key, attempt)))
            states = await p.execute() if runs else []
        return {key: (run, attempt, st) for (key, (run, attempt)), st in zip(runs.items(), states, strict=True)}

    async def record_outcome(self, ref: RunRef, conclusion: str, now: float) -> bool:
        """Remember a concluded attempt for flaky detection; True when the run became flaky (a
        success after a failure on the same commit), counted once per run and commit."""
        return bool(await self._outcome(
            keys=[self._sha(ref.repo, ref.sha), self.q.key("flaky", ref.repo), self.q.key("flaky"),
                  self.q.key("runs", ref.repo), self._run(ref)],
            args=[ref.key, conclusion, repr(now), FLAKY_WINDOW, TTL, f"{ref.sha}:{ref.key}", ref.repo, FLAKY_MAX,
                  FLAKY_WINDOW // 86400]))

    async def flaky(self, repo: str, sha: str) -> set[str]:
        """The run keys of a SHA that failed and then passed."""
        raw = cast(list[str], await self.r.hkeys(self._sha(repo, sha)))  # decoded
        return {f[6:] for f in raw if f.startswith("flaky:")}


@dataclass(frozen=True)
class FlakyStat:
    flaky: int   # runs that failed, then passed on a re-run of the same commit
    runs: int    # attempts that ran a job and concluded (its results reported), same 30 days


async def flaky_stats(queue: Queue, now: float | None = None) -> dict[str, FlakyStat]:
    """The repositories with flaky runs over the last 30 days: {repo: FlakyStat}. For `litbotd
    status` and the dashboard (one read, no write); bounded by FLAKY_MAX repositories. `runs` is
    counted in whole days (the last 30, today included)."""
    at = time.time() if now is None else now
    since = at - FLAKY_WINDOW
    repos = cast(list[str], await queue.redis.zrangebyscore(queue.key("flaky"), since, "+inf"))  # decoded
    if not repos:
        return {}
    async with queue.redis.pipeline(transaction=False) as p:
        for repo in repos:
            p.zcount(queue.key("flaky", repo), since, "+inf")
            p.hgetall(queue.key("runs", repo))
        got = await p.execute()
    first_day = int(at // 86400) - FLAKY_WINDOW // 86400
    out: dict[str, FlakyStat] = {}
    for repo, n, days in zip(repos, got[::2], got[1::2], strict=True):
        runs = sum(int(v) for d, v in days.items() if d.lstrip("-").isdigit() and int(d) > first_day)
        if int(n):
            out[repo] = FlakyStat(flaky=int(n), runs=runs)
    return out


async def flaky_counts(queue: Queue, now: float | None = None) -> dict[str, int]:
    """Flaky runs per repository over the last 30 days: {repo: count}."""
    return {repo: s.flaky for repo, s in (await flaky_stats(queue, now)).items()}
