"""`litbotd demo`: the whole path, offline, in one process (SPEC §2).

An in-process Redis (fakeredis), a GitHub stand-in on loopback, the local job backend and a
throw-away git repository whose workflow has a 2-cell matrix: one cell passes, one fails, and
its failure becomes annotations (a JUnit report and an `::error` workflow command). A signed
`pull_request` webhook goes to the real listener; the real daemon does the rest. Exit 0 when the
two checks concluded success and failure and the failing one has its annotations.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import importlib.util
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from . import config as config_mod
from . import configfile, logs
from .backends import sandbox
from .daemon import Daemon
from .demo_github import DemoGitHub
from .lifecycle import REGISTRY

REPO = "octo-org/hello-litci"
WORKFLOW = """\
# A 2-cell matrix: the "pass" cell exits 0, the "fail" cell exits 1.
# The tests write a JUnit report; litbotd turns its failures into annotations on the diff.
name: demo
parametrize:
  matrix:
    case: ["pass", "fail"]
timeout: "2m"
run: |
  echo "case=$case on $(python3 --version)"
  python3 hello.py
  python3 check.py "$case"
reports: ["reports/*.xml"]
"""
HELLO = 'print("hello from the code at the PR head")\n'
# A test runner in a few lines (the demo needs no pytest): a JUnit report, and a workflow command.
CHECK = """\
import os, sys

case = sys.argv[1]
os.makedirs("reports", exist_ok=True)
failure = "" if case == "pass" else (
    '<failure message="the fail cell fails">check.py:11: AssertionError</failure>')
with open("reports/junit.xml", "w") as f:
    f.write('<testsuite><testcase classname="check" name="test_hello"/>'
            '<testcase classname="check" name="test_case">' + failure + '</testcase></testsuite>')
if case != "pass":
    print("::warning file=hello.py,line=1,title=demo::a warning printed as a workflow command")
    sys.exit(1)
"""
EXPECTED = {"demo (pass)": "success", "demo (fail)": "failure"}
DEADLINE = 90.0


def say(text: str = "") -> None:
    print(text, flush=True)


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "Demo", "GIT_AUTHOR_EMAIL": "demo@example.invalid",
           "GIT_COMMITTER_NAME": "Demo", "GIT_COMMITTER_EMAIL": "demo@example.invalid"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout


def make_repo(root: Path) -> str:
    """A throw-away repository with the sample workflow; returns the head SHA."""
    repo = root / "repo"
    (repo / ".lightning" / "workflows").mkdir(parents=True)
    (repo / ".lightning" / "workflows" / "demo.yaml").write_text(WORKFLOW)
    (repo / "hello.py").write_text(HELLO)
    (repo / "check.py").write_text(CHECK)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "Add a litci workflow")
    return _git(repo, "rev-parse", "HEAD").strip()


def throwaway_key() -> tuple[str, str]:
    """A fresh RSA key pair (private PEM, public PEM) standing in for a GitHub App's key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def pull_request_payload(sha: str) -> dict[str, Any]:
    repo = {"id": 1296269, "name": "hello-litci", "full_name": REPO, "private": False,
            "owner": {"login": "octo-org", "type": "Organization"}}
    return {
        "action": "opened", "number": 1,
        "pull_request": {
            "number": 1, "state": "open", "title": "Add a litci workflow", "author_association": "OWNER",
            "user": {"login": "octocat", "type": "User"},
            "head": {"ref": "add-ci", "sha": sha, "repo": repo},
            "base": {"ref": "main", "sha": sha, "repo": repo},
        },
        "repository": repo, "installation": {"id": 42}, "sender": {"login": "octocat", "type": "User"},
    }


