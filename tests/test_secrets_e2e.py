"""Job secrets end to end (SPEC §10, issue 20): a real redis-server, the GitHub stand-in, the
sandboxed local backend and the daemon in this process.

Who gets the secrets: a same-repository PR by a member does; an outside fork's PR does not, before
or after `/litci ok-to-test` with the default `forks = "never"`; with `"approved"` the approved
commit does and the next push does not; a push to main does. And the leak corpus: a job prints
each secret in more than 20 ways; none reaches the stored log, anything sent to GitHub (check-run
output, annotations, the comment), the daemon's log or Redis, while the job really printed each
one (its `***` are counted, way by way)."""
from __future__ import annotations

import hashlib
import io
import json
import secrets as pysecrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fake_github import REPO, GitHubWorld
from helpers.configs import config_data
from helpers.e2e import InProcessDaemon, comment_payload, pr_payload, sha_of
from helpers.net import free_port
from helpers.wait import wait_until
from litbotd import logs, masking
from litbotd.demo import throwaway_key
from test_commits_e2e import push_payload
from test_secrets import _dump_redis

requires_sandbox = pytest.mark.sandbox(network="none")  # conftest: skipped without bwrap, failed on CI

# Characters that make the URL-, JSON- and workflow-command forms differ from the raw value.
TOKEN = "tok_" + pysecrets.token_urlsafe(18) + '/+:,%"q'
DIGEST = hashlib.sha256(TOKEN.encode()).hexdigest()[:16]

SEC = """\
name: sec
trigger: {pull_request: {branches: [main]}, push: {branches: [main]}}
secrets: [TOKEN_A, MISSING]
run: |
  if [ -n "${TOKEN_A:-}" ]; then echo "HAS_SECRET $(printf %s "$TOKEN_A" | sha256sum | cut -c1-16)"; else echo NO_SECRET; fi
  echo "token=${TOKEN_A:-none}"
"""
# What a fork would like to run: it names a secret the repository's workflow does not.
FORK_SEC = SEC.replace("secrets: [TOKEN_A, MISSING]", "secrets: [TOKEN_A, EXTRA]").replace(
    'echo "token=', 'echo "extra=${EXTRA:-none}"; echo "token=')


def secrets_file(tmp_path: Path, **tables: dict[str, str]) -> Path:
    f = tmp_path / "secrets.toml"
    lines = []
    for name, table in tables.items():
        lines.append(f'[repos."{REPO}"]' if name == "repo" else f'[orgs."{REPO.split("/")[0]}"]')
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    f.write_text("\n".join(lines) + "\n")
    f.chmod(0o600)
    return f


@pytest.fixture
def daemon_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logs.setup("debug", "text", [], stream=stream)
    yield stream
    logs.setup("info", "text", [])


def daemon(redis_server: Any, world: GitHubWorld, tmp_path: Path, store: Path, forks: str = "never",
           pages: bool = False) -> InProcessDaemon:
    data = config_data(redis_server.url, world.url, tmp_path / "jobs", secrets={"file": str(store), "forks": forks})
    if pages:  # the run pages (SPEC §9): served by this daemon, kept logs under tmp_path/runs
        port = free_port()
        data["server"].update(port=port, public_url=f"http://127.0.0.1:{port}")
        data.setdefault("report", {})["logs_dir"] = str(tmp_path / "runs")
    # The real sandbox (SPEC §10: local jobs see their secrets only inside it); no network needed:
    # the code is fetched outside it.
    data["jobs"]["local"].update(sandbox=True, network="none")
    return InProcessDaemon(data)


def completed(world: GitHubWorld, sha: str, name: str = "sec", n: int = 1) -> list[dict[str, Any]]:
    runs = [r for r in world.runs(sha) if r["name"] == name]
    return runs if len(runs) >= n and all(r["status"] == "completed" for r in runs) else []


def output_of(run: dict[str, Any]) -> str:
    out = run["output"]
    return f"{out.get('title')}\n{out.get('summary')}\n{out.get('text')}"


