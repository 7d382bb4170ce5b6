"""Run page addresses and link keys (runlink.py, pure; the key file in logstore.py)."""
from __future__ import annotations

import os
import stat

import pytest

from litbotd import logstore, runlink
from litbotd.runlink import RunId

KEY = b"k" * 32
SHA = "a" * 40
RUN = RunId("octo-org/widgets", SHA, "ci-3-11", 2)


def test_path_round_trips_and_verifies():
    p = runlink.path(KEY, RUN)
    owner, name, sha, run, attempt, mac = p.strip("/").split("/")[1:]
    assert runlink.parse(owner, name, sha, run, attempt) == RUN
    assert runlink.verify(KEY, RUN, mac)
    assert runlink.url("https://ci.example.com/", KEY, RUN) == "https://ci.example.com" + p


@pytest.mark.parametrize("other", [
    RunId("octo-org/widgets", SHA, "ci-3-11", 3),       # another attempt
    RunId("octo-org/widgets", "b" * 40, "ci-3-11", 2),  # another commit
    RunId("octo-org/widgets", SHA, "ci-3-12", 2),       # another run
    RunId("octo-org/gadgets", SHA, "ci-3-11", 2),       # another repository
])
def test_one_runs_key_opens_no_other(other):
    assert not runlink.verify(KEY, other, runlink.mac(KEY, RUN))


@pytest.mark.parametrize("given", ["", "0" * 32, runlink.mac(KEY, RUN).upper(), runlink.mac(KEY, RUN)[:-1],
                                   runlink.mac(KEY, RUN) + "0", "../" * 11, None])
def test_wrong_keys(given):
    assert not runlink.verify(KEY, RUN, given)


def test_another_daemon_key_is_wrong():
    assert not runlink.verify(b"x" * 32, RUN, runlink.mac(KEY, RUN))


@pytest.mark.parametrize("segments", [
    ("..", "widgets", SHA, "ci", "1"), ("octo", "..", SHA, "ci", "1"), ("octo", ".", SHA, "ci", "1"),
    ("octo", "w", SHA.upper(), "ci", "1"), ("octo", "w", SHA[:-1], "ci", "1"), ("octo", "w", SHA, "..", "1"),
    ("octo", "w", SHA, "ci", "0"), ("octo", "w", SHA, "ci", "01"), ("octo", "w", SHA, "ci", "x"),
    ("-octo", "w", SHA, "ci", "1"), ("octo", "w/x", SHA, "ci", "1"), ("octo", "w", SHA, "CI", "1"),
    ("o" * 40, "w", SHA, "ci", "1"), ("octo", "w%2e", SHA, "ci", "1"),
])
def test_parse_refuses_anything_litbotd_does_not_make(segments):
    assert runlink.parse(*segments) is None


def test_link_key_created_once_private_and_kept(tmp_path):
    env = {"STATE_DIRECTORY": str(tmp_path / "state")}
    k1 = logstore.load_link_key(env, str(tmp_path / "fallback"))
    k2 = logstore.load_link_key(env, str(tmp_path / "fallback"))
    assert k1 == k2 and len(k1) == 32
    path = tmp_path / "state" / "link-key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not (tmp_path / "fallback").exists()
    assert logstore.load_link_key({}, str(tmp_path / "fallback")) != k1  # another place, another key


def test_link_key_from_the_credential(tmp_path):
    (tmp_path / "litbotd-link-key").write_bytes(b"c" * 40 + b"\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path), "STATE_DIRECTORY": str(tmp_path / "state")}
    assert logstore.load_link_key(env, str(tmp_path)) == b"c" * 40
    (tmp_path / "litbotd-link-key").write_bytes(b"short")
    with pytest.raises(ValueError, match="litbotd-link-key"):
        logstore.load_link_key(env, str(tmp_path))


def test_check_config_sees_a_bad_link_key_without_making_one(tmp_path):
    from litbotd import configfile, preflight

    cfg = configfile.parse({"server": {"public_url": "https://ci.example.com"},
                            "report": {"logs_dir": str(tmp_path / "runs")}}, env={})
    assert preflight.pages_problem(cfg, {}) is None
    assert not (tmp_path / "runs").exists()  # nothing made by a check
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "link-key").write_bytes(b"short")
    assert "shorter than 16 bytes" in (preflight.pages_problem(cfg, {}) or "")
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "litbotd-link-key").write_bytes(b"k" * 32)
    assert preflight.pages_problem(cfg, {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}) is None
    off = configfile.parse({"report": {"logs_dir": str(tmp_path / "runs")}}, env={})
    assert preflight.pages_problem(off, {}) is None  # no pages: no key needed
