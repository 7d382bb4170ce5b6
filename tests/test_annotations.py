"""The workflow-command parser and annotation batching (litbotd/annotations.py): pure."""
from __future__ import annotations

import time

from litbotd.annotations import (
    MAX_ANNOTATIONS,
    MAX_LINE_CHARS,
    MAX_MESSAGE_CHARS,
    MAX_TITLE_CHARS,
    Annotation,
    batches,
    parse_command,
    repo_path,
    scan,
)


def test_every_property_and_level() -> None:
    a = parse_command("::error file=src/app.py,line=3,endLine=5,col=2,endColumn=9,title=Bad thing::it broke")
    assert a == Annotation("failure", "it broke", "src/app.py", 3, 5, 2, 9, "Bad thing")
    assert parse_command("::warning file=a.py::w").level == "warning"
    assert parse_command("::notice::n") == Annotation("notice", "n")


def test_escapes_in_properties_and_message() -> None:
    a = parse_command("::error file=dir%2Cx/a%3Ab.py,title=100%25 %3A sure%0Anext::line one%0Aline two%0D%25 done %2C")
    assert a.path == "dir,x/a:b.py"
    assert a.title == "100% : sure next"          # a title stays on one line
    # The message knows only %25 %0D %0A (as on GitHub Actions); %2C stays as written.
    assert a.message == "line one\nline two\r% done %2C"
    # One pass: an escaped '%' followed by "0A" is a literal "%0A", not a newline.
    assert parse_command("::notice::%250A").message == "%0A"


def test_missing_and_bad_properties() -> None:
    a = parse_command("::error file=a.py,line=,endLine=x,col=-3,endColumn=1e9,title=::msg")
    assert (a.start_line, a.end_line, a.start_column, a.end_column, a.title) == (None, None, None, None, None)
    api = Annotation("warning", "m", "a.py").to_api()
    assert api == {"path": "a.py", "start_line": 1, "end_line": 1, "annotation_level": "warning", "message": "m"}
    # Columns only on one line; an end before the start is dropped; an end line before the start is the start.
    multi = parse_command("::error file=a.py,line=4,endLine=6,col=2,endColumn=3::m").to_api()
    assert "start_column" not in multi and multi["end_line"] == 6
    back = parse_command("::error file=a.py,line=9,endLine=2,col=5,endColumn=1::m").to_api()
    assert (back["start_line"], back["end_line"], back["start_column"], "end_column" in back) == (9, 9, 5, False)
    assert parse_command("::error file=a.py,bogus,line=2,line=7,other=1::m").start_line == 2
    assert parse_command("::error::") == Annotation("failure", "")


def test_lines_that_are_not_commands() -> None:
    for line in ("error file=a.py::x", ":: error::x", "::debug::x", "::group::x", "::error", "::errors::x",
                 "::error file=a", "text ::error::x"):
        assert parse_command(line) is None, line
    # Leading spaces and ANSI colours are tolerated, as the runner trims the line.
    assert scan("  \x1b[31m::error file=a.py::x\x1b[0m\n").annotations[0].path == "a.py"


def test_hostile_input_is_bounded_and_quick() -> None:
    t0 = time.process_time()
    long_props = "::error " + " " * 100_000 + "file=a.py"          # no closing '::'
    assert parse_command(long_props) is None
    assert parse_command("::error file=a.py::" + "x" * (MAX_LINE_CHARS + 1)) is None
    a = parse_command("::error file=a.py,title=" + "t" * 10_000 + "::" + "m" * 100_000)
    assert len(a.title) == MAX_TITLE_CHARS and len(a.message) == MAX_MESSAGE_CHARS
    assert parse_command("::error file=a\x00b.py::x\x07y").message == "xy"
    assert repo_path("a\x00b.py") is None
    log = "\n".join(["::error file=x.py," + "," * 50_000 + "::m"] * 20 + ["::notice " + "a=" * 30_000] * 20)
    s = scan(log)
    assert len(s.annotations) == 20
    assert time.process_time() - t0 < 5  # generous: a quadratic regex would take minutes