def leaks(text: str, values: list[str]) -> list[str]:
    """Every masked form of every value that `text` still holds (short forms aside: they could
    occur by chance)."""
    return sorted({f[:12] + "…" for v in values for f in masking.forms(v)
                   if len(f) >= 8 and "-----" not in f and f in text})  # a PEM's header is no secret


async def run_page(url: str) -> str:
    """What a reader of the run page gets: the page, its raw log and its log lines as JSON."""
    async with aiohttp.ClientSession() as http:
        out = []
        for suffix in ("", "log.txt", "lines?from=1"):
            async with http.get(url + suffix) as resp:
                assert resp.status == 200, (suffix, resp.status)
                out.append(await resp.text())
    return "\n".join(out)


def assert_nothing_leaked(values: list[str], world: GitHubWorld, redis_server: Any, tmp_path: Path,
                          daemon_log: io.StringIO, extra: dict[str, str] | None = None) -> None:
    places = {
        **(extra or {}),
        "the stored logs": "".join(p.read_text(errors="replace") for p in (tmp_path / "jobs").glob("*/log.txt")),
        "what was sent to GitHub": "\n".join(b.decode("utf-8", "replace") for b in world.gh.bodies),
        "check runs (as the stand-in keeps them)": json.dumps(world.gh.check_runs, ensure_ascii=False),
        "comments (every edit)": json.dumps(world.gh.comments, ensure_ascii=False),
        "the daemon's log": daemon_log.getvalue(),
        "Redis (every key)": _dump_redis(redis_server.client()),
    }
    for where, text in places.items():
        assert text, f"nothing to scan in {where}"
        assert leaks(text, values) == [], f"secret forms leaked into {where}"


# -- who gets them ------------------------------------------------------------------------------------
@requires_sandbox
async def test_same_repo_member_pr_and_push_get_their_secrets(redis_server, world, tmp_path, daemon_log):
    pr_sha, main_sha = sha_of("member-pr"), sha_of("pushed-main")
    await world.start({pr_sha: {".lightning/workflows/sec.yaml": SEC},
                       main_sha: {".lightning/workflows/sec.yaml": SEC}})
    world.pull(pr_sha, association="MEMBER")
    store = secrets_file(tmp_path, org={"TOKEN_A": "org-level-value-loses"}, repo={"TOKEN_A": TOKEN})
    async with daemon(redis_server, world, tmp_path, store) as d:
        assert await d.send("pull_request", pr_payload("opened", pr_sha, association="MEMBER")) == 202
        [run] = await wait_until(lambda: completed(world, pr_sha), 60, "the PR's run")
        assert await d.send("push", push_payload("main", main_sha)) == 202
        [pushed] = await wait_until(lambda: completed(world, main_sha), 60, "the push's run")
        await wait_until(d.idle, 20, "idle")
    for r in (run, pushed):
        text = output_of(r)
        assert r["conclusion"] == "success", text
        assert f"HAS_SECRET {DIGEST}" in text and "token=***" in text  # the repository's value won
        assert "**Secrets:** `TOKEN_A`" in text
        assert "secret MISSING not set: the secrets file has no MISSING" in text
    assert_nothing_leaked([TOKEN, "org-level-value-loses"], world, redis_server, tmp_path, daemon_log)


