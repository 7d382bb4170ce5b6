"""Secrets never appear (SPEC §7, §8): a GitHub App private key, a webhook secret and an
installation token are driven through failing paths — bad configs, check-config, handlers that
raise with a secret in the message, a GitHub error body echoing the token — and every byte of
output is searched: a daemon's stdout/stderr, the CLI's output, pytest's caplog, and what sits in
Redis (dead letters with their errors, queues, worker records)."""
from __future__ import annotations

import logging
import re
import secrets as pysecrets
import string
from pathlib import Path
from typing import Iterator

import pytest

from fake_github import FakeGitHub, serving
from helpers import ops_daemon as od
from helpers.env import scrubbed_env
from helpers.wait import wait_until_sync
from litbotd import logs
from litbotd.configfile import parse
from litbotd.context import Context, Current
from litbotd.demo import throwaway_key
from litbotd.queue import Queue, connect
from litbotd.tasks import Task
from litbotd.worker import Registry, Worker

APP_ID = 4242


class Secrets:
    def __init__(self) -> None:
        self.pem, self.public = throwaway_key()
        self.webhook = "whsec-" + pysecrets.token_urlsafe(24)
        self.token = "ghs_" + "".join(pysecrets.choice(string.ascii_letters + string.digits) for _ in range(36))

    def needles(self) -> list[str]:
        # PEM body lines of 16+ characters (a shorter last line holds too little to matter, and
        # would match by chance); the whole PEM is covered by its lines.
        body = [ln for ln in self.pem.splitlines() if "-----" not in ln and len(ln) >= 16]
        assert len(body) > 20
        return [self.webhook, self.token, *body]

    def assert_absent(self, text: str, where: str) -> None:
        for s in self.needles():
            assert s not in text, f"a secret ({s[:8]}…) leaked into {where}:\n{text[-3000:]}"


@pytest.fixture(scope="module")
def sec() -> Secrets:
    return Secrets()


@pytest.fixture
def creds(tmp_path: Path, sec: Secrets) -> Path:
    """$CREDENTIALS_DIRECTORY as systemd's LoadCredential= fills it."""
    d = tmp_path / "credentials"
    d.mkdir()
    (d / "github-app.pem").write_text(sec.pem)
    (d / "webhook-secret").write_text(sec.webhook + "\n")
    return d


# -- configs and check-config -------------------------------------------------------------------------
def test_bad_config_errors_name_the_key_not_the_secret(tmp_path: Path, sec: Secrets) -> None:
    (tmp_path / "app.pem").write_text(sec.pem)
    cases = {
        # A wrong type next to the secrets.
        "github.app_id": f'[github]\napp_id = "abc"\nwebhook_secret = "{sec.webhook}"\n'
                         f'private_key_file = "{tmp_path / "app.pem"}"\n',
        # An impossible value elsewhere, secrets set.
        "workers.count": f'[github]\nwebhook_secret = "{sec.webhook}"\n[workers]\ncount = -1\n',
    }
    for key, text in cases.items():
        cfg = tmp_path / "litbotd.toml"
        cfg.write_text(text)
        for cmd in ("check-config", "run"):
            r = od.cli(cmd, "-c", str(cfg), timeout=30)
            assert r.returncode == 1 and key in r.stderr, (key, cmd, r.stderr)
            sec.assert_absent(r.stdout + r.stderr, f"`litbotd {cmd}` with a bad {key}")


def test_a_secret_of_the_wrong_type_is_not_echoed(tmp_path: Path) -> None:
    """An all-digit secret written without quotes is a TOML integer: the error names the key and
    the type, not the value."""
    cfg = tmp_path / "litbotd.toml"
    cfg.write_text("[github]\nwebhook_secret = 36954989396393151018\n")
    r = od.cli("check-config", "-c", str(cfg), timeout=30)
    assert r.returncode == 1 and "github.webhook_secret" in r.stderr
    assert "36954989396393151018" not in r.stdout + r.stderr, r.stderr


def test_check_config_masks_every_secret(tmp_path: Path, sec: Secrets, creds: Path) -> None:
    cfg = tmp_path / "litbotd.toml"
    cfg.write_text(f'[github]\napp_id = {APP_ID}\n[jobs]\nbackend = "local"\n[jobs.local]\nsandbox = false\n')
    for env in (scrubbed_env(CREDENTIALS_DIRECTORY=str(creds)),
                scrubbed_env(GH_PRIVATE_KEY=sec.pem, GH_WEBHOOK_SECRET=sec.webhook)):
        r = od.cli("check-config", "-c", str(cfg), env=env)
        assert r.returncode == 0, r.stderr
        assert re.search(r'^webhook_secret = "\*\*\*"$', r.stdout, re.M)
        assert re.search(r'^private_key = "\*\*\*"$', r.stdout, re.M)
        sec.assert_absent(r.stdout + r.stderr, "check-config output")


