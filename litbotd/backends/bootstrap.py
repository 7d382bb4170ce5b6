"""The job's command: fetch the code at the head SHA, run the script, report one result line.

This file is two things:
- job side (`_job_main`): self-contained, standard library only, Python >= 3.7, because it runs
  inside the job's image (which has Python but no git). The whole file is shipped as the job's
  command, zlib+base64 encoded, so no shell quoting of the script or its parameters can go wrong.
- daemon side (`job_argv`, `shell_command`, `job_env`, `parse_result`): builds that command and
  reads its result back.

What the job does, in order:
1. downloads `archive_url` with urllib; `Authorization: Bearer $GITHUB_TOKEN` when the variable is
   set, kept across redirects to the same origin only (GitHub sends the tarball from codeload);
2. extracts the tarball into a fresh directory, refusing absolute and `..` paths and links that
   leave the tree, and strips GitHub's top-level folder;
3. runs the script with `bash -eo pipefail` in that directory, in its own process group, without
   GITHUB_TOKEN in its environment; at the deadline the whole group gets SIGTERM, then SIGKILL;
4. when the workflow names `reports:` (JUnit XML globs), reads them (safely: no DOCTYPE or
   entities, size-capped, streamed) and prints each failed or errored test case as an `::error`
   workflow command at its file and line, then `litci-tests: N passed, N failed, N skipped, N errors`;
   the daemon turns these lines into annotations, so this works the same on every backend;
5. prints exactly one result line as the last line of output and exits with a matching status:
     litci-exit-code: N          the script exited with N            (exit N)
     litci-timed-out: T          killed after T seconds              (exit 124)
     litci-error: REASON         the script never ran (fetch failed)  (exit 125)
     litci-stopped               stopped by SIGTERM/SIGINT/SIGHUP     (exit 143)
   When asked (local backend), it also writes the result as JSON to a file.
The token is never printed: no URL it could be in, no header, no environment dump.
"""
from __future__ import annotations

import base64
import glob
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

if TYPE_CHECKING:  # the job side must not import litbotd
    from litbotd.backends.base import JobSpec

EXIT_TIMEOUT = 124
EXIT_ERROR = 125
EXIT_STOPPED = 143
DOWNLOAD_ATTEMPTS = 3
SOCKET_TIMEOUT = 60.0
MAX_REPORT_BYTES = 20 * 1024 * 1024   # one JUnit file; a bigger one is refused unread
MAX_REPORT_FILES = 100
MAX_REPORT_ANNOTATIONS = 1000         # the daemon keeps no more per run
MAX_CASE_TEXT = 64 * 1024             # failure text kept per test case while parsing
MAX_ANNOTATION_TEXT = 4000            # characters of a failure printed into an annotation

# ---------------------------------------------------------------------------------------------
# job side
# ---------------------------------------------------------------------------------------------


class _Fail(Exception):
    """The script could not be run (download or extraction failed)."""


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urllib.parse.urlsplit(a), urllib.parse.urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


class _Redirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects; keep the Authorization header only while the origin stays the same."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        auth = req.unredirected_hdrs.get("Authorization")
        if new is not None and auth and _same_origin(req.full_url, new.full_url):
            new.add_unredirected_header("Authorization", auth)
        return new


def _download(url: str, token: str | None, dest: str) -> None:
    opener = urllib.request.build_opener(_Redirect)
    last = ""
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        req = urllib.request.Request(url, headers={"Accept": "application/vnd.github+json",
                                                   "User-Agent": "litbotd-bootstrap"})
        if token:
            # unredirected: urllib would otherwise copy it to every redirect target
            req.add_unredirected_header("Authorization", "Bearer " + token)
        try:
            with opener.open(req, timeout=SOCKET_TIMEOUT) as resp, open(dest, "wb") as out:
                shutil.copyfileobj(resp, out, 1 << 20)
            return
        except urllib.error.HTTPError as e:
            last = "HTTP %d %s" % (e.code, e.reason)
            if e.code < 500 and e.code != 429:
                break
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            last = "%s: %s" % (type(e).__name__, getattr(e, "reason", None) or e)
        if attempt < DOWNLOAD_ATTEMPTS:
            time.sleep(2 ** attempt)
    raise _Fail("download of the code failed: " + last)


