"""What a run page shows (runview.py, pure)."""
from __future__ import annotations

import pytest

from litbotd import runview
from litbotd.runview import Window, facts, line_href, status, window


@pytest.mark.parametrize("state, want", [
    ({}, ("queued", "queued")),
    ({"status": "queued"}, ("queued", "queued")),
    ({"status": "in_progress"}, ("running", "running")),
    ({"status": "in_progress", "cancel_reason": "superseded"}, ("cancelling", "cancelled")),
    ({"status": "completed", "conclusion": "success"}, ("succeeded", "success")),
    ({"conclusion": "failure"}, ("failed", "failure")),
    ({"conclusion": "timed_out"}, ("timed out", "timed_out")),
    ({"conclusion": "weird"}, ("weird", "neutral")),
])
def test_status(state, want):
    assert status(state) == want


@pytest.mark.parametrize("total, asked, want", [
    (10, None, Window(1, 100, 1, 0)),               # short: from line 1
    (100, None, Window(1, 100, 1, 0)),
    (1000, None, Window(901, 100, 801, 0)),         # long: the tail
    (1000, "1", Window(1, 100, 1, 101)),
    (1000, "450", Window(450, 100, 350, 550)),
    (1000, "5000", Window(1000, 100, 900, 0)),      # past the end: the last line
    (1000, "0", Window(901, 100, 801, 0)),          # nonsense: the default
    (1000, "-3", Window(901, 100, 801, 0)),
    (1000, "9" * 30, Window(901, 100, 801, 0)),
    (0, None, Window(1, 100, 1, 0)),
])
def test_window(total, asked, want):
    assert window(total, asked, page_lines=100) == want


def test_line_href():
    w = Window(901, 100, 801, 0)
    assert line_href(950, w) == "#L950"
    assert line_href(120, w) == "?from=70#L120"
    assert line_href(3, w) == "?from=1#L3"


def test_facts_show_only_what_the_page_lists():
    f = facts("o/r", "a" * 40, 2, {"status": "completed", "conclusion": "failure", "started_at": "100",
                                   "finished_at": "225.4", "message": "exit code 1", "url": "javascript:alert(1)"},
              {"check_name": "ci", "machine": "A100", "image": "img", "backend": "lightning", "pr": 5})
    assert (f.status_text, f.badge, f.duration, f.retry_reason, f.job_url, f.pr) == \
        ("failed", "failure", "2m 05s", "re-run", "", 5)
    assert f.started == "1970-01-01 00:01:40 UTC"
    running = facts("o/r", "a" * 40, 1, {"status": "in_progress", "started_at": "100"}, {}, now=4000)
    assert running.duration == "1h 05m so far" and running.finished == "" and running.check_name == "run"
    assert running.cost == "" and f.cost == ""
    # the ledger's figure for the run (spend.py's `spent`, SPEC §11), once it ended
    assert facts("o/r", "a" * 40, 1, {"status": "completed", "spent": "1.234567"}, {}).cost == "$1.23"


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.4, "59s"), (61, "1m 01s"), (3600, "1h 00m")])
def test_took(seconds, text):
    assert runview.took(seconds) == text