@requires_sandbox
async def test_outside_fork_gets_none_before_or_after_ok_to_test_by_default(redis_server, world, tmp_path,
                                                                            daemon_log):
    sha = sha_of("fork-never")
    await world.start({sha: {".lightning/workflows/sec.yaml": FORK_SEC}, "main": {".lightning/workflows/sec.yaml": SEC}})
    world.pull(sha, fork_user="stranger", association="FIRST_TIME_CONTRIBUTOR")
    world.gh.set_permission(REPO, "maintainer", "admin")
    store = secrets_file(tmp_path, repo={"TOKEN_A": TOKEN, "EXTRA": TOKEN + "-extra"})
    async with daemon(redis_server, world, tmp_path, store) as d:
        await d.send("pull_request", pr_payload("opened", sha, fork=True, association="FIRST_TIME_CONTRIBUTOR",
                                                user="stranger"))
        await wait_until(lambda: world.runs(sha), 20, "the approval check")
        await wait_until(d.idle, 20, "idle")
        assert world.conclusions(sha) == {"litci": "action_required"}  # before: nothing runs at all
        await d.send("issue_comment", comment_payload("/litci ok-to-test", "maintainer", comment_id=701))
        [run] = await wait_until(lambda: completed(world, sha), 60, "the approved run")
        await wait_until(d.idle, 20, "idle")
    text = output_of(run)
    assert run["conclusion"] == "success", text
    assert "NO_SECRET" in text and "token=none" in text and "extra=" not in text  # the base's workflow ran
    assert 'secret TOKEN_A withheld: the pull request comes from a fork (secrets.forks = "never")' in text
    assert "secret MISSING withheld" in text and "EXTRA" not in text
    assert "**Secrets:**" not in text
    assert_nothing_leaked([TOKEN, TOKEN + "-extra"], world, redis_server, tmp_path, daemon_log)


@requires_sandbox
async def test_approved_forks_get_them_for_the_approved_commit_only(redis_server, world, tmp_path, daemon_log):
    first, second = sha_of("fork-approved-1"), sha_of("fork-approved-2")
    member_fork = sha_of("member-fork")
    await world.start({first: {".lightning/workflows/sec.yaml": FORK_SEC},
                       second: {".lightning/workflows/sec.yaml": FORK_SEC},
                       member_fork: {".lightning/workflows/sec.yaml": FORK_SEC},
                       "main": {".lightning/workflows/sec.yaml": SEC}})
    world.gh.set_permission(REPO, "maintainer", "admin")
    store = secrets_file(tmp_path, repo={"TOKEN_A": TOKEN, "EXTRA": TOKEN + "-extra"})
    async with daemon(redis_server, world, tmp_path, store, forks="approved") as d:
        world.pull(first, fork_user="stranger", association="NONE")
        await d.send("pull_request", pr_payload("opened", first, fork=True, association="NONE", user="stranger"))
        await wait_until(lambda: world.runs(first), 20, "the approval check")
        await d.send("issue_comment", comment_payload("/litci ok-to-test", "maintainer", comment_id=702))
        [approved] = await wait_until(lambda: completed(world, first), 60, "the approved commit's run")

        world.pull(second, fork_user="stranger", association="NONE")
        await d.send("pull_request", pr_payload("synchronize", second, fork=True, association="NONE", user="stranger"))
        await wait_until(lambda: world.runs(second), 20, "the second commit's approval check")
        await wait_until(d.idle, 20, "idle")
        assert world.conclusions(second) == {"litci": "action_required"}  # a new push needs a new approval

        # A member's fork runs without approval, but its commit was not approved: no secret.
        world.pull(member_fork, pr=2, fork_user="member", association="MEMBER")
        await d.send("pull_request", pr_payload("opened", member_fork, pr=2, fork=True, association="MEMBER",
                                                user="member"))
        [unapproved] = await wait_until(lambda: completed(world, member_fork), 60, "the member fork's run")
        await wait_until(d.idle, 20, "idle")
    text = output_of(approved)
    assert f"HAS_SECRET {DIGEST}" in text and "token=***" in text and "**Secrets:** `TOKEN_A`" in text
    assert "extra=" not in text  # the base branch's workflow: the fork cannot ask for EXTRA
    text = output_of(unapproved)
    assert unapproved["conclusion"] == "success", text
    assert "NO_SECRET" in text and "extra=none" in text  # a trusted author's fork runs its own workflow…
    assert f"{member_fork[:7]} was not approved with `/litci ok-to-test`" in text  # …without secrets
    assert "secret EXTRA" not in text  # only the base's names
    assert "secret TOKEN_A withheld" in text
    assert_nothing_leaked([TOKEN, TOKEN + "-extra"], world, redis_server, tmp_path, daemon_log)


