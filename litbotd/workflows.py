"""Workflow files → runs (SPEC §4). Pure: no files, network or Redis.

`plan()` takes the text of a repository's workflow files, the event (`pull_request`, `merge_group`
or `push`) and its branch (the PR's or the queue's base branch, the pushed branch), and returns the
runs to start, one error per bad file and the workflows whose trigger did not match.

Triggers: `pull_request` (base-branch globs; default every PR), `merge_group` (default true: the
merge queue runs what a PR to its base branch runs), `push` (branch globs; default none).

The format is that of the original bot (Borda/GitHub-app-bot), so its files keep working: its
`mode` key and its `trigger.push` / list-of-events triggers are accepted.

YAML is read by safeyaml.py, which bounds the document (size, aliases, nodes, depth) while parsing.
"""
from __future__ import annotations

import difflib
import hashlib
import itertools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from . import durations, jobsecrets
from . import needs as needs_mod
from . import paths as paths_mod
from .config import JobsConfig
from .safeyaml import MAX_ALIASES, MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES, NodeMap, decode, load  # noqa: F401 (the limits, for callers)
from .safeyaml import Invalid as _Invalid

MAX_RUNS = 256
# Cells materialised before `exclude` is applied; beyond this even a file that excludes its way
# back under MAX_RUNS is refused, so a hostile matrix cannot make a worker spin.
MAX_MATRIX_PRODUCT = 16 * MAX_RUNS

ROOT_FILES = (".litci.yaml", ".litci.yml")
WORKFLOW_DIR = ".lightning/workflows/"
WORKFLOW_EXTS = (".yml", ".yaml")
LOCATIONS = f"{', '.join(ROOT_FILES)} or {WORKFLOW_DIR}*{', *'.join(WORKFLOW_EXTS)}"  # for messages

WORKFLOW_KEYS = ("name", "trigger", "image", "machine", "interruptible", "timeout", "mode", "env",
                 "parametrize", "run", "reports", "paths", "paths-ignore", "needs", "secrets")
PARAMETRIZE_KEYS = ("matrix", "include", "exclude")
TRIGGER_EVENTS = ("pull_request", "push", "merge_group")
EVENTS = ("pull_request", "merge_group", "push")  # what plan() plans for
MAX_REPORT_GLOBS = 20
EVENT_KEYS = ("branches",)
RUN_SETTINGS = ("image", "machine", "interruptible", "timeout")  # cell keys that are not env vars
CELL_FORBIDDEN = ("env", "run")
MODES = ("info", "debug")

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_NON_WORD = re.compile(r"\W", re.ASCII)


# ---------------------------------------------------------------------------------------------
# Public types

@dataclass(frozen=True)
class Defaults:
    image: str                                  # [jobs.lightning] default_image
    machine: str                                # [jobs.lightning] default_machine
    timeout: float                              # seconds, [jobs] default_timeout
    machines: frozenset[str] | None = None      # valid machine names; None = don't validate

    @classmethod
    def from_config(cls, jobs: JobsConfig, machines: frozenset[str] | None = None) -> "Defaults":
        """The defaults of a [jobs] section; `machines`: the valid machine names, None = don't validate."""
        return cls(image=jobs.lightning.default_image, machine=jobs.lightning.default_machine,
                   timeout=jobs.default_timeout, machines=machines)


@dataclass(frozen=True)
class Run:
    workflow: str
    file: str
    check_name: str
    key: str                    # [a-z0-9-]{,48}, stable for (file, check_name)
    cell: dict[str, Any]
    image: str
    machine: str
    interruptible: bool
    timeout: float              # seconds
    env: dict[str, str]
    script: str
    reports: tuple[str, ...] = ()   # JUnit XML globs, relative to the checkout
    needs: tuple[str, ...] = ()     # workflow names whose runs for the commit must succeed first
    paths: tuple[str, ...] | None = None         # run only when the change touches one of these
    paths_ignore: tuple[str, ...] | None = None  # do not run when every changed file is one of these
    secrets: tuple[str, ...] = ()   # names of the job secrets its trusted runs receive (SPEC §10)

    @property
    def path_filter(self) -> paths_mod.PathFilter:
        return paths_mod.PathFilter(self.paths, self.paths_ignore)


