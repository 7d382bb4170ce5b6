"""The JUnit reader of the job's bootstrap (reports → `::error` commands and test counts): pytest's
xunit1 and xunit2 output made by pytest itself, hostile files, and a real job run."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from litbotd.annotations import scan
from litbotd.backends.base import JobSpec
from litbotd.backends.bootstrap import (
    MAX_CASE_TEXT,
    MAX_REPORT_BYTES,
    BadReport,
    case_command,
    job_argv,
    read_junit,
    report_lines,
)
from tarball_server import REPO, SHA, TarballServer, github_tarball

TESTS = """\
import pytest


def helper(x):
    assert x == 2, "helper wants two"


def test_ok():
    pass


def test_fails():
    helper(1)


def test_fails_too():
    assert 1 + 1 == 3


@pytest.mark.skip(reason="not today")
def test_skipped():
    pass


@pytest.fixture
def broken():
    raise RuntimeError("fixture broke")


def test_errors(broken):
    pass
"""


@pytest.fixture(scope="module")
def pytest_reports(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """A checkout with a test file, and pytest's own JUnit XML for it in both flavours."""
    root = tmp_path_factory.mktemp("repo")
    (root / "tests").mkdir()
    (root / "tests" / "test_demo.py").write_text(TESTS)
    out = {}
    for family in ("xunit1", "xunit2"):
        out[family] = root / "reports" / f"{family}.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", f"junit_family={family}",
                        f"--junitxml={out[family]}", "tests"], cwd=root, capture_output=True, timeout=120)
    return root, out


@pytest.mark.parametrize("family", ["xunit1", "xunit2"])
def test_pytest_reports_in_both_flavours(pytest_reports, family: str) -> None:
    root, files = pytest_reports
    report = read_junit(str(files[family]))
    assert (report["passed"], report["failed"], report["skipped"], report["errors"]) == (1, 2, 1, 1)
    cases = {c["name"]: c for c in report["cases"]}
    assert set(cases) == {"test_fails", "test_fails_too", "test_errors"}
    assert cases["test_errors"]["kind"] == "error" and "fixture broke" in cases["test_errors"]["text"]
    assert (cases["test_fails"]["file"] != "") == (family == "xunit1")  # only xunit1 has file/line
    # Every failure lands on the line that failed, with or without file/line in the report.
    got = scan("\n".join(case_command(c, str(root)) for c in report["cases"]))
    where = {a.title: (a.path, a.start_line, a.level) for a in got.annotations}
    assert where["tests.test_demo.test_fails failed"] == ("tests/test_demo.py", 13, "failure")
    assert where["tests.test_demo.test_fails_too failed"] == ("tests/test_demo.py", 17, "failure")
    assert "helper wants two" in next(a.message for a in got.annotations if a.title.endswith("test_fails failed"))


def test_report_lines_count_and_warn(pytest_reports) -> None:
    root, _ = pytest_reports
    lines = report_lines(str(root), ["reports/*.xml", "missing/*.xml", "../outside.xml"])
    assert lines[-1] == "litci-tests: 2 passed, 4 failed, 2 skipped, 2 errors"
    assert sum(line.startswith("::error file=tests/test_demo.py,") for line in lines) == 6
    warnings = [line for line in lines if line.startswith("::warning")]
    assert len(warnings) == 2 and "missing/*.xml" in warnings[0] and "outside the repository" in warnings[1]


SUREFIRE = """<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="com.acme.AppTest" tests="3" failures="1" errors="0" skipped="1">
  <testcase name="adds" classname="com.acme.AppTest" time="0.01"/>
  <testcase name="divides" classname="com.acme.AppTest" time="0.02">
    <failure message="expected:&lt;2&gt; but was:&lt;3&gt;" type="java.lang.AssertionError">java.lang.AssertionError
	at com.acme.AppTest.divides(AppTest.java:42)
	at src/test/java/com/acme/AppTest.java:42</failure>
    <system-out>lots of output</system-out>
  </testcase>
  <testcase name="later" classname="com.acme.AppTest"><skipped/></testcase>
</testsuite>
"""


def test_a_plain_testsuite_root_and_a_path_in_the_text(tmp_path: Path) -> None:
    (tmp_path / "src/test/java/com/acme").mkdir(parents=True)
    (tmp_path / "src/test/java/com/acme/AppTest.java").write_text("class AppTest {}\n")
    (tmp_path / "r.xml").write_text(SUREFIRE)
    report = read_junit(str(tmp_path / "r.xml"))
    assert (report["passed"], report["failed"], report["skipped"]) == (1, 1, 1)
    a = scan(case_command(report["cases"][0], str(tmp_path))).annotations[0]
    assert (a.path, a.start_line) == ("src/test/java/com/acme/AppTest.java", 42)
    assert a.message.startswith("expected:<2> but was:<3>")