class Narrator:
    """Prints what GitHub would show, as it changes: check runs and the PR comment."""

    def __init__(self, gh: DemoGitHub) -> None:
        self.gh = gh
        self.printed = 0                  # events of the stand-in printed so far
        self.completed: set[str] = set()  # expected check runs whose completion was printed

    def poll(self, t0: float) -> None:
        """Print what the stand-in received since the last call, each at the time it received it."""
        events, self.printed = self.gh.events[self.printed:], len(self.gh.events)
        for at, text, name, status in events:
            say(f"  [{at - t0:5.1f}s] {text}")
            if status == "completed" and name in EXPECTED:
                self.completed.add(name)

    def done(self) -> bool:
        """Every expected check run's completion has been printed (not merely received)."""
        return self.completed == set(EXPECTED)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def demo(workdir: Path, keep: bool = False, port: int = 0) -> int:
    import fakeredis

    say("litbotd demo — offline: in-process Redis, a GitHub stand-in, the local job backend\n")
    sha = await asyncio.to_thread(make_repo, workdir)
    say(f"1. throw-away repository {REPO} at {sha[:7]} with .lightning/workflows/demo.yaml:")
    say("".join(f"     {line}\n" for line in WORKFLOW.splitlines()))
    private_pem, _ = await asyncio.to_thread(throwaway_key)
    gh = DemoGitHub(REPO, git_dir=str(workdir / "repo"))
    api_url = await gh.start()
    secret = secrets.token_hex(16)
    # The demo's own known-good job may run unsandboxed where bwrap cannot work; the daemon never does that.
    sandbox_problem = sandbox.problem("isolated")
    port = port or _free_port()  # the run pages' public_url names it
    cfg = configfile.parse({
        "server": {"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}"},
        "github": {"app_id": 1, "api_url": api_url},
        "redis": {"url": "redis://in-process/0"},
        "workers": {"count": 2, "heartbeat_interval": "1s", "lease_timeout": "5s", "shutdown_grace": "5s"},
        "jobs": {"backend": "local", "poll_interval": 0.2, "poll_interval_max": 1,
                 "local": {"workdir": str(workdir / "jobs"), "max_parallel": 2, "sandbox": not sandbox_problem}},
        "report": {"logs_dir": str(workdir / "runs")},
        "log": {"level": "warning"},
    }, env={"GH_PRIVATE_KEY": private_pem, "GH_WEBHOOK_SECRET": secret}, source="demo")
    # The dashboard opens with an admin token made for this demo (a daemon reads it from the
    # credential litbotd-admin-token).
    admin_token = secrets.token_urlsafe(18)
    cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, admin_token=admin_token))
    logs.setup(cfg.log.level, cfg.log.format, config_mod.secrets_of(cfg))
    say(f"2. GitHub stand-in at {api_url}; daemon with 2 workers, local backend in {workdir / 'jobs'}")
    if sandbox_problem:
        say(f"   NOTE: the demo's own job runs UNSANDBOXED here — {sandbox_problem}.\n"
            "   `litbotd run` would refuse to start with sandbox = true on this machine.")
    else:
        say("   jobs run sandboxed (bubblewrap, outbound-only network via slirp4netns)")
    daemon = Daemon(cfg, REGISTRY, redis=fakeredis.FakeAsyncRedis(decode_responses=True))
    running = asyncio.create_task(daemon.run())
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait([running, ready], return_when=asyncio.FIRST_COMPLETED)
    if not daemon.ready.is_set():
        ready.cancel()
        say("the daemon did not start")
        await gh.close()
        return running.result() or 1
    say(f"   dashboard: http://127.0.0.1:{daemon.port}/dashboard  (admin token: {admin_token})")
    try:
        result = await _drive(daemon, gh, sha, secret)
        if keep:
            say(f"\nserving the run pages above at http://127.0.0.1:{daemon.port}/ until Ctrl-C, and the dashboard"
                f"\n   at http://127.0.0.1:{daemon.port}/dashboard (admin token: {admin_token})")
            await running  # SIGINT stops the daemon
        return result
    finally:
        daemon.stop()
        await running
        await gh.close()


