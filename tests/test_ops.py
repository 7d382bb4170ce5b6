"""Operator commands (SPEC §2) as an operator runs them: `python -m litbotd …` subprocesses
against a real redis-server (and a real daemon where the state must come from one).
Exit status: 0 success, 1 failure, 2 usage error."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import pytest

from fake_github import FakeGitHub, serving
from helpers import ops_daemon as od
from helpers.net import free_port
from helpers.wait import wait_until_sync
from litbotd.demo import throwaway_key
from litbotd.tasks import Task

DATA = Path(__file__).parent / "data"


@pytest.fixture
def cfg(tmp_path: Path, redis_server) -> Path:
    return od.write_config(tmp_path / "litbotd.toml", redis_server.url, workers=1)


def run(*args: str) -> tuple[int, str, str]:
    r = od.cli(*args)
    return r.returncode, r.stdout, r.stderr


# -- status and dead, from a real daemon's state ---------------------------------------------------------
@pytest.mark.slow
def test_status_and_dead_letter_commands(tmp_path: Path, redis_server, cfg: Path) -> None:
    r = redis_server.client()
    c = ("-c", str(cfg))
    log = tmp_path / "daemon.log"
    proc = od.start(cfg, log)
    try:
        # Four tasks fail twice (max_attempts = 2) and land in the dead letter, with their error.
        failing = [Task(kind="fail", payload={"message": f"boom {i}", "repo": "o/r", "pr": i}) for i in range(4)]
        r.lpush("bot_queue", *(t.to_json() for t in failing))
        wait_until_sync(lambda: r.llen("bot_queue:dead") == 4, 20, "4 dead tasks")
        # One long task in flight, one delayed, two queued behind the busy worker.
        busy = Task(kind="sleep", payload={"s": 60})
        r.lpush("bot_queue", busy.to_json())
        wait_until_sync(lambda: busy.id in str(r.hvals("bot_queue:workers")), 20, "the busy worker")
        r.zadd("bot_queue:delayed", {Task(kind="wait_job").to_json(): 9e9})
        r.lpush("bot_queue", Task(kind="start_job").to_json(), Task(kind="start_job").to_json())

        st = od.status(cfg)
        assert (st["queued"], st["delayed"], st["dead"]) == (2, 1, 4)
        assert st["queued_by_phase"] == {"start_job": 2}
        [w] = st["workers"]
        assert w["alive"] is True and w["task"] == busy.id and w["host"] and w["pid"] == proc.pid
        assert isinstance(w["busy_s"], (int, float)) and w["busy_s"] >= 0

        code, out, _ = run("status", *c)
        assert code == 0
        assert re.search(r"queued 2 \(start_job 2\), delayed 1, dead 4", out), out
        assert "workers: 1 alive" in out and f"task {busy.id} for" in out

        # The daemon dies with its task in flight: its worker awaits recovery.
        proc.kill()
        wait_until_sync(lambda: not r.keys("bot_queue:lease:*"), 20, "the lease to expire")
        st = od.status(cfg)
        assert st["workers"][0]["alive"] is False
        assert st["workers"][0]["task"] == busy.id
        code, out, _ = run("status", *c)
        assert "workers: 0 alive" in out and "dead workers awaiting recovery: 1" in out
        assert "1 task(s) to requeue" in out
    finally:
        proc.close()

    # dead list: each task with its context and last error.
    code, out, _ = run("dead", "list", *c)
    assert code == 0 and "4 dead task(s)" in out
    for t in failing:
        assert re.search(rf"^{t.id} .*attempts=2 .*repo=o/r pr={t.payload['pr']}", out, re.M), out
        assert f"error: RuntimeError: boom {t.payload['pr']}" in out

    # dead retry ID: back to the main list with fresh attempts; an unknown id is a failure.
    code, out, _ = run("dead", "retry", failing[0].id, *c)
    assert code == 0 and "requeued 1 task(s)" in out
    back = [Task.from_json(x) for x in r.lrange("bot_queue", 0, -1) if Task.from_json(x).id == failing[0].id]
    assert len(back) == 1 and back[0].attempt == 0 and back[0].error is None
    code, _, err = run("dead", "retry", "no-such-id", *c)
    assert code == 1 and "no dead task with id no-such-id" in err
    assert r.llen("bot_queue:dead") == 3

    # dead purge, then retry --all on an empty list (nothing to do is not a failure).
    code, out, _ = run("dead", "purge", *c)
    assert code == 0 and "purged 3 task(s)" in out and r.llen("bot_queue:dead") == 0
    r.lpush("bot_queue:dead", Task(kind="fail", error="x").to_json(), Task(kind="fail", error="y").to_json())
    code, out, _ = run("dead", "retry", "--all", *c)
    assert code == 0 and "requeued 2 task(s)" in out and r.llen("bot_queue:dead") == 0
    code, out, _ = run("dead", "retry", "--all", *c)
    assert code == 0 and "requeued 0 task(s)" in out


def test_commands_fail_cleanly_when_redis_is_down(tmp_path: Path) -> None:
    cfg = od.write_config(tmp_path / "litbotd.toml", f"redis://:hunter2pass@127.0.0.1:{free_port()}/0")
    for args in (("status", "--json"), ("dead", "list"), ("check-config", "--online")):
        code, out, err = run(*args, "-c", str(cfg))
        assert code == 1, (args, out, err)
        assert "Traceback" not in err and "hunter2pass" not in out + err
    code, _, err = run("status", "-c", str(cfg))
    assert re.search(r"redis at redis://:\*\*\*@127\.0\.0\.1:\d+/0 is unreachable", err), err


def test_usage_errors_exit_2(cfg: Path) -> None:
    assert run("no-such-command")[0] == 2
    assert run("dead", "retry", "-c", str(cfg))[0] == 2  # neither ID nor --all
    assert run("replay", str(DATA / "webhooks" / "ping.3.json"), "-c", str(cfg))[0] == 2  # no --event


# -- replay ---------------------------------------------------------------------------------------------
def test_replay_enqueues_a_payload_as_if_delivered(redis_server, cfg: Path, tmp_path: Path) -> None:
    r = redis_server.client()
    c = ("-c", str(cfg))
    payload = str(DATA / "webhooks" / "pull_request.opened.4.json")
    code, out, _ = run("replay", payload, "--event", "pull_request", "--delivery", "d-42", *c)
    assert code == 0 and re.search(r"queued \w+ task \w+ \(delivery d-42\)", out), out
    [raw] = r.lrange("bot_queue", 0, -1)
    task = Task.from_json(raw)
    assert task.payload["delivery"] == "d-42" and task.payload["repo"] == "Codertocat/Hello-World"
    assert task.payload["pr"] == 2

    # The same delivery again is deduplicated, like a repeated X-GitHub-Delivery.
    code, out, _ = run("replay", payload, "--event", "pull_request", "--delivery", "d-42", *c)
    assert code == 0 and "already processed" in out and r.llen("bot_queue") == 1
    # Without --delivery every replay is new.
    assert run("replay", payload, "--event", "pull_request", *c)[0] == 0
    assert r.llen("bot_queue") == 2

    # Events that queue nothing say why; a missing or broken file is a failure.
    code, out, _ = run("replay", str(DATA / "webhooks" / "issue_comment.created.5.json"), "--event", "issue_comment", *c)
    assert code == 0 and "nothing to queue" in out and r.llen("bot_queue") == 2
    assert run("replay", str(tmp_path / "missing.json"), "--event", "pull_request", *c)[0] == 1
    (tmp_path / "broken.json").write_text("{not json")
    assert run("replay", str(tmp_path / "broken.json"), "--event", "pull_request", *c)[0] == 1
    (tmp_path / "thin.json").write_text(json.dumps({"action": "opened", "installation": {"id": 1}}))
    code, _, err = run("replay", str(tmp_path / "thin.json"), "--event", "pull_request", *c)
    assert code == 1 and "payload field pull_request: missing" in err  # names the missing field


# -- check-config ---------------------------------------------------------------------------------------
@pytest.fixture
def github_app() -> Iterator[tuple[FakeGitHub, str]]:
    private, public = throwaway_key()
    with serving(FakeGitHub(app_id=4242, public_key_pem=public)) as fake:
        yield fake, private


def _app_config(tmp_path: Path, redis_url: str, api_url: str, key: str, app_id: int = 4242) -> Path:
    (tmp_path / "app.pem").write_text(key)
    cfg = od.write_config(tmp_path / "litbotd.toml", redis_url)
    text = cfg.read_text().replace("[github]\n", f'[github]\napp_id = {app_id}\nprivate_key_file = "{tmp_path / "app.pem"}"\n'
                                                 f'api_url = "{api_url}"\n')
    cfg.write_text(text)
    return cfg


def test_check_config_prints_the_effective_config_masked(cfg: Path, tmp_path: Path) -> None:
    code, out, _ = run("check-config", "-c", str(cfg))
    assert code == 0
    assert re.search(r'^webhook_secret = "\*\*\*"$', out, re.M) and "test-webhook-secret" not in out
    assert re.search(r"^\[workers\]\ncount = 1$", out, re.M)
    bad = tmp_path / "bad.toml"
    bad.write_text("[workers]\ncount = -3\n")
    code, _, err = run("check-config", "-c", str(bad))
    assert code == 1 and "workers.count" in err


def test_check_config_online_succeeds_with_the_apps_key(tmp_path: Path, redis_server, github_app) -> None:
    fake, private = github_app
    cfg = _app_config(tmp_path, redis_server.url, fake.url, private)
    code, out, err = run("check-config", "--online", "-c", str(cfg))
    assert code == 0, out + err
    assert "redis: ok" in out
    assert "github: ok (app 'litbot', slug litbot, id 4242" in out
    assert fake.requests == [("GET", "/app")]


def test_check_config_online_fails_with_another_key_or_app_id(tmp_path: Path, redis_server, github_app) -> None:
    fake, _ = github_app
    other, _ = throwaway_key()
    cfg = _app_config(tmp_path, redis_server.url, fake.url, other)
    code, out, _ = run("check-config", "--online", "-c", str(cfg))
    assert code == 1 and "redis: ok" in out
    assert re.search(r"github: FAILED: GitHubError: GET /app: 401 .*is github.app_id right", out), out

    code, out, _ = run("check-config", "--online", "-c", str(_app_config(tmp_path, redis_server.url, fake.url, other, 0)))
    assert code == 1 and "github: FAILED: github.app_id and the private key" in out


def test_check_config_online_names_an_unreachable_github(tmp_path: Path, redis_server) -> None:
    private, _ = throwaway_key()
    cfg = _app_config(tmp_path, redis_server.url, f"http://127.0.0.1:{free_port()}", private)
    code, out, _ = run("check-config", "--online", "-c", str(cfg))
    assert code == 1 and re.search(r"github: FAILED: GitHubError: GET /app: Client\w*Error after \d+ attempts", out), out


def test_status_shows_todays_spend_and_the_runs_by_machine(redis_server, cfg: Path) -> None:
    import time

    r = redis_server.client()
    today = time.strftime("%Y-%m-%d", time.gmtime())
    r.hset(f"bot_queue:spend:{today}", mapping={"o/r": "12.5", "o/s": "0.25"})
    r.hset("bot_queue:spend:2000-01-01", "o/r", "99")   # another day: not today's
    entry = {"repo": "o/r", "sha": "a" * 40, "key": "k", "attempt": 1, "machine": "L4", "projected": 4.0,
             "holder": "t", "seq": 0}
    r.hset("bot_queue:limits:entries", mapping={"o/r@a:k:1": json.dumps({**entry, "slot": True}),
                                                "o/r@a:j:1": json.dumps({**entry, "key": "j", "slot": False})})
    st = od.status(cfg)
    assert st["spend_today_usd"] == {"o/r": 12.5, "o/s": 0.25}
    assert st["running_by_machine"] == {"L4": 1} and st["waiting_by_machine"] == {"L4": 1}
    code, out, _ = run("status", "-c", str(cfg))
    assert code == 0
    assert f"spend today ({today} UTC): o/r $12.50, o/s $0.25" in out
    assert "runs by machine: L4 1 running 1 waiting" in out


def test_status_counts_flaky_runs_per_repository(tmp_path: Path, redis_server, cfg: Path) -> None:
    import time

    r = redis_server.client()
    now = time.time()
    r.zadd("bot_queue:flaky", {"octo/gpu": now, "octo/old": now - 40 * 24 * 3600})
    r.zadd("bot_queue:flaky:octo/gpu", {f"{'a' * 40}:lint-1": now, f"{'b' * 40}:unit-2": now - 3600,
                                         f"{'c' * 40}:unit-2": now - 31 * 24 * 3600})
    r.zadd("bot_queue:flaky:octo/old", {f"{'d' * 40}:x": now - 40 * 24 * 3600})
    today = int(now // 86400)
    r.hset("bot_queue:runs:octo/gpu", mapping={today: 30, today - 3: 10, today - 31: 500})
    assert od.status(cfg)["flaky_runs_30d"] == {"octo/gpu": {"flaky": 2, "runs": 40}}
    code, out, _ = run("status", "-c", str(cfg))
    assert code == 0 and "flaky runs (failed, then passed on a re-run; 30 days): octo/gpu 2 of 40" in out, out
