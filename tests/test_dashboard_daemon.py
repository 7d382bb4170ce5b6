"""The daemon serves /dashboard (a real `litbotd run`-style subprocess and redis-server): with the
credential litbotd-admin-token it opens for the bearer token, shows the figures `litbotd status`
prints, and its purge is the dead letter's; without a token or public_url it is not served."""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers import ops_daemon as od
from helpers.net import free_port
from helpers.wait import wait_until_sync
from litbotd.tasks import Task

TOKEN = "adm-daemon-test-token-9d2c"


def get(url: str, token: str | None = None, data: bytes | None = None) -> tuple[int, str, dict]:
    req = urllib.request.Request(url, data=data, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)
    except urllib.error.URLError:
        return 0, "", {}   # not listening yet


@pytest.mark.slow
def test_the_daemon_serves_the_dashboard_with_the_admin_token(tmp_path: Path, redis_server) -> None:
    port = free_port()
    cfg = od.write_config(tmp_path / "litbotd.toml", redis_server.url, workers=1, server_port=port)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "litbotd-admin-token").write_text(TOKEN + "\n")
    r = redis_server.client()
    proc = od.start(cfg, tmp_path / "daemon.log", CREDENTIALS_DIRECTORY=str(creds))
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_sync(lambda: get(base + "/healthz")[0] in (200, 503), 20, "the listener")
        r.lpush("bot_queue", *(Task(kind="fail", payload={"message": f"boom <{i}>"}).to_json() for i in range(2)))
        wait_until_sync(lambda: r.llen("bot_queue:dead") == 2, 20, "2 dead tasks")
        wait_until_sync(lambda: od.alive_workers(cfg, proc.pid) == 1, 20, "the worker's lease")
        assert get(base + "/dashboard")[0] == 401
        assert get(base + "/dashboard", "wrong")[0] == 401
        code, page, headers = get(base + "/dashboard", TOKEN)
        assert code == 200 and headers["Content-Security-Policy"] == "default-src 'self'"
        st = od.status(cfg)
        for name in ("queued", "delayed", "dead"):
            assert re.search(rf'id="{name}">{st[name]}<', page), name
        assert all(w["id"] in page for w in st["workers"])
        assert "boom &lt;0&gt;" in page and TOKEN not in page and "test-webhook-secret" not in page
        code, body, _ = get(base + "/dashboard/dead/purge", TOKEN, data=b"")
        assert code == 200 and json.loads(body)["message"] == "purged 2 task(s)"
        assert od.status(cfg)["dead"] == 0
        assert "dashboard: dead letter purged" in (tmp_path / "daemon.log").read_text()
    finally:
        proc.term()
    log = (tmp_path / "daemon.log").read_text()
    assert "by=admin-token" in log and TOKEN not in log


@pytest.mark.slow
def test_without_a_token_or_public_url_there_is_no_dashboard(tmp_path: Path, redis_server) -> None:
    port = free_port()
    cfg = od.write_config(tmp_path / "litbotd.toml", redis_server.url, workers=1, server_port=port)
    proc = od.start(cfg, tmp_path / "daemon.log")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_sync(lambda: get(base + "/healthz")[0] in (200, 503), 20, "the listener")
        assert get(base + "/dashboard")[0] == 404
    finally:
        proc.term()