async def _drive(daemon: Daemon, gh: DemoGitHub, sha: str, secret: str) -> int:
    t0 = time.monotonic()
    body = json.dumps(pull_request_payload(sha)).encode()
    delivery = f"demo-{secrets.token_hex(8)}"
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    url = f"http://127.0.0.1:{daemon.port}/"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=body, headers={
            "Content-Type": "application/json", "X-GitHub-Event": "pull_request", "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": signature, "User-Agent": "GitHub-Hookshot/demo"}) as resp:
            answer = await resp.text()
    say(f"3. signed pull_request 'opened' webhook → {url}: HTTP {resp.status} {answer}")
    say("4. phases, as GitHub sees them:")
    narrator = Narrator(gh)
    # A progress display: prints what the stand-in received, until every check has concluded and
    # the comment shows it (its last edit follows the last check at once, SPEC §5).
    while not (narrator.done() and await _comment_shown(daemon)) and time.monotonic() - t0 < DEADLINE:
        narrator.poll(t0)
        await asyncio.sleep(0.05)
    narrator.poll(t0)
    say(f"  [{time.monotonic() - t0:5.1f}s] done: every check concluded, and the comment shows it")
    return _final_report(gh)


async def _comment_shown(daemon: Daemon) -> bool:
    """The PR's summary comment shows its latest version (nothing newer waits to be shown)."""
    info = await daemon.ctx.runs.pr(REPO, 1)
    return bool(info.get("version")) and int(info.get("commented") or -1) >= int(info["version"])


def _final_report(gh: DemoGitHub) -> int:
    say("\n5. check runs on the PR:")
    got = {}
    for run in gh.check_runs:
        got[run["name"]] = run.get("conclusion")
        out = run.get("output") or {}
        say(f"   ● {run['name']}: {run['status']} / {run.get('conclusion')}  — {out.get('title', '')}")
        tests = next((line for line in (out.get("summary") or "").splitlines() if line.startswith("**Tests:**")), "")
        if tests:
            say(f"       {tests.replace('**', '').replace('`', '')}")
        for a in run["annotations"]:
            say(f"       annotation ({a['annotation_level']}) {a['path']}:{a['start_line']}: "
                f"{a.get('title', '')}: {a['message'].splitlines()[0] if a['message'] else ''}")
        text = (out.get("text") or "").strip()
        if text:
            say("".join(f"       {line}\n" for line in text.splitlines()[-8:]).rstrip())
        if run.get("details_url"):
            say(f"       run page: {run['details_url']}")
    say("\n6. the PR comment (edited in place, never a second one):\n")
    for c in gh.comments:
        say("".join(f"   {line}\n" for line in c["body"].splitlines()))
    annotated = sum(len(run["annotations"]) for run in gh.check_runs if run.get("conclusion") == "failure")
    if gh.unexpected:
        say(f"\nnote: the demo's GitHub stand-in does not serve {sorted(set(gh.unexpected))} (answered 404)")
    ok = got == EXPECTED and len(gh.comments) == 1 and annotated >= 1
    say(f"\nresult: {'as expected' if ok else 'NOT as expected'} — {got} (expected {EXPECTED}); "
        f"{len(gh.comments)} comment(s); {annotated} annotation(s) on the failing check")
    return 0 if ok else 1


def main(keep: bool = False, port: int = 0) -> int:
    if shutil.which("git") is None:
        print("litbotd demo: needs git to make its throw-away repository (apt-get install git)", file=sys.stderr)
        return 1
    if importlib.util.find_spec("fakeredis") is None:
        print("litbotd demo: needs its in-process Redis, the `demo` extra: pip install 'litbotd[demo]'"
              " (from a checkout: pip install '.[demo]')", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="litbotd-demo-"))
    try:
        import uvloop

        return uvloop.run(demo(workdir, keep=keep, port=port))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
