"""Job secrets on the local backend, for real (SPEC §10): the sandboxed script gets them as
environment variables; the runner masks them in log.txt as it writes it; they are in no file
(they reach the runner through a pipe) and in no process's command line."""
from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from litbotd.backends.base import JobSpec
from litbotd.backends.local import LocalBackend
from tarball_server import REPO, SHA, TarballServer, github_tarball
from test_backend_local import kill_leftovers, wait_file, wait_final

SECRET = "sup3r-s3cret/value+with:odd,chars"
OTHER = "an0ther-secret-value-2"

requires_sandbox = pytest.mark.sandbox(network="none")  # conftest: skipped without bwrap, failed on CI


@pytest.fixture
async def server() -> AsyncIterator[TarballServer]:
    s = await TarballServer(github_tarball({"hello.txt": "hello\n"})).start()
    yield s
    await s.close()


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[LocalBackend]:
    (tmp_path / "shared").mkdir()
    b = LocalBackend(str(tmp_path / "jobs"), 2, grace=1.0, writable_paths=[str(tmp_path / "shared")],
                     network="none")
    yield b
    await b.close()
    kill_leftovers(tmp_path / "jobs")


def _spec(server: TarballServer, name: str, script: str, secrets: dict[str, str]) -> JobSpec:
    return JobSpec(name=name, repo=REPO, sha=SHA, archive_url=server.archive_url(), script=script,
                   image="python:3.11-slim", machine="CPU", interruptible=False, timeout=60,
                   env={"PLAIN": "visible"}, secret_env=secrets)


def _cmdlines() -> str:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                out.append((d / "cmdline").read_bytes().decode("utf-8", "replace"))
            except OSError:
                pass
    return "\n".join(out)


@requires_sandbox
async def test_sandboxed_job_gets_its_secrets_and_its_log_shows_stars(backend: LocalBackend, server: TarballServer,
                                                                       tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    digest = hashlib.sha256(SECRET.encode()).hexdigest()
    script = (
        'printf "%s" "$S1" | sha256sum\n'
        'echo "raw: $S1 and $S2"\n'
        'printf "%s" "$S1" | base64 -w0; echo\n'
        'printf "split: %s" "${S1:0:6}"; sleep 0.3; printf "%s\\n" "${S1:6}"\n'
        'echo "plain=$PLAIN"\n'
        'env | grep -c "^S[12]=" \n'
        f'touch {shared}/running; while [ ! -e {shared}/go ]; do sleep 0.05; done\n'
    )
    await backend.start(_spec(server, "litci-secrets", script, {"S1": SECRET, "S2": OTHER}))
    jobdir = tmp_path / "jobs" / "litci-secrets"
    await wait_file(shared / "running", check=False)
    # While it runs: no command line and no file of the job dir holds a value.
    cmdlines = _cmdlines()
    for v in (SECRET, OTHER):
        assert v not in cmdlines
        for p in jobdir.rglob("*"):
            if p.is_file():
                assert v not in p.read_text(errors="replace"), p
    (shared / "go").touch()
    st = await wait_final(backend, "litci-secrets")
    log = (jobdir / "log.txt").read_text()
    assert st.state == "succeeded", log
    assert f"{digest}  -" in log                       # the script really had the value
    assert "raw: *** and ***" in log
    assert "split: ***" in log and "plain=visible" in log
    assert "\n2\n" in log                              # both are in the script's environment
    assert log.count("***") == 4, log
    for v in (SECRET, OTHER):
        everything = "".join(p.read_text(errors="replace") for p in jobdir.rglob("*") if p.is_file())
        assert v not in everything
        assert v not in await backend.log_tail("litci-secrets", 50)


async def test_unsandboxed_job_masks_too_and_run_json_has_no_value(tmp_path: Path, server: TarballServer) -> None:
    b = LocalBackend(str(tmp_path / "jobs"), 1, grace=1.0, sandbox=False)
    try:
        await b.start(_spec(server, "litci-plain", 'echo "v=$S1"\n', {"S1": SECRET}))
        run_json = (tmp_path / "jobs" / "litci-plain" / "run.json").read_text()
        assert SECRET not in run_json and "S1" not in json.loads(run_json)["env"]
        st = await wait_final(b, "litci-plain")
        assert st.state == "succeeded"
        assert "v=***" in await b.log_tail("litci-plain", 10)
    finally:
        await b.close()
        kill_leftovers(tmp_path / "jobs")


def test_the_runner_masks_across_reads(tmp_path: Path) -> None:
    """The runner's copy loop, on its own: a value written in two pieces, a pause between."""
    import subprocess
    import sys

    from litbotd.backends.localrun import CappedLog, Runner
    from litbotd.masking import ByteStreamMasker, Masker

    code = ("import sys,time;w=sys.stdout.buffer;"
            f"w.write(b'a {SECRET[:5]}');w.flush();time.sleep(0.3);w.write(b'{SECRET[5:]} b\\n');w.flush()")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    log = CappedLog(tmp_path / "log.txt", 1 << 20)
    reads: list[bytes] = []

    class Counting(ByteStreamMasker):
        def feed(self, data: bytes) -> bytes:
            reads.append(data)
            return super().feed(data)

    Runner.copy_output(child, log, Counting(Masker([SECRET])))
    log.close()
    child.wait()
    assert (tmp_path / "log.txt").read_text() == "a *** b\n"
    assert len(reads) == 2 and SECRET not in reads[0].decode(), reads  # it really came in two reads
