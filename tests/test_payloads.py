"""Tasks are validated by kind at the door (SPEC §8, issue 17): the envelope in Task.from_json,
each kind's payload by the schema next to its handler (payloads.py). Table tests, no I/O."""
from __future__ import annotations

import json
from typing import Any

import pytest

from litbotd.lifecycle import REGISTRY
from litbotd.payloads import ID, INT, REPO, SHA, STR, PayloadInvalid, Schema, opt, schema_of
from litbotd.tasks import ID_MAX, SHOWN_MAX, Task, TaskFormatError

SHA1 = "a" * 40
GOOD = {"v": 1, "id": "t1", "kind": "comment", "payload": {"repo": "o/r", "pr": 1, "installation": 2},
        "attempt": 0, "created": 1.5, "run_at": 0, "error": None}


@pytest.mark.parametrize("field,value,says", [
    ("attempt", "1", "field 'attempt': expected an integer, 0 or more, got string"),
    ("attempt", -1, "field 'attempt': expected an integer"),
    ("attempt", True, "field 'attempt': expected an integer"),
    ("run_at", "soon", "field 'run_at': expected a number"),
    ("created", [1, 2], "field 'created': expected a number (epoch seconds), got list"),
    ("id", "x" * 100_000, f"field 'id': expected a string of 1 to {ID_MAX} characters, got string of 100000"),
    ("id", 7, "field 'id': expected a string"),
    ("id", "", "field 'id': expected a string"),
    ("kind", None, "field 'kind': expected a string"),
    ("payload", [], "field 'payload': expected an object, got list"),
    ("error", 5, "field 'error': expected a string or null, got int"),
])
def test_the_envelope_is_checked_field_by_field(field: str, value: Any, says: str) -> None:
    with pytest.raises(TaskFormatError) as e:
        Task.from_json(json.dumps({**GOOD, field: value}))
    assert str(e.value).startswith(says), str(e.value)
    assert len(str(e.value)) < 200  # never the 100 kB value itself


@pytest.mark.parametrize("missing", ["id", "kind"])
def test_id_and_kind_are_required(missing: str) -> None:
    d = dict(GOOD)
    del d[missing]
    with pytest.raises(TaskFormatError, match=f"field '{missing}': missing"):
        Task.from_json(json.dumps(d))


def test_a_good_envelope_round_trips_and_defaults_fill_the_rest() -> None:
    t = Task.from_json(json.dumps(GOOD))
    assert Task.from_json(t.to_json()) == t
    bare = Task.from_json(json.dumps({"v": 1, "id": "x", "kind": "comment"}))
    assert (bare.attempt, bare.run_at, bare.error, bare.payload) == (0, 0.0, None, {})


def test_log_fields_are_cut_to_100_characters() -> None:
    t = Task(kind="k" * 500, id="i" * 100_000, payload={"repo": "r" * 5000, "pr": 3, "run": ["a"] * 1000})
    ctx = t.context()
    assert all(len(str(v)) <= SHOWN_MAX + 20 for v in ctx.values()), ctx
    assert ctx["pr"] == 3 and ctx["task"].startswith("i" * SHOWN_MAX)


SCHEMA = Schema({"repo": REPO, "sha": SHA, "pr": opt(ID), "n": INT, "name": STR})


@pytest.mark.parametrize("payload,says", [
    ({"sha": SHA1, "n": 1, "name": "x"}, "payload field repo: missing"),
    ({"repo": "o/r", "sha": SHA1, "n": "1", "name": "x"}, "payload field n: expected an integer, got string '1'"),
    ({"repo": "o/r", "sha": SHA1, "n": True, "name": "x"}, "payload field n: expected an integer, got bool"),
    ({"repo": "o/r", "sha": "HEAD", "n": 1, "name": "x"}, "payload field sha: expected a commit SHA"),
    ({"repo": "o/r/../x", "sha": SHA1, "n": 1, "name": "x"}, "payload field repo: expected owner/name"),
    ({"repo": "o/r", "sha": SHA1, "n": 1, "name": None}, "payload field name: expected a string, got null"),
    ({"repo": "o/r", "sha": SHA1, "n": 1, "name": "x", "pr": -5}, "payload field pr: expected a positive integer"),
    ({"repo": "o/r", "sha": SHA1, "n": 1, "name": "x" * 1, "pr": "7"}, "payload field pr: expected a positive"),
])
def test_a_payload_that_does_not_fit_names_its_field(payload: dict[str, Any], says: str) -> None:
    with pytest.raises(PayloadInvalid) as e:
        SCHEMA.check(payload)
    assert str(e.value).startswith(says), str(e.value)
    assert len(str(e.value)) < 200


