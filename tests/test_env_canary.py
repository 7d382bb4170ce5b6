"""SPEC §8: the project's tests never use the developer's Redis or GitHub App.

A canary redis-server stands in for the developer's own Redis: the daemon-level tests run (as a
pytest subprocess) with REDIS_URL, GH_* and LITBOTD_* naming it and a made-up App, and the canary
must have received nothing — no connection, no command, no key."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import RedisServer
from helpers.env import ROOT, TEST_KNOBS, dropped, scrubbed_env

# One representative of each kind of process the tests start: the listener daemon (module-wide,
# every HTTP row), an in-process daemon, `litbotd run` as a subprocess killed and restarted, and
# the operator commands.
DAEMON_LEVEL = [
    "tests/test_webhook_daemon.py",
    "tests/test_lifecycle_e2e.py::test_no_workflow_files_is_one_neutral_check",
    "tests/test_daemon_recovery.py::test_malformed_json_goes_to_the_dead_letter_and_the_daemon_carries_on",
    "tests/test_ops.py::test_status_and_dead_letter_commands",
    "tests/test_ops.py::test_replay_enqueues_a_payload_as_if_delivered",
    "tests/test_demo.py",
]


def test_scrubbed_env_drops_what_would_reach_a_real_redis_app_or_systemd() -> None:
    developer = {"PATH": "/usr/bin", "HOME": "/home/dev", "REDIS_URL": "redis://prod:6379/0",
                 "GH_APP_ID": "1", "GH_PRIVATE_KEY": "pem", "GH_WEBHOOK_SECRET": "s", "LITBOTD_CONFIG": "/etc/x",
                 "LIGHTNING_API_KEY": "k", "NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2",
                 "CREDENTIALS_DIRECTORY": "/run/c", "JOURNAL_STREAM": "8:9"}
    env = scrubbed_env(developer, GH_WEBHOOK_SECRET="test-secret")
    assert env == {"PATH": "/usr/bin", "HOME": "/home/dev", "PYTHONPATH": str(ROOT), "GH_WEBHOOK_SECRET": "test-secret"}
    # The test session itself runs scrubbed (conftest.py); LIGHTNING_* aside, which the SDK's import sets.
    assert not any(dropped(k) for k in os.environ if not k.startswith("LIGHTNING_") and k not in TEST_KNOBS)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_daemon_level_tests_never_touch_the_redis_named_by_REDIS_URL(tmp_path: Path) -> None:
    canary = RedisServer(tmp_path)
    canary.start()
    try:
        probe = canary.client()
        probe.config_resetstat()
        developer = {**os.environ, "REDIS_URL": canary.url, "LITBOTD_CONFIG": str(tmp_path / "litbotd.toml"),
                     "GH_APP_ID": "4242", "GH_WEBHOOK_SECRET": "developers-secret", "GH_PRIVATE_KEY_FILE": "/nonexistent"}
        (tmp_path / "litbotd.toml").write_text(f'[redis]\nurl = "{canary.url}"\n')
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *DAEMON_LEVEL],
                             cwd=ROOT, env=developer, capture_output=True, text=True, timeout=580)
        stats = probe.info("commandstats")
        theirs = {k: v["calls"] for k, v in stats.items() if not k.startswith(("cmdstat_info", "cmdstat_config"))}
        assert theirs == {}, (f"the tests sent the developer's Redis {sum(theirs.values())} commands and left "
                              f"{probe.dbsize()} keys: {theirs}")
        assert probe.dbsize() == 0
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
        # Our own probe is the only connection the canary ever saw (even a failed AUTH would count).
        assert probe.info("stats")["total_connections_received"] <= 1
        probe.close()
    finally:
        canary.stop(kill=True)
