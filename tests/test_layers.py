"""The folder listing is the architecture: the layering rule of the README's developer section,
checked on the source with `ast` (no import of litbotd needed).

    pure      decides; imports no I/O library and nothing above it
    support   process-wide helpers (logging, metrics, sealing, process identity, the Redis lock)
    adapters  one kind of I/O each; an adapter imports no other adapter
    app       the daemon's work: phases, workers, the webhook intake, the sweepers
    entry     wiring and commands: daemon, cli, ops, demo

A module imports only from its own layer or the layers below it. Imports under
`if TYPE_CHECKING:` are type hints, not dependencies, and are not counted as such; there are few
of them, each listed in TYPE_CHECKING_IMPORTS with its reason. File, environment and process I/O
(open, Path.read_*/write_*, os.environ, subprocess) happens in the adapters; the few other modules
that do some are listed in IO_OUTSIDE_ADAPTERS with their reason.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "litbotd"

PURE = {"__init__", "backoff", "config", "durations", "payloads", "redaction", "masking", "jobsecrets", "safeyaml",
        "workflows", "report", "annotations", "decisions", "events", "tasks", "outcomes", "logview", "runlink", "runview", "infra",
        "paths", "needs", "opsview", "pages.authz", "pages.dashview", "limits"}
SUPPORT = {"logs", "metrics", "sealed", "procinfo", "redisconn", "locks"}
# Each adapter: the modules that together speak to one outside system.
ADAPTERS = {
    "redis": {"queue", "runstate", "spend"},
    "github": {"github", "ghstate", "checks"},
    "jobs": {"backends", "backends.base", "backends.bootstrap", "backends.lightning", "backends.local",
             "backends.localrun", "backends.sandbox"},
    "systemd": {"systemd"},
    "config files": {"configfile"},
    "files": {"logstore"},   # run pages' kept logs, their index, the link key
}
APP = {"context", "lifecycle", "lifecycle.planning", "lifecycle.jobs", "lifecycle.commands", "lifecycle.comments",
       "lifecycle.checkruns", "lifecycle.ordering", "lifecycle.spending", "worker", "pool", "webhook", "redeliver",
       "preflight", "jobends", "pages", "pages.app", "pages.access", "pages.ctx", "pages.runpage", "pages.keep",
       "pages.oauth", "pages.dashboard", "pages.render"}
ENTRY = {"__main__", "daemon", "cli", "ops", "demo", "demo_github"}

LAYERS = [("pure", PURE), ("support", SUPPORT), ("adapters", set().union(*ADAPTERS.values())),
          ("app", APP), ("entry", ENTRY)]
RANK = {mod: i for i, (_, mods) in enumerate(LAYERS) for mod in mods}
ADAPTER_OF = {mod: name for name, mods in ADAPTERS.items() for mod in mods}

# Libraries that reach outside the process (network, processes, the event loop, test doubles).
IO_LIBRARIES = {"aiohttp", "asyncio", "redis", "gidgethub", "lightning_sdk", "fakeredis", "uvloop", "socket",
                "subprocess", "http", "urllib.request", "jsonschema", "prometheus_client", "jwt", "requests"}

# Known breaches still to remove: none (issue 18 removed the last, config -> configfile). A new one
# is named here with the issue that removes it.
KNOWN: set[tuple[str, str]] = set()


# Every `if TYPE_CHECKING:` import: (module, what it imports) -> why it cannot be a real import.
TYPE_CHECKING_IMPORTS: dict[tuple[str, str], str] = {
    ("backends.bootstrap", "backends.base"): "the job side runs in the job's image, where litbotd is not installed",
}
MAX_TYPE_CHECKING_IMPORTS = 3

# Modules outside the adapters that read or write files or the environment, or start processes.
IO_OUTSIDE_ADAPTERS: dict[str, str] = {
    "logs": "JOURNAL_STREAM: is stderr the journal (the log format)",
    "procinfo": "/proc: this host's boot id and a process's start time",
    "daemon": "LITBOTD_HOST: the worker identity, read once by the wiring",
    "ops": "`replay` reads the payload file, `lint` the repository's workflow files",
    "demo": "writes the demo repository and commits it with git",
    "demo_github": "serves the demo repository's tarball with git archive",
}
FILE_CALLS = {"open", "read_text", "read_bytes", "write_text", "write_bytes", "fdopen", "getenv", "putenv",
              "create_subprocess_exec", "create_subprocess_shell", "system", "popen"}
PROCESS_MODULES = {"subprocess"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1]) if parts[-1] == "__init__" and len(parts) > 1 else ".".join(parts)
        out[name] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, path: Path, type_checking: bool = False) -> tuple[set[str], set[str]]:
    """(litbotd modules, other top-level libraries) that `module` imports at run time, or with
    `type_checking` those it imports under `if TYPE_CHECKING:` only."""
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    ours: set[str] = set()
    libs: set[str] = set()

    def visit(node: ast.AST, hints: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                visit(ast.Module(body=child.body, type_ignores=[]), True)
                visit(ast.Module(body=child.orelse, type_ignores=[]), hints)
                continue
            if hints != type_checking:
                pass
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name == "litbotd" or alias.name.startswith("litbotd."):
                        ours.add(alias.name.removeprefix("litbotd").lstrip(".") or "__init__")
                    else:
                        libs.add(alias.name)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package[:len(package) - (child.level - 1)] if child.level > 1 else package
                    target = [*base, *(child.module.split(".") if child.module else [])]
                elif child.module and (child.module == "litbotd" or child.module.startswith("litbotd.")):
                    target = child.module.split(".")[1:]
                else:
                    libs.add(child.module or "")
                    continue
                prefix = ".".join(target)
                for alias in child.names:  # `from . import workflows` names a module, `from .x import y` a name
                    sub = f"{prefix}.{alias.name}" if prefix else alias.name
                    ours.add(sub if sub in MODULES else (prefix or "__init__"))
            visit(child, hints)

    visit(ast.parse(path.read_text(), str(path)), False)
    ours.discard(module)
    return ours, libs


def _io_calls(path: Path) -> list[str]:
    """The file, environment and process I/O a module does, as `line: what`, in line order."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if name in FILE_CALLS:
                out.append((node.lineno, f"{name}()"))
        elif isinstance(node, ast.Attribute) and node.attr in ("environ", "environb"):
            out.append((node.lineno, f"os.{node.attr}"))
        elif isinstance(node, ast.Import) and any(a.name.split(".")[0] in PROCESS_MODULES for a in node.names):
            out.append((node.lineno, "import subprocess"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PROCESS_MODULES:
            out.append((node.lineno, "from subprocess import"))
    return [f"{line}: {what}" for line, what in sorted(out)]


MODULES = _modules()
GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}
HINTS = {m: _imports(m, p, type_checking=True) for m, p in MODULES.items()}


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(set(MODULES) - set(RANK))
    assert not unplaced, f"place these modules in a layer (tests/test_layers.py and the README): {unplaced}"


@pytest.mark.parametrize("module", sorted(PURE & set(MODULES)))
def test_pure_modules_import_no_io_library(module: str) -> None:
    _, libs = GRAPH[module]
    io = sorted(lib for lib in libs if lib in IO_LIBRARIES or lib.split(".")[0] in IO_LIBRARIES)
    assert not io, f"{module} is pure but imports {io}"


def test_no_module_imports_a_layer_above_it() -> None:
    names = [name for name, _ in LAYERS]
    upward = sorted((m, dep, f"{names[RANK[m]]} -> {names[RANK[dep]]}") for m, (deps, _) in GRAPH.items()
                    for dep in deps if m in RANK and dep in RANK and RANK[dep] > RANK[m] and (m, dep) not in KNOWN)
    assert not upward, f"imports from a higher layer: {upward}"


def test_an_adapter_imports_no_other_adapter() -> None:
    crossing = sorted((m, dep) for m, (deps, _) in GRAPH.items() for dep in deps
                      if m in ADAPTER_OF and dep in ADAPTER_OF and ADAPTER_OF[m] != ADAPTER_OF[dep]
                      and (m, dep) not in KNOWN)
    assert not crossing, f"adapters importing another adapter: {crossing}"


def test_no_import_cycles() -> None:
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def walk(m: str, path: list[str]) -> None:
        seen[m] = 1
        for dep in sorted(GRAPH.get(m, (set(), set()))[0]):
            if (m, dep) in KNOWN:
                continue
            if seen.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(dep):], dep]))
            if dep not in seen:
                walk(dep, [*path, dep])
        seen[m] = 2

    for m in sorted(GRAPH):
        if m not in seen:
            walk(m, [m])


