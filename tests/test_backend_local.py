"""The local backend, for real: detached runner processes, a loopback tarball server, tmp workdirs."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from helpers.env import scrubbed_env
from helpers.wait import wait_until
from litbotd.backends import make_backend
from litbotd.backends.base import BackendError, JobNotFound, JobSpec, JobStatus
from litbotd.backends.local import LocalBackend
from litbotd.config import Config, JobsConfig, LocalConfig
from tarball_server import REPO, SHA, TarballServer, github_tarball
from test_bootstrap import gone

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "ghs_LocalJobToken0123456789abcdef"


@pytest.fixture
async def server() -> AsyncIterator[TarballServer]:
    s = await TarballServer(github_tarball({"hello.txt": "hello from the repo\n"})).start()
    yield s
    await s.close()


def kill_leftovers(workdir: Path) -> None:
    """A failing test must not leave runners behind: kill every runner group still recorded."""
    for status in workdir.glob("*/status.json"):
        st = json.loads(status.read_text())
        if st.get("state") in ("pending", "running") and isinstance(st.get("pgid"), int):
            try:
                os.killpg(st["pgid"], signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(autouse=True)
def no_leftovers(tmp_path: Path) -> Iterator[None]:
    yield
    kill_leftovers(tmp_path / "jobs")


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """Where test and sandboxed job meet: the jobs' one writable path besides their own."""
    d = tmp_path / "shared"
    d.mkdir()
    return d


def local(tmp_path: Path, max_parallel: int = 2, **kw: object) -> LocalBackend:
    """The backend as these tests use it: unsandboxed, since they are about the runner, not the
    sandbox (tests/test_sandbox.py is); a test that needs bwrap says so (sandbox=True + the mark)."""
    kw = {"sandbox": False, **kw}
    return LocalBackend(str(tmp_path / "jobs"), max_parallel, grace=1.0,
                        writable_paths=[str(tmp_path / "shared")], **kw)  # type: ignore[arg-type]


@pytest.fixture
async def backend(tmp_path: Path, shared: Path) -> AsyncIterator[LocalBackend]:
    b = local(tmp_path)
    yield b
    await b.close()


def host_pids(*argv: str) -> list[int]:
    """Host pids of live processes whose command line is exactly argv (pids inside a sandbox differ)."""
    want = ("\0".join(argv) + "\0").encode()
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "cmdline").read_bytes() == want and not gone(int(d.name)):
                    found.append(int(d.name))
            except OSError:
                pass
    return found


async def wait_no_pids(*argv: str, within: float = 5.0) -> list[int]:
    deadline = time.monotonic() + within
    while (pids := host_pids(*argv)) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return pids


def spec(server: TarballServer, name: str, script: str, *, timeout: float = 30, token: str | None = None,
         env: dict[str, str] | None = None) -> JobSpec:
    return JobSpec(name=name, repo=REPO, sha=SHA, archive_url=server.archive_url(), script=script,
                   image="python:3.11-slim", machine="CPU", interruptible=False, timeout=timeout,
                   env=env or {}, token=token)


async def wait_for_state(b: LocalBackend, name: str, states: set[str], within: float = 20) -> JobStatus:
    async def reached() -> JobStatus | None:
        st = await b.status(name)
        return st if st.state in states else None

    return await wait_until(reached, within, f"{name} to be {' or '.join(sorted(states))}")


async def wait_final(b: LocalBackend, name: str, within: float = 20) -> JobStatus:
    return await wait_for_state(b, name, {"succeeded", "failed", "stopped"}, within)


async def wait_file(path: Path, within: float = 20, check: bool = True) -> str:
    await wait_until(lambda: path.exists() and (not check or path.read_text().strip()), within, f"{path} to appear",
                     every=0.02)
    return path.read_text()


async def test_success_and_failure_exit_codes(backend: LocalBackend, server: TarballServer) -> None:
    ok = await backend.start(spec(server, "litci-ok", "cat hello.txt\n"))
    bad = await backend.start(spec(server, "litci-bad", "echo failing\nexit 3\n"))
    assert ok.state == bad.state == "pending" and ok.url is None
    ok, bad = await wait_final(backend, "litci-ok"), await wait_final(backend, "litci-bad")
    assert (ok.state, ok.exit_code, ok.timed_out) == ("succeeded", 0, False)
    assert (bad.state, bad.exit_code, bad.message) == ("failed", 3, "exit code 3")
    assert "hello from the repo" in await backend.log_tail("litci-ok", 20)
    assert (await backend.log_tail("litci-bad", 2)).splitlines() == ["failing", "litci-exit-code: 3"]