def _inside(rel: str) -> str:
    """GitHub's `owner-repo-sha/` folder stripped; '' for the folder itself. Rejects escapes."""
    if rel.startswith("/") or "\\" in rel:
        raise _Fail("unsafe path in archive: %r" % rel)
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _Fail("unsafe path in archive: %r" % rel)
    return "/".join(parts[1:])


def _extract(archive: str, root: str) -> None:
    links = []
    hardlinks = []
    with tarfile.open(archive, "r:*") as tf:
        for m in tf:
            rel = _inside(m.name)
            if not rel:
                continue
            dest = os.path.join(root, rel)
            if m.isdir():
                os.makedirs(dest, exist_ok=True)
            elif m.isreg():
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                src = tf.extractfile(m)
                if src is None:  # never for a regular member; a check, so that no None is copied
                    raise _Fail("unreadable member in archive: %r" % m.name)
                # O_NOFOLLOW|O_EXCL: never write through a link or over an earlier member
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                             0o755 if m.mode & 0o111 else 0o644)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            elif m.issym():
                target = m.linkname
                resolved = os.path.normpath(os.path.join(os.path.dirname(rel), target))
                if target.startswith("/") or resolved.split("/")[0] == "..":
                    raise _Fail("unsafe symlink in archive: %r" % m.name)
                links.append((target, dest))
            elif m.islnk():
                hardlinks.append((_inside(m.linkname), dest))
            # devices and fifos have no place in a source tree: skipped
    for target_rel, dest in hardlinks:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy2(os.path.join(root, target_rel), dest, follow_symlinks=False)
    # links last, so no member was ever written through one
    for target, dest in links:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.symlink(target, dest)


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _write_result(path: str | None, result: dict) -> None:
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _finish(params: dict, line: str, result: dict, code: int) -> int:
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)  # the result is decided: let nothing interrupt its writing
    sys.stdout.flush()
    _write_result(params.get("result_file"), result)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    return code


class _Stopped(BaseException):
    """SIGTERM/SIGINT/SIGHUP before the script started: unwind out of a blocking download."""


def _run_script(argv: list, cwd: str, timeout: float, grace: float, stop: dict) -> tuple:
    """Run the script in its own process group; returns (exit status, timed out)."""
    stop["starting"] = True  # from here a signal only sets the flag; the loop below acts on it
    proc = subprocess.Popen(argv, cwd=cwd, env=dict(os.environ), start_new_session=True)
    stop["pgid"] = proc.pid
    deadline = time.monotonic() + timeout
    timed_out = False
    while True:
        if stop["requested"] or time.monotonic() >= deadline:
            timed_out = not stop["requested"]
            _kill_group(proc.pid, signal.SIGTERM)
            try:
                rc = proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid, signal.SIGKILL)
                rc = proc.wait()
            break
        try:
            rc = proc.wait(timeout=min(max(deadline - time.monotonic(), 0.01), 0.5))
            break
        except subprocess.TimeoutExpired:
            continue
    # nothing of the script outlives it: background children in its group go too
    _kill_group(proc.pid, signal.SIGKILL)
    return (128 - rc if rc < 0 else rc), timed_out


# -- JUnit reports (runs after the script, inside the job) -------------------------------------


class BadReport(Exception):
    """A report file that is not read: too large, not XML, or with a DOCTYPE/entities."""


def _refuse(*args: Any) -> NoReturn:
    raise BadReport("DOCTYPE and entity declarations are not allowed (entities are never expanded)")


