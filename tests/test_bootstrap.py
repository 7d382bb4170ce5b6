"""The job command, run for real: subprocesses against a loopback tarball server."""
from __future__ import annotations

import asyncio
import json
import os
import sys
import tarfile
import time
from pathlib import Path
from typing import AsyncIterator

import pytest

from litbotd.backends.base import JobSpec
from litbotd.backends.bootstrap import Result, job_argv, job_env, parse_result, shell_command
from tarball_server import REPO, SHA, TarballServer, github_tarball

TOKEN = "ghs_SeCrEtInstallationToken0123456789"
FILES = {"hello.txt": "hello from the repo\n", "bin/run.sh": "#!/bin/sh\necho run.sh says hi\n",
         "sub/dir/data.txt": "nested\n"}


def gone(pid: int) -> bool:
    """The process no longer runs (absent, or a zombie nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


async def wait_gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def spec_for(server: TarballServer, script: str, *, timeout: float = 30, token: str | None = None,
             env: dict[str, str] | None = None) -> JobSpec:
    return JobSpec(name="litci-test", repo=REPO, sha=SHA, archive_url=server.archive_url(), script=script,
                   image="python:3.11-slim", machine="CPU", interruptible=False, timeout=timeout,
                   env=env or {}, token=token)


async def run(spec: JobSpec, tmp_path: Path, *, shell: bool = False, grace: float = 1.0) -> tuple[int, str, dict]:
    """Runs the job like a backend would; returns (exit status, stdout+stderr, result file)."""
    result_file = tmp_path / "result.json"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **job_env(spec)}
    if shell:  # Lightning's way: `sh -c COMMAND`, with python3 from PATH
        argv = ["sh", "-c", shell_command(spec, grace=grace)]
    else:
        argv = job_argv(spec, python=sys.executable, workdir=str(tmp_path), result_file=str(result_file),
                        grace=grace)
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, env=env)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    return proc.returncode, out.decode(), result


@pytest.fixture
async def server() -> AsyncIterator[TarballServer]:
    s = await TarballServer(github_tarball(FILES)).start()
    yield s
    await s.close()


async def test_success_runs_in_the_checkout(server: TarballServer, tmp_path: Path) -> None:
    spec = spec_for(server, "cat hello.txt\n./bin/run.sh\ncat sub/dir/data.txt\necho HELLO=$HELLO\n",
                    env={"HELLO": "world"})
    rc, out, result = await run(spec, tmp_path)
    assert rc == 0, out
    assert "hello from the repo" in out and "run.sh says hi" in out and "nested" in out
    assert "HELLO=world" in out
    assert out.rstrip("\n").splitlines()[-1] == "litci-exit-code: 0"
    assert result == {"kind": "exit", "exit_code": 0, "detail": ""}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # the checkout is cleaned up


async def test_failure_exit_code_is_reported(server: TarballServer, tmp_path: Path) -> None:
    rc, out, result = await run(spec_for(server, "echo before\nexit 3\necho after\n"), tmp_path)
    assert rc == 3
    assert "before" in out and "after" not in out
    assert out.rstrip("\n").splitlines()[-1] == "litci-exit-code: 3"
    assert result["exit_code"] == 3
    assert parse_result(out) == Result("exit", 3, "")


async def test_bash_runs_with_errexit_and_pipefail(server: TarballServer, tmp_path: Path) -> None:
    rc, out, _ = await run(spec_for(server, "false | true\necho not reached\n"), tmp_path)
    assert rc == 1 and "not reached" not in out
    assert out.rstrip("\n").splitlines()[-1] == "litci-exit-code: 1"


QUOTY = r"""x='it'"'"'s "double" $HOME `date` \n ;|&'
printf '%s\n' "$x"
cat <<'EOF'
heredoc $NOT_EXPANDED 'single' "double" \back
EOF
echo "multi
line"
"""


@pytest.mark.parametrize("shell", [False, True], ids=["argv", "sh -c"])
async def test_script_with_quotes_dollars_and_newlines_runs_verbatim(server: TarballServer, tmp_path: Path,
                                                                     shell: bool) -> None:
    rc, out, _ = await run(spec_for(server, QUOTY), tmp_path, shell=shell)
    assert rc == 0, out
    assert """it's "double" $HOME `date` \\n ;|&""" in out
    assert """heredoc $NOT_EXPANDED 'single' "double" \\back""" in out
    assert "multi\nline" in out
    assert out.rstrip("\n").splitlines()[-1] == "litci-exit-code: 0"