def test_check_config_masks_the_redis_password(tmp_path: Path) -> None:
    cfg = tmp_path / "litbotd.toml"
    cfg.write_text('[redis]\nurl = "redis://:redis-pass-123@127.0.0.1:1/0"\n[workers]\ncount = 0\n')
    r = od.cli("check-config", "-c", str(cfg), env=scrubbed_env(GH_WEBHOOK_SECRET="w"))
    assert r.returncode == 0, r.stderr
    assert re.search(r'^url = "redis://:\*\*\*@127.0.0.1:1/0"$', r.stdout, re.M), r.stdout


# -- a daemon's failing paths ----------------------------------------------------------------------
@pytest.fixture
def fake_github(sec: Secrets) -> Iterator[FakeGitHub]:
    """GitHub answering the daemon's call with an error body that echoes the token, as a careless
    proxy might."""
    with serving(FakeGitHub(app_id=APP_ID, public_key_pem=sec.public)) as fake:
        fake.inject("GET", r"^/installation/repositories$", 401, times=100,
                    body={"message": f"Bad credentials (token {sec.token} is not valid)"})
        yield fake


def _dump_redis(client) -> str:
    """Every key and value, as text."""
    out = []
    for key in client.keys("*"):
        kind = client.type(key)
        read = {"string": lambda k: client.get(k), "list": lambda k: client.lrange(k, 0, -1),
                "hash": lambda k: client.hgetall(k), "set": lambda k: client.smembers(k),
                "zset": lambda k: client.zrange(k, 0, -1, withscores=True)}[kind]
        value = read(key)
        out.append(f"{key} {kind} {value}")
    return "\n".join(out)


@pytest.mark.slow
def test_daemon_failures_never_show_a_secret(tmp_path: Path, redis_server, sec: Secrets, creds: Path,
                                             fake_github: FakeGitHub) -> None:
    cfg = od.write_config(tmp_path / "litbotd.toml", redis_server.url, workers=2)
    cfg.write_text(cfg.read_text().replace('webhook_secret = "test-webhook-secret"\n',
                                           f'api_url = "{fake_github.url}"\n'))
    env = {"CREDENTIALS_DIRECTORY": str(creds), "GH_APP_ID": str(APP_ID), "TEST_INSTALLATION_TOKEN": sec.token}
    log = tmp_path / "daemon.log"
    r = redis_server.client()
    proc = od.start(cfg, log, **env)
    try:
        tasks = [Task(kind="leak", payload={"what": w, "repo": "o/r", "pr": 1})
                 for w in ("webhook_secret", "private_key", "token")]
        tasks.append(Task(kind="github", payload={"path": "/installation/repositories"}))
        r.lpush("bot_queue", *(t.to_json() for t in tasks))
        wait_until_sync(lambda: r.llen("bot_queue:dead") == 4, 20, "4 dead letters")

        c = ("-c", str(cfg))
        outputs = {name: od.cli(*args, *c, env=scrubbed_env(**env)) for name, args in {
            "dead list": ("dead", "list"), "status": ("status", "--json"), "check-config": ("check-config",)}.items()}
        dead_list = outputs["dead list"].stdout
        redis_text = _dump_redis(r)
        assert proc.term() == 0
    finally:
        proc.close()

    daemon_output = log.read_text()
    # The failing paths ran: each error is there, scrubbed.
    # (repr of the PEM: one *** for the whole block, its escaped final newline kept)
    assert len(re.findall(r"signature check against '\*\*\*(?:\\n)?' failed", dead_list)) == 3, dead_list
    assert "GitHubError: GET /installation/repositories: 401 Bad credentials (token *** is not valid)" in dead_list
    assert "first failure of this task" in daemon_output and "Traceback" in daemon_output
    assert daemon_output.count("about to fail") >= 3
    assert fake_github.count("GET", r"^/installation/repositories$") >= 2
    sec.assert_absent(daemon_output, "the daemon's stdout/stderr")
    sec.assert_absent(redis_text, "Redis (dead letters, queues, worker records)")
    for name, out in outputs.items():
        assert out.returncode == 0, out.stderr
        sec.assert_absent(out.stdout + out.stderr, f"`litbotd {name}`")


