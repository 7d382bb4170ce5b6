"""A loopback stack for the dashboard and GitHub sign-in tests: a real redis-server's client, the
GitHub stand-in (checking every REST request against tests/data/rest-subset.json and the App JWT),
and litbotd's pages on an aiohttp test server, with the context they read."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from fake_github import FakeGitHub
from helpers.net import free_port
from litbotd.config import Config
from litbotd.configfile import parse
from litbotd.github import GitHubApp
from litbotd.pages import dashboard, oauth
from litbotd.queue import Queue

DATA = Path(__file__).resolve().parent.parent / "data"
PEM = (DATA / "keys" / "app.pem").read_text()
PUB = (DATA / "keys" / "app.pub.pem").read_text()
WEBHOOK_SECRET = "whsec-do-not-show-7f3a9c"
CLIENT_ID = "Iv1.litbotdtest"
CLIENT_SECRET = "cs-do-not-show-1b2e8d"
ADMIN_TOKEN = "adm-do-not-show-5c4f0a"


@dataclass(frozen=True)
class Ctx:
    config: Config
    queue: Queue
    github_app: GitHubApp | None


@dataclass
class Clock:
    now: float = field(default_factory=time.time)

    def __call__(self) -> float:
        return self.now


def make_config(github_url: str, public_url: str, auth: str = "github", admin_users: tuple[str, ...] = ("alice",),
                admin_token: str = ADMIN_TOKEN) -> Config:
    cfg = parse({"server": {"public_url": public_url, "auth": auth, "admin_users": list(admin_users)},
                 "github": {"app_id": 1, "api_url": github_url, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                            "webhook_secret": WEBHOOK_SECRET}},
                env={"GH_PRIVATE_KEY": PEM})
    return dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, admin_token=admin_token))


class _Server(TestServer):
    """A test server whose client may also follow the absolute URLs of GitHub's redirects."""

    def make_url(self, path: Any) -> URL:
        url = URL(path)
        return url if url.absolute else super().make_url(path)


class Stack:
    """`await Stack.start(aredis)`; `client` is an aiohttp TestClient on the pages, `gh` the stand-in."""

    def __init__(self) -> None:
        self.gh = FakeGitHub(app_id=1, public_key_pem=PUB, spec_path=str(DATA / "rest-subset.json"))
        self.clock = Clock()
        self.ctx: Ctx | None = None
        self.client: TestClient | None = None
        self.app_client: GitHubApp | None = None

    async def start(self, redis: Any, *, auth: str = "github", https: bool = False,
                    admin_users: tuple[str, ...] = ("alice",), extra: Callable[[web.Application, Stack], None] | None = None,
                    **dash: Any) -> "Stack":
        await self.gh.start()
        self.gh.set_oauth_app(CLIENT_ID, CLIENT_SECRET)
        # The public URL must be known before the app is built: take a port first.
        port = free_port()
        server = _Server(web.Application(), host="127.0.0.1", port=port)
        public = f"{'https' if https else 'http'}://127.0.0.1:{port}"
        cfg = make_config(self.gh.url, public, auth, admin_users)
        queue = Queue(redis, "pg")
        self.app_client = _github(cfg, queue)
        self.ctx = Ctx(cfg, queue, self.app_client)
        app = server.app
        oauth.add_routes(app, lambda: self.current, clock=self.clock)
        dashboard.add_routes(app, lambda: self.current, clock=self.clock, **dash)
        if extra:
            extra(app, self)
        self.client = TestClient(server)
        await self.client.start_server()
        return self

    @property
    def current(self) -> Ctx:
        assert self.ctx is not None
        return self.ctx

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
        if self.app_client is not None:
            await self.app_client.close()
        await self.gh.close()


def _github(cfg: Config, queue: Queue) -> GitHubApp:
    """The App client the way the daemon builds it."""
    return GitHubApp.on_redis(cfg.github, queue.redis, queue.name)