def test_paths_outside_the_repository_are_dropped() -> None:
    ws = "/tmp/litci-abc/src"
    assert repo_path("./src/../lib/a.py") == "lib/a.py"
    assert repo_path(f"{ws}/tests/t.py", ws) == "tests/t.py"
    for bad in ("../secret", "a/../../b", "/etc/passwd", f"{ws}/../x", ".", "", "/tmp/litci-abc/srcx/a.py"):
        assert repo_path(bad, ws) is None, bad
    log = (f"::error file=../../etc/passwd::x\n::error file={ws}/ok.py,line=2::y\n"
           f"litci-workspace: {ws}\n::warning file=/etc/shadow::z\n")
    s = scan(log)
    assert [(a.path, a.start_line) for a in s.annotations] == [("ok.py", 2)]
    assert s.dropped == 2


def test_commands_without_a_file_go_to_the_messages() -> None:
    s = scan("::error title=Setup::the database is down\n::notice file=a.py::on the diff\n")
    assert [a.message for a in s.messages] == ["the database is down"]
    assert [a.path for a in s.annotations] == ["a.py"]


def test_stop_commands_pauses_processing() -> None:
    log = "::error file=a.py::one\n::stop-commands::tok123\n::error file=b.py::ignored\n::tok123::\n::error file=c.py::three\n"
    assert [a.path for a in scan(log).annotations] == ["a.py", "c.py"]


def test_the_cap_keeps_failures_first_and_counts_the_rest() -> None:
    notices = [f"::notice file=n.py,line={i + 1}::n{i}" for i in range(MAX_ANNOTATIONS)]
    s = scan("\n".join(notices + ["::warning file=w.py::w", "::error file=e.py::e"]))
    assert len(s.annotations) == MAX_ANNOTATIONS and s.dropped == 2
    assert [a.level for a in s.annotations[:2]] == ["failure", "warning"]
    assert s.annotations[2].message == "n0"


def test_test_counts_line() -> None:
    s = scan("litci-tests: 3 passed, 2 failed, 1 skipped, 0 errors\n")
    assert s.tests == (3, 2, 1, 0) and s.tests_text == "3 passed, 2 failed, 1 skipped, 0 errors"
    assert scan("nothing").tests is None


def test_batches_of_at_most_fifty() -> None:
    items = [Annotation("notice", str(i), "a.py", i + 1) for i in range(123)]
    out = batches(items)
    assert [len(b) for b in out] == [50, 50, 23]
    assert [b["message"] for chunk in out for b in chunk] == [str(i) for i in range(123)]
    assert batches([]) == []


def test_check_output_counts_tests_and_lists_commands_without_a_file() -> None:
    from litbotd.report import MAX_OUTPUT_CHARS, RunReport, check_output

    s = scan("::error title=Setup::db down\n::warning::```oops\nlitci-tests: 5 passed, 1 failed, 2 skipped, 0 errors\n")
    row = RunReport(check_name="ci", status="completed", conclusion="failure", machine="CPU", image="img", attempt=1,
                    started_at=0.0, finished_at=3.0, details_url=None, log_tail="x\n" * 100_000,
                    tests=s.tests_text, annotations=7, notes=tuple(a.as_note() for a in s.messages * 5000))
    out = check_output(row)
    assert "**Tests:** `5 passed, 1 failed, 2 skipped, 0 errors`" in out["summary"]
    assert "**Annotations:** 7, on the lines they name" in out["summary"]
    assert out["text"].startswith("**Messages**\n\n````text\nerror: Setup: db down\nwarning: ```oops\n")
    assert len(out["text"].encode()) <= MAX_OUTPUT_CHARS
    assert out["text"].rstrip().endswith("x\n```")  # the log tail still follows, within the budget