# -- in process: caplog sees scrubbed records too -------------------------------------------------------
async def test_worker_logs_and_dead_letter_are_scrubbed_for_every_handler(
        redis_server, sec: Secrets, caplog: pytest.LogCaptureFixture) -> None:
    """Redaction happens when a record is made, so caplog (or any other handler) gets it clean,
    including the traceback of an exception whose message holds the key."""
    cfg = parse({"workers": {"max_attempts": 2, "retry_backoff": 0.01}},
                env={"GH_PRIVATE_KEY": sec.pem, "GH_WEBHOOK_SECRET": sec.webhook})
    logs.setup("debug", "text", [sec.pem, sec.webhook])
    caplog.set_level(logging.DEBUG)

    async def handler(task: Task, services: Context) -> None:
        logs.get("litbotd.github").warning(f"GitHub said: {{'message': 'Bad credentials', 'token': '{sec.token}'}}")
        logging.getLogger("aiohttp.client").error("raw third-party line with %s", sec.webhook)
        raise ValueError(f"could not sign with key {services.config.github.private_key}")

    redis = connect(redis_server.url)
    services = Context.of(cfg, Queue(redis, "secq"))
    try:
        await services.queue.enqueue(Task(kind="k", payload={"repo": "o/r"}))
        worker = Worker("w1", Current(services), Registry(handlers={"k": handler}))
        await worker.process(await services.queue.take("w1", 1))  # fails: retry, traceback logged
        await services.queue.promote_due(now=9e9)
        await worker.process(await services.queue.take("w1", 1))  # fails again: dead letter
        dead = await redis.lrange("secq:dead", 0, -1)
    finally:
        await redis.aclose()
        logs.setup("info", "text", [])

    assert len(dead) == 1 and "ValueError: could not sign with key ***" in dead[0]
    assert any("Bad credentials" in r.getMessage() for r in caplog.records)
    assert any(r.exc_text and "ValueError" in r.exc_text for r in caplog.records)
    sec.assert_absent(caplog.text, "caplog")
    for rec in caplog.records:
        sec.assert_absent(rec.getMessage() + (rec.exc_text or "") + str(getattr(rec, "kv", "")), "a log record")
    sec.assert_absent("\n".join(dead), "the dead letter")


# -- job secrets (SPEC §10) in the daemon's own log ------------------------------------------------------
def test_job_secret_values_are_masked_in_every_log_line(caplog: pytest.LogCaptureFixture) -> None:
    import base64
    import json
    import urllib.parse

    value = "hf_" + pysecrets.token_urlsafe(24) + "/+:"
    logs.setup("debug", "text", [])
    logs.set_job_secrets([value])
    caplog.set_level(logging.DEBUG)
    try:
        log = logs.get("litbotd.test")
        log.info(f"raw {value}", field=value)
        log.warning("json " + json.dumps({"t": value}))
        log.error("b64 " + base64.b64encode(b"x" + value.encode()).decode())
        logging.getLogger("aiohttp.client").error("url %s", urllib.parse.quote(value, safe=""))
        try:
            raise RuntimeError(f"job said {value}")
        except RuntimeError:
            log.exception("failed")
        logs.set_job_secrets(["another-value-1234"])  # a reload: the old value stays masked
        log.info(f"again {value} and another-value-1234")
    finally:
        logs._job_masker[0] = logs.masking.Masker(())
    text = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
    assert value not in text and urllib.parse.quote(value, safe="") not in text
    assert "another-value-1234" not in text
    assert text.count("***") >= 6, text
    assert "job said ***" in text and "again *** and ***" in text


def test_check_config_lists_job_secret_names_never_values_and_refuses_a_bad_file(tmp_path: Path) -> None:
    value = "codecov-" + pysecrets.token_hex(12)
    store = tmp_path / "secrets.toml"
    store.write_text(f'[orgs."acme"]\nCODECOV_TOKEN = "{value}"\n[repos."acme/widgets"]\nHF_TOKEN = "{value}x"\n')
    store.chmod(0o600)
    cfg = tmp_path / "litbotd.toml"
    cfg.write_text(f'[secrets]\nfile = "{store}"\n[workers]\ncount = 0\n')
    env = scrubbed_env(GH_WEBHOOK_SECRET="w")
    r = od.cli("check-config", "-c", str(cfg), env=env)
    assert r.returncode == 0, r.stderr
    assert '# [orgs."acme"] CODECOV_TOKEN' in r.stdout and '# [repos."acme/widgets"] HF_TOKEN' in r.stdout
    assert value not in r.stdout + r.stderr
    store.write_text(f'[repos."acme/widgets"]\nHF_TOKEN = ["{value}"]\n')
    for cmd in ("check-config", "run"):
        r = od.cli(cmd, "-c", str(cfg), env=env, timeout=30)
        assert r.returncode == 1, (cmd, r.stdout, r.stderr)
        refusal = [ln for ln in r.stderr.splitlines() if "secrets" in ln]
        assert len(refusal) == 1 and f"secrets file {store}: " in refusal[0] and "HF_TOKEN" in refusal[0], r.stderr
        assert value not in r.stdout + r.stderr and "Traceback" not in r.stderr
