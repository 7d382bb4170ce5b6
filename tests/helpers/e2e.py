"""The end-to-end scenario: the webhooks GitHub would send about GitHubWorld's repository
(fake_github.py), signed with SECRET, and litbotd's daemon in this process (`InProcessDaemon`; as a
subprocess that a test can SIGKILL it is helpers/daemon.DaemonProcess with `env=DAEMON_ENV`).
The config is helpers/configs.config_data."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
from typing import Any

import aiohttp

from fake_github import INSTALLATION, PRIVATE_PEM, REPO
from helpers.wait import wait_until
from litbotd import configfile
from litbotd.daemon import Daemon
from litbotd.lifecycle import REGISTRY

SECRET = "e2e-webhook-secret-0123456789"
DAEMON_ENV = {"GH_PRIVATE_KEY": PRIVATE_PEM, "GH_WEBHOOK_SECRET": SECRET}  # what a subprocess daemon is given


def sha_of(label: str) -> str:
    return hashlib.sha1(label.encode()).hexdigest()


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
        cfg = configfile.parse(data, env=DAEMON_ENV)
        self.daemon = Daemon(cfg, REGISTRY)
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> "InProcessDaemon":
        task = self._task = asyncio.create_task(self.daemon.run())
        await wait_until(lambda: self.daemon.ready.is_set() or task.done(), 20, "the daemon to be ready")
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
