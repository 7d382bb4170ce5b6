"""Logs (SPEC §7): key=value lines carrying the task's context, journald priority prefixes,
`format = "json"`, and the redactor on every line."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from helpers.env import scrubbed_env
from litbotd import logs
from litbotd.configfile import parse
from litbotd.context import Context, Current
from litbotd.queue import Queue, connect
from litbotd.tasks import Task
from litbotd.worker import Registry, Worker

ROOT = Path(__file__).resolve().parent.parent
CONTEXT = {"delivery": "d-1", "repo": "octo/cat", "pr": 123, "sha": "a" * 40, "run": "r-9", "job": "litci-r-9"}


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """litbotd's handler writing into a buffer; restored afterwards so other tests see stderr."""
    buf = io.StringIO()
    logs.setup("debug", "text", [], stream=buf)
    yield buf
    logs.setup("info", "text", [], stream=sys.stderr)


def _fields(line: str) -> dict[str, str]:
    return {k: v.strip('"') for k, v in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line)}


# -- key=value and the task context ------------------------------------------------------------------
def test_text_line_has_message_then_quoted_fields(stream: io.StringIO) -> None:
    logs.get("litbotd.t").warning("job started", run="r 1", job="litci-x", empty="", n=3)
    line = stream.getvalue().strip()
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ WARNING litbotd.t job started ", line), line
    assert 'run="r 1"' in line and "job=litci-x" in line and 'empty=""' in line and "n=3" in line


async def test_every_line_written_while_a_task_runs_carries_its_context(redis_server, stream: io.StringIO) -> None:
    """Through the real worker: the handler's lines, a helper logger's lines and the worker's own
    retry line all carry delivery, task, phase, repo, pr, sha, run and job; two tasks running at
    the same time do not mix their fields."""
    other = logs.get("litbotd.github")
    started = asyncio.Event()

    async def handler(task: Task, services: Context) -> None:
        logs.get("litbotd.lifecycle").info("handling")
        if task.payload["pr"] == 123:
            started.set()
        else:
            await started.wait()  # both tasks are in flight now
        await asyncio.sleep(0)
        other.info("calling GitHub", path="/repos")
        raise RuntimeError("boom")  # → the worker logs "task failed, will retry"

    redis = connect(redis_server.url)
    cfg = parse({"workers": {"max_attempts": 3}}, env={})
    services = Context.of(cfg, Queue(redis, "logq"))
    registry = Registry(handlers={"start_job": handler})
    t1 = Task(kind="start_job", payload=CONTEXT)
    t2 = Task(kind="start_job", payload={**CONTEXT, "pr": 456, "run": "r-10", "delivery": "d-2"})
    try:
        await services.queue.enqueue(t1, t2)
        w1, w2 = Worker("w1", Current(services), registry), Worker("w2", Current(services), registry)
        raw1, raw2 = await services.queue.take("w1", 1), await services.queue.take("w2", 1)
        await asyncio.wait_for(asyncio.gather(w1.process(raw1), w2.process(raw2)), 10)
        logs.get("litbotd.t").info("after the tasks")
    finally:
        await redis.aclose()

    lines = [ln for ln in stream.getvalue().splitlines() if not ln.startswith("  ")]
    by_task: dict[str, list[dict[str, str]]] = {}
    for ln in lines:
        f = _fields(ln)
        by_task.setdefault(f.get("task", "-"), []).append({**f, "_line": ln})
    assert {t1.id, t2.id} <= set(by_task)
    for task, pr, run, delivery in ((t1, "123", "r-9", "d-1"), (t2, "456", "r-10", "d-2")):
        mine = by_task[task.id]
        messages = " | ".join(f["_line"] for f in mine)
        for wanted in ("handling", "calling GitHub", "task failed, will retry"):
            assert wanted in messages
        for f in mine:
            assert f["phase"] == "start_job" and f["pr"] == pr and f["run"] == run and f["delivery"] == delivery
            assert f["repo"] == "octo/cat" and f["sha"] == "a" * 40 and f["job"] == "litci-r-9"
    # Outside a task, no task fields.
    assert "task" not in _fields(next(ln for ln in lines if "after the tasks" in ln))


# -- json ---------------------------------------------------------------------------------------------
def test_json_format_one_object_per_line_with_context() -> None:
    buf = io.StringIO()
    secret = 'se"cr\\et-value'  # JSON escaping must not hide it from the redactor
    try:
        logs.setup("info", "json", [secret], stream=buf)
        log = logs.get("litbotd.t")
        with logs.context(task="t1", phase="wait_job", pr=7):
            log.info("polled", job="litci-x", attempt=2, ok=True, none=None, detail=f"token {secret}")
            try:
                raise ValueError(f"bad {secret}")
            except ValueError:
                log.exception("handler crashed")
        log.debug("below the level")
    finally:
        logs.setup("info", "text", [], stream=sys.stderr)
    objs = [json.loads(ln) for ln in buf.getvalue().splitlines()]
    assert len(objs) == 2
    first, second = objs
    assert first["msg"] == "polled" and first["level"] == "info" and first["logger"] == "litbotd.t"
    assert first["task"] == "t1" and first["phase"] == "wait_job" and first["pr"] == 7
    assert first["attempt"] == 2 and first["ok"] is True and first["none"] is None
    assert first["detail"] == "token ***"
    assert second["level"] == "error" and "ValueError: bad ***" in second["exc"]
    assert secret not in buf.getvalue() and json.dumps(secret)[1:-1] not in buf.getvalue()