@dataclass(frozen=True)
class WorkflowError:
    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


@dataclass(frozen=True)
class Plan:
    runs: list[Run]
    errors: list[WorkflowError]
    skipped: list[str]
    # (file, workflow name, what triggers it) for every workflow read, matched or not (for lint)
    triggers: list[tuple[str, str, str]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Paths

def is_workflow_path(path: str) -> bool:
    """A root `.litci.yaml`/`.litci.yml`, or `.lightning/workflows/NAME.yml|.yaml` (not deeper)."""
    if path in ROOT_FILES:
        return True
    if not path.startswith(WORKFLOW_DIR):
        return False
    name = path[len(WORKFLOW_DIR):]
    # Hidden files are skipped, as the original bot's glob did.
    return ("/" not in name and not name.startswith(".")
            and any(name.endswith(ext) for ext in WORKFLOW_EXTS))


def discover(paths: Iterable[str]) -> list[str]:
    """The workflow files in a repository file listing, sorted (the order runs are planned in)."""
    return sorted({p for p in paths if is_workflow_path(p)})


# ---------------------------------------------------------------------------------------------
# Schema

class _Doc(NodeMap):
    def error(self, file: str, e: _Invalid) -> WorkflowError:
        where = _fmt_path(e.path)
        return WorkflowError(file, e.line if e.line is not None else self.line(e.path),
                             f"{where}: {e.reason}" if where else e.reason)


def _type_name(value: Any) -> str:
    names = {str: "str", int: "int", float: "float", bool: "bool", dict: "mapping", list: "list",
             type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def _fmt_path(path: tuple[str | int, ...]) -> str:
    out = ""
    for elem in path:
        out += f"[{elem}]" if isinstance(elem, int) else (f".{elem}" if out else str(elem))
    return out


def _unknown_keys(data: Mapping[Any, Any], allowed: tuple[str, ...], path: tuple[str | int, ...]) -> None:
    for key in data:
        if not isinstance(key, str):
            raise _Invalid(path + (str(key),), f"expected a string key, got {_type_name(key)}")
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            suggestion = f"; did you mean '{close[0]}'?" if close else ""
            raise _Invalid(path + (key,), f"unknown key (expected one of: {', '.join(allowed)}){suggestion}")


def _opt(data: Mapping[str, Any], key: str, default: Any) -> Any:
    """An optional key; written as null it means the default, anything else is checked later."""
    value = data.get(key)
    return default if value is None else value


def _want(value: Any, kind: type, what: str, path: tuple[str | int, ...]) -> Any:
    if not isinstance(value, kind):
        raise _Invalid(path, f"expected {what}, got {_type_name(value)}")
    return value


def _non_empty_str(value: Any, path: tuple[str | int, ...], single_line: bool = True) -> str:
    _want(value, str, "a string", path)
    if not value.strip():
        raise _Invalid(path, "must not be empty")
    if single_line and any(c in value for c in "\r\n\t\0"):
        raise _Invalid(path, "must be a single line")
    return str(value)


def parse_timeout(value: Any) -> float:
    """Workflow timeout → seconds: a number of minutes, or a duration string ("90s", "1h30m")."""
    if isinstance(value, bool):
        raise ValueError(f"expected minutes as a number or a duration like '30m', got {_type_name(value)}")
    if isinstance(value, (int, float)):
        seconds = float(value) * 60
    elif isinstance(value, str) and (parsed := durations.seconds(value)) is not None:
        seconds = parsed
    elif isinstance(value, str):
        raise ValueError(f"expected minutes as a number or a duration like '90s', '30m', '2h', got {value!r}")
    else:
        raise ValueError(f"expected minutes as a number or a duration like '30m', got {_type_name(value)}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"must be a positive duration, got {value!r}")
    return seconds


def _machine(value: Any, path: tuple[str | int, ...], defaults: Defaults) -> str:
    name = _non_empty_str(value, path)
    if defaults.machines is not None and name not in defaults.machines:
        valid = sorted(defaults.machines)
        close = difflib.get_close_matches(name, valid, n=1) or [m for m in valid if m.lower() == name.lower()]
        shown = ", ".join(valid[:12]) + (f", … ({len(valid)} in all)" if len(valid) > 12 else "")
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise _Invalid(path, f"unknown machine {name!r} (valid: {shown}){hint}")
    return name


def _setting(key: str, value: Any, path: tuple[str | int, ...], defaults: Defaults) -> Any:
    """One of image/machine/interruptible/timeout, validated (timeout returned in seconds)."""
    if key == "image":
        return _non_empty_str(value, path)
    if key == "machine":
        return _machine(value, path, defaults)
    if key == "interruptible":
        return _want(value, bool, "a boolean (true or false)", path)
    try:
        return parse_timeout(value)
    except ValueError as e:
        raise _Invalid(path, str(e)) from None


def env_name(key: str) -> str:
    """A matrix key as an environment variable name: non-word characters become "_", case kept."""
    return _NON_WORD.sub("_", key)


@dataclass(frozen=True)
class _Cell:
    """One matrix cell: (key, value, text as written) in check-name order."""
    items: tuple[tuple[str, Any, str], ...]

    def identity(self) -> frozenset[tuple[str, str, Any]]:
        # Typed, so `1`, `1.0` and `true` (equal in Python) stay distinct cells.
        return frozenset((k, type(v).__name__, v) for k, v, _ in self.items)


@dataclass(frozen=True)
class Triggers:
    """Branch patterns per event: None = every branch, () = the event never runs the workflow."""
    pull_request: tuple[str, ...] | None = None
    push: tuple[str, ...] | None = ()
    merge_group: bool = True

    def matches(self, event: str, branch: str) -> bool:
        """`branch`: the PR's or the merge queue's base branch, or the pushed branch."""
        if event == "merge_group" and not self.merge_group:
            return False
        patterns = self.push if event == "push" else self.pull_request
        return patterns is None or branch_matches(patterns, branch)

    def describe(self) -> str:
        """"pull_request (base main, release/*), merge_group, push (main)" for lint."""
        def which(patterns: tuple[str, ...] | None, what: str) -> str:
            return f" ({what}any branch)" if patterns is None else f" ({what}{', '.join(patterns)})"
        parts = []
        if self.pull_request != ():
            parts.append("pull_request" + which(self.pull_request, "base "))
            if self.merge_group:
                parts.append("merge_group" + which(self.pull_request, "base "))
        if self.push != ():
            parts.append("push" + which(self.push, ""))
        return ", ".join(parts) or "nothing"


@dataclass(frozen=True)
class _Workflow:
    name: str
    file: str
    path: tuple[str | int, ...]          # () or ("workflows", i): where it sits in its file
    triggers: Triggers
    settings: dict[str, Any]             # image/machine/interruptible/timeout (seconds) if written
    env: dict[str, str]
    script: str
    cells: tuple[_Cell, ...] | None      # None: no matrix, one run with the bare name
    reports: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    paths: tuple[str, ...] | None = None
    paths_ignore: tuple[str, ...] | None = None
    secrets: tuple[str, ...] = ()


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """fnmatch-style, GitHub Actions flavour: `*` and `?` stop at "/", `**` crosses it."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and (j := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1:j]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = j + 1
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def branch_matches(patterns: Iterable[str], branch: str) -> bool:
    """Whether `branch` matches; a later `!pattern` excludes again (as in GitHub Actions)."""
    matched = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        if _glob_regex(pattern[1:] if negate else pattern).match(branch):
            matched = not negate
    return matched


def _trigger(value: Any, path: tuple[str | int, ...]) -> Triggers:
    """The events that run a workflow and their branch patterns."""
    if value is None or value == {} or value == []:  # every pull_request event, as the original bot did
        return Triggers()
    if isinstance(value, list):
        for i, event in enumerate(value):
            if event not in TRIGGER_EVENTS:
                raise _Invalid(path + (i,), f"unknown event {event!r} (expected one of: {', '.join(TRIGGER_EVENTS)})")
        # A listed event without a filter runs on every branch, as `on: [push]` does on GitHub Actions.
        return Triggers(pull_request=None if "pull_request" in value else (),
                        push=None if "push" in value else ())
    _want(value, dict, "a mapping of events or a list of event names", path)
    _unknown_keys(value, TRIGGER_EVENTS, path)
    # `merge_group` alone only changes the default (every pull_request): it is no event of its own.
    found: dict[str, tuple[str, ...] | None] = {"pull_request": None if set(value) == {"merge_group"} else (),
                                                "push": ()}
    merge_group = True
    for event, spec in value.items():
        epath = path + (event,)
        if event == "merge_group":
            if spec is not None:
                merge_group = _want(spec, bool, "true or false", epath)
            continue
        if spec is None:
            patterns: tuple[str, ...] | None = None
        else:
            _want(spec, dict, "a mapping", epath)
            _unknown_keys(spec, EVENT_KEYS, epath)
            branches = spec.get("branches")
            if branches is None:
                patterns = None
            else:
                _want(branches, list, "a list of branch patterns", epath + ("branches",))
                for i, p in enumerate(branches):
                    _non_empty_str(p, epath + ("branches", i))
                    try:
                        _glob_regex(p.removeprefix("!"))
                    except re.error as e:
                        raise _Invalid(epath + ("branches", i), f"invalid pattern {p!r}: {e}") from None
                if branches and all(p.startswith("!") for p in branches):
                    raise _Invalid(epath + ("branches",), "needs at least one pattern without '!'"
                                                          " (a '!pattern' only excludes what an earlier one matched)")
                patterns = tuple(branches) or None  # an empty list filters nothing, as before
        found[event] = patterns
    return Triggers(pull_request=found["pull_request"], push=found["push"], merge_group=merge_group)


def _reports(value: Any, path: tuple[str | int, ...]) -> tuple[str, ...]:
    """`reports:` JUnit XML globs, relative to the checkout."""
    if value is None:
        return ()
    _want(value, list, "a list of glob patterns (e.g. ['reports/*.xml'])", path)
    if len(value) > MAX_REPORT_GLOBS:
        raise _Invalid(path, f"at most {MAX_REPORT_GLOBS} patterns")
    for i, pattern in enumerate(value):
        _non_empty_str(pattern, path + (i,))
        if pattern.startswith("/") or ".." in pattern.split("/"):
            raise _Invalid(path + (i,), f"{pattern!r} leaves the repository: use a path relative to its root")
    return tuple(value)


def _secrets(value: Any, path: tuple[str | int, ...], env: Mapping[str, str]) -> tuple[str, ...]:
    """`secrets:` the names of job secrets (SPEC §10) the workflow's trusted runs receive."""
    if value is None:
        return ()
    _want(value, list, "a list of secret names (e.g. ['CODECOV_TOKEN'])", path)
    if len(value) > jobsecrets.MAX_SECRETS:
        raise _Invalid(path, f"at most {jobsecrets.MAX_SECRETS} secrets")
    for i, name in enumerate(value):
        if why := jobsecrets.name_problem(name):
            raise _Invalid(path + (i,), why)
        if name in env:
            raise _Invalid(path + (i,), f"{name} is also set under env: a secret's name must be its own")
    return tuple(dict.fromkeys(value))


def _patterns(value: Any, path: tuple[str | int, ...]) -> tuple[str, ...] | None:
    """`paths:` / `paths-ignore:` .gitignore patterns (paths.py), validated; None when absent."""
    if value is None:
        return None
    _want(value, list, "a list of path patterns (e.g. ['src/**', 'docs/**'])", path)
    if not value:
        raise _Invalid(path, "expected at least one pattern (leave the key out to filter nothing)")
    if len(value) > paths_mod.MAX_PATTERNS:
        raise _Invalid(path, f"at most {paths_mod.MAX_PATTERNS} patterns")
    for i, pattern in enumerate(value):
        _non_empty_str(pattern, path + (i,))
        if (why := paths_mod.pattern_error(pattern)) is not None:
            raise _Invalid(path + (i,), why)
    if all(p.startswith("!") for p in value):
        raise _Invalid(path, "needs at least one pattern without '!' (a '!pattern' only takes back what an"
                             " earlier one matched)")
    return tuple(value)


def _needs(value: Any, path: tuple[str | int, ...]) -> tuple[str, ...]:
    """`needs:` workflow names (one name, or a list); checked against the others in plan()."""
    if value is None:
        return ()
    names = [value] if isinstance(value, str) else _want(value, list, "a workflow name or a list of names", path)
    out: list[str] = []
    for i, name in enumerate(names):
        _non_empty_str(name, path if isinstance(value, str) else path + (i,))
        if name not in out:
            out.append(name)
    return tuple(out)


def _matrix_cells(value: Any, path: tuple[str | int, ...], doc: _Doc,
                  defaults: Defaults) -> tuple[_Cell, ...] | None:
    """`parametrize:` → its cells: the matrix product less `exclude`, then `include` (deduplicated)."""
    if value is None:
        return None
    _want(value, dict, "a mapping", path)
    _unknown_keys(value, PARAMETRIZE_KEYS, path)
    matrix = _want(_opt(value, "matrix", {}), dict, "a mapping of lists", path + ("matrix",))
    include = _want(_opt(value, "include", []), list, "a list of cells", path + ("include",))
    exclude = _want(_opt(value, "exclude", []), list, "a list of partial cells", path + ("exclude",))
    texts = _matrix_texts(matrix, path + ("matrix",), doc, defaults)
    _check_exclude(exclude, matrix, path + ("exclude",))
    cells = _product(matrix, texts, exclude, path + ("matrix",))
    cells += _included(include, cells, list(matrix), path + ("include",), doc, defaults)
    if not matrix and not include:
        return None  # `parametrize: {}` or empty lists: a single run, as the original bot did
    if not cells:
        raise _Invalid(path + ("exclude",), "every matrix combination is excluded: the workflow would not run")
    return tuple(cells)


def _matrix_texts(matrix: dict[Any, Any], mpath: tuple[str | int, ...], doc: _Doc,
                  defaults: Defaults) -> dict[str, list[str]]:
    """Each matrix key's values, validated, as written."""
    texts: dict[str, list[str]] = {}
    for key, values in matrix.items():
        kpath = mpath + (str(key),)
        _cell_key(key, kpath, matrix)
        _want(values, list, "a list", kpath)
        if not values:
            raise _Invalid(kpath, "expected a non-empty list")
        texts[key] = [_cell_value(key, v, kpath + (i,), doc, defaults) for i, v in enumerate(values)]
    return texts


def _check_exclude(exclude: list[Any], matrix: dict[Any, Any], xpath: tuple[str | int, ...]) -> None:
    for i, entry in enumerate(exclude):
        _want(entry, dict, "a mapping", xpath + (i,))
        for key, v in entry.items():
            if key not in matrix:
                known = ", ".join(map(str, matrix)) or "the matrix is empty"
                raise _Invalid(xpath + (i, str(key)), f"not a matrix key ({known})")
            if not _is_scalar(v):
                raise _Invalid(xpath + (i, key), f"expected a string, number or boolean, got {_type_name(v)}")


def _product(matrix: dict[str, list[Any]], texts: dict[str, list[str]], exclude: list[dict[str, Any]],
             mpath: tuple[str | int, ...]) -> list[_Cell]:
    """Every combination of the matrix values, in matrix order, but those an `exclude` entry matches."""
    if not matrix:
        return []
    size = math.prod(len(v) for v in matrix.values())
    if size > MAX_MATRIX_PRODUCT:
        raise _Invalid(mpath, f"the matrix has {size} combinations; at most {MAX_RUNS} runs are allowed"
                              f" per event (and {MAX_MATRIX_PRODUCT} combinations before exclude)")
    keys = list(matrix)
    drop = [frozenset((k, type(v).__name__, v) for k, v in e.items()) for e in exclude]
    cells = []
    for combo in itertools.product(*(range(len(matrix[k])) for k in keys)):
        cell = _Cell(tuple((k, matrix[k][j], texts[k][j]) for k, j in zip(keys, combo, strict=True)))
        if not any(d <= cell.identity() for d in drop):
            cells.append(cell)
    return cells


def _included(include: list[Any], cells: list[_Cell], keys: list[str], ipath: tuple[str | int, ...],
              doc: _Doc, defaults: Defaults) -> list[_Cell]:
    """The `include` entries that are not already cells, as cells."""
    seen = {c.identity() for c in cells}
    order = {k: n for n, k in enumerate(keys)}
    added = []
    for i, entry in enumerate(include):
        epath = ipath + (i,)
        _want(entry, dict, "a mapping", epath)
        if not entry:
            raise _Invalid(epath, "an include entry must set at least one key")
        items = []
        # Matrix keys first, in matrix order, then the entry's own keys as written.
        for key in sorted(entry, key=lambda k: order.get(k, len(order))):
            _cell_key(key, epath + (str(key),), entry)
            items.append((key, entry[key], _cell_value(key, entry[key], epath + (key,), doc, defaults)))
        cell = _Cell(tuple(items))
        if cell.identity() not in seen:
            seen.add(cell.identity())
            added.append(cell)
    return added


def _cell_key(key: Any, path: tuple[str | int, ...], mapping: Mapping[Any, Any]) -> None:
    if not isinstance(key, str) or not key:
        raise _Invalid(path, f"expected a non-empty string key, got {_type_name(key) if key != '' else 'empty string'}")
    if key in CELL_FORBIDDEN:
        raise _Invalid(path, f"'{key}' is not allowed in a matrix cell (set it at the workflow level)")
    if key not in RUN_SETTINGS:
        # Blame the later of two keys that map to one variable.
        for k in mapping:
            if k == key:
                break
            if isinstance(k, str) and k not in RUN_SETTINGS and env_name(k) == env_name(key):
                raise _Invalid(path, f"'{key}' and '{k}' both become environment variable {env_name(key)}")


def _cell_value(key: str, value: Any, path: tuple[str | int, ...], doc: _Doc, defaults: Defaults) -> str:
    """Validates one cell value; returns its text as written."""
    if key in RUN_SETTINGS:
        _setting(key, value, path, defaults)
    elif not _is_scalar(value):
        raise _Invalid(path, f"expected a string, number or boolean, got {_type_name(value)}")
    return doc.text(path, value)


def _workflow(data: Any, file: str, path: tuple[str | int, ...], doc: _Doc, defaults: Defaults,
              default_name: str | None) -> _Workflow:
    if not isinstance(data, dict):
        raise _Invalid(path, f"expected a mapping of workflow keys, got {_type_name(data)}")
    if "workflows" in data and not path:
        raise _Invalid(("workflows",), "a list of workflows is only allowed in .litci.yaml at the repository root")
    _unknown_keys(data, WORKFLOW_KEYS, path)

    if "name" in data:
        name = _non_empty_str(data["name"], path + ("name",))
    elif default_name is not None:
        name = default_name
    else:
        raise _Invalid(path, "'name' is required for each workflow in a 'workflows:' list")

    if "run" not in data:
        raise _Invalid(path, "'run' is required: the script to run")
    script = _non_empty_str(data["run"], path + ("run",), single_line=False)

    settings = {k: _setting(k, data[k], path + (k,), defaults) for k in RUN_SETTINGS if k in data}
    if "mode" in data and data["mode"] not in MODES:
        raise _Invalid(path + ("mode",), f"expected one of: {', '.join(MODES)}")

    env: dict[str, str] = {}
    raw_env = _opt(data, "env", {})
    _want(raw_env, dict, "a mapping of names to values", path + ("env",))
    for key, value in raw_env.items():
        kpath = path + ("env", str(key))
        if not isinstance(key, str) or not _ENV_NAME.match(key):
            raise _Invalid(kpath, "not a valid environment variable name (letters, digits, '_')")
        if not _is_scalar(value):
            raise _Invalid(kpath, f"expected a string, number or boolean, got {_type_name(value)}")
        env[key] = doc.text(kpath, value)

    return _Workflow(
        name=name, file=file, path=path,
        triggers=_trigger(data.get("trigger"), path + ("trigger",)),
        settings=settings, env=env, script=script,
        cells=_matrix_cells(data.get("parametrize"), path + ("parametrize",), doc, defaults),
        reports=_reports(data.get("reports"), path + ("reports",)),
        secrets=_secrets(data.get("secrets"), path + ("secrets",), env),
        needs=_needs(data.get("needs"), path + ("needs",)),
        paths=_patterns(data.get("paths"), path + ("paths",)),
        paths_ignore=_patterns(data.get("paths-ignore"), path + ("paths-ignore",)),
    )


def _default_name(file: str) -> str:
    base = file.rsplit("/", 1)[-1]
    for ext in WORKFLOW_EXTS:
        base = base.removesuffix(ext)
    return base.lstrip(".") or base


class _FileError(Exception):
    """A bad file, located: carries the one WorkflowError that file gets."""

    def __init__(self, error: WorkflowError) -> None:
        super().__init__(str(error))
        self.error = error


def _workflows(file: str, data: Any, doc: _Doc, defaults: Defaults) -> list[_Workflow]:
    if data is None:
        raise _Invalid((), "the file is empty: expected a workflow with at least 'run'")
    if file in ROOT_FILES and isinstance(data, dict) and "workflows" in data:
        others = [str(k) for k in data if k != "workflows"]
        if others:
            raise _Invalid((others[0],), "cannot be combined with a 'workflows:' list"
                                         " (put it inside each workflow)")
        items = _want(data["workflows"], list, "a list of workflows", ("workflows",))
        if not items:
            raise _Invalid(("workflows",), "expected at least one workflow")
        return [_workflow(item, file, ("workflows", i), doc, defaults, None) for i, item in enumerate(items)]
    return [_workflow(data, file, (), doc, defaults, _default_name(file))]


def _read(file: str, raw: str | bytes, defaults: Defaults) -> tuple[list[_Workflow], _Doc]:
    """The workflows of one file and its node map. Raises _FileError."""
    doc = _Doc(None)
    try:
        data, doc.root = load(decode(raw))
        return _workflows(file, data, doc, defaults), doc
    except _Invalid as e:
        raise _FileError(doc.error(file, e)) from None


# ---------------------------------------------------------------------------------------------
# Runs

def run_key(file: str, check_name: str) -> str:
    """Short, stable, [a-z0-9-] id of a run within its SHA (job names are built from it)."""
    digest = hashlib.sha256(f"{file}\0{check_name}".encode("utf-8", "surrogatepass")).hexdigest()[:12]
    slug = re.sub(r"[^a-z0-9]+", "-", check_name.lower()).strip("-")[:35].strip("-") or "run"
    return f"{slug}-{digest}"


def _runs(wf: _Workflow, defaults: Defaults) -> list[Run]:
    runs = []
    for cell in wf.cells if wf.cells is not None else (None,):
        settings = dict(wf.settings)
        env = dict(wf.env)
        if cell is None:
            check_name, values = wf.name, {}
        else:
            # Check names stay on one line whatever the values hold.
            shown = (" ".join(text.split()) for _, _, text in cell.items)
            check_name = f"{wf.name} ({', '.join(shown)})"
            values = {k: v for k, v, _ in cell.items}
            for k, v, text in cell.items:
                if k in RUN_SETTINGS:
                    settings[k] = parse_timeout(v) if k == "timeout" else v
                else:
                    env[env_name(k)] = text
        runs.append(Run(
            workflow=wf.name, file=wf.file, check_name=check_name, key=run_key(wf.file, check_name),
            cell=values,
            image=settings.get("image", defaults.image),
            machine=settings.get("machine", defaults.machine),
            interruptible=settings.get("interruptible", False),
            timeout=settings.get("timeout", defaults.timeout),
            env=env, script=wf.script, reports=wf.reports, needs=wf.needs, paths=wf.paths,
            paths_ignore=wf.paths_ignore, secrets=wf.secrets,
        ))
    return runs


def plan(files: Mapping[str, str | bytes], base_branch: str, defaults: Defaults,
         event: str = "pull_request") -> Plan:
    """The runs for one event: a pull_request or merge_group whose base branch is `base_branch`,
    or a push to branch `base_branch`.

    Every path given is read as a workflow file, in sorted order. A bad file gives one error
    and no run; a later file loses on a duplicate check name or on going over MAX_RUNS.
    """
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r} (expected one of: {', '.join(EVENTS)})")
    runs: list[Run] = []
    errors: list[WorkflowError] = []
    skipped: list[str] = []
    triggers: list[tuple[str, str, str]] = []
    owner: dict[str, str] = {}  # check name -> the file that holds it
    declared: list[needs_mod.Declared] = []
    read: dict[str, tuple[list[_Workflow], _Doc]] = {}
    for file in sorted(files):
        try:
            workflows, doc = _read(file, files[file], defaults)
        except _FileError as e:
            errors.append(e.error)
            continue
        read[file] = (workflows, doc)
        declared += [needs_mod.Declared(file, wf.name, wf.needs) for wf in workflows]
        triggers += [(file, wf.name, wf.triggers.describe()) for wf in workflows]
        try:
            file_runs, file_skipped = _triggered_runs(workflows, event, base_branch, defaults, owner)
            total = len(runs) + len(file_runs)
            if total > MAX_RUNS:
                biggest = max(workflows, key=lambda wf: len(wf.cells or ()))
                raise _Invalid(biggest.path + ("parametrize",),
                               f"too many runs: {len(file_runs)} from this file make {total} for this"
                               f" event, more than the {MAX_RUNS} allowed")
        except _Invalid as e:
            errors.append(doc.error(file, e))
            continue
        runs.extend(file_runs)
        skipped.extend(file_skipped)
        owner.update((r.check_name, file) for r in file_runs)
    # `needs` is checked across every workflow read (whatever its trigger): an unknown name, a
    # cycle, or a needed workflow whose file is an error makes the needing file an error too.
    bad = needs_mod.graph_errors(declared, broken={e.file: e.message for e in errors})
    for file, message in sorted(bad.items()):
        workflows, doc = read[file]
        wf = next((w for w in workflows if w.needs), workflows[0])
        errors.append(WorkflowError(file, doc.line(wf.path + ("needs",)), f"{_fmt_path(wf.path + ('needs',))}: {message}"))
    runs = [r for r in runs if r.file not in bad]
    errors.sort(key=lambda e: e.file)
    return Plan(runs=runs, errors=errors, skipped=skipped, triggers=triggers)


def _triggered_runs(workflows: list[_Workflow], event: str, branch: str, defaults: Defaults,
                    owner: Mapping[str, str]) -> tuple[list[Run], list[str]]:
    runs: list[Run] = []
    skipped: list[str] = []
    names: set[str] = set()
    for wf in workflows:
        if not wf.triggers.matches(event, branch):
            skipped.append(wf.name)
            continue
        # A clash within a matrix points at `parametrize`, otherwise at the workflow's name.
        where = wf.path + ("parametrize" if wf.cells is not None else "name",)
        for run in _runs(wf, defaults):
            if run.check_name in owner:
                raise _Invalid(where, f"check name {run.check_name!r} is already used by {owner[run.check_name]}")
            if run.check_name in names:
                raise _Invalid(where, f"check name {run.check_name!r} appears twice in this file")
            names.add(run.check_name)
            runs.append(run)
    return runs, skipped


# ---------------------------------------------------------------------------------------------
# Queue payloads

def to_jsonable(run: Run) -> dict[str, Any]:
    """A Run as plain JSON data (for a queue task payload)."""
    return {f.name: (dict(v) if isinstance(v := getattr(run, f.name), dict) else
                     list(v) if isinstance(v, tuple) else v) for f in fields(Run)}


def run_from_jsonable(d: Mapping[str, Any]) -> Run:
    """The inverse of to_jsonable; unknown keys are ignored so newer payloads still load."""
    try:
        return Run(
            workflow=str(d["workflow"]), file=str(d["file"]), check_name=str(d["check_name"]),
            key=str(d["key"]), cell=dict(d["cell"]), image=str(d["image"]), machine=str(d["machine"]),
            interruptible=bool(d["interruptible"]), timeout=float(d["timeout"]),
            env={str(k): str(v) for k, v in d["env"].items()}, script=str(d["script"]),
            reports=tuple(str(g) for g in d.get("reports") or ()),
            needs=tuple(str(n) for n in d.get("needs") or ()),
            paths=None if d.get("paths") is None else tuple(str(g) for g in d["paths"]),
            paths_ignore=None if d.get("paths_ignore") is None else tuple(str(g) for g in d["paths_ignore"]),
            secrets=tuple(str(n) for n in d.get("secrets") or ()),
        )
    except KeyError as e:
        raise ValueError(f"run payload lacks {e.args[0]!r}") from None