def read_junit(path: str, max_bytes: int = MAX_REPORT_BYTES, max_cases: int = MAX_REPORT_ANNOTATIONS) -> dict:
    """Counts and failed/errored cases of a JUnit XML file (pytest xunit1/xunit2, Ant/Maven
    Surefire, most other producers): {"passed", "failed", "skipped", "errors", "cases": [...]},
    each case {"name", "classname", "file", "line", "kind", "message", "text"}.

    Streamed through expat with DOCTYPE and entity declarations refused, so no entity is ever
    expanded (a "billion laughs" file fails at its first declaration); a file over `max_bytes`
    is refused before it is read. Every case is counted, the first `max_cases` failed ones kept."""
    import xml.parsers.expat  # here: an image without expat still runs its jobs, and says why reports fail

    size = os.path.getsize(path)
    if size > max_bytes:
        raise BadReport("%d bytes, more than the %d read" % (size, max_bytes))
    parser = xml.parsers.expat.ParserCreate()
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    parser.UnparsedEntityDeclHandler = _refuse
    parser.ExternalEntityRefHandler = _refuse
    parser.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)
    out: dict[str, Any] = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0, "cases": []}
    state: dict[str, Any] = {"case": None, "outcome": None, "text": None, "size": 0}

    def start(tag: str, attrs: dict[str, str]) -> None:
        if tag == "testcase":
            state["case"] = {"name": attrs.get("name", ""), "classname": attrs.get("classname", ""),
                             "file": attrs.get("file", ""), "line": attrs.get("line", ""),
                             "kind": "", "message": "", "text": ""}
            state["outcome"] = "passed"
            return
        case = state["case"]
        if case is None:
            return
        if tag in ("failure", "error") and state["outcome"] != "errors":
            state["outcome"] = "errors" if tag == "error" else "failed"
            case["kind"] = tag
            case["message"] = (attrs.get("message") or attrs.get("type") or "")[:MAX_CASE_TEXT]
            state["text"], state["size"] = [], 0
        elif tag == "skipped" and state["outcome"] == "passed":
            state["outcome"] = "skipped"

    def end(tag: str) -> None:
        case = state["case"]
        if tag in ("failure", "error") and state["text"] is not None and case is not None:
            case["text"] = "".join(state["text"])
            state["text"] = None
        elif tag == "testcase" and case is not None:
            out[state["outcome"]] += 1
            if state["outcome"] in ("failed", "errors") and len(out["cases"]) < max_cases:
                out["cases"].append(case)
            state["case"] = None

    def chars(data: str) -> None:
        if state["text"] is not None and state["size"] < MAX_CASE_TEXT:
            state["text"].append(data[:MAX_CASE_TEXT - state["size"]])
            state["size"] += len(data)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    try:
        with open(path, "rb") as f:
            while True:
                chunk = f.read(1 << 16)
                parser.Parse(chunk, not chunk)
                if not chunk:
                    break
    except xml.parsers.expat.ExpatError as e:
        raise BadReport("not well-formed XML: %s" % e) from None
    return out


_PY_FRAME = re.compile(r'File "([^"\n]{1,1024})", line (\d{1,9})')
# Only from the start of a word: linear however long a line without a path is.
_PATH_LINE = re.compile(r"(?:(?<=[\s\"'(\[<])|^)([^\s:\"'()\[\]<>]{1,1024}):(\d{1,9})(?!\d)")


def _repo_file(path: str, root: str) -> str:
    """`path` (relative to root, or absolute inside it) as a repository path of an existing
    file; "" when it is outside the repository or no such file."""
    path = path.strip()
    if not path:
        return ""
    full = os.path.realpath(os.path.join(root, path))
    real_root = os.path.realpath(root)
    if not full.startswith(real_root + os.sep) or not os.path.isfile(full):
        return ""
    # the path as the repository names it, not where a symlink points
    joined = os.path.normpath(os.path.join(root, path))
    if not joined.startswith(os.path.normpath(root) + os.sep):
        return ""
    return os.path.relpath(joined, root).replace(os.sep, "/")