def test_the_product_holds_no_test_double() -> None:
    """Test-only libraries stay in tests/; fakeredis (the demo's in-process Redis) only in demo.py."""
    for module, (_, libs) in GRAPH.items():
        roots = {lib.split(".")[0] for lib in libs}
        assert not roots & {"jsonschema", "referencing", "pytest", "hypothesis"}, module
        assert module == "demo" or "fakeredis" not in roots, module


def test_the_reader_sees_runtime_imports_only(tmp_path: Path) -> None:
    """The checker itself: relative and absolute imports count, TYPE_CHECKING ones do not."""
    src = tmp_path / "queue.py"
    src.write_text("import aiohttp\nfrom typing import TYPE_CHECKING\nfrom .github import GitHubApp\n"
                   "from . import workflows\nimport litbotd.checks\n"
                   "if TYPE_CHECKING:\n    from .daemon import Daemon\n"
                   "def f():\n    from .backends.base import JobSpec\n")
    ours, libs = _imports("queue", src)
    assert ours == {"github", "workflows", "checks", "backends.base"}
    assert {"aiohttp", "typing"} <= libs


def test_type_checking_imports_are_few_and_listed() -> None:
    """A `TYPE_CHECKING` import hides a dependency from the layer checks: each one has its reason."""
    found = {(m, dep) for m, (ours, libs) in HINTS.items() for dep in ours | libs}
    assert found == set(TYPE_CHECKING_IMPORTS), (
        f"TYPE_CHECKING imports not listed: {sorted(found - set(TYPE_CHECKING_IMPORTS))}; "
        f"listed but gone: {sorted(set(TYPE_CHECKING_IMPORTS) - found)}")
    assert len(found) <= MAX_TYPE_CHECKING_IMPORTS


