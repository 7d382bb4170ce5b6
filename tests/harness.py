"""End-to-end harness: a real redis-server, the GitHub stand-in checking every request against
GitHub's OpenAPI description and verifying the App JWT, the local job backend, and litbotd's
daemon — in this process, or as a subprocess that a test can SIGKILL."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import aiohttp

from fake_github import FakeGitHub
from helpers.env import scrubbed_env
from litbotd import configfile
from litbotd.daemon import Daemon
from litbotd.lifecycle import REGISTRY

DATA = Path(__file__).parent / "data"
PRIVATE_PEM = (DATA / "keys" / "app.pem").read_text()
PUBLIC_PEM = (DATA / "keys" / "app.pub.pem").read_text()
SECRET = "e2e-webhook-secret-0123456789"
REPO = "octo-org/widgets"
INSTALLATION = 77


def sha_of(label: str) -> str:
    return hashlib.sha1(label.encode()).hexdigest()


async def wait_until(pred: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll with a deadline (the predicate may be sync or async)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.05)


def pr_payload(action: str, sha: str, *, pr: int = 1, base: str = "main", fork: bool = False,
               association: str = "OWNER", user: str = "octocat") -> dict[str, Any]:
    base_repo = {"id": 1, "name": REPO.split("/")[1], "full_name": REPO, "private": True,
                 "owner": {"login": REPO.split("/")[0], "type": "Organization"}}
    head_repo = {**base_repo, "full_name": f"{user}/widgets", "owner": {"login": user, "type": "User"}} if fork else base_repo
    return {"action": action, "number": pr,
            "pull_request": {"number": pr, "state": "open", "author_association": association,
                             "user": {"login": user, "type": "User"},
                             "head": {"ref": "topic", "sha": sha, "repo": head_repo},
                             "base": {"ref": base, "sha": sha_of(base), "repo": base_repo}},
            "repository": base_repo, "installation": {"id": INSTALLATION}, "sender": {"login": user}}


def comment_payload(body: str, user: str, *, pr: int = 1, comment_id: int = 900) -> dict[str, Any]:
    return {"action": "created",
            "issue": {"number": pr, "pull_request": {"url": f"https://api.github.com/repos/{REPO}/pulls/{pr}"}},
            "comment": {"id": comment_id, "body": body, "user": {"login": user}, "author_association": "MEMBER"},
            "repository": {"full_name": REPO, "private": True}, "installation": {"id": INSTALLATION},
            "sender": {"login": user}}


def rerequested_payload(check_run: dict[str, Any], pr: int = 1) -> dict[str, Any]:
    return {"action": "rerequested",
            "check_run": {"id": check_run["id"], "name": check_run["name"], "head_sha": check_run["head_sha"],
                          "external_id": check_run["external_id"], "pull_requests": [{"number": pr}]},
            "repository": {"full_name": REPO, "private": True}, "installation": {"id": INSTALLATION},
            "sender": {"login": "octocat"}}


def config_data(redis_url: str, api_url: str, workdir: Path, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "github": {"app_id": 1, "api_url": api_url, "redeliver_interval": 0},
        "redis": {"url": redis_url},
        "workers": {"count": 3, "heartbeat_interval": "0.5s", "lease_timeout": "3s", "retry_backoff": "0.2s",
                    "shutdown_grace": "5s"},
        "jobs": {"backend": "local", "poll_interval": 0.2, "poll_interval_max": 0.5,
                 # not about the sandbox (tests/test_sandbox.py is): these tests run where bwrap is missing
                 "local": {"workdir": str(workdir), "max_parallel": 4, "sandbox": False}},
        "log": {"level": "info"},
    }
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    return data


class GitHubWorld:
    """The stand-in plus the repository and pull request the tests talk about."""

    def __init__(self) -> None:
        self.gh = FakeGitHub(app_id=1, public_key_pem=PUBLIC_PEM, spec_path=str(DATA / "rest-subset.json"))
        self.url = ""

    async def start(self, trees: dict[str, dict[str, str]]) -> None:
        self.url = await self.gh.start()
        self.gh.add_repo(REPO, trees, private=True, installation_id=INSTALLATION)

    def pull(self, sha: str, *, pr: int = 1, fork_user: str | None = None, association: str = "OWNER") -> None:
        self.gh.add_pull(REPO, pr, head_sha=sha, base_ref="main",
                         head_repo=f"{fork_user}/widgets" if fork_user else None,
                         author_association=association, user=fork_user or "octocat")

    def runs(self, sha: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.gh.check_runs if sha is None or r["head_sha"] == sha]

    def conclusions(self, sha: str) -> dict[str, str | None]:
        return {r["name"]: r.get("conclusion") for r in self.runs(sha)}

    def assert_no_duplicates(self) -> None:
        keys = [(r["head_sha"], r["name"], r["external_id"]) for r in self.gh.check_runs]
        assert len(keys) == len(set(keys)), f"a check run was created twice: {sorted(keys)}"
        per_pr = [(c["repo"], c["issue_number"]) for c in self.gh.comments]
        assert len(per_pr) == len(set(per_pr)), "a second summary comment was posted"
        assert self.gh.violations == [], self.gh.violations

    async def close(self) -> None:
        await self.gh.close()


async def post_webhook(port: int, event: str, payload: dict[str, Any], delivery: str | None = None) -> int:
    body = json.dumps(payload).encode()
    sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "X-GitHub-Event": event,
               "X-GitHub-Delivery": delivery or os.urandom(8).hex(), "X-Hub-Signature-256": sig}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{port}/", data=body, headers=headers) as resp:
            return resp.status


class InProcessDaemon:
    def __init__(self, data: dict[str, Any]) -> None:
        cfg = configfile.parse(data, env={"GH_PRIVATE_KEY": PRIVATE_PEM, "GH_WEBHOOK_SECRET": SECRET})
        self.daemon = Daemon(cfg, REGISTRY)
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> "InProcessDaemon":
        self._task = asyncio.create_task(self.daemon.run())
        await wait_until(lambda: self.daemon.ready.is_set() or self._task.done(), 20, "the daemon to be ready")
        assert self.daemon.ready.is_set(), "daemon exited before it was ready"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.daemon.stop()
        assert self._task is not None
        await asyncio.wait_for(self._task, 20)

    async def send(self, event: str, payload: dict[str, Any], delivery: str | None = None) -> int:
        assert self.daemon.port is not None
        return await post_webhook(self.daemon.port, event, payload, delivery)

    async def idle(self) -> bool:
        depths = await self.daemon.ctx.queue.depths()
        return depths["queued"] == depths["delayed"] == 0 and all(w.task is None for w in self.daemon.live_workers())


class SubprocessDaemon:
    """`litbotd run` as a child process (the real CLI), for SIGKILL tests."""

    def __init__(self, config_path: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.env = env or {}  # set on purpose over the scrubbed environment (e.g. a stand-in's URL)
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    def start(self) -> None:
        env = scrubbed_env(GH_PRIVATE_KEY=PRIVATE_PEM, GH_WEBHOOK_SECRET=SECRET, PYTHONUNBUFFERED="1", **self.env)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "litbotd", "run", "-c", str(self.config_path)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env)

    async def ready(self, timeout: float = 20) -> int:
        """Wait for this process's "ready" line and return its listening port."""
        pid = self.proc.pid

        def port() -> int | None:
            for line in self.log_path.read_text(errors="replace").splitlines():
                if line.split()[3:4] == ["ready"] and f"pid={pid}" in line and "listen=" in line:
                    return int(line.split("listen=")[1].split()[0].rsplit(":", 1)[1])
            assert self.proc.poll() is None, f"daemon exited: {self.log_path.read_text()[-3000:]}"
            return None

        self.port = await wait_until(port, timeout, "the daemon's ready line")
        return self.port

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(30)
        self._log.close()
        return rc

