"""The Lightning backend driving lightning-sdk's own request code against a loopback stand-in."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from helpers.env import scrubbed_env
from lightning_standin import LightningStandIn
from litbotd.backends import machine_names, make_backend
from litbotd.backends.base import BackendError, JobNotFound, JobSpec
from litbotd.backends.lightning import INFRA_FAILED, PREEMPTED, LightningBackend
from litbotd.config import Config, JobsConfig, LightningConfig

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "ghs_ShortLivedRepoToken0123456789"
API_KEY = "lightning-api-key-must-stay-home"
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def standin() -> Iterator[LightningStandIn]:
    s = LightningStandIn()
    s.start()
    yield s
    s.close()


@pytest.fixture
def sdk_env(standin: LightningStandIn, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> LightningStandIn:
    """Point the SDK at the stand-in, with credentials in the environment and no user config."""
    standin.reset()
    for k in list(os.environ):
        if k.startswith("LIGHTNING_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("LIGHTNING_CLOUD_URL", standin.url)
    monkeypatch.setenv("LIGHTNING_USER_ID", "user-1")
    monkeypatch.setenv("LIGHTNING_API_KEY", API_KEY)
    monkeypatch.setenv("GH_WEBHOOK_SECRET", "daemon-webhook-secret")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.lightning/config.yaml of the developer
    from litbotd.backends.lightning import _import_sdk

    _import_sdk()
    from lightning_sdk.api import utils as sdk_utils
    from lightning_sdk.lightning_cloud import env as sdk_cloud_env

    # The SDK reads its URL at import and caches one client per process: aim both at the stand-in.
    monkeypatch.setattr(sdk_cloud_env, "LIGHTNING_CLOUD_URL", standin.url)
    sdk_utils.cached_lightning_client.cache_clear()
    sdk_utils.allowed_resource_access.cache_clear()
    return standin


@pytest.fixture
async def backend(sdk_env: LightningStandIn) -> AsyncIterator[LightningBackend]:
    b = LightningBackend("acme/ci", call_timeout=30, stop_wait=2.0)
    yield b
    await b.close()


def spec(name: str = "litci-3f2a9c1b7d", *, machine: str = "CPU", env: dict[str, str] | None = None,
         token: str | None = TOKEN, interruptible: bool = False) -> JobSpec:
    return JobSpec(name=name, repo="acme/widget", sha=SHA,
                   archive_url=f"https://api.github.com/repos/acme/widget/tarball/{SHA}",
                   script="pytest -q\n", image="python:3.11-slim", machine=machine, interruptible=interruptible,
                   timeout=1800, env=env if env is not None else {"HELLO": "world"}, token=token)


async def test_start_twice_creates_one_job(backend: LightningBackend, sdk_env: LightningStandIn) -> None:
    first = await backend.start(spec())
    assert first.state == "pending"
    assert first.url == f"{sdk_env.url}/acme/ci/jobs/litci-3f2a9c1b7d?app_id=jobs"
    sdk_env.by_name("litci-3f2a9c1b7d").state = "running"  # type: ignore[union-attr]
    second = await backend.start(spec())
    assert second.state == "running"
    assert len(sdk_env.creates) == 1
    assert [j.name for j in sdk_env.jobs.values()] == ["litci-3f2a9c1b7d"]


async def test_job_request_carries_no_secret_but_the_token(backend: LightningBackend,
                                                           sdk_env: LightningStandIn) -> None:
    await backend.start(spec(env={"HELLO": "world", "PY": "3.11"}, interruptible=True))
    (body,) = sdk_env.creates
    s = body["spec"]
    assert {e["name"]: e["value"] for e in s["env"]} == {"HELLO": "world", "PY": "3.11", "GITHUB_TOKEN": TOKEN}
    assert (s["image"], s["instanceName"], s["spot"], s["entrypoint"]) == ("python:3.11-slim", "cpu-4", True, "sh -c")
    assert TOKEN not in s["command"] and "pytest" not in s["command"]  # script travels encoded, token not at all
    everything = json.dumps(body)
    assert API_KEY not in everything and "daemon-webhook-secret" not in everything


async def test_status_of_unknown_job(backend: LightningBackend) -> None:
    with pytest.raises(JobNotFound):
        await backend.status("litci-unknown")
    with pytest.raises(JobNotFound):
        await backend.log_tail("litci-unknown", 10)


@pytest.mark.parametrize("server_state, logs, notice, expected", [
    ("pending", [], False, ("pending", None, False, "")),
    ("creating", [], False, ("pending", None, False, "")),
    ("running", [], False, ("running", None, False, "")),
    ("stopping", [], False, ("stopping", None, False, "")),
    ("complete", [], False, ("stopping", None, False, "")),  # exited, logs not settled yet
    ("completed", ["ok", "litci-exit-code: 0"], False, ("succeeded", 0, False, "exit code 0")),
    ("failed", ["boom", "litci-exit-code: 2"], False, ("failed", 2, False, "exit code 2")),
    ("failed", ["litci-timed-out: 1800"], False, ("failed", None, True, "timed out after 1800s")),
    ("failed", ["litci-error: download of the code failed: HTTP 404 Not Found"], False,
     ("failed", None, False, "failed to start: download of the code failed: HTTP 404 Not Found")),
    ("failed", ["litci: fetching acme/widget@0123"], False, ("failed", None, False, INFRA_FAILED)),
    ("failed", ["litci-exit-code: 0"], False, ("failed", None, False, INFRA_FAILED)),  # inconsistent: not trusted
    ("failed", [], True, ("failed", None, False, PREEMPTED)),
    ("stopped", [], False, ("stopped", None, False, "stopped")),
    ("stopped", [], True, ("failed", None, False, PREEMPTED)),
])
async def test_status_mapping(backend: LightningBackend, sdk_env: LightningStandIn, server_state: str,
                              logs: list[str], notice: bool, expected: tuple) -> None:
    job = sdk_env.add_job("litci-mapped", state=server_state, logs=logs)
    job.interruption_notice_received = notice
    st = await backend.status("litci-mapped")
    assert (st.state, st.exit_code, st.timed_out, st.message) == expected
    assert st.url is not None and st.url.startswith("http://127.0.0.1:")


async def test_final_status_is_remembered(backend: LightningBackend, sdk_env: LightningStandIn) -> None:
    sdk_env.add_job("litci-done", state="completed", logs=["litci-exit-code: 0"])
    assert (await backend.status("litci-done")).state == "succeeded"
    sdk_env.requests.clear()
    assert (await backend.status("litci-done")).state == "succeeded"
    assert sdk_env.requests == []


async def test_renamed_duplicate_is_stopped_and_the_original_reported(backend: LightningBackend,
                                                                      sdk_env: LightningStandIn) -> None:
    sdk_env.rename_on_create = "running"  # another daemon creates the name just before our create
    st = await backend.start(spec())
    assert st.state == "running"
    assert st.url is not None and st.url.endswith("/jobs/litci-3f2a9c1b7d?app_id=jobs")
    deadline = time.monotonic() + 10
    while ("litci-3f2a9c1b7d-1", {"state": "stop"}) not in sdk_env.updates:
        assert time.monotonic() < deadline, f"duplicate not stopped: {sdk_env.updates}"
        await asyncio.sleep(0.05)
    assert sdk_env.by_name("litci-3f2a9c1b7d-1").state == "stopped"  # type: ignore[union-attr]
    assert sdk_env.by_name("litci-3f2a9c1b7d").state == "running"  # type: ignore[union-attr]


async def test_stop_is_bounded_and_idempotent(backend: LightningBackend, sdk_env: LightningStandIn) -> None:
    sdk_env.add_job("litci-stopme", state="running")
    sdk_env.stop_to = "stopping"  # the job never finishes stopping: job.stop() would wait forever
    t0 = time.monotonic()
    await backend.stop("litci-stopme")
    assert time.monotonic() - t0 < backend.stop_wait + 1.5
    assert ("litci-stopme", {"state": "stop"}) in sdk_env.updates
    assert (await backend.status("litci-stopme")).state == "stopping"
    sdk_env.by_name("litci-stopme").state = "stopped"  # type: ignore[union-attr]
    await backend.stop("litci-stopme")
    await backend.stop("litci-never-existed")
    assert (await backend.status("litci-stopme")).state == "stopped"


async def test_log_tail(backend: LightningBackend, sdk_env: LightningStandIn) -> None:
    sdk_env.add_job("litci-logs", state="completed", logs=[f"line {i}" for i in range(1, 101)] + ["litci-exit-code: 0"])
    sdk_env.add_job("litci-waiting", state="pending")
    assert (await backend.log_tail("litci-logs", 3)).splitlines() == ["line 99", "line 100", "litci-exit-code: 0"]
    assert await backend.log_tail("litci-waiting", 3) == ""


async def test_copy_log_keeps_the_whole_log_on_the_vm(backend: LightningBackend, sdk_env: LightningStandIn,
                                                      tmp_path: Path) -> None:
    """A run page reads a Lightning job's log through the SDK, whole, into a file on the VM."""
    job = sdk_env.add_job("litci-running", state="running", logs=["one", "\x1b[31mtwo\x1b[0m"])
    dest = tmp_path / "runs" / "litci-running" / "live.txt"
    assert await backend.copy_log("litci-running", str(dest))
    assert dest.read_text() == "one\n\x1b[31mtwo\x1b[0m\n"
    job.logs.append("three")
    assert await backend.copy_log("litci-running", str(dest))
    assert dest.read_text().splitlines() == ["one", "\x1b[31mtwo\x1b[0m", "three"]
    sdk_env.add_job("litci-waiting2", state="pending")
    assert not await backend.copy_log("litci-waiting2", str(tmp_path / "none.txt"))
    with pytest.raises(JobNotFound):
        await backend.copy_log("litci-nobody", str(tmp_path / "none.txt"))