# -- journald -----------------------------------------------------------------------------------------
_EMIT = """
import sys
from litbotd import logs
logs.setup("debug", sys.argv[1], ["hunter2-secret"])
log = logs.get("litbotd.t")
with logs.context(task="t1", pr=5):
    log.debug("dbg")
    log.info("started", job="j1")
    log.warning("slow")
    try:
        raise RuntimeError("hunter2-secret\\nsecond line")
    except RuntimeError:
        log.exception("crashed")
"""


def _emit(tmp_path: Path, fmt: str, journal_stream: str | None) -> str:
    out = tmp_path / "stderr.log"
    env = scrubbed_env()
    env["PYTHONPATH"] = str(ROOT)
    with open(out, "w") as f:
        if journal_stream == "match":
            st = os.fstat(f.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        elif journal_stream:
            env["JOURNAL_STREAM"] = journal_stream
        subprocess.run([sys.executable, "-c", _EMIT, fmt], stderr=f, env=env, cwd=ROOT, check=True, timeout=30)
    return out.read_text()


def test_journal_prefixes_when_stderr_is_the_journal_stream(tmp_path: Path) -> None:
    text = _emit(tmp_path, "auto", "match")
    lines = text.splitlines()
    assert lines[0] == "<7>dbg task=t1 pr=5"
    assert lines[1] == "<6>started task=t1 pr=5 job=j1"
    assert lines[2] == "<4>slow task=t1 pr=5"
    assert lines[3] == "<3>crashed task=t1 pr=5"
    # journald makes an entry of every line: the traceback keeps the error priority throughout.
    tb = lines[4:]
    assert len(tb) >= 4 and all(ln.startswith("<3>  ") for ln in tb), tb
    assert any("RuntimeError: ***" in ln for ln in tb) and "hunter2-secret" not in text


def test_no_journal_prefixes_when_journal_stream_is_inherited_but_stderr_is_elsewhere(tmp_path: Path) -> None:
    """A process started from a systemd service with stderr redirected to a file inherits
    JOURNAL_STREAM; its lines must not get `<N>` prefixes then."""
    text = _emit(tmp_path, "auto", "1:2")
    assert not re.search(r"^<\d>", text, re.M)
    assert re.match(r"^\d{4}-\d\d-\d\dT\S+Z DEBUG   litbotd.t dbg task=t1 pr=5$", text.splitlines()[0])


def test_explicit_journal_format(tmp_path: Path) -> None:
    assert _emit(tmp_path, "journal", None).splitlines()[0] == "<7>dbg task=t1 pr=5"


def test_level_changes_on_setup_again() -> None:
    """Reload calls setup() again: the new level applies to the same handler."""
    buf = io.StringIO()
    log = logs.get("litbotd.t")
    try:
        logs.setup("warning", "text", [], stream=buf)
        log.info("hidden")
        logs.setup("debug", "text", [])
        log.debug("shown")
        assert sum(getattr(h, "litbotd", False) for h in logging.getLogger().handlers) == 1
    finally:
        logs.setup("info", "text", [], stream=sys.stderr)
    assert "hidden" not in buf.getvalue() and "shown" in buf.getvalue()


# -- the redactor -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "token ghs_" + "A1b2" * 9,
    "Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiIxMjM0NSJ9.c2lnbmF0dXJlLXN0dWZm",
    "pat github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
])
def test_redact_removes_token_shapes(text: str) -> None:
    out = logs.redact(f"before {text} after")
    assert out.startswith("before ") and out.endswith(" after") and "***" in out
    assert not re.search(r"ghs_|eyJ|github_pat_|MIIE", out)


def test_redact_removes_configured_secrets_and_pem_lines() -> None:
    pem_lines = ["MIIEowIBAAKCAQEAx" + "a" * 47, "Zm9vYmFyYmF6cXV4" * 4]
    pem = "-----BEGIN PRIVATE KEY-----\n" + "\n".join(pem_lines) + "\n-----END PRIVATE KEY-----\n"
    try:
        logs.set_secrets(["s3cret-webhook", pem, "ab"])  # too short to scrub without wrecking text
        out = logs.redact(f"x s3cret-webhook y {pem_lines[1]} z ab")
    finally:
        logs.set_secrets([])
    assert out == "x *** y *** z ab"
