"""The one environment for everything the tests start (SPEC §8).

Every daemon, CLI and helper process a test starts gets `scrubbed_env()`: the developer's
environment minus everything that would point litbotd (or the SDKs and systemd glue it uses) at
something real — their Redis (`REDIS_URL`), their GitHub App (`GH_*`), their config
(`LITBOTD_*`), their Lightning account (`LIGHTNING_*`), a systemd manager (`NOTIFY_SOCKET`,
`WATCHDOG_*`, `CREDENTIALS_DIRECTORY`, `JOURNAL_STREAM`, `LISTEN_*`) — with this checkout
importable. conftest.py also removes the same variables from the test process itself, for the
whole session, so in-process daemons and anything started with the inherited environment are
covered too. Add a variable here, not in a test.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

ROOT = Path(__file__).resolve().parents[2]

DROP_PREFIXES = ("GH_", "LITBOTD_", "LIGHTNING_", "WATCHDOG_", "LISTEN_")
DROP_NAMES = frozenset({"REDIS_URL", "NOTIFY_SOCKET", "CREDENTIALS_DIRECTORY", "JOURNAL_STREAM"})
# The test suite's own settings, which litbotd never reads: the session keeps them for the tests
# (they still never reach a daemon or command: scrubbed_env drops them).
TEST_KNOBS = frozenset({"LITBOTD_REQUIRE_SANDBOX", "LITBOTD_CHROMIUM", "LITBOTD_SCREENSHOTS"})


def dropped(name: str) -> bool:
    """Whether a variable of the developer's environment must never reach what a test starts."""
    return name in DROP_NAMES or name.startswith(DROP_PREFIXES)


def scrubbed_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """`base` (default: os.environ) without the dropped variables, PYTHONPATH = this checkout,
    then `extra` (which may set any of them on purpose, e.g. GH_WEBHOOK_SECRET for a test daemon)."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not dropped(k)}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env