async def test_failed_create_is_a_clear_error_without_secrets(backend: LightningBackend,
                                                              sdk_env: LightningStandIn) -> None:
    sdk_env.fail_create = 400
    with pytest.raises(BackendError) as err:
        await backend.start(spec(env={"HELLO": "world-value"}))
    text = str(err.value)
    assert text.startswith("failed to start:") and "400" in text
    assert TOKEN not in text and "world-value" not in text and API_KEY not in text
    # The SDK reports a failed call's arguments, env included, to Lightning (measured: Job._submit
    # carries GITHUB_TOKEN there). The short-lived token is the only secret that may reach it.
    telemetry = json.dumps(sdk_env.telemetry)
    assert "Job._submit" in telemetry
    assert API_KEY not in telemetry and "daemon-webhook-secret" not in telemetry


async def test_unknown_machine_is_refused_before_any_request(backend: LightningBackend,
                                                             sdk_env: LightningStandIn) -> None:
    with pytest.raises(BackendError, match="unknown Lightning machine 'GPU-9000'"):
        await backend.start(spec(machine="GPU-9000"))
    assert sdk_env.creates == [] and sdk_env.requests == []


def test_machine_names_come_from_the_sdk() -> None:
    names = machine_names()
    assert {"CPU", "CPU_SMALL", "L4", "A100_X_8", "H100"} <= names
    assert "GPU-9000" not in names and "cpu-4" not in names
    assert os.environ["LIGHTNING_DISABLE_VERSION_CHECK"] == "1"