async def test_start_twice_is_one_job(backend: LocalBackend, server: TarballServer, tmp_path: Path,
                                      shared: Path) -> None:
    runs = shared / "runs.txt"
    s = spec(server, "litci-once", f"echo ran >> {runs}\n")
    first, second = await asyncio.gather(backend.start(s), backend.start(s))
    assert {first.state, second.state} <= {"pending", "running", "succeeded"}
    final = await wait_final(backend, "litci-once")
    again = await backend.start(s)  # finds the finished job, starts nothing
    assert again == final and final.state == "succeeded"
    assert runs.read_text() == "ran\n"
    assert [p.name for p in (tmp_path / "jobs").iterdir() if not p.name.startswith(".")] == ["litci-once"]


CHILD = """
import asyncio, json, sys
from litbotd.backends.base import JobSpec
from litbotd.backends.local import LocalBackend

async def main():
    backend = LocalBackend(sys.argv[2], 2, grace=1.0, sandbox=False)
    status = await backend.start(JobSpec(**json.loads(sys.argv[1])))
    print(status.state, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_job_survives_the_death_of_its_starter(server: TarballServer, tmp_path: Path, shared: Path) -> None:
    go = shared / "go"
    s = spec(server, "litci-orphan", f"echo first\nwhile [ ! -e {go} ]; do sleep 0.02; done\necho second\n")
    fields = {k: getattr(s, k) for k in s.__dataclass_fields__}
    workdir = tmp_path / "jobs"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, json.dumps(fields), str(workdir), str(shared), stdout=asyncio.subprocess.PIPE,
        env=scrubbed_env())
    assert child.stdout is not None
    assert (await asyncio.wait_for(child.stdout.readline(), 20)).strip() == b"pending"
    fresh = local(tmp_path)
    try:
        assert (await wait_for_state(fresh, "litci-orphan", {"running"})).state == "running"
        child.kill()  # SIGKILL: the starter dies without any cleanup
        await child.wait()
        go.touch()
        final = await wait_final(fresh, "litci-orphan")
        assert (final.state, final.exit_code) == ("succeeded", 0)
        assert (await fresh.log_tail("litci-orphan", 3)).splitlines() == ["first", "second", "litci-exit-code: 0"]
    finally:
        await fresh.close()


async def test_timeout_kills_the_process_group(backend: LocalBackend, server: TarballServer) -> None:
    await backend.start(spec(server, "litci-slow", "sleep 311 &\nsleep 311\n", timeout=1))
    st = await wait_final(backend, "litci-slow")
    assert (st.state, st.timed_out, st.exit_code) == ("failed", True, None)
    assert st.message.startswith("timed out")
    assert await wait_no_pids("sleep", "311") == []


async def test_stop_kills_the_script_and_is_idempotent(backend: LocalBackend, server: TarballServer,
                                                       shared: Path) -> None:
    bg = shared / "bg.pid"
    await backend.start(spec(server, "litci-stopme", f"sleep 312 &\necho $! > {bg}\nsleep 312\n"))
    await wait_file(bg)
    deadline = time.monotonic() + 10  # the foreground sleep starts just after the pid file is written
    while len(host_pids("sleep", "312")) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert len(host_pids("sleep", "312")) == 2
    t0 = time.monotonic()
    await backend.stop("litci-stopme")
    assert time.monotonic() - t0 < 2
    st = await wait_final(backend, "litci-stopme")
    assert st.state == "stopped"
    assert await wait_no_pids("sleep", "312") == []
    await backend.stop("litci-stopme")  # again: nothing happens, nothing raises
    await backend.stop("litci-never-existed")
    assert (await backend.status("litci-stopme")).state == "stopped"


async def test_max_parallel_one_runs_jobs_one_after_the_other(server: TarballServer, tmp_path: Path,
                                                              shared: Path) -> None:
    b = local(tmp_path, 1)
    marks = shared / "marks.txt"
    release = shared / "release"
    script = (f"echo start $LITCI_N $(date +%s%N) >> {marks}\n"
              f"while [ ! -e {release} ]; do sleep 0.02; done\n"
              f"echo end $LITCI_N $(date +%s%N) >> {marks}\n")
    try:
        await b.start(spec(server, "litci-p1", script, env={"LITCI_N": "1"}))
        await wait_for_state(b, "litci-p1", {"running"})
        await b.start(spec(server, "litci-p2", script, env={"LITCI_N": "2"}))
        await asyncio.sleep(0.5)  # give a wrongly unlimited runner time to start the second job
        assert (await b.status("litci-p2")).state == "pending"
        release.touch()
        assert (await wait_final(b, "litci-p1")).state == "succeeded"
        assert (await wait_final(b, "litci-p2")).state == "succeeded"
        assert "waiting for a free slot" in await b.log_tail("litci-p2", 50)
    finally:
        await b.close()
    events = [line.split() for line in marks.read_text().splitlines()]
    spans = {n: (int(t), int(t2)) for kind, n, t in events if kind == "start"
             for kind2, n2, t2 in events if kind2 == "end" and n2 == n}
    (s1, e1), (s2, e2) = sorted(spans.values())
    assert e1 <= s2, f"jobs overlapped: {events}"


async def test_stop_while_pending_never_runs_the_script(server: TarballServer, tmp_path: Path,
                                                       shared: Path) -> None:
    b = local(tmp_path, 1)
    ran = shared / "ran"
    try:
        await b.start(spec(server, "litci-blocker", "sleep 300\n"))
        await wait_for_state(b, "litci-blocker", {"running"})
        await b.start(spec(server, "litci-queued", f"touch {ran}\n"))
        await b.stop("litci-queued")
        st = await wait_final(b, "litci-queued")
        assert st.state == "stopped" and not ran.exists()
        await b.stop("litci-blocker")
        assert (await wait_final(b, "litci-blocker")).state == "stopped"
    finally:
        await b.close()


@pytest.mark.sandbox(network="none")
async def test_dead_runner_is_reported_failed_not_running_forever(server: TarballServer, tmp_path: Path,
                                                                  shared: Path) -> None:
    backend = local(tmp_path, sandbox=True, network="none")  # bwrap --die-with-parent: the script dies too
    started = shared / "started"
    await backend.start(spec(server, "litci-orphaned", f"touch {started}\nsleep 313\n"))
    await wait_file(started, check=False)
    status = json.loads((tmp_path / "jobs" / "litci-orphaned" / "status.json").read_text())
    os.killpg(status["pgid"], signal.SIGKILL)  # the runner dies as in a power cut: no last words
    st = await wait_final(backend, "litci-orphaned")
    assert st.state == "failed" and st.exit_code is None
    assert "died without a final status" in st.message
    assert await wait_no_pids("sleep", "313") == []  # the sandbox died with its runner


async def test_token_reaches_only_the_download(backend: LocalBackend, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GH_WEBHOOK_SECRET", "daemon-secret-must-not-leak")
    server = await TarballServer(github_tarball({"hello.txt": "private code\n"}), token=TOKEN).start()
    try:
        await backend.start(spec(server, "litci-private", "cat hello.txt\nenv | sort\n", token=TOKEN))
        st = await wait_final(backend, "litci-private")
    finally:
        await server.close()
    assert st.state == "succeeded", await backend.log_tail("litci-private", 30)
    assert server.api_auth == [f"Bearer {TOKEN}"]
    jobdir = tmp_path / "jobs" / "litci-private"
    assert not (jobdir / "token").exists()
    everything = "".join(p.read_text(errors="replace") for p in jobdir.rglob("*") if p.is_file())
    assert "private code" in everything
    assert TOKEN not in everything
    assert "daemon-secret-must-not-leak" not in everything
    assert "GITHUB_TOKEN" not in await backend.log_tail("litci-private", 100)


async def test_log_tail_reads_the_end_of_a_big_log(backend: LocalBackend, server: TarballServer) -> None:
    await backend.start(spec(server, "litci-chatty", "seq -f 'line %g padding-padding-padding-padding' 1 20000\n"))
    assert (await wait_final(backend, "litci-chatty")).state == "succeeded"
    tail = await backend.log_tail("litci-chatty", 3)
    assert tail.splitlines() == ["line 19999 padding-padding-padding-padding",
                                 "line 20000 padding-padding-padding-padding", "litci-exit-code: 0"]
    assert await backend.log_tail("litci-chatty", 0) == ""


async def test_unknown_and_invalid_names(backend: LocalBackend) -> None:
    with pytest.raises(JobNotFound):
        await backend.status("litci-nope")
    with pytest.raises(JobNotFound):
        await backend.log_tail("litci-nope", 10)
    with pytest.raises(BackendError):
        await backend.status("../etc")


@pytest.mark.sandbox(network="none")
async def test_make_backend_builds_local_from_config(tmp_path: Path) -> None:
    cfg = Config(jobs=JobsConfig(backend="local", local=LocalConfig(workdir=str(tmp_path), max_parallel=3,
                                                                    network="none", max_log_bytes=65536)))
    b = make_backend(cfg.jobs)
    try:
        assert isinstance(b, LocalBackend) and b.name == "local" and b.max_parallel == 3
        assert (b.sandbox, b.network, b.max_log_bytes) == (True, "none", 65536)
    finally:
        await b.close()


async def test_local_jobs_list_no_prices(tmp_path: Path) -> None:
    """SPEC §11: local jobs are priced only by limits.prices."""
    b = local(tmp_path)
    try:
        assert await b.prices() == {}
    finally:
        await b.close()