async def test_timeout_kills_the_whole_process_group(server: TarballServer, tmp_path: Path) -> None:
    bg = tmp_path / "bg.pid"
    script = f"sleep 300 &\necho $! > {bg}\necho started\nsleep 300\n"
    t0 = time.monotonic()
    rc, out, result = await run(spec_for(server, script, timeout=1), tmp_path)
    assert time.monotonic() - t0 < 15
    assert rc == 124
    assert out.rstrip("\n").splitlines()[-1] == "litci-timed-out: 1"
    assert result == {"kind": "timeout", "exit_code": None, "detail": "1"}
    assert parse_result(out) == Result("timeout", None, "1")
    assert await wait_gone(int(bg.read_text()))  # the background child died with the group


async def test_token_is_sent_only_to_the_api_and_never_shown(tmp_path: Path) -> None:
    server = await TarballServer(github_tarball(FILES), token=TOKEN).start()
    try:
        script = 'if [ -z "${GITHUB_TOKEN+x}" ]; then echo script-has-no-token; fi\ncat hello.txt\n'
        spec = spec_for(server, script, token=TOKEN)
        argv = job_argv(spec)
        assert not any(TOKEN in a for a in argv)
        assert TOKEN not in shell_command(spec)
        rc, out, _ = await run(spec, tmp_path)
    finally:
        await server.close()
    assert rc == 0, out
    assert "script-has-no-token" in out and "hello from the repo" in out
    assert TOKEN not in out
    assert server.api_auth == [f"Bearer {TOKEN}"]
    assert server.codeload_auth == [None]  # dropped when the redirect changed origin


async def test_download_failure_is_not_a_script_failure(tmp_path: Path) -> None:
    server = await TarballServer(github_tarball(FILES), token=TOKEN).start()
    try:
        rc, out, result = await run(spec_for(server, "echo should not run\n"), tmp_path)  # no token
    finally:
        await server.close()
    assert rc == 125
    assert "should not run" not in out
    last = out.rstrip("\n").splitlines()[-1]
    assert last.startswith("litci-error: download of the code failed: HTTP 404")
    assert result["kind"] == "error"
    assert parse_result(out).kind == "error"  # type: ignore[union-attr]


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, 1 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize("evil", [
    _member("top/../../escaped.txt"),
    _member("/abs/escaped.txt"),
    _member("top/link", tarfile.SYMTYPE, "../../escaped.txt"),
    _member("top/abslink", tarfile.SYMTYPE, "/etc/passwd"),
], ids=["dotdot", "absolute", "symlink-out", "symlink-abs"])
async def test_unsafe_archive_members_are_refused(tmp_path: Path, evil: tarfile.TarInfo) -> None:
    server = await TarballServer(github_tarball(FILES, top="top", extra=[evil])).start()
    work = tmp_path / "work"
    work.mkdir()
    try:
        rc, out, _ = await run(spec_for(server, "echo should not run\n"), work)
    finally:
        await server.close()
    assert rc == 125, out
    assert "unsafe" in out.rstrip("\n").splitlines()[-1]
    assert not (tmp_path / "escaped.txt").exists() and not (work / "escaped.txt").exists()


async def test_sigterm_stops_the_script_and_its_group(server: TarballServer, tmp_path: Path) -> None:
    bg = tmp_path / "bg.pid"
    spec = spec_for(server, f"sleep 300 &\necho $! > {bg}\nsleep 300\n")
    argv = job_argv(spec, python=sys.executable, workdir=str(tmp_path))
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                env={"PATH": os.environ["PATH"]})
    deadline = time.monotonic() + 15
    while not (bg.exists() and bg.read_text().strip()):
        assert time.monotonic() < deadline, "the script never started"
        await asyncio.sleep(0.05)
    proc.terminate()
    out, _ = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 143
    assert out.decode().rstrip("\n").splitlines()[-1] == "litci-stopped"
    assert await wait_gone(int(bg.read_text()))


def test_parse_result_takes_the_last_result_line() -> None:
    assert parse_result("litci-exit-code: 0\nmore output\nlitci-exit-code: 2\n") == Result("exit", 2, "")
    assert parse_result("no result here\n") is None
    assert parse_result("litci-error: boom\n") == Result("error", None, "boom")
    assert parse_result("x\nlitci-stopped\n") == Result("stopped", None, "")


def test_job_env_has_token_only_as_github_token() -> None:
    spec = JobSpec(name="litci-x", repo=REPO, sha=SHA, archive_url="https://api.github.com/x", script="true",
                   image="i", machine="CPU", interruptible=False, timeout=5,
                   env={"A": "1", "GITHUB_TOKEN": "from-workflow"}, token=TOKEN)
    assert job_env(spec) == {"A": "1", "GITHUB_TOKEN": TOKEN}
    assert TOKEN not in repr(spec)