def test_a_case_with_no_location_is_a_message(tmp_path: Path) -> None:
    line = case_command({"name": "t", "classname": "", "kind": "failure", "message": "boom /etc/passwd:1",
                         "text": "", "file": "../../etc/passwd", "line": "1"}, str(tmp_path))
    s = scan(line)
    assert s.annotations == [] and s.messages[0].message == "boom /etc/passwd:1"


BOMB = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<testsuite><testcase name="x"><failure message="&lol9;"/></testcase></testsuite>
"""


@pytest.mark.parametrize("text", [
    BOMB,
    '<?xml version="1.0"?><!DOCTYPE t SYSTEM "file:///etc/passwd"><testsuite/>',
    '<?xml version="1.0"?><!DOCTYPE t [<!ENTITY x SYSTEM "file:///etc/passwd">]><testsuite>&x;</testsuite>',
], ids=["billion-laughs", "external-dtd", "external-entity"])
def test_doctype_and_entities_are_refused(tmp_path: Path, text: str) -> None:
    (tmp_path / "r.xml").write_text(text)
    with pytest.raises(BadReport, match="DOCTYPE"):
        read_junit(str(tmp_path / "r.xml"))


def test_every_case_is_counted_and_the_first_failures_kept(tmp_path: Path) -> None:
    (tmp_path / "r.xml").write_text("<testsuite>" + '<testcase name="f"><error/></testcase>' * 5000 + "</testsuite>")
    report = read_junit(str(tmp_path / "r.xml"), max_cases=10)
    assert report["errors"] == 5000 and len(report["cases"]) == 10


def test_undeclared_entities_and_broken_xml_are_refused(tmp_path: Path) -> None:
    for text in ("<testsuite>&lol;</testsuite>", "<testsuite><testcase>", "not xml at all", ""):
        (tmp_path / "r.xml").write_text(text)
        with pytest.raises(BadReport, match="not well-formed"):
            read_junit(str(tmp_path / "r.xml"))


def test_a_50_mb_report(tmp_path: Path) -> None:
    """Refused unread over the cap; under a raised cap it streams, keeping a bounded failure text."""
    path = tmp_path / "big.xml"
    chunk = b"x" * (1 << 20)
    with open(path, "wb") as f:
        f.write(b'<testsuite><testcase name="big"><failure message="huge">')
        for _ in range(50):
            f.write(chunk)
        f.write(b"</failure></testcase><testcase name=\"ok\"/></testsuite>")
    assert path.stat().st_size > 50 * 2 ** 20 > MAX_REPORT_BYTES
    with pytest.raises(BadReport, match="more than"):
        read_junit(str(path))
    lines = report_lines(str(tmp_path), ["big.xml"])
    assert lines[0].startswith("::warning title=reports::big.xml not read:")
    report = read_junit(str(path), max_bytes=64 * 2 ** 20)
    assert (report["passed"], report["failed"]) == (1, 1)
    assert len(report["cases"][0]["text"]) <= MAX_CASE_TEXT


async def test_the_job_prints_its_reports_after_a_failing_script(tmp_path: Path) -> None:
    """The real job command: the script writes a JUnit file and fails; the job still prints the
    report's annotations and counts before its result line, and its exit status stays the script's."""
    xml = ('<testsuites><testsuite><testcase classname="t" name="a" file="pkg/mod.py" line="3">'
           '<failure message="bad">pkg/mod.py:4: AssertionError</failure></testcase>'
           '<testcase classname="t" name="b"/></testsuite></testsuites>')
    files = {"pkg/mod.py": "a\nb\nc\nd\n", "report.xml": xml}
    server = await TarballServer(github_tarball(files)).start()
    try:
        spec = JobSpec(name="litci-junit", repo=REPO, sha=SHA, archive_url=server.archive_url(),
                       script="mkdir -p out && cp report.xml out/junit.xml\nexit 1\n", image="python:3.11-slim",
                       machine="CPU", interruptible=False, timeout=30, env={}, reports=("out/*.xml",))
        proc = await asyncio.create_subprocess_exec(
            *job_argv(spec, python=sys.executable, workdir=str(tmp_path)), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env={"PATH": os.environ["PATH"]})
        out = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
    finally:
        await server.close()
    assert proc.returncode == 1, out
    lines = out.rstrip("\n").splitlines()
    assert lines[-1] == "litci-exit-code: 1"
    assert lines[-2] == "litci-tests: 1 passed, 1 failed, 0 skipped, 0 errors"
    s = scan(out)
    assert [(a.path, a.start_line, a.title) for a in s.annotations] == [("pkg/mod.py", 4, "t.a failed")]