# -- the leak corpus ------------------------------------------------------------------------------------
PEM, _ = throwaway_key()

# Each way is one tagged line (or block) of output; `count` is how many *** the masked way shows.
WAYS: list[tuple[str, str, int]] = [
    ("raw", 'echo "W01 $S"', 1),
    ("base64 at offset 0", 'echo "W02 $(printf %s "$S" | base64 -w0)"', 1),
    ("base64 at offset 1", 'echo "W03 $(printf x%s "$S" | base64 -w0)"', 1),
    ("base64 at offset 2", 'echo "W04 $(printf xy%s "$S" | base64 -w0)"', 1),
    ("URL-safe base64", 'echo "W05 $(printf xy%s "$S" | base64 -w0 | tr +/ -_)"', 1),
    ("URL-encoded", 'echo "W06 $(python3 -c "import os,urllib.parse as u;print(u.quote(os.environ[\'S\'],safe=\'\'))")"', 1),
    ("form-encoded", 'echo "W07 $(python3 -c "import os,urllib.parse as u;print(u.quote_plus(os.environ[\'S\']))")"', 1),
    ("in JSON", 'echo "W08 $(python3 -c "import os,json;print(json.dumps({\'token\':os.environ[\'S\']}))")"', 1),
    ("set -x trace", '(set -x; : W09 "$S") 2>&1', 1),
    ("set -x of a header", '(set -x; : W10 --header "Authorization: Bearer $S") 2>&1', 1),
    ("split across two writes", 'printf "W11 %s" "${S:0:9}"; sleep 0.3; printf "%s\\n" "${S:9}"', 1),
    ("within ANSI colours", 'printf "W12 \\033[1;31m%s\\033[0m\\n" "$S"', 1),
    ("with a carriage return", 'printf "W13 progress\\r%s\\r\\n" "$S"', 1),
    ("on stderr", 'echo "W14 $S" >&2', 1),
    ("in a URL", 'echo "W15 https://ci:$S@example.invalid/x"', 1),
    ("twice on a line", 'echo "W16 $S and $S"', 2),
    ("in an env dump", 'env | grep "^S=" | sed "s/^/W17 /"', 1),
    ("one line of a PEM key", 'echo "W18 $(printf %s "$PEM" | sed -n 3p)"', 1),
    ("a PEM key's last body line", 'echo "W19 $(printf %s "$PEM" | tail -n 2 | head -n 1)"', 1),
    ("an annotation's message", 'echo "::error file=README.md,line=1::W20 leaked $S"', 1),
    ("an annotation's title", 'echo "::warning file=README.md,line=2,title=W21 $S::in the title"', 1),
    ("workflow-command escaped", 'printf "W22 %s\\n" "$(printf %s "$S" | sed "s/%/%25/g")"', 1),
    ("base64 of a PEM line", 'echo "W23 $(printf %s "$PEM" | sed -n 4p | base64 -w0)"', 1),
    ("split by an ANSI code", 'printf "W24 %s\\033[1m%s\\033[0m\\n" "${S:0:6}" "${S:6}"', 1),
]
JUNIT = r"""python3 - <<'PY'
import os
from xml.sax.saxutils import quoteattr, escape
s = os.environ["S"]
os.makedirs("reports", exist_ok=True)
with open("reports/junit.xml", "w") as f:
    f.write('<testsuite><testcase classname="t" name="W25" file="README.md" line="1">'
            '<failure message=%s>%s</failure></testcase></testsuite>' % (quoteattr("W25 " + s), escape("boom " + s)))
PY
"""


def corpus_workflow() -> str:
    script = "\n".join(cmd for _, cmd, _ in WAYS) + "\n" + JUNIT
    body = "".join("  " + line + "\n" for line in script.splitlines())
    return f"name: corpus\nsecrets: [S, PEM]\nreports: [reports/junit.xml]\nrun: |\n{body}"