def test_optional_fields_may_be_absent_or_null_and_unknown_ones_pass() -> None:
    SCHEMA.check({"repo": "o/r", "sha": SHA1, "n": 1, "name": "x", "extra": [1]})
    SCHEMA.check({"repo": "o/r", "sha": SHA1, "n": 1, "name": "x", "pr": None})


def test_every_phase_declares_its_payload() -> None:
    for kind, handler in REGISTRY.handlers.items():
        schema = schema_of(handler)
        assert schema is not None, f"{kind}: no payload schema (payloads.needs)"
        assert "repo" in schema.fields and "installation" in schema.fields, kind


@pytest.mark.parametrize("kind,payload", [
    ("comment", {"repo": "o/r", "pr": 1, "installation": 2}),
    ("start_job", {"repo": "o/r", "sha": SHA1, "run": "ci", "attempt": 1, "installation": 2, "check_run_id": 3,
                   "pr": None, "private": True, "delivery": None}),
    ("wait_job", {"repo": "o/r", "sha": SHA1, "run": "ci", "attempt": 1, "installation": 2, "check_run_id": 3,
                  "job": "litci-x", "poll": 10, "queued_at": 1.5, "running_since": None}),
    ("needs", {"delivery": "d", "installation": 2, "repo": "o/r", "pr": None, "sha": SHA1, "private": True}),
    ("new_event", {"repo": "o/r", "sha": SHA1, "pr": 4, "installation": 2, "base_ref": "main", "fork": False,
                   "author_association": "OWNER", "author": "me", "action": "opened", "private": True,
                   "delivery": "d", "event": "pull_request", "head_repo": None}),
])
def test_the_payloads_litbotd_writes_fit_their_schemas(kind: str, payload: dict[str, Any]) -> None:
    schema_of(REGISTRY.handlers[kind]).check(payload)


def test_a_comment_task_without_repo_does_not_fit() -> None:
    with pytest.raises(PayloadInvalid, match="payload field repo: missing"):
        schema_of(REGISTRY.handlers["comment"]).check({"pr": 1, "installation": 2})


# -- the worker, against a real redis-server -------------------------------------------------------
async def test_a_failure_path_that_itself_fails_dead_letters_the_task_and_the_worker_carries_on(aredis):
    """Issue 17: what the failure path raises (here an exception that cannot even be printed, as the
    `"1" + 1` of a string `attempt` once did) killed the worker, whose restart took the same task
    again. Now: one ERROR line, the task in the dead letter, the next task done."""
    from litbotd.payloads import needs
    from litbotd.worker import Registry
    from test_queue_redis import Pool, make_services, until

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise TypeError('can only concatenate str (not "int") to str')

    async def evil(task: Task, ctx: Any) -> None:
        raise Unprintable()

    @needs(n=INT)
    async def fine(task: Task, ctx: Any) -> None:
        await ctx.redis.rpush("test:done", task.id)

    s = make_services(aredis, max_attempts=5)
    bad, no_n, good = Task(kind="evil"), Task(kind="fine", payload={"n": "one"}), Task(kind="fine", payload={"n": 1})
    async with Pool(s, Registry(handlers={"evil": evil, "fine": fine}), 1):
        await s.queue.enqueue(bad)
        await s.queue.enqueue(no_n)
        await s.queue.enqueue(good)
        await until(lambda: aredis.lrange("test:done", 0, -1), 10, "the good task done")
        dead = [Task.from_json(raw) for raw in await aredis.lrange("bot_queue:dead", 0, -1)]
    assert await aredis.lrange("test:done", 0, -1) == [good.id]
    assert len(dead) == 2 and await aredis.zcard("bot_queue:delayed") == 0  # no retry of either
    errors = sorted(t.error or "" for t in dead)
    assert "TypeError: can only concatenate" in errors[0] and errors[1].startswith("payload field n: expected")
