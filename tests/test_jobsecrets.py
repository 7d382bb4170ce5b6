"""jobsecrets.py: the secrets file and the release rule (SPEC §10), table-tested."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from litbotd import configfile, jobsecrets
from litbotd.jobsecrets import Origin, SecretsError

VALUE = "v4lue-that-must-not-show"
TRUSTED = ("OWNER", "MEMBER", "COLLABORATOR")
SHA = "a" * 40

GOOD = f'''
[orgs."Acme"]
CODECOV_TOKEN = "org-codecov-token"
SHARED = "org-shared-value"
[repos."acme/Widgets"]
SHARED = "repo-shared-value"
HF_TOKEN = "{VALUE}"
[repos."other/thing"]
'''


def test_store_tables_repo_wins_names_case_insensitive() -> None:
    store = jobsecrets.loads(GOOD, "s.toml")
    assert store.for_repo("ACME/widgets") == {"CODECOV_TOKEN": "org-codecov-token", "SHARED": "repo-shared-value",
                                              "HF_TOKEN": VALUE}
    assert store.for_repo("acme/other") == {"CODECOV_TOKEN": "org-codecov-token", "SHARED": "org-shared-value"}
    assert store.for_repo("nobody/x") == {}
    assert store.values() == {"org-codecov-token", "org-shared-value", "repo-shared-value", VALUE}
    assert store.listing() == ['[orgs."acme"] CODECOV_TOKEN, SHARED', '[repos."acme/widgets"] HF_TOKEN, SHARED',
                               '[repos."other/thing"] (empty)']
    assert VALUE not in repr(store) and "org-" not in repr(store)


@pytest.mark.parametrize("text, message", [
    ('[repos."a/b"]\nX = "short"\n[repo]\n', 'repo: unknown table'),
    ('[repos."not a repo"]\nX = "abcdef"\n', 'repos."not a repo": expected owner/name'),
    ('[orgs."a/b"]\nX = "abcdef"\n', 'orgs."a/b": expected an owner'),
    ('[repos."a/b"]\n1X = "abcdef"\n', 'repos."a/b".1X: not a valid environment variable name'),
    ('[repos."a/b"]\nPATH = "abcdef"\n', 'repos."a/b".PATH: PATH is set by litbotd'),
    ('[repos."a/b"]\nGITHUB_TOKEN = "abcdef"\n', 'repos."a/b".GITHUB_TOKEN: GITHUB_TOKEN is set by litbotd'),
    ('[repos."a/b"]\nX = 123456789\n', 'repos."a/b".X: expected a string, got a int'),
    ('[repos."a/b"]\nX = "abc"\n', 'repos."a/b".X: a value shorter than 4 characters cannot be masked'),
    ('[repos."a/b"]\nX = "abc\\u0000def"\n', 'repos."a/b".X: a value cannot hold a NUL'),
    ('[repos."a/b"]\nX = "abcdef"\n[repos."A/B"]\nY = "abcdef"\n', 'repos."A/B": given twice'),
    ('[repos."a/b"]\nX = "' + VALUE + '\n', "invalid TOML"),
    ('[repos."a/b"]\nX = "' + VALUE + '\x01"\n', "invalid TOML: Illegal character (at line 2"),
    ('repos = "' + VALUE + '"\n', "repos: expected tables"),
    ('[repos."a/b"]\nX = ["' + VALUE + '"]\n', 'repos."a/b".X: expected a string, got a list'),
])
def test_malformed_files_are_one_line_naming_the_key_never_the_value(text: str, message: str) -> None:
    with pytest.raises(SecretsError) as e:
        jobsecrets.loads(text, "secrets file /etc/s.toml")
    msg = str(e.value)
    assert msg.startswith("secrets file /etc/s.toml: ") and message in msg, msg
    assert "\n" not in msg and VALUE not in msg and "123456789" not in msg and "\\x01" not in msg


def test_load_reads_the_file_and_refuses_one_others_can_read(tmp_path: Path) -> None:
    f = tmp_path / "secrets.toml"
    f.write_text(GOOD)
    f.chmod(0o640)
    assert configfile.load_secrets(str(f), {}).for_repo("acme/widgets")["HF_TOKEN"] == VALUE
    f.chmod(0o644)
    with pytest.raises(SecretsError, match="readable by other users"):
        configfile.load_secrets(str(f), {})
    with pytest.raises(SecretsError, match="No such file"):
        configfile.load_secrets(str(tmp_path / "missing.toml"), {})
    assert configfile.load_secrets("", {}) is jobsecrets.EMPTY


def test_the_file_comes_first_then_the_credential(tmp_path: Path) -> None:
    (tmp_path / "litbotd-secrets").write_text(GOOD)
    (tmp_path / "litbotd-secrets").chmod(0o600)
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert configfile.secrets_path("/etc/x.toml", env) == "/etc/x.toml"
    assert configfile.secrets_path("", env) == os.path.join(str(tmp_path), "litbotd-secrets")
    assert configfile.secrets_path("", {}) is None
    assert configfile.load_secrets("", env).for_repo("acme/x") == {"CODECOV_TOKEN": "org-codecov-token",
                                                                    "SHARED": "org-shared-value"}


# -- the release rule ------------------------------------------------------------------------------
SAME_REPO_MEMBER = Origin("pull_request", fork=False, association="MEMBER")
SAME_REPO_STRANGER = Origin("pull_request", fork=False, association="CONTRIBUTOR")
FORK_STRANGER = Origin("pull_request", fork=True, association="NONE")
FORK_MEMBER = Origin("pull_request", fork=True, association="MEMBER")
PUSH = Origin("push")
MERGE_GROUP = Origin("merge_group")
UNKNOWN = Origin("")
AVAILABLE = {"A": "value-a", "B": "value-b"}


@pytest.mark.parametrize("origin, forks, approved, gets", [
    (SAME_REPO_MEMBER, "never", False, True),
    (SAME_REPO_MEMBER, "approved", False, True),
    (SAME_REPO_STRANGER, "never", True, False),    # not in trusted_associations: never, approved or not
    (FORK_STRANGER, "never", False, False),
    (FORK_STRANGER, "never", True, False),         # the default: ok-to-test runs the code, never with secrets
    (FORK_STRANGER, "approved", False, False),
    (FORK_STRANGER, "approved", True, True),       # approved on this exact SHA
    (FORK_MEMBER, "never", False, False),          # a fork is a fork, whoever opened it
    (FORK_MEMBER, "approved", True, True),
    (PUSH, "never", False, True),
    (MERGE_GROUP, "never", False, True),
    (UNKNOWN, "approved", True, False),            # fail closed
])
def test_release_rule(origin: Origin, forks: str, approved: bool, gets: bool) -> None:
    r = jobsecrets.release(["A", "B"], AVAILABLE, origin, SHA, TRUSTED, forks, approved)
    if gets:
        assert r.env == AVAILABLE and r.notes == ()
    else:
        assert r.env == {} and len(r.notes) == 2
        assert all("withheld" in n for n in r.notes) and r.notes[0].startswith("secret A withheld: ")
        assert not any(v in n for n in r.notes for v in AVAILABLE.values())


def test_release_gives_exactly_the_named_ones_and_says_which_are_missing() -> None:
    r = jobsecrets.release(["B", "MISSING", "B"], AVAILABLE, PUSH, SHA, TRUSTED, "never", False)
    assert r.env == {"B": "value-b"} and r.names == ["B"]
    assert r.notes == ("secret MISSING not set: the secrets file has no MISSING for this repository or its owner",)
    assert jobsecrets.release([], AVAILABLE, PUSH, SHA, TRUSTED, "never", False) == jobsecrets.Release()
    assert "value-b" not in repr(r)


@pytest.mark.parametrize("origin, why", [
    (FORK_STRANGER, 'the pull request comes from a fork (secrets.forks = "never")'),
    (SAME_REPO_STRANGER, "the pull request's author is CONTRIBUTOR, not one of github.trusted_associations"),
])
def test_withheld_reasons(origin: Origin, why: str) -> None:
    assert jobsecrets.withheld_because(origin, SHA, TRUSTED, "never", False) == why
    assert "aaaaaaa was not approved" in (jobsecrets.withheld_because(FORK_STRANGER, SHA, TRUSTED, "approved", False)
                                         or "")


@pytest.mark.parametrize("fields, origin", [
    ({"origin": "pull_request", "fork": "0", "author_association": "MEMBER"}, SAME_REPO_MEMBER),
    ({"origin": "push"}, Origin("push", fork=True)),            # fork unknown: True, irrelevant for a push
    ({}, Origin("", fork=True)),                                # a run recorded before: no secrets
    ({"origin": 3, "fork": "no"}, Origin("", fork=True)),
])
def test_origin_from_run_state_fails_closed(fields: dict, origin: Origin) -> None:
    assert Origin.from_fields(fields) == origin
    for o in (SAME_REPO_MEMBER, FORK_STRANGER, PUSH, MERGE_GROUP):
        assert Origin.from_fields(o.to_fields()) == o
        assert all(isinstance(v, str) for v in o.to_fields().values())


def test_a_reloaded_store_keeps_masking_the_old_values() -> None:
    old = jobsecrets.loads('[repos."a/b"]\nX = "old-value-1"\nY = "kept-value"\n')
    new = jobsecrets.loads('[repos."a/b"]\nX = "new-value-2"\nY = "kept-value"\n').succeeding(old)
    assert new.masked_values() == {"old-value-1", "new-value-2", "kept-value"}
    assert new.for_repo("a/b") == {"X": "new-value-2", "Y": "kept-value"}
    newer = jobsecrets.loads('[repos."a/b"]\n').succeeding(new)
    assert newer.masked_values() == {"old-value-1", "new-value-2", "kept-value"} and newer.for_repo("a/b") == {}
