"""Local jobs in their sandbox, for real: bwrap + slirp4netns, a daemon subprocess, redis-server.

The hostile job below is what issue 11 found working on the unsandboxed backend: it reads the
daemon's config, key and environment, its own token from its parent, reaches Redis and the daemon
on 127.0.0.1, looks at other jobs, and leaves `setsid` processes behind.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import AsyncIterator

import pytest

from fake_github import INSTALLATION, PRIVATE_PEM, REPO, GitHubWorld
from helpers.configs import write_config
from helpers.daemon import DaemonProcess
from helpers.e2e import DAEMON_ENV, SECRET, post_webhook, pr_payload, sha_of
from helpers.env import scrubbed_env
from helpers.net import free_port
from helpers.wait import wait_until
from litbotd.backends import sandbox
from litbotd.backends.local import LocalBackend
from tarball_server import TarballServer, github_tarball
from test_backend_local import spec, wait_final, wait_for_state, wait_no_pids

HOSTILE = r"""
set +e
try() {  # try NAME CMD...: FOUND when the command prints something, else BLOCKED
  name=$1; shift
  out=$("$@" 2>/dev/null | head -c 200 | tr '\n\0' '  ')
  if [ -n "$out" ]; then echo "FOUND:$name:$out"; else echo "BLOCKED:$name"; fi
}
connect() { python3 -c 'import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 3); print("connected")' "$@"; }
try config cat {config}
try key cat {key}
try daemon-environ sh -c 'tr "\0" "\n" < /proc/{daemon_pid}/environ'
try daemon-cmdline cat /proc/{daemon_pid}/cmdline
try parent-token sh -c 'tr "\0" "\n" < /proc/$PPID/environ | grep GITHUB_TOKEN'
try any-secret sh -c 'cat /proc/*/environ | tr "\0" "\n" | grep -E "GITHUB_TOKEN|GH_WEBHOOK|GH_PRIVATE"'
try redis connect 127.0.0.1 {redis_port}
try redis-via-gateway connect 10.0.2.2 {redis_port}
try daemon-port connect 127.0.0.1 {daemon_port}
try other-jobs sh -c 'ls -A {workdir} | grep -E "litci-(other|old)"'
try other-job-log cat {workdir}/litci-other/log.txt
for i in 1 2 3; do setsid sleep 321 & done
setsid nohup sleep 321 >/dev/null 2>&1 &
(setsid sh -c 'sleep 321 &' &)
sleep 0.5
echo "SLEEPERS:$(pgrep -xc sleep)"
"""
ATTACKS = ["config", "key", "daemon-environ", "daemon-cmdline", "parent-token", "any-secret", "redis",
           "redis-via-gateway", "daemon-port", "other-jobs", "other-job-log"]


@pytest.mark.sandbox
async def test_a_hostile_job_finds_reaches_and_leaves_nothing(redis_server, tmp_path: Path) -> None:
    sha = sha_of("hostile")
    world = GitHubWorld()
    await world.start({sha: {".litci.yaml": "run: 'true'\n"}})  # the real workflow once pid and port are known
    world.pull(sha)
    etc = tmp_path / "etc"
    etc.mkdir()
    key = etc / "app.pem"
    key.write_text(PRIVATE_PEM)
    workdir = tmp_path / "jobs"
    # Another job, running (its runner is alive), and an old finished one the daemon should prune.
    sleeper = subprocess.Popen(["sleep", "600"])
    for name, status in (("litci-other", {"state": "running", "pid": sleeper.pid, "created": time.time() - 3 * 86400,
                                          "started": time.time() - 3 * 86400}),
                         ("litci-old", {"state": "succeeded", "exit_code": 0, "created": time.time() - 2 * 86400,
                                        "finished": time.time() - 2 * 86400})):
        (workdir / name).mkdir(parents=True)
        (workdir / name / "status.json").write_text(json.dumps(status))
        (workdir / name / "log.txt").write_text("OTHER-JOB-SECRET\n")
    config = write_config(etc / "litbotd.toml", redis_server.url, world.url, server={"port": free_port()},
                          github={"private_key_file": str(key)},
                          # the product default: sandboxed
                          jobs={"local": {"workdir": str(workdir), "sandbox": True, "writable_paths": []}})
    daemon = DaemonProcess(config, tmp_path / "daemon.log", env=DAEMON_ENV)
    try:
        daemon.start(wait=False)
        port = await daemon.ready()
        script = HOSTILE
        for k, v in {"config": config, "key": key, "daemon_pid": daemon.pid, "daemon_port": port,
                     "redis_port": redis_server.url.rsplit(":", 1)[1].split("/")[0], "workdir": workdir}.items():
            script = script.replace("{%s}" % k, str(v))
        world.gh.add_repo(REPO, {sha: {".litci.yaml": "name: hostile\nrun: |\n" + "".join(
            "  " + line + "\n" for line in script.strip().splitlines())}}, private=True, installation_id=INSTALLATION)
        assert await post_webhook(port, "pull_request", pr_payload("opened", sha)) == 202
        await wait_until(lambda: world.runs(sha) and world.runs(sha)[0]["status"] == "completed", 60,
                         "the hostile job's check run to complete")
        survivors = await wait_no_pids("sleep", "321", within=5.0)
        assert not (workdir / "litci-old").exists(), "the finished job older than keep was not pruned"
        assert (workdir / "litci-other").exists(), "a running job's directory was pruned"
        assert daemon.term() == 0
    finally:
        sleeper.kill()
        sleeper.wait()
        daemon.close()
        await world.close()
    run = world.runs(sha)[0]
    text = run["output"]["text"]
    assert run["conclusion"] == "success", text
    found = [line for line in text.splitlines() if line.startswith("FOUND:")]
    assert found == [], found
    assert [line.split(":")[1] for line in text.splitlines() if line.startswith("BLOCKED:")] == ATTACKS
    assert "SLEEPERS:5" in text  # they did run...
    assert survivors == []       # ...and none outlived the job
    tokens = [t for t in world.gh.tokens if len(t) > 8]
    assert tokens, "the private repository's job got no token to steal"
    for secret in (SECRET, PRIVATE_PEM.splitlines()[1], "OTHER-JOB-SECRET", *tokens):
        assert secret not in text


@pytest.fixture
async def server() -> AsyncIterator[TarballServer]:
    s = await TarballServer(github_tarball({"hello.txt": "hello\n"})).start()
    yield s
    await s.close()


async def test_a_30_mib_log_is_capped_on_disk_keeping_head_and_tail(server: TarballServer, tmp_path: Path) -> None:
    limit = 1 << 20
    b = LocalBackend(str(tmp_path / "jobs"), 1, grace=1.0, max_log_bytes=limit, sandbox=False)  # the runner caps it
    try:
        # 30 MiB of 100-byte lines, then a last line the check output must still show
        await b.start(spec(server, "litci-chatty", "seq -f '%099g' 1 314573\necho the-very-end\n"))
        st = await wait_final(b, "litci-chatty", within=60)
        assert st.state == "succeeded", await b.log_tail("litci-chatty", 5)
        size = (tmp_path / "jobs" / "litci-chatty" / "log.txt").stat().st_size
        assert limit // 2 < size <= limit + 512, size
        assert (await b.log_tail("litci-chatty", 2)).splitlines() == ["the-very-end", "litci-exit-code: 0"]
        log = (tmp_path / "jobs" / "litci-chatty" / "log.txt").read_text()
        assert log.startswith("litci: fetching") and "its middle is dropped" in log
    finally:
        await b.close()


async def test_prune_removes_finished_job_dirs_older_than_keep_never_a_running_one(
        server: TarballServer, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    b = LocalBackend(str(tmp_path / "jobs"), 2, grace=1.0, keep=0.2, sandbox=False)
    try:
        await b.start(spec(server, "litci-done", "echo done\n"))
        await b.start(spec(server, "litci-busy", f"while [ ! -e {shared}/go ]; do sleep 0.05; done\n"))
        assert (await wait_final(b, "litci-done")).state == "succeeded"
        await wait_for_state(b, "litci-busy", {"running"})
        await wait_until(lambda: b.prune(), 20, "the finished job to be pruned")
        assert not (tmp_path / "jobs" / "litci-done").exists()
        assert (await b.status("litci-busy")).state == "running"  # started long before keep, still there
        (shared / "go").touch()
        assert (await wait_final(b, "litci-busy")).state == "succeeded"
        await wait_until(lambda: b.prune(), 20, "the second job to be pruned once finished")
        assert [p.name for p in (tmp_path / "jobs").iterdir()] == [".slots"]
    finally:
        await b.close()


async def test_a_sandbox_that_cannot_start_fails_the_job_never_runs_it_bare(server: TarballServer, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "bwrap").write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    (fake / "bwrap").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:/usr/bin:/bin")  # the job's PATH comes from the daemon's
    ran = tmp_path / "ran"
    b = LocalBackend(str(tmp_path / "jobs"), 1, grace=1.0, network="none")
    try:
        await b.start(spec(server, "litci-nosandbox", f"touch {ran}\n"))
        st = await wait_final(b, "litci-nosandbox")
    finally:
        await b.close()
    assert (st.state, st.exit_code) == ("failed", None)
    assert st.message.startswith("failed to start: sandbox:") and "user namespaces" in st.message, st.message
    assert not ran.exists()


async def test_sandbox_false_is_the_explicit_opt_out_for_trusted_code(server: TarballServer, tmp_path: Path) -> None:
    """The job then runs as the daemon's user with its view of the machine: here, the test's files."""
    visible = tmp_path / "host-file"
    visible.write_text("the host's\n")
    b = LocalBackend(str(tmp_path / "jobs"), 1, grace=1.0, sandbox=False, max_log_bytes=65536)
    try:
        await b.start(spec(server, "litci-bare", f"cat {visible}\nseq 1 100000\n"))
        st = await wait_final(b, "litci-bare")
        assert st.state == "succeeded"
        assert (await b.log_tail("litci-bare", 2)).splitlines() == ["100000", "litci-exit-code: 0"]
        assert "the host's" in (tmp_path / "jobs" / "litci-bare" / "log.txt").read_text()  # in the kept head
        assert (tmp_path / "jobs" / "litci-bare" / "log.txt").stat().st_size <= 65536 + 512  # capped all the same
    finally:
        await b.close()


def cli(tmp_path: Path, command: str, path: str, redis_url: str, toml: str) -> subprocess.CompletedProcess:
    cfg = tmp_path / "litbotd.toml"
    cfg.write_text(f'[server]\nport = 0\nhost = "127.0.0.1"\n[jobs]\nbackend = "local"\n[jobs.local]\n'
                   f'workdir = "{tmp_path / "jobs"}"\n{toml}')
    env = scrubbed_env({"PATH": path, "HOME": str(tmp_path)}, GH_WEBHOOK_SECRET="s3cr3t", REDIS_URL=redis_url)
    return subprocess.run([sys.executable, "-m", "litbotd", command, "-c", str(cfg)], capture_output=True,
                          text=True, timeout=60, env=env)


USERNS_REFUSED = ("bwrap: No permissions to creating new namespace, likely because the kernel does not allow "
                  "non-privileged user namespaces. On e.g. debian this can be enabled with "
                  "'sysctl kernel.unprivileged_userns_clone=1'.")


@pytest.mark.parametrize("case", ["no-bwrap", pytest.param("no-slirp4netns", marks=pytest.mark.sandbox(network="none")),
                                  "userns-refused"])
def test_run_and_check_config_say_why_the_sandbox_cannot_work(case, redis_server, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if case == "no-slirp4netns":
        (bin_dir / "bwrap").symlink_to(shutil.which("bwrap") or "/usr/bin/bwrap")
    if case == "userns-refused":  # what real bwrap says under kernel.unprivileged_userns_clone=0
        (bin_dir / "bwrap").write_text(f"#!/bin/sh\necho \"{USERNS_REFUSED}\" >&2\nexit 1\n")
        (bin_dir / "bwrap").chmod(0o755)
    toml = 'network = "none"\n' if case == "userns-refused" else ""
    want = {"no-bwrap": "bubblewrap package", "no-slirp4netns": "slirp4netns package",
            "userns-refused": "kernel.unprivileged_userns_clone"}[case]
    for command in ("run", "check-config"):
        out = cli(tmp_path, command, str(bin_dir), redis_server.url, toml)
        assert out.returncode == 1, (command, out.stderr)
        lines = [line for line in out.stderr.strip().splitlines() if not line.startswith("# warning")]
        assert len(lines) == 1 and want in lines[0] and "Traceback" not in out.stderr, (command, out.stderr)
    # the explicit opt-out starts (check-config: no refusal)
    out = cli(tmp_path, "check-config", str(bin_dir), redis_server.url, "sandbox = false\n")
    assert out.returncode == 0, out.stderr


@pytest.mark.sandbox(network="none")
def test_a_writable_path_that_does_not_exist_is_named_at_start(redis_server, tmp_path: Path) -> None:
    out = cli(tmp_path, "check-config", "/usr/bin:/bin", redis_server.url,
              f'network = "none"\nwritable_paths = ["{tmp_path}/missing"]\n')
    assert out.returncode == 1 and f"jobs.local.writable_paths: {tmp_path}/missing" in out.stderr, out.stderr


def test_demo_runs_its_known_good_job_unsandboxed_where_bwrap_is_missing_and_says_so(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for d in ("/usr/bin", "/bin"):
        for f in Path(d).iterdir():
            if f.name not in ("bwrap", "slirp4netns") and not (bin_dir / f.name).exists():
                (bin_dir / f.name).symlink_to(f)
    out = subprocess.run([sys.executable, "-m", "litbotd", "demo"], capture_output=True, text=True, timeout=120,
                         env=scrubbed_env({"PATH": str(bin_dir), "HOME": str(tmp_path)}))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
    assert "UNSANDBOXED" in out.stdout and "bubblewrap package" in out.stdout


@pytest.mark.sandbox(network="none")
async def test_a_daemon_file_under_etc_is_masked_in_the_job(server: TarballServer, tmp_path: Path) -> None:
    """/etc is visible read-only; the daemon's config or key there is not (here /etc/hostname plays it)."""
    assert Path("/etc/hostname").read_text().strip()
    b = LocalBackend(str(tmp_path / "jobs"), 1, grace=1.0, network="none", hidden=["/etc/hostname"])
    try:
        await b.start(spec(server, "litci-etc", "echo \"HOST=[$(cat /etc/hostname)]\"\nhead -c 40 /etc/os-release\n"))
        assert (await wait_final(b, "litci-etc")).state == "succeeded"
        log = await b.log_tail("litci-etc", 20)
    finally:
        await b.close()
    assert "HOST=[]" in log and "NAME=" in log, log  # masked; the rest of /etc is there


def test_secrets_under_etc_are_masked_and_the_job_sees_only_its_binds(tmp_path: Path) -> None:
    spec_ = {"network": "none", "writable": [str(tmp_path / "home")], "hidden": ["/etc/hostname", "/nonexistent"]}
    argv = sandbox.bwrap_argv(spec_, str(tmp_path / "work"), str(tmp_path / "work"), 3, 4, None)
    assert ["--ro-bind", "/dev/null", "/etc/hostname"] == argv[argv.index("/etc/hostname") - 2:argv.index("/etc/hostname") + 1]
    assert "/nonexistent" not in argv and "--share-net" not in argv and "--unshare-net" in argv
    binds = [argv[i + 1] for i, a in enumerate(argv) if a in ("--bind", "--ro-bind") and argv[i + 1] != "/dev/null"]
    assert set(binds) <= {"/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
                          str(tmp_path / "work"), str(tmp_path / "home")}
