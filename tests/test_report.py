"""litbotd.report: check-run output and the summary comment (SPEC §5 "Reporting")."""
from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from litbotd import report
from litbotd.report import (
    MARKER,
    MAX_OUTPUT_CHARS,
    RunReport,
    check_output,
    duration_text,
    error_check_output,
    fork_approval_output,
    no_workflows_output,
    strip_ansi,
    summary_comment,
    tail,
)


def rr(name: str = "PR checks (3.11, CPU)", status: str = "completed", conclusion: str | None = "success",
       **kw: object) -> RunReport:
    base: dict[str, object] = dict(machine="CPU", image="python:3.11-slim", attempt=1, started_at=1000.0,
                                   finished_at=1065.0, details_url="https://lightning.ai/jobs/1")
    base.update(kw)
    return RunReport(name, status, conclusion, **base)  # type: ignore[arg-type]


def nbytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def table_cells(row: str) -> list[str]:
    """Split a GFM table row the way GitHub does: on pipes not escaped by a backslash."""
    assert row.startswith("| ") and row.endswith(" |")
    return [c.strip() for c in re.split(r"(?<!\\)\|", row[1:-1])]


# --- strip_ansi and tail ---------------------------------------------------------------------

@pytest.mark.parametrize("raw, clean", [
    ("\x1b[31mred\x1b[0m", "red"),
    ("\x1b[1;32;40mbold\x1b[m text", "bold text"),
    ("\x1b[2K\x1b[1Gprogress", "progress"),
    ("\x1b]0;window title\x07after", "after"),
    ("\x1b]8;;https://x.y\x1b\\link\x1b]8;;\x1b\\", "link"),
    ("\x1b(Bplain", "plain"),
    ("\x9b31mc1\x9b0m", "c1"),
    ("no escapes [31m here", "no escapes [31m here"),
])
def test_strip_ansi(raw: str, clean: str) -> None:
    assert strip_ansi(raw) == clean


def test_tail_keeps_the_last_lines_and_says_how_many_were_cut() -> None:
    log = "".join(f"line {i}\n" for i in range(1, 11))
    assert tail(log, 3) == "… 7 earlier lines omitted\nline 8\nline 9\nline 10"
    assert tail(log, 10) == log.rstrip("\n")
    assert tail(log, 9).startswith("… 1 earlier line omitted\n")


def test_tail_strips_ansi_redraws_and_control_characters() -> None:
    log = "\x1b[32mok\x1b[0m\r\n 10%\r 50%\r100%\nbell\x07 nul\x00\tTAB\n"
    assert tail(log, 10) == "ok\n100%\nbell nul\tTAB"


def test_tail_caps_characters_from_the_front() -> None:
    log = "\n".join(f"{i:04d}" + "x" * 95 for i in range(1000))  # 100 chars a line
    out = tail(log, 1000, max_chars=1000)
    assert nbytes(out) <= 1000
    assert out.endswith(log[-100:])
    omitted = int(re.match(r"… (\d+) earlier lines omitted\n", out).group(1))  # type: ignore[union-attr]
    assert omitted + out.count("\n") == 1000  # every line is either kept or counted


def test_tail_counts_bytes_so_github_accepts_it() -> None:
    out = tail("é" * 50 + "\n" + "ü" * 50, 10, max_chars=140)  # 200 bytes in 101 characters
    assert nbytes(out) <= 140 and out == "… 1 earlier line omitted\n" + "ü" * 50


def test_tail_of_one_huge_line_keeps_its_end() -> None:
    out = tail("start" + "x" * 10_000 + "END", 5, max_chars=200)
    assert nbytes(out) <= 200 and out.endswith("END") and out.startswith("… 0 earlier lines omitted\n…")