def test_file_and_environment_io_stays_in_the_adapters() -> None:
    """Pure and app modules read no file, no environment and start no process; outside the
    adapters only the modules listed in IO_OUTSIDE_ADAPTERS do, for the reason given there."""
    found = {m: calls for m, path in MODULES.items() if m not in ADAPTER_OF and (calls := _io_calls(path))}
    unlisted = {m: calls for m, calls in found.items() if m not in IO_OUTSIDE_ADAPTERS}
    assert not unlisted, f"file/environment/process I/O outside the adapters: {unlisted}"
    assert not set(IO_OUTSIDE_ADAPTERS) - set(found), f"listed but doing no I/O: {set(IO_OUTSIDE_ADAPTERS) - set(found)}"
    assert not [m for m in IO_OUTSIDE_ADAPTERS if m in PURE or m in APP], "a pure or app module doing I/O"


def test_the_io_reader_sees_files_environment_and_processes(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("import os, subprocess\nfrom pathlib import Path\nx = os.environ.get('A')\n"
                   "y = Path('p').read_text()\nwith open('f') as f:\n    pass\nz = len('open')\n")
    assert _io_calls(src) == ["1: import subprocess", "3: os.environ", "4: read_text()", "5: open()"]


def test_the_hint_reader_sees_type_checking_imports_only(tmp_path: Path) -> None:
    src = tmp_path / "queue.py"
    src.write_text("from typing import TYPE_CHECKING\nfrom . import workflows\n"
                   "if TYPE_CHECKING:\n    from .daemon import Daemon\n    import aiohttp\n")
    assert _imports("queue", src, type_checking=True) == ({"daemon"}, {"aiohttp"})


def test_every_type_ignore_names_its_error_and_says_why() -> None:
    """`# type: ignore[code]  # why` on the line itself: no blanket ignores, none unexplained."""
    bad = []
    for module, path in MODULES.items():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "type: ignore" in line and not re.search(r"# type: ignore\[[a-z-, ]+\]\s+#\s*\S", line):
                bad.append(f"{module}:{n}: {line.strip()}")
    assert not bad, "a type: ignore without its code and reason:\n" + "\n".join(bad)
