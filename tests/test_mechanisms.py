"""One of each mechanism: the duration grammar (durations.py) serves the config and workflow files
alike; one backoff (backoff.py) serves every retry."""
from __future__ import annotations

import pytest

from litbotd import durations
from litbotd import workflows as wf
from litbotd.config import parse_duration


@pytest.mark.parametrize("text, seconds", [("250ms", 0.25), ("1h30m", 5400.0), (" 2 d ", 172800.0),
                                           ("1m 0.5s", 60.5)])
def test_config_and_workflows_read_the_same_strings(text: str, seconds: float) -> None:
    assert durations.seconds(text) == pytest.approx(seconds)
    assert parse_duration(text, "k") == pytest.approx(seconds)
    assert wf.parse_timeout(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "7", "m", "5 minutes", "1y", "-1s", "1h-30m"])
def test_not_a_duration_without_a_bare_unit(text: str) -> None:
    assert durations.seconds(text) is None


def test_a_bare_number_counts_in_the_callers_unit() -> None:
    assert durations.seconds("7", bare_unit="s") == 7.0
    assert durations.seconds("7", bare_unit="m") == 420.0


def test_one_backoff_doubles_caps_and_never_overflows() -> None:
    from litbotd.backoff import backoff

    assert [backoff(n, 0.5, 30.0, jitter=False) for n in (1, 2, 3, 7, 8)] == [0.5, 1.0, 2.0, 30.0, 30.0]
    assert backoff(5000, 0.1, 5.0, jitter=False) == 5.0  # a long outage: the exponent is bounded
    assert 2.5 <= backoff(5000, 0.1, 5.0) <= 5.0