def _first_location(text: str, root: str, only: str = "") -> tuple:
    """The first `path:line` (or Python `File "path", line N`) in `text` naming a file of the
    repository (`only`: that file); ("", 0) when there is none."""
    found = []
    for m in _PY_FRAME.finditer(text):
        found.append((m.start(), m.group(1), m.group(2)))
    for m in _PATH_LINE.finditer(text):
        found.append((m.start(1), m.group(1), m.group(2)))
    checked = 0
    for _, path, line in sorted(found):
        if "." not in path and "/" not in path:
            continue
        checked += 1
        if checked > 200:  # each check is a stat: bound them
            break
        rel = _repo_file(path, root)
        if rel and (not only or rel == only) and int(line) > 0:
            return rel, int(line)
    return "", 0


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_prop(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def case_command(case: dict, root: str) -> str:
    """The `::error` workflow command for a failed or errored test case: at its file/line when
    the report has them (a line of that file named in the failure text is preferred: it is where
    the test failed, not where it starts), else at the first repository path:line of the text,
    else without a file (the daemon lists it in the check's output)."""
    text = ((case.get("message") or "") + "\n" + (case.get("text") or "")).strip()
    path, line = "", 0
    own = _repo_file(case.get("file") or "", root) if case.get("file") else ""
    if own:
        path, line = _first_location(text, root, only=own)
        if not path:
            path = own
            given = str(case.get("line") or "")
            line = max(1, int(given)) if given.isdigit() and len(given) <= 9 else 1
    else:
        path, line = _first_location(text, root)
    name = case.get("name") or "?"
    title = "%s.%s" % (case["classname"], name) if case.get("classname") else name
    title = "%s %s" % (title, "errored" if case.get("kind") == "error" else "failed")
    if len(text) > MAX_ANNOTATION_TEXT:
        text = text[:MAX_ANNOTATION_TEXT] + "…"
    props = ("file=%s,line=%d," % (_escape_prop(path), line) if path else "") + "title=" + _escape_prop(title[:255])
    return "::error %s::%s" % (props, _escape_data(text or title))


def report_lines(root: str, patterns: list) -> list:
    """What the reports step prints: one `::error` per failed case, `::warning`s for reports that
    could not be read or globs that matched nothing, and the `litci-tests:` counts line."""
    lines = []
    files = []
    real_root = os.path.realpath(root)
    for pattern in patterns:
        if pattern.startswith("/") or ".." in pattern.split("/"):
            lines.append("::warning title=reports::%s is outside the repository: skipped" % _escape_data(pattern))
            continue
        matched = sorted(glob.glob(os.path.join(glob.escape(root), pattern), recursive=True))
        matched = [p for p in matched if os.path.isfile(p) and os.path.realpath(p).startswith(real_root + os.sep)]
        if not matched:
            lines.append("::warning title=reports::no report file matches %s" % _escape_data(pattern))
        files += [p for p in matched if p not in files]
    totals = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    printed = 0
    for path in files[:MAX_REPORT_FILES]:
        rel = os.path.relpath(path, root)
        try:
            report = read_junit(path)
        except (BadReport, OSError) as e:
            lines.append("::warning title=reports::%s not read: %s" % (_escape_data(rel), _escape_data(str(e))))
            continue
        for k in totals:
            totals[k] += report[k]
        for case in report["cases"]:
            if printed < MAX_REPORT_ANNOTATIONS:
                lines.append(case_command(case, root))
                printed += 1
    if len(files) > MAX_REPORT_FILES:
        lines.append("::warning title=reports::%d report files; only the first %d were read"
                     % (len(files), MAX_REPORT_FILES))
    if files:
        lines.append("litci-tests: %(passed)d passed, %(failed)d failed, %(skipped)d skipped, %(errors)d errors"
                     % totals)
    return lines


def _print_reports(root: str, patterns: list) -> None:
    """The reports step: never changes the job's result, whatever the reports hold."""
    try:
        lines = report_lines(root, patterns)
    except Exception as e:  # a bug here must not turn a passing job red
        lines = ["::warning title=reports::the reports could not be read: %s" % _escape_data(str(e))]
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()


def _job_main(argv: list) -> int:
    params = json.loads(base64.b64decode(argv[0]).decode("utf-8"))
    token = os.environ.pop("GITHUB_TOKEN", None) or None  # the script does not get it
    timeout = float(params["timeout"])
    grace = float(params.get("grace", 10.0))
    stop = {"requested": False, "starting": False, "pgid": 0}
    stopped = ("litci-stopped", {"kind": "stopped", "exit_code": None, "detail": ""}, EXIT_STOPPED)

    def on_signal(signum: int, frame: Any) -> None:
        stop["requested"] = True
        if stop["pgid"]:
            _kill_group(stop["pgid"], signal.SIGTERM)
        elif not stop["starting"]:
            raise _Stopped()

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)

    work = sandbox_error = ""
    try:
        try:
            work = tempfile.mkdtemp(prefix="litci-", dir=params.get("workdir") or None)
            src = os.path.join(work, "src")
            os.mkdir(src)
            print("litci: fetching %s@%s" % (params.get("repo", "?"), params.get("sha", "?")[:12]), flush=True)
            archive = os.path.join(work, "code.tar")
            _download(params["url"], token, archive)
            token = None
            _extract(archive, src)
            os.unlink(archive)
            script = os.path.join(work, "script.sh")
            with open(script, "w") as f:
                f.write(params["script"])
            argv = ["bash", "-eo", "pipefail", script]
            if params.get("sandbox"):  # local backend: the wrapper runs the script in its sandbox
                sandbox_error = work + ".sandbox-error"  # beside work, out of the sandbox's sight
                argv = params["sandbox"] + [sandbox_error, work, "--"] + argv
            print("litci: running the script (time limit %gs)" % timeout, flush=True)
            print("litci-workspace: %s" % src, flush=True)  # absolute paths in annotations → repo paths
            rc, timed_out = _run_script(argv, src, timeout, grace, stop)
            # outside the sandbox, whose processes are all gone by now; report_lines keeps to src
            sandbox_failed = bool(sandbox_error) and os.path.exists(sandbox_error)
            if params.get("reports") and not stop["requested"] and not sandbox_failed:
                _print_reports(src, params["reports"])
        except _Stopped:
            return _finish(params, *stopped)
        except Exception as e:  # whatever broke before the script ran is not the script's failure
            reason = str(e) if isinstance(e, _Fail) else "%s: %s" % (type(e).__name__, e)
            return _finish(params, "litci-error: " + reason,
                           {"kind": "error", "exit_code": None, "detail": reason}, EXIT_ERROR)
        if stop["requested"]:
            return _finish(params, *stopped)
        if sandbox_error and os.path.exists(sandbox_error):
            with open(sandbox_error) as f:
                reason = f.read().strip()
            return _finish(params, "litci-error: " + reason, {"kind": "error", "exit_code": None, "detail": reason},
                           EXIT_ERROR)
        if timed_out:
            return _finish(params, "litci-timed-out: %g" % timeout,
                           {"kind": "timeout", "exit_code": None, "detail": "%g" % timeout}, EXIT_TIMEOUT)
        return _finish(params, "litci-exit-code: %d" % rc, {"kind": "exit", "exit_code": rc, "detail": ""}, rc)
    finally:
        if work:
            shutil.rmtree(work, ignore_errors=True)
        if sandbox_error and os.path.exists(sandbox_error):
            os.unlink(sandbox_error)


