"""Secrets for jobs (SPEC §10): the store, and which of its secrets a run receives. Pure
(configfile.load_secrets reads the file).

The store is a TOML file (`secrets.file`, or the systemd credential `litbotd-secrets`):

    [orgs."acme"]                 # every repository of the owner acme
    CODECOV_TOKEN = "…"
    [repos."acme/widgets"]        # this repository; its table wins over its owner's
    HF_TOKEN = "…"

Values live in this process's memory only: never in Redis, a task, a log line or an exception
message (errors name the table and the key, never a value; `repr` shows names only). A run gets
exactly the secrets its workflow names under `secrets:`, and only when `release` says it is
trusted; every named secret it does not get is one line of its check output saying why.
"""
from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .events import FULL_NAME_RE
from .masking import MIN_LEN

CREDENTIAL = "litbotd-secrets"
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
OWNER_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})")
# What the job's own environment is made of (bootstrap, sandbox, shell): a secret cannot replace it.
RESERVED = frozenset({"GITHUB_TOKEN", "PATH", "HOME", "LANG", "CI", "PWD", "OLDPWD", "SHELL", "USER", "IFS",
                      "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "PS4", "LD_PRELOAD", "LD_LIBRARY_PATH",
                      "LD_AUDIT", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"})
FORKS = ("never", "approved")
MAX_SECRETS = 100  # names one workflow may list


class SecretsError(ValueError):
    """A problem with the secrets file: names the file, the table and the key, never a value."""


def name_problem(name: Any) -> str | None:
    """Why `name` cannot be a secret's name (an environment variable of the job), or None."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        return "not a valid environment variable name (letters, digits, '_', not starting with a digit)"
    if name in RESERVED or name.startswith(("LITCI_", "BASH_FUNC_")):
        return f"{name} is set by litbotd or the shell itself and cannot be a secret"
    return None


@dataclass(frozen=True)
class Store:
    """The secrets file, parsed. Keys are lower-cased: GitHub's owner and repository names are not
    case-sensitive."""
    orgs: Mapping[str, Mapping[str, str]] = field(default_factory=dict, repr=False)
    repos: Mapping[str, Mapping[str, str]] = field(default_factory=dict, repr=False)
    source: str = ""
    # Values of the stores this process read before (a SIGHUP replaced them): still masked, a job
    # started with one may still print it.
    retired: frozenset[str] = field(default=frozenset(), repr=False)

    def for_repo(self, repo: str) -> dict[str, str]:
        """Every secret `repo` ("owner/name") may receive: its owner's table, then its own over it."""
        owner = repo.split("/", 1)[0].lower()
        return {**self.orgs.get(owner, {}), **self.repos.get(repo.lower(), {})}

    def values(self) -> set[str]:
        """Every value in the store."""
        return {v for table in (*self.orgs.values(), *self.repos.values()) for v in table.values()}

    def masked_values(self) -> frozenset[str]:
        """What every output masks: the values, and those of the stores before it."""
        return frozenset(self.values()) | self.retired

    def succeeding(self, old: Store) -> Store:
        """This store as the one after `old` (a reload): `old`'s values stay masked."""
        return dataclasses.replace(self, retired=old.masked_values() - self.values())

    def listing(self) -> list[str]:
        """For check-config: one line per table with its secret names, never a value."""
        lines = [f'[orgs."{o}"] {", ".join(sorted(t)) or "(empty)"}' for o, t in sorted(self.orgs.items())]
        lines += [f'[repos."{r}"] {", ".join(sorted(t)) or "(empty)"}' for r, t in sorted(self.repos.items())]
        return lines

    def __repr__(self) -> str:
        return f"Store(source={self.source!r}, {len(self.orgs)} orgs, {len(self.repos)} repos)"


EMPTY = Store()


def _table(where: str, data: Any) -> dict[str, str]:
    if not isinstance(data, dict):
        raise SecretsError(f"{where}: expected a table of NAME = \"value\"")
    out: dict[str, str] = {}
    for name, value in data.items():
        key = f"{where}.{name}"
        if why := name_problem(name):
            raise SecretsError(f"{key}: {why}")
        if not isinstance(value, str):
            raise SecretsError(f"{key}: expected a string, got a {type(value).__name__}")
        if len(value.strip()) < MIN_LEN:
            raise SecretsError(f"{key}: a value shorter than {MIN_LEN} characters cannot be masked in logs")
        if "\0" in value:
            raise SecretsError(f"{key}: a value cannot hold a NUL character (it goes into an environment variable)")
        out[name] = value
    return out


def parse(data: Mapping[str, Any], source: str = "") -> Store:
    """A Store from the parsed TOML; SecretsError naming the file and the key otherwise."""
    where = source or "the secrets file"
    unknown = [k for k in data if k not in ("orgs", "repos")]
    if unknown:
        raise SecretsError(f"{where}: {unknown[0]}: unknown table (expected [orgs.\"owner\"] and [repos.\"owner/name\"])")
    tables: dict[str, dict[str, dict[str, str]]] = {"orgs": {}, "repos": {}}
    for kind, pattern, shape in (("orgs", OWNER_RE, "an owner (user or organization) name"),
                                 ("repos", FULL_NAME_RE, "owner/name")):
        section = data.get(kind, {})
        if not isinstance(section, dict):
            raise SecretsError(f"{where}: {kind}: expected tables such as [{kind}.\"…\"]")
        for name, table in section.items():
            label = f'{kind}."{name}"'
            if not pattern.fullmatch(name):
                raise SecretsError(f"{where}: {label}: expected {shape}")
            if name.lower() in tables[kind]:
                raise SecretsError(f"{where}: {label}: given twice (names are not case-sensitive)")
            tables[kind][name.lower()] = _table(f"{where}: {label}", table)
    return Store(orgs=tables["orgs"], repos=tables["repos"], source=source)


def loads(text: str, source: str = "") -> Store:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:  # its message gives the place; not even the one character
        why = re.sub(r"(character) (?:'[^']*'|\"[^\"]*\")", r"\1", str(e))
        raise SecretsError(f"{source or 'the secrets file'}: invalid TOML: {why}") from None
    return parse(data, source)


# -- which secrets a run receives -----------------------------------------------------------------
@dataclass(frozen=True)
class Origin:
    """What started a run, as far as trust goes. `event` "" means not known (fail closed)."""
    event: str = ""              # "pull_request" | "push" | "merge_group"
    fork: bool = False           # a PR whose head is another repository (or a deleted one)
    association: str = ""        # the PR author's author_association

    def to_fields(self) -> dict[str, str]:
        """As run-state fields (Redis hash values are strings)."""
        return {"origin": self.event, "fork": "1" if self.fork else "0", "author_association": self.association}

    @classmethod
    def from_fields(cls, d: Mapping[str, Any]) -> Origin:
        """From run-state fields; what is missing or odd counts against trust."""
        event = d.get("origin")
        return cls(event=event if isinstance(event, str) else "", fork=d.get("fork") != "0",
                   association=str(d.get("author_association") or ""))


@dataclass(frozen=True)
class Release:
    env: dict[str, str] = field(default_factory=dict, repr=False)  # NAME → value, for the job's env
    notes: tuple[str, ...] = ()     # one line per named secret the run does not get, saying why

    @property
    def names(self) -> list[str]:
        return sorted(self.env)


def withheld_because(origin: Origin, sha: str, trusted_associations: Iterable[str], forks: str,
                     approved: bool) -> str | None:
    """Why a run of this origin gets no secret at all, or None when it is trusted (SPEC §10)."""
    if origin.event in ("push", "merge_group"):
        return None  # only people with write access push or queue
    if origin.event != "pull_request":
        return "litbotd does not know what started this run"
    if origin.fork:
        if forks == "approved" and approved:
            return None
        if forks == "approved":
            return (f"the pull request comes from a fork and its head commit {sha[:7]} was not approved with "
                    f"`/litci ok-to-test` (secrets.forks = \"approved\": each new commit needs its own)")
        return "the pull request comes from a fork (secrets.forks = \"never\")"
    if origin.association.upper() in {a.upper() for a in trusted_associations}:
        return None
    return (f"the pull request's author is {origin.association or 'NONE'}, not one of "
            f"github.trusted_associations")


def release(names: Iterable[str], available: Mapping[str, str], origin: Origin, sha: str,
            trusted_associations: Iterable[str], forks: str, approved: bool) -> Release:
    """The secrets a run receives: exactly the `names` its workflow lists that the store has for
    its repository (`available`), and none at all unless its origin is trusted."""
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return Release()
    why = withheld_because(origin, sha, trusted_associations, forks, approved)
    if why is not None:
        return Release(notes=tuple(f"secret {n} withheld: {why}" for n in wanted))
    env = {n: available[n] for n in wanted if n in available}
    notes = tuple(f"secret {n} not set: the secrets file has no {n} for this repository or its owner"
                  for n in wanted if n not in available)
    return Release(env=env, notes=notes)