@requires_sandbox
async def test_leak_corpus_reaches_no_destination(redis_server, world, tmp_path, daemon_log):
    sha = sha_of("corpus")
    await world.start({sha: {".lightning/workflows/corpus.yaml": corpus_workflow(), "README.md": "a\nb\nc\n"}})
    world.pull(sha, association="MEMBER")
    store = secrets_file(tmp_path, repo={"S": TOKEN, "PEM": PEM})
    async with daemon(redis_server, world, tmp_path, store, pages=True) as d:
        assert await d.send("pull_request", pr_payload("opened", sha, association="MEMBER")) == 202
        [run] = await wait_until(lambda: completed(world, sha, "corpus"), 90, "the corpus run")
        await wait_until(lambda: world.gh.comments and "corpus" in world.gh.comments[0]["body"], 30, "the comment")
        await wait_until(d.idle, 20, "idle")
        page = await run_page(run["details_url"])

    [log_file] = list((tmp_path / "jobs").glob("*/log.txt"))
    log = log_file.read_bytes().decode()  # not read_text: its universal newlines would split at \r
    assert "litci-exit-code: 0" in log, log
    # The job really printed each way: its tagged line is there, with its ***.
    for n, (what, _, count) in enumerate(WAYS, 1):
        lines = [ln for ln in log.split("\n") if f"W{n:02d}" in ln]  # \r is part of a line
        assert lines and sum(ln.count("***") for ln in lines) >= count, (what, lines)
    assert len(WAYS) + 1 >= 20
    assert log.count("***") >= sum(c for _, _, c in WAYS)
    # Annotations (from the log's workflow commands and the JUnit report) carry *** too.
    annotations = world.runs(sha)[0]["annotations"]
    texts = {a["message"] + " " + (a.get("title") or "") for a in annotations}
    assert any("W20 leaked ***" in t for t in texts), texts
    assert any("W21 ***" in t for t in texts), texts
    assert any("W25 ***" in t and "boom ***" in t for t in texts), texts
    assert "W01 ***" in output_of(run)
    assert "W01 ***" in page and "W20 leaked ***" in page
    kept = "".join(p.read_text(errors="replace") for p in (tmp_path / "runs").rglob("*") if p.is_file())
    assert "W01 ***" in kept
    assert_nothing_leaked([TOKEN, PEM], world, redis_server, tmp_path, daemon_log,
                          {"the run page": page, "the kept page files": kept})


# -- the daemon's side: a backend whose log comes back unmasked (as Lightning's does) --------------------
class UnmaskedBackend:
    """A job backend that "runs" a job by printing its secrets in many forms, unmasked, the way a
    Lightning job's log comes back: the daemon's own masking is all that stands in the way."""
    name = "lightning"
    prunes = False

    def __init__(self) -> None:
        self.specs: list[Any] = []

    async def start(self, spec: Any) -> Any:
        from litbotd.backends.base import JobStatus
        self.specs.append(spec)
        return JobStatus("pending", None, "https://lightning.example/job")

    async def status(self, name: str) -> Any:
        from litbotd.backends.base import JobStatus
        return JobStatus("failed", 1, "https://lightning.example/job", "exit code 1")

    async def log_tail(self, name: str, lines: int) -> str:
        import base64
        import urllib.parse
        s = self.specs[-1].secret_env["S"]
        half = len(s) // 2
        return "\n".join([
            f"raw {s}", f"b64 {base64.b64encode(b'x' + s.encode()).decode()}",
            f"url {urllib.parse.quote(s, safe='')}", f"json {json.dumps({'t': s})}",
            f"ansi-split {s[:half]}\x1b[0m{s[half:]}",   # whole again once the check output strips ANSI
            f"::error file=README.md,line=1::annotated {s.replace('%', '%25')}",
            "litci-exit-code: 1"]) + "\n"

    async def copy_log(self, name: str, dest: str, mask: Any = None) -> bool:
        text = await self.log_tail(name, 10 ** 6)
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        Path(dest).write_text(mask(text) if mask is not None else text)
        return True

    async def stop(self, name: str) -> None:
        pass

    async def close(self) -> None:
        pass