def test_tail_edge_cases() -> None:
    assert tail("", 10) == ""
    assert tail("only\n", 0) == "… 1 earlier line omitted"
    assert tail("a\nb", 1, max_chars=3) == "…"  # no room even for the note


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab é\n\r\t\x1b[31m`")), max_size=300),
       st.integers(0, 40), st.integers(0, 400))
def test_tail_never_exceeds_its_budget(log: str, max_lines: int, max_chars: int) -> None:
    out = tail(log, max_lines, max_chars)
    assert nbytes(out) <= max_chars
    assert "\x1b" not in out and "\r" not in out
    assert len(out.split("\n")) <= max_lines + 1


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet="abc xyz", max_size=20), max_size=30), st.integers(1, 40))
def test_tail_is_exact_when_nothing_needs_cutting(lines: list[str], max_lines: int) -> None:
    log = "\n".join(lines)
    out = tail(log, max_lines, max_chars=10_000)
    shown = log.split("\n")
    if shown[-1] == "":
        shown.pop()  # a final newline does not start another line
    if len(shown) <= max_lines:
        assert out == "\n".join(shown)
    else:
        assert out == f"… {len(shown) - max_lines} earlier line{'s' if len(shown) - max_lines != 1 else ''} omitted\n" \
                      + "\n".join(shown[-max_lines:])


# --- durations -------------------------------------------------------------------------------

@pytest.mark.parametrize("seconds, text", [
    (None, "—"), (0, "0s"), (0.4, "0s"), (42, "42s"), (59.4, "59s"), (59.6, "1m 00s"), (65, "1m 05s"),
    (3599, "59m 59s"), (3600, "1h 00m"), (3725, "1h 02m"), (90_000, "25h 00m"), (-3, "0s"),
])
def test_duration_text(seconds: float | None, text: str) -> None:
    assert duration_text(seconds) == text


# --- check runs ------------------------------------------------------------------------------

@pytest.mark.parametrize("status, conclusion, title", [
    ("queued", None, "Queued"),
    ("in_progress", None, "Running on CPU"),
    ("completed", "success", "Passed in 1m 05s"),
    ("completed", "failure", "Failed after 1m 05s"),
    ("completed", "timed_out", "Timed out after 1m 05s"),
    ("completed", "cancelled", "Cancelled after 1m 05s"),
    ("completed", "neutral", "Finished, outcome unknown after 1m 05s"),
])
def test_check_title_states_the_outcome(status: str, conclusion: str | None, title: str) -> None:
    assert check_output(rr(status=status, conclusion=conclusion))["title"] == title


def test_check_title_without_timing_and_on_a_retry() -> None:
    assert check_output(rr(conclusion="failure", started_at=None, message="job failed to start"))["title"] == "Failed"
    assert check_output(rr(attempt=3))["title"] == "Passed in 1m 05s (attempt 3)"


def test_check_summary_has_machine_image_duration_attempt_and_why() -> None:
    out = check_output(rr(conclusion="cancelled", attempt=2, message="superseded by abc1234"))
    s = out["summary"]
    assert s.startswith("**Cancelled**: `superseded by abc1234`")
    row = next(line for line in s.splitlines() if line.startswith("| `CPU`"))
    assert table_cells(row) == ["`CPU`", "`python:3.11-slim`", "1m 05s", "2", "—"]
    assert "[Job details](https://lightning.ai/jobs/1)" in s


def test_check_text_is_the_log_tail_in_a_fence_it_cannot_close() -> None:
    out = check_output(rr(conclusion="failure", log_tail="\x1b[31mFAILED\x1b[0m test_x\n```\nstill inside\n"))
    text = out["text"]
    assert text.startswith("````text\n") and text.endswith("\n````")
    assert "FAILED test_x" in text and "\x1b" not in text
    assert check_output(rr(log_tail=""))["text"] == ""


def test_check_output_fields_stay_within_githubs_limit() -> None:
    huge = "\n".join("ü" * 199 for _ in range(2000))  # ~800 kB of two-byte characters
    out = check_output(rr(conclusion="failure", message="m" * 100_000, log_tail=huge, image="i" * 100_000))
    for field in ("title", "summary", "text"):
        assert nbytes(out[field]) <= MAX_OUTPUT_CHARS, field
    assert "earlier lines omitted" in out["text"] and out["text"].endswith("ü" * 199 + "\n```")


def test_details_link_only_for_http_urls_and_escaped() -> None:
    assert "javascript" not in check_output(rr(details_url="javascript:alert(1)"))["summary"]
    assert "[Job details](https://x.y/a%20b%29c)" in check_output(rr(details_url="https://x.y/a b)c"))["summary"]


def test_error_check_output_names_file_line_and_reason() -> None:
    out = error_check_output(".lightning/workflows/ci.yml", 4, "parametrize.matrix.python: expected a list, got str")
    assert out["title"] == "Invalid workflow file: .lightning/workflows/ci.yml"
    assert "(line 4)" in out["summary"]
    assert ".lightning/workflows/ci.yml:4: parametrize.matrix.python: expected a list, got str" in out["summary"]
    no_line = error_check_output(".litci.yaml", None, "file too large")
    assert "line" not in no_line["summary"].split("\n")[0] and ".litci.yaml: file too large" in no_line["summary"]
    # A hostile message stays inside its code block.
    evil = error_check_output("a.yml", 1, "```\n<img src=x> @everyone")
    assert "````\na.yml:1: ```" in evil["summary"]


def test_no_workflows_and_fork_approval_outputs() -> None:
    none = no_workflows_output()
    assert none["title"] == "No workflow files found"
    assert ".litci.yaml" in none["summary"] and ".lightning/workflows/" in none["summary"]
    fork = fork_approval_output("/ci")
    assert "`/ci ok-to-test`" in fork["summary"] and "maintainer" in fork["summary"]
    assert "base branch" in fork["summary"]
    assert 'no job secrets (`secrets.forks = "never"`)' in fork["summary"]
    assert "for this commit only" in fork_approval_output("/ci", "approved")["summary"]
    for out in (none, fork):
        assert set(out) == {"title", "summary", "text"}


def test_check_output_names_released_and_withheld_secrets() -> None:
    r = dataclasses.replace(rr("tests"), secrets=("CODECOV_TOKEN", "HF_TOKEN"),
                            secret_notes=("secret X not set: the secrets file has no X for this repository or its owner",
                                          "secret Y withheld: the pull request comes from a fork"))
    summary = check_output(r)["summary"]
    assert "**Secrets:** `CODECOV_TOKEN`, `HF_TOKEN`" in summary
    assert "- `secret X not set: the secrets file has no X for this repository or its owner`" in summary
    assert "- `secret Y withheld: the pull request comes from a fork`" in summary
    assert "Secrets" not in check_output(rr("tests"))["summary"]


# --- the summary comment ---------------------------------------------------------------------

def rows() -> list[RunReport]:
    return [
        rr("tests (3.12)", conclusion="failure", attempt=2),
        rr("Lint", status="in_progress", conclusion=None, finished_at=None),
        rr("docs", status="queued", conclusion=None, started_at=None, finished_at=None, details_url=None),
        rr("tests (3.11)"),
        rr("gpu", conclusion="timed_out"),
    ]


def test_summary_comment_starts_with_the_marker_and_sorts_by_check_name() -> None:
    body = summary_comment("octo/repo", 12, "0123456789abcdef", rows())
    assert body.startswith(MARKER + "\n")
    table = [line for line in body.splitlines() if line.startswith("| ") and "---" not in line][1:]
    names = [table_cells(line)[1] for line in table]
    assert names == ["`docs`", "`gpu`", "`Lint`", "`tests (3.11)`", "`tests (3.12)`"]
    assert table_cells(table[0]) == ["⏳ Queued", "`docs`", "—", "—", "—"]
    assert table_cells(table[4]) == ["❌ Failed (attempt 2)", "`tests (3.12)`", "1m 05s", "—",
                                     "[details](https://lightning.ai/jobs/1)"]
    assert table_cells(table[1])[0] == "⏱️ Timed out"
    assert table_cells(table[2])[0] == "🔄 Running"


def test_summary_comment_counts_line() -> None:
    body = summary_comment("octo/repo", 12, "0123456789abcdef", rows())
    assert "**5 runs**: ❌ 1 failed · ⏱️ 1 timed out · 🔄 1 running · ⏳ 1 queued · ✅ 1 passed" in body
    assert "0123456789ab" in body and "#12" in body


def test_summary_comment_without_rows() -> None:
    body = summary_comment("o/r", 1, "abc", [])
    assert body.startswith(MARKER) and "No runs for this commit." in body and "|" not in body


def test_check_names_cannot_break_the_table_or_inject_markup() -> None:
    evil = ["a | b", "multi\nline", "tick`s", "<!-- litbotd:summary --> @everyone", "back\\|slash", "**bold**"]
    body = summary_comment("o/r", 1, "abc", [rr(n) for n in evil])
    assert body.count(MARKER) == 1 + 1  # the marker, plus the one inside a code span
    table = [line for line in body.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(table) == len(evil)  # the newline did not start a new line
    for line in table:
        assert len(table_cells(line)) == 5
        assert table_cells(line)[1].startswith("`")
    assert "`a \\| b`" in body and "``tick`s``" in body and "`multi line`" in body


def test_summary_comment_stays_under_githubs_comment_limit() -> None:
    many = [rr(f"run {i:03d} " + "n" * 400) for i in range(300)]
    body = summary_comment("o/r", 1, "abc", many)
    assert nbytes(body) <= report.MAX_COMMENT_CHARS
    shown = len([line for line in body.splitlines() if line.startswith("| ✅")])
    assert 0 < shown < 300
    assert f"… {300 - shown} more runs not shown" in body


def test_pipes_are_escaped_only_inside_tables() -> None:
    out = check_output(rr(conclusion="failure", message="exit 1 | tee", machine="A|B"))
    assert out["summary"].startswith("**Failed**: `exit 1 | tee`")
    assert "| `A\\|B` |" in out["summary"]


def test_log_with_freak_backtick_runs_still_fits_in_a_fence() -> None:
    out = check_output(rr(log_tail=("`" * 5000 + "\n") * 20))
    text = out["text"]
    assert nbytes(text) <= MAX_OUTPUT_CHARS
    assert text.startswith("````````````````text\n") and text.endswith("\n" + "`" * 16)


def test_cost_in_the_check_output_and_the_comment():
    from litbotd import report as R

    base = dict(check_name="gpu", machine="L4", image="python:3.12-slim", attempt=1, details_url=None)
    done = R.RunReport(status="completed", conclusion="success", started_at=0.0, finished_at=1800.0, cost=2.0,
                       price=4.0, approved_by="boss", **base)
    out = R.check_output(done)
    assert "| Machine | Image | Duration | Attempt | Cost |" in out["summary"]
    assert "| 30m 00s | 1 | $2.00 |" in out["summary"]
    assert "**Cost:** $2.00 at $4.00/h" in out["summary"]
    assert "`@boss`" in out["summary"]  # a code span: no @-mention
    queued = R.RunReport(status="queued", conclusion=None, started_at=None, finished_at=None, cost=4.0,
                         cost_projected=True, price=4.0, **{**base, "check_name": "gpu2"})
    assert "≤ $4.00" in R.check_output(queued)["summary"]
    body = R.summary_comment("o/r", 1, "a" * 40, [done, queued])
    assert "| Status | Check | Duration | Cost | Job |" in body
    assert "| $2.00 |" in body and "| ≤ $4.00 |" in body
    assert "spent $2.00" in body.splitlines()[3]
    unpriced = R.RunReport(status="completed", conclusion="success", started_at=0.0, finished_at=1.0, **base)
    assert "| 1s | 1 | — |" in R.check_output(unpriced)["summary"]


def test_limit_outputs_give_the_figures_and_the_command():
    from litbotd import report as R

    r = R.RunReport(check_name="gpu", status="completed", conclusion="action_required", machine="L4",
                    image="img", attempt=1, started_at=None, finished_at=None, details_url=None, cost=4.0,
                    cost_projected=True)
    held = R.limit_held_output("/litci", "runs would cost up to $32.00; over limits.per_pr_usd = $20.00.", r)
    assert "over a spend limit" in held["title"] and "$32.00" in held["summary"]
    assert "`/litci approve-cost`" in held["summary"]
    wait = R.waiting_output("waiting for a free L4: 2 running (limits.max_parallel_per_machine = 2)", r)
    assert wait["title"] == "Waiting for a free L4: 2 running"
    assert "limits.max_parallel_per_machine = 2" in wait["summary"]


def test_waiting_skipped_and_unfiltered_runs_say_why() -> None:
    waiting = rr("gpu (L4)", status="queued", conclusion=None, waiting="waiting for lint")
    assert check_output(waiting)["title"] == "Waiting for lint"
    assert "Waiting for lint" in summary_comment("o/r", 1, "a" * 40, [waiting])
    skipped = rr("docs", conclusion="skipped", message="paths-ignore (docs/**) matches every one of the 2 changed files")
    out = check_output(skipped)
    assert out["title"].startswith("Skipped") and "paths-ignore (docs/**)" in out["summary"]
    assert "No job started" in out["summary"] and "No job started" not in check_output(rr())["summary"]
    noted = rr(note="paths: src/** not applied: the push was forced, so every workflow runs")
    assert "**Filters not applied:**" in check_output(noted)["summary"] and "forced" in check_output(noted)["summary"]
    assert "Filters not applied" not in check_output(rr())["summary"]


def test_flaky_runs_are_listed_in_the_comment() -> None:
    rows = [rr("unit", attempt=2, flaky=True), rr("lint"), rr("gpu", conclusion="failure", attempt=2)]
    body = summary_comment("o/r", 1, "a" * 40, rows)
    assert "**Flaky** (failed, then passed on a re-run of this commit): `unit`" in body
    assert "(attempt 2, flaky)" in body and body.count("flaky") == 1  # the failed gpu re-run is no flake
    assert "Flaky" not in summary_comment("o/r", 1, "a" * 40, [rr("unit", attempt=2)])
    assert "**Flaky:**" in check_output(rows[0])["summary"]


def test_infrastructure_tries_show_in_the_check_run() -> None:
    """SPEC §11: each attempt shows in the check run, with the backend's own message."""
    out = check_output(rr(status="in_progress", conclusion=None, try_n=2, tries_total=3,
                          tries=("attempt 1 of 3: preempted (Lightning: spot reclaimed `x` | y)",)))
    assert out["title"] == "Running on CPU · attempt 2 of 3"
    assert "- ``attempt 1 of 3: preempted (Lightning: spot reclaimed `x` | y)``" in out["summary"]
    done = check_output(rr(try_n=2, tries_total=3, tries=("attempt 1 of 3: preempted", "attempt 2 of 3: passed")))
    assert done["title"] == "Passed in 1m 05s · attempt 2 of 3"
    assert "- `attempt 1 of 3: preempted`\n- `attempt 2 of 3: passed`" in done["summary"]
    assert "| 1m 05s | 2 of 3 |" in done["summary"]
    assert "| 1m 05s | 2 (try 2 of 3) |" in check_output(rr(attempt=2, try_n=2, tries_total=3))["summary"]
    assert "Attempts" not in check_output(rr())["summary"]
