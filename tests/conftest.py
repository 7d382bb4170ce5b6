"""Shared fixtures: a private redis-server per test that can be killed and restarted."""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest
import redis as syncredis

from helpers import net
from helpers.env import TEST_KNOBS, dropped

if TYPE_CHECKING:
    from lightning_standin import LightningStandIn

DATA = Path(__file__).parent / "data"
# .ci/run sets it, so that on CI a test that needs the local jobs' sandbox fails where a newcomer's
# machine would skip it (a test knob: the session scrub keeps it, helpers/env.py).
REQUIRE_SANDBOX = os.environ.get("LITBOTD_REQUIRE_SANDBOX") == "1"


@functools.cache
def sandbox_problem(network: str) -> str | None:
    """Why the local jobs' sandbox cannot work on this machine (naming the package), or None."""
    from litbotd.backends import sandbox

    return sandbox.problem(network)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sandbox(network='isolated'): needs bwrap, and slirp4netns for network "
                                       "'isolated'; skipped where they are missing, failed with LITBOTD_REQUIRE_SANDBOX=1")


def missing_tool(why: str) -> None:
    """A system tool a test needs is not installed: skip, saying which package gives it; on CI
    (LITBOTD_REQUIRE_SANDBOX=1) fail, since there everything must run."""
    if REQUIRE_SANDBOX:
        pytest.fail(f"LITBOTD_REQUIRE_SANDBOX=1, but {why}", pytrace=False)
    pytest.skip(why)


def pytest_runtest_setup(item: pytest.Item) -> None:
    mark = item.get_closest_marker("sandbox")
    if mark is None:
        return
    if why := sandbox_problem(mark.kwargs.get("network", "isolated")):
        missing_tool(f"needs the local jobs' sandbox: {why}")


class RedisServer:
    """A real redis-server on a free loopback port, with AOF on so that a restart keeps the data
    (like a production Redis with `appendonly yes`)."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.port = net.free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not on PATH (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
             "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = syncredis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except syncredis.ConnectionError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"redis-server did not start: {(self.dir / 'redis.log').read_text()[-2000:]}")
            time.sleep(0.02)
        client.close()

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self) -> syncredis.Redis:
        return syncredis.Redis(port=self.port, decode_responses=True)


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop(kill=True)


@pytest.fixture
async def aredis(redis_server: RedisServer):
    from litbotd.queue import connect

    client = connect(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture(autouse=True)
def reap_leftover_jobs(tmp_path: Path) -> Iterator[None]:
    """Local jobs run detached, by design outliving whoever started them: after each test, kill
    any process group still running from that test's directory, so a failed test leaks nothing."""
    yield
    marker = str(tmp_path).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "cmdline").read_bytes():
                pid = int(proc.name)
                pgid = os.getpgid(pid)
                if pgid == os.getpgid(0):
                    os.kill(pid, 9)  # a child in pytest's own group: never signal the group
                else:
                    os.killpg(pgid, 9)
        except (OSError, ProcessLookupError):
            pass


@pytest.fixture(scope="session", autouse=True)
def scrubbed_session() -> Iterator[None]:
    """The test process itself runs without the developer's REDIS_URL, GH_*, LITBOTD_*, ...
    (helpers/env.py): an in-process daemon, or a process started with the inherited environment,
    cannot reach their Redis or App. The suite's own knobs (env.TEST_KNOBS) stay."""
    with pytest.MonkeyPatch.context() as mp:
        for k in [k for k in os.environ if dropped(k) and k not in TEST_KNOBS]:
            mp.delenv(k)
        yield


@pytest.fixture
async def world():
    """The GitHub stand-in with the end-to-end tests' repository (fake_github.GitHubWorld), closed after."""
    from fake_github import GitHubWorld

    w = GitHubWorld()
    yield w
    await w.close()
@pytest.fixture(scope="session")
def lightning_server() -> Iterator["LightningStandIn"]:
    """One Lightning stand-in per session: the SDK caches its client process-wide."""
    from lightning_standin import LightningStandIn

    server = LightningStandIn()
    server.start()
    yield server
    server.close()


@pytest.fixture
def lightning(lightning_server: "LightningStandIn", monkeypatch: pytest.MonkeyPatch,
              tmp_path: Path) -> Iterator["LightningStandIn"]:
    """The real lightning-sdk aimed at the stand-in, with credentials in the environment and no
    user config. Every request the test made must be one the stand-in models."""
    lightning_server.reset()
    for k in list(os.environ):
        if k.startswith("LIGHTNING_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("LIGHTNING_CLOUD_URL", lightning_server.url)
    monkeypatch.setenv("LIGHTNING_USER_ID", "user-1")
    monkeypatch.setenv("LIGHTNING_API_KEY", "lightning-api-key-must-stay-home")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.lightning/config.yaml of the developer
    from litbotd.backends.lightning import _import_sdk

    _import_sdk()
    from lightning_sdk.api import utils as sdk_utils
    from lightning_sdk.lightning_cloud import env as sdk_cloud_env

    # The SDK reads its URL at import and caches one client per process: aim both at the stand-in.
    monkeypatch.setattr(sdk_cloud_env, "LIGHTNING_CLOUD_URL", lightning_server.url)
    sdk_utils.cached_lightning_client.cache_clear()
    sdk_utils.allowed_resource_access.cache_clear()
    yield lightning_server
    lightning_server.release()
    assert lightning_server.unknown == [], f"requests the Lightning stand-in does not model: {lightning_server.unknown}"