# ---------------------------------------------------------------------------------------------
# daemon side
# ---------------------------------------------------------------------------------------------

_CODE_CACHE: list = []


def _job_code() -> str:
    """This file, compressed and base64-encoded: a quoting-safe payload for `python3 -c`."""
    if not _CODE_CACHE:
        with open(__file__, "rb") as f:
            _CODE_CACHE.append(base64.b64encode(zlib.compress(f.read(), 9)).decode("ascii"))
    return _CODE_CACHE[0]


def _params(spec: "JobSpec", workdir: str | None, result_file: str | None, grace: float,
            sandbox: list[str] | None) -> str:
    params: dict[str, Any] = {"url": spec.archive_url, "script": spec.script, "timeout": spec.timeout,
                              "repo": spec.repo, "sha": spec.sha, "grace": grace}
    if spec.reports:
        params["reports"] = list(spec.reports)
    if sandbox:
        params["sandbox"] = sandbox
    if workdir:
        params["workdir"] = workdir
    if result_file:
        params["result_file"] = result_file
    return base64.b64encode(json.dumps(params).encode("utf-8")).decode("ascii")


def job_argv(spec: "JobSpec", python: str = "python3", workdir: str | None = None,
             result_file: str | None = None, grace: float = 10.0, sandbox: list[str] | None = None) -> list[str]:
    """argv of the job: `python3 -c CODE PARAMS`. Carries no token (argv is visible in ps).

    `sandbox`: the command (sandbox.py) the script is run under, after the code was fetched."""
    code = ("import base64,sys,zlib;exec(compile(zlib.decompress(base64.b64decode('%s')),"
            "'litci-bootstrap','exec'))" % _job_code())
    return [python, "-c", code, _params(spec, workdir, result_file, grace, sandbox)]