async def test_the_daemon_masks_a_log_read_back_unmasked(redis_server, world, tmp_path, daemon_log, monkeypatch):
    import litbotd.daemon
    backend = UnmaskedBackend()
    monkeypatch.setattr(litbotd.daemon, "make_backend", lambda *args, **kwargs: backend)
    sha = sha_of("unmasked")
    await world.start({sha: {".lightning/workflows/sec.yaml": SEC.replace("[TOKEN_A, MISSING]", "[S]"),
                             "README.md": "a\nb\n"}})
    world.pull(sha, association="MEMBER")
    store = secrets_file(tmp_path, repo={"S": TOKEN})
    async with daemon(redis_server, world, tmp_path, store, pages=True) as d:
        assert await d.send("pull_request", pr_payload("opened", sha, association="MEMBER")) == 202
        [run] = await wait_until(lambda: completed(world, sha), 60, "the run")
        await wait_until(lambda: world.gh.comments, 30, "the comment")
        await wait_until(d.idle, 20, "idle")
        page = await run_page(run["details_url"])
    assert backend.specs[0].secret_env == {"S": TOKEN}  # the job got it, in its env
    assert TOKEN not in repr(backend.specs[0])
    text = output_of(run)
    assert "raw ***" in text and "ansi-split ***" in text and "json {\"t\": \"***\"}" in text, text
    messages = [a["message"] for a in run["annotations"]]
    assert "annotated ***" in messages, messages
    kept = "".join(p.read_text(errors="replace") for p in (tmp_path / "runs").rglob("*") if p.is_file())
    assert "raw ***" in page and "raw ***" in kept  # the log copied to the VM is masked before it is stored
    places = {"the run page": page, "the kept log": kept,
              "sent to GitHub": "\n".join(b.decode("utf-8", "replace") for b in world.gh.bodies),
              "the daemon's log": daemon_log.getvalue(), "Redis": _dump_redis(redis_server.client())}
    for where, found in places.items():
        assert leaks(found, [TOKEN]) == [], where


@requires_sandbox
async def test_sighup_rereads_the_store_and_keeps_the_old_one_when_the_new_is_bad(redis_server, world, tmp_path,
                                                                                 daemon_log):
    rotated = TOKEN + "-rotated"
    sha = sha_of("after-rotation")
    await world.start({sha: {".lightning/workflows/sec.yaml": SEC}})
    store = secrets_file(tmp_path, repo={"TOKEN_A": TOKEN})
    async with daemon(redis_server, world, tmp_path, store) as d:
        same = d.daemon.cfg
        d.daemon._load_config = lambda: same  # the config file is unchanged; the secrets file is not
        secrets_file(tmp_path, repo={"TOKEN_A": rotated})
        await d.daemon.reload()
        assert d.daemon.ctx.secrets.for_repo(REPO) == {"TOKEN_A": rotated}
        assert await d.send("push", push_payload("main", sha)) == 202
        [run] = await wait_until(lambda: completed(world, sha), 60, "the run after the reload")

        store.write_text(f'[repos."{REPO}"]\nTOKEN_A = "{TOKEN}-broken\n')  # not TOML: an open string
        await d.daemon.reload()
        assert d.daemon.ctx.secrets.for_repo(REPO) == {"TOKEN_A": rotated}  # the old store stays
        refused = redis_server.client().hvals("bot_queue:reload")
        assert len(refused) == 1 and f"secrets file {store}: invalid TOML" in refused[0], refused
        logs.get("litbotd.test").info(f"an old value {TOKEN} and the new {rotated}")
        await wait_until(d.idle, 20, "idle")
    digest = hashlib.sha256(rotated.encode()).hexdigest()[:16]
    assert f"HAS_SECRET {digest}" in output_of(run)  # the job got the new value
    assert "reload refused" in daemon_log.getvalue() and "an old value *** and the new ***" in daemon_log.getvalue()
    assert_nothing_leaked([TOKEN, rotated], world, redis_server, tmp_path, daemon_log)