@pytest.mark.parametrize("unset", [("LIGHTNING_API_KEY",), ("LIGHTNING_USER_ID",)])
def test_missing_credentials_fail_clearly_without_network(sdk_env: LightningStandIn,
                                                          monkeypatch: pytest.MonkeyPatch, unset: tuple) -> None:
    for k in unset:
        monkeypatch.delenv(k)
    with pytest.raises(BackendError, match=f"Lightning credentials are missing: set {unset[0]}"):
        LightningBackend("acme/ci")
    assert sdk_env.requests == []


def test_auth_token_alone_is_enough(sdk_env: LightningStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIGHTNING_API_KEY")
    monkeypatch.delenv("LIGHTNING_USER_ID")
    monkeypatch.setenv("LIGHTNING_AUTH_TOKEN", "jwt")
    assert LightningBackend("acme/ci").name == "lightning"


def test_teamspace_must_be_configured(sdk_env: LightningStandIn) -> None:
    cfg = Config(jobs=JobsConfig(backend="lightning", lightning=LightningConfig(teamspace="")))
    with pytest.raises(BackendError, match="jobs.lightning.teamspace is not set"):
        make_backend(cfg.jobs)
    cfg = Config(jobs=JobsConfig(backend="lightning", lightning=LightningConfig(teamspace="acme/ci")))
    assert isinstance(make_backend(cfg.jobs), LightningBackend)


def test_importing_litbotd_does_not_import_the_sdk() -> None:
    code = ("import sys, litbotd.backends, litbotd.backends.lightning, litbotd.backends.local;"
            "print('lightning_sdk' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=scrubbed_env())
    assert out.stdout.strip() == "False", out.stderr
