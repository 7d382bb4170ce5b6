"""The Lightning backend driving lightning-sdk's own request code against a loopback stand-in."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from helpers.env import scrubbed_env
from helpers.wait import wait_until
from lightning_standin import LightningStandIn
from litbotd import infra
from litbotd.backends import lightning as lightning_mod
from litbotd.backends import machine_names, make_backend
from litbotd.backends.base import BackendError, JobNotFound, JobSpec, Price
from litbotd.backends.lightning import INFRA_FAILED, LightningBackend
from litbotd.config import Config, JobsConfig, LightningConfig

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "ghs_ShortLivedRepoToken0123456789"
API_KEY = "lightning-api-key-must-stay-home"
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def sdk_env(lightning: LightningStandIn, monkeypatch: pytest.MonkeyPatch) -> LightningStandIn:
    """The SDK aimed at the stand-in (conftest.py); its unknown requests fail the test."""
    monkeypatch.setenv("GH_WEBHOOK_SECRET", "daemon-webhook-secret")
    return lightning


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


async def test_released_secrets_are_in_the_job_env_only(backend: LightningBackend, sdk_env: LightningStandIn) -> None:
    """SPEC §10: a Lightning job gets its secrets in its env (visible to the teamspace, README),
    never in its command; a secret wins over a matrix value of the same name."""
    value = "codecov-" + "9" * 20
    s = dataclasses.replace(spec(env={"HELLO": "world", "CODECOV_TOKEN": "cell"}), secret_env={"CODECOV_TOKEN": value})
    assert value not in repr(s)
    await backend.start(s)
    (body,) = sdk_env.creates
    env = {e["name"]: e["value"] for e in body["spec"]["env"]}
    assert env == {"HELLO": "world", "CODECOV_TOKEN": value, "GITHUB_TOKEN": TOKEN}
    assert value not in body["spec"]["command"]


async def test_status_of_unknown_job(backend: LightningBackend) -> None:
    with pytest.raises(JobNotFound):
        await backend.status("litci-unknown")
    with pytest.raises(JobNotFound):
        await backend.log_tail("litci-unknown", 10)


@pytest.mark.parametrize("server_state, logs, notice, expected", [
    ("pending", [], False, ("pending", None, False, "", "")),
    ("creating", [], False, ("pending", None, False, "", "")),
    ("running", [], False, ("running", None, False, "", "")),
    ("restarting", [], False, ("running", None, False, "", "")),
    ("stopping", [], False, ("stopping", None, False, "", "")),
    ("complete", [], False, ("stopping", None, False, "", "")),  # exited, logs not settled yet
    ("completed", ["ok", "litci-exit-code: 0"], False, ("succeeded", 0, False, "exit code 0", "")),
    ("failed", ["boom", "litci-exit-code: 2"], False, ("failed", 2, False, "exit code 2", "")),
    ("failed", ["boom", "litci-exit-code: 2"], True, ("failed", 2, False, "exit code 2", "")),  # the script's own
    ("failed", ["litci-timed-out: 1800"], False, ("failed", None, True, "timed out after 1800s", "")),
    ("failed", ["litci-error: download of the code failed: HTTP 404 Not Found"], False,
     ("failed", None, False, "failed to start: download of the code failed: HTTP 404 Not Found", "")),
    ("failed", ["litci: fetching acme/widget@0123"], False, ("failed", None, False, "machine lost: the job ended before the script finished, and Lightning gave no reason", "machine_lost")),
    ("failed", ["litci-exit-code: 0"], False, ("failed", None, False, "machine lost: the job ended before the script finished, and Lightning gave no reason", "machine_lost")),  # not trusted
    ("failed", [], True, ("failed", None, False, "preempted: the interruptible machine was reclaimed before the script finished", "preempted")),
    ("stopped", [], False, ("stopped", None, False, "stopped", "")),
    ("stopped", [], True, ("failed", None, False, "preempted: the interruptible machine was reclaimed before the script finished", "preempted")),
    ("quarantined", [], False, ("unknown", None, False,
                                "Lightning reports the job state 'quarantined', which litbotd does not know", "")),
])
async def test_status_mapping(backend: LightningBackend, sdk_env: LightningStandIn, server_state: str,
                              logs: list[str], notice: bool, expected: tuple) -> None:
    job = sdk_env.add_job("litci-mapped", state=server_state, logs=logs)
    job.interruption_notice_received = notice
    st = await backend.status("litci-mapped")
    assert (st.state, st.exit_code, st.timed_out, st.message, st.infra) == expected
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
    await wait_until(lambda: ("litci-3f2a9c1b7d-1", {"state": "stop"}) in sdk_env.updates, 10,
                     "the duplicate to be stopped")
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


# --- SPEC §11: prices, cost, infrastructure failures ------------------------------------------------
async def test_prices_come_from_the_machine_listing(backend: LightningBackend, sdk_env: LightningStandIn) -> None:
    prices = await backend.prices()
    assert prices["L4"] == Price("L4", 4.0, 1.6)
    assert prices["A100_X_8"] == Price("A100_X_8", 30.0, 12.0)
    assert prices["CPU"] == Price("CPU", 0.2, 0.08) and prices["CPU_X_4"] == Price("CPU_X_4", 0.2, 0.08)  # one slug
    assert "H100" not in prices  # not listed: not priced
    assert any(r.startswith("GET /v1/core/accelerators") for r in sdk_env.requests)
    # A machine out of capacity drops out of the SDK's listing: its last price still counts.
    sdk_env.machine("L4").out_of_capacity = True
    sdk_env.machine("A100_X_8").cost = 32.5
    again = await backend.prices()
    assert again["L4"] == Price("L4", 4.0, 1.6) and again["A100_X_8"].on_demand == 32.5


def test_prices_of_keeps_the_dearest_offer() -> None:
    from types import SimpleNamespace as NS

    constants = [NS(name="L4", slug="lit-l4-1")]
    listing = [NS(slug="lit-l4-1", cost=4.0, interruptible_cost=1.5), NS(slug="lit-l4-1", cost=3.0, interruptible_cost=2.0),
               NS(slug="lit-l4-1", cost=None, interruptible_cost=None)]
    assert lightning_mod.prices_of(listing, constants) == {"L4": Price("L4", 4.0, 2.0)}


async def test_cost_is_the_jobs_total_cost_once_final(backend: LightningBackend, sdk_env: LightningStandIn) -> None:
    job = sdk_env.add_job("litci-costly", state="running", machine="L4")
    assert (await backend.status("litci-costly")).cost is None  # not final: not yet a cost
    job.total_cost = 1.25
    sdk_env.finish("litci-costly", 0)
    st = await backend.status("litci-costly")
    assert st.cost == 1.25
    sdk = lightning_mod._import_sdk()
    assert sdk.Job("litci-costly", teamspace="acme/ci").total_cost == st.cost  # the SDK's public field agrees


async def test_jobs_are_created_with_one_run_attempt(backend: LightningBackend, sdk_env: LightningStandIn) -> None:
    await backend.start(spec(interruptible=True))
    (body,) = sdk_env.creates
    assert body["spec"]["maxRunAttempts"] == 1  # Lightning never retries by itself: litbotd decides


async def test_preemption_notice_then_failure(backend: LightningBackend, sdk_env: LightningStandIn) -> None:
    await backend.start(spec(machine="L4", interruptible=True))
    name = "litci-3f2a9c1b7d"
    sdk_env.set_state(name, "running")
    sdk_env.notice(name)
    assert (await backend.status(name)).state == "running"  # a notice alone ends nothing
    sdk_env.preempt(name)  # one attempt allowed: the job fails
    st = await backend.status(name)
    assert (st.state, st.infra, st.exit_code) == ("failed", "preempted", None)
    assert "Lightning: The interruptible machine was reclaimed by the cloud provider" in st.message
    assert infra.decide_retry(state=st.state, exit_code=st.exit_code, timed_out=st.timed_out, infra=st.infra,
                              try_n=1, retries=2, interruptible=True) == infra.Retry(2, True)


async def test_a_restart_by_lightning_is_shown_and_still_running(backend: LightningBackend,
                                                                  sdk_env: LightningStandIn) -> None:
    sdk_env.add_job("litci-restarted", state="running", machine="L4", interruptible=True, max_run_attempts=3)
    sdk_env.notice("litci-restarted")
    sdk_env.preempt("litci-restarted")  # attempts left: the server restarts it
    st = await backend.status("litci-restarted")
    assert (st.state, st.message) == ("running", "restarted by Lightning 1 time")
    sdk = lightning_mod._import_sdk()
    assert sdk.Job("litci-restarted", teamspace="acme/ci").current_run_attempt == 2
    sdk_env.finish("litci-restarted", 0)
    done = await backend.status("litci-restarted")
    assert (done.state, done.message) == ("succeeded", "exit code 0 (restarted by Lightning 1 time)")


@pytest.mark.parametrize("message, server_error, kind, state", [
    ('Back-off pulling image "ghcr.io/acme/nope:latest"', "ErrImagePull", "image_pull", "failed"),
    ("insufficient capacity for lit-l4-1 in us-east-1", "", "capacity", "failed"),
    ("node was lost: no heartbeat for 300s", "", "machine_lost", "failed"),
    ("teamspace budget exceeded: job stopped", "", "budget", "stopped"),
    ("something we never heard of went wrong", "", "platform", "failed"),
])
async def test_a_failure_with_a_server_message_shows_it(backend: LightningBackend, sdk_env: LightningStandIn,
                                                        message: str, server_error: str, kind: str, state: str) -> None:
    sdk_env.add_job("litci-platform", state="running")
    sdk_env.fail_with("litci-platform", message, server_error, state=state)
    st = await backend.status("litci-platform")
    assert (st.state, st.infra, st.exit_code) == ("failed", kind, None)
    assert message in st.message and server_error in st.message


async def test_an_unknown_state_is_logged_once_by_name_and_never_pending(backend: LightningBackend,
                                                                         sdk_env: LightningStandIn,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    sdk_env.add_job("litci-odd-1", state="hibernating")
    sdk_env.add_job("litci-odd-2", state="hibernating")
    with caplog.at_level("WARNING", logger="litbotd.backends.lightning"):
        states = [(await backend.status(n)).state for n in ("litci-odd-1", "litci-odd-1", "litci-odd-2")]
    assert states == ["unknown"] * 3
    lines = [r.getMessage() for r in caplog.records if "does not know" in r.getMessage()]
    assert len(lines) == 1 and "state=hibernating" in lines[0]
    sdk = lightning_mod._import_sdk()
    assert str(sdk.Job("litci-odd-1", teamspace="acme/ci").status) == "Pending"  # what the SDK alone would say


async def test_5xx_answers_are_retried_by_the_sdk_then_reported(backend: LightningBackend,
                                                                sdk_env: LightningStandIn) -> None:
    sdk_env.add_job("litci-flaky", state="running")
    sdk_env.fail("GET", r"/jobs/find$", 503, times=2)  # the SDK tries 3 times
    assert (await backend.status("litci-flaky")).state == "running"
    sdk_env.fail("GET", r"/jobs/find$", 503, times=3)
    with pytest.raises(BackendError, match="503"):
        await backend.status("litci-flaky")


async def test_a_stop_lightning_refuses_is_an_error_and_a_second_stop_sends_it(backend: LightningBackend,
                                                                              sdk_env: LightningStandIn) -> None:
    sdk_env.add_job("litci-stubborn", state="running")
    sdk_env.fail("PUT", r"/jobs/job-", 502, times=3)
    with pytest.raises(BackendError, match="stop of litci-stubborn"):
        await backend.stop("litci-stubborn")
    assert sdk_env.stops == []
    await backend.stop("litci-stubborn")
    assert [n for n, _ in sdk_env.stops] == ["litci-stubborn"]
    await backend.stop("litci-stubborn")  # stopped already: nothing more is sent
    assert len(sdk_env.stops) == 1


async def test_a_slow_answer_is_bounded(sdk_env: LightningStandIn) -> None:
    b = LightningBackend("acme/ci", call_timeout=1.0, stop_wait=1.0)
    try:
        sdk_env.add_job("litci-slow", state="running")
        await b.status("litci-slow")  # teamspace resolved
        sdk_env.slow("GET", r"/jobs/find$", 3.0)
        with pytest.raises(BackendError, match="did not answer within 1s"):
            await b.status("litci-slow")
        sdk_env.slow("GET", r"/jobs/find$", 3.0)
        with pytest.raises(BackendError, match="did not answer within 1s"):
            await b.stop("litci-slow")
    finally:
        await b.close()


async def test_the_log_download_fallback_has_a_timeout(sdk_env: LightningStandIn,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A job whose lines are not in the logs API: the SDK downloads its saved log with urlopen.
    A download that never answers must free its thread (one thread here) well before the
    backend's own call timeout, so the next call gets it."""
    monkeypatch.setattr(lightning_mod, "LOG_DOWNLOAD_TIMEOUT", 0.5)
    b = LightningBackend("acme/ci", threads=1, call_timeout=8.0)
    try:
        job = sdk_env.add_job("litci-saved-log", state="running")
        sdk_env.add_job("litci-other", state="running")
        await b.status("litci-other")
        sdk_env.hang("GET", r"^/saved-logs/")
        job.state = "failed"  # with an empty page-logs answer: the SDK falls back to the saved file
        st = await b.status("litci-saved-log")
        assert st.state == "failed" and st.message == INFRA_FAILED + lightning_mod.LOG_UNAVAILABLE
        assert st.infra == ""  # no log, no reason given: not retried on a guess
        assert (await b.status("litci-other")).state == "running"  # the one thread is free again
    finally:
        await b.close()


async def test_the_stand_in_can_run_jobs_by_itself(backend: LightningBackend, sdk_env: LightningStandIn) -> None:
    """autorun: pending → running at the first read, the end after autorun_reads more; peak counted."""
    sdk_env.autorun = lambda job: 0
    sdk_env.autorun_reads = 1
    await backend.start(spec("litci-auto-1", machine="L4"))
    await backend.start(spec("litci-auto-2", machine="L4"))
    states = []
    for _ in range(4):
        states.append([(await backend.status(n)).state for n in ("litci-auto-1", "litci-auto-2")])
    assert states[0] == ["running", "running"] and states[-1] == ["succeeded", "succeeded"]
    assert sdk_env.peak_running["lit-l4-1"] == 2 and sdk_env.running("lit-l4-1") == 0
    cost = (await backend.status("litci-auto-1")).cost
    assert cost is not None and cost >= 0