def shell_command(spec: "JobSpec", grace: float = 10.0) -> str:
    """The job as one `sh -c` command line (Lightning runs `sh -c COMMAND`)."""
    argv = job_argv(spec, grace=grace)
    return ("command -v python3 >/dev/null 2>&1 || "
            "{ echo 'litci-error: the image has no python3'; exit %d; }; exec %s"
            % (EXIT_ERROR, shlex.join(argv)))


def job_env(spec: "JobSpec") -> dict[str, str]:
    """The job's environment on top of the image's: the workflow env, the secrets released to the
    run (over a matrix value of the same name), plus GITHUB_TOKEN if any (the script never sees it)."""
    env = {**spec.env, **spec.secret_env}
    env.pop("GITHUB_TOKEN", None)
    if spec.token:
        env["GITHUB_TOKEN"] = spec.token
    return env


class Result(NamedTuple):
    kind: str               # "exit" | "timeout" | "error" | "stopped"
    exit_code: int | None
    detail: str


_RESULT_RE = re.compile(r"^litci-(exit-code: (-?\d+)|timed-out: (\S+)|error: (.*)|stopped)\s*$")


def parse_result(log_text: str) -> Result | None:
    """The result line of a job's log: the last line that looks like one, or None."""
    for line in reversed(log_text.splitlines()[-50:]):
        m = _RESULT_RE.match(line.strip())
        if not m:
            continue
        if m.group(2) is not None:
            return Result("exit", int(m.group(2)), "")
        if m.group(3) is not None:
            return Result("timeout", None, m.group(3))
        if m.group(4) is not None:
            return Result("error", None, m.group(4))
        return Result("stopped", None, "")
    return None


def result_from_json(data: Any) -> Result | None:
    """A result file written by the job (local backend)."""
    if not isinstance(data, dict) or data.get("kind") not in ("exit", "timeout", "error", "stopped"):
        return None
    code = data.get("exit_code")
    return Result(data["kind"], code if isinstance(code, int) else None, str(data.get("detail") or ""))


if __name__ == "__main__":
    sys.exit(_job_main(sys.argv[1:]))
