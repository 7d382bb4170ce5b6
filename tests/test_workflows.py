"""litbotd.workflows: workflow files → runs (SPEC §4)."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from litbotd import workflows as wf
from litbotd.workflows import Defaults, Plan, Run, WorkflowError, discover, is_workflow_path, plan

DATA = Path(__file__).parent / "data" / "workflows"
D = Defaults(image="ubuntu:22.04", machine="CPU", timeout=3600.0,
             machines=frozenset({"CPU", "L4", "T4", "A10G"}))
F = ".lightning/workflows/ci.yml"

SPEC_EXAMPLE = (DATA / "spec-example.yml").read_text()


def one(text: str | bytes, file: str = F, base: str = "main", defaults: Defaults = D) -> Plan:
    return plan({file: text}, base, defaults)


def error_of(text: str | bytes, file: str = F, defaults: Defaults = D) -> WorkflowError:
    p = one(text, file, defaults=defaults)
    assert p.runs == [] and len(p.errors) == 1, p
    return p.errors[0]


# --- paths -----------------------------------------------------------------------------------

@pytest.mark.parametrize("path, expected", [
    (".litci.yaml", True),
    (".litci.yml", True),
    (".lightning/workflows/ci.yml", True),
    (".lightning/workflows/ci.yaml", True),
    (".lightning/workflows/nested/ci.yml", False),
    (".lightning/workflows/ci.json", False),
    (".lightning/workflows/.hidden.yml", False),
    (".lightning/workflows/", False),
    ("sub/.litci.yaml", False),
    (".litci.yaml.bak", False),
    ("lightning/workflows/ci.yml", False),
    (".lightning/ci.yml", False),
])
def test_is_workflow_path(path: str, expected: bool) -> None:
    assert is_workflow_path(path) is expected


def test_discover_filters_sorts_and_dedupes() -> None:
    listing = ["README.md", ".lightning/workflows/b.yml", ".litci.yaml", ".lightning/workflows/a.yaml",
               ".lightning/workflows/x/y.yml", ".lightning/workflows/b.yml", "src/.litci.yml"]
    assert discover(listing) == [".lightning/workflows/a.yaml", ".lightning/workflows/b.yml", ".litci.yaml"]


# --- the SPEC example and defaults ---------------------------------------------------------

def test_spec_example_expands_like_github_actions() -> None:
    p = one(SPEC_EXAMPLE)
    assert p.errors == [] and p.skipped == []
    assert [r.check_name for r in p.runs] == [
        "PR checks (3.10, CPU)", "PR checks (3.11, CPU)", "PR checks (3.11, L4)", "PR checks (3.12, CPU)"]
    first = p.runs[0]
    assert first.workflow == "PR checks" and first.file == F
    assert first.cell == {"python": "3.10", "machine": "CPU"}
    assert first.image == "python:3.11-slim"
    assert first.interruptible is False
    assert first.timeout == 30 * 60
    # `machine` is a run setting, not an environment variable; `python` is.
    assert first.env == {"HELLO": "world", "python": "3.10"}
    assert first.script == "pip install -r requirements.txt\npytest -q\n"
    assert [r.machine for r in p.runs] == ["CPU", "CPU", "L4", "CPU"]


def test_defaults_fill_what_the_file_leaves_out() -> None:
    p = one("run: make test\n", file=".lightning/workflows/unit-tests.yaml")
    (run,) = p.runs
    assert run.workflow == run.check_name == "unit-tests"  # default name: the file's base name
    assert (run.image, run.machine, run.timeout, run.interruptible) == ("ubuntu:22.04", "CPU", 3600.0, False)
    assert run.env == {} and run.cell == {}


def test_root_file_default_name_drops_the_dot() -> None:
    assert one("run: x\n", file=".litci.yml").runs[0].check_name == "litci"


def test_original_bot_example_still_works() -> None:
    # examples/multi-workflow.yml of Borda/GitHub-app-bot: `mode`, a push trigger and image/machine in the matrix.
    p = one((DATA / "original-bot-multi.yml").read_text())
    assert p.errors == []
    assert len(p.runs) == 5
    assert "PR Validation Workflow (python:3.10-slim-bookworm, CPU)" in [r.check_name for r in p.runs]
    assert {r.image for r in p.runs} == {"python:3.10-slim-bookworm", "python:3.11-slim-bookworm"}
    assert all(r.interruptible and r.timeout == 3600 for r in p.runs)
    assert all(r.env == {"HELLO": "world", "TEST_ENV": "ci"} for r in p.runs)
    assert one((DATA / "original-bot-multi.yml").read_text(), base="dev").skipped == ["PR Validation Workflow"]


def test_scalars_keep_the_text_as_written() -> None:
    # YAML reads 3.10 as the float 3.1; the check name and env show what the author wrote.
    p = one("run: x\nenv: {FLAG: yes, N: 010}\nparametrize:\n  matrix: {py: [3.10, 3.9], gpu: [true]}\n")
    assert [r.check_name for r in p.runs] == ["ci (3.10, true)", "ci (3.9, true)"]
    assert p.runs[0].env == {"FLAG": "yes", "N": "010", "py": "3.10", "gpu": "true"}
    assert p.runs[0].cell == {"py": 3.1, "gpu": True}


def test_cell_settings_override_the_workflow() -> None:
    text = """
image: base:1
machine: CPU
timeout: 10
interruptible: false
parametrize:
  matrix: {machine: [L4], timeout: ["90s"], interruptible: [true], image: ["img:2"]}
run: x
"""
    (run,) = one(text).runs
    assert (run.machine, run.timeout, run.interruptible, run.image) == ("L4", 90.0, True, "img:2")
    assert run.env == {}  # run settings never become env vars


def test_matrix_key_becomes_env_name_with_non_word_chars_replaced() -> None:
    (run,) = one("run: x\nparametrize:\n  matrix: {py-ver: ['3.11'], Torch.Version: ['2.1'], é: [1]}\n").runs
    assert run.env == {"py_ver": "3.11", "Torch_Version": "2.1", "_": "1"}


def test_cell_value_overrides_workflow_env_of_the_same_name() -> None:
    (run,) = one("run: x\nenv: {python: '3.9'}\nparametrize: {matrix: {python: ['3.12']}}\n").runs
    assert run.env == {"python": "3.12"}


def test_include_adds_cells_after_matrix_keys_and_skips_existing() -> None:
    text = """
run: x
parametrize:
  matrix: {a: [1, 2], b: [x]}
  include:
    - {b: x, a: 1}          # equal to an existing cell (keys in another order): not added twice
    - {extra: e, a: 3}      # matrix keys first in the check name, then its own keys
    - {a: 4}
    - {a: 4}
"""
    p = one(text)
    assert p.errors == []
    assert [r.check_name for r in p.runs] == ["ci (1, x)", "ci (2, x)", "ci (3, e)", "ci (4)"]
    assert p.runs[2].env == {"a": "3", "extra": "e"}


def test_include_only_parametrize() -> None:
    p = one("run: x\nparametrize:\n  include: [{os: linux}, {os: mac}]\n")
    assert [r.check_name for r in p.runs] == ["ci (linux)", "ci (mac)"]


def test_typed_equality_keeps_1_and_true_apart() -> None:
    # In Python 1 == True; in a matrix they are different cells, and exclude matches by type.
    p = one("run: x\nparametrize:\n  matrix: {a: [1, true]}\n  exclude: [{a: 1}]\n")
    assert [r.check_name for r in p.runs] == ["ci (true)"]


@pytest.mark.parametrize("text", ["run: x\nparametrize: {}\n", "run: x\nparametrize:\n",
                                  "run: x\nparametrize: {matrix: {}, include: []}\n"])
def test_empty_parametrize_is_one_bare_run(text: str) -> None:
    assert [r.check_name for r in one(text).runs] == ["ci"]


def test_bool_and_number_env_values_are_strings() -> None:
    (run,) = one("run: x\nenv: {A: true, B: 2, C: 1.5, D: text}\n").runs
    assert run.env == {"A": "true", "B": "2", "C": "1.5", "D": "text"}
    assert all(isinstance(v, str) for v in run.env.values())


def test_anchors_aliases_and_merge_keys_work() -> None:
    (run,) = one("image: &img python:3.12\nenv: {IMAGE: *img}\nrun: x\n").runs
    assert run.image == run.env["IMAGE"] == "python:3.12"
    # A merged key may be overridden by the mapping's own key: that is not a duplicate.
    (run,) = one("<<: {image: 'a:1', machine: L4}\nmachine: T4\nrun: x\n").runs
    assert (run.image, run.machine) == ("a:1", "T4")


# --- check names and keys --------------------------------------------------------------------

def test_run_keys_are_short_stable_and_distinct() -> None:
    p1, p2 = one(SPEC_EXAMPLE), one(SPEC_EXAMPLE)
    keys = [r.key for r in p1.runs]
    assert keys == [r.key for r in p2.runs]
    assert len(set(keys)) == len(keys)
    assert all(re.fullmatch(r"[a-z0-9-]{1,48}", k) for k in keys)
    assert keys[1].startswith("pr-checks-3-11-cpu-")
    # The same check name in another file is another run.
    assert one(SPEC_EXAMPLE, file=".lightning/workflows/other.yml").runs[0].key != keys[0]


def test_run_key_of_a_long_or_symbolic_name() -> None:
    long_key = wf.run_key(F, "Ünïcode " * 30 + "!!!")
    assert re.fullmatch(r"[a-z0-9-]{1,48}", long_key) and not long_key.startswith("-")
    assert re.fullmatch(r"run-[0-9a-f]{12}", wf.run_key(F, "!!!"))


def test_check_names_stay_on_one_line() -> None:
    (run,) = one('run: x\nparametrize: {matrix: {msg: ["two\\nlines\\there"]}}\n').runs
    assert run.check_name == "ci (two lines here)"
    assert run.env["msg"] == "two\nlines\there"


def test_duplicate_check_name_across_files_is_an_error_for_the_later_file() -> None:
    files = {".lightning/workflows/a.yml": "name: tests\nrun: x\n",
             ".lightning/workflows/b.yml": "name: other\nrun: y\n",
             ".lightning/workflows/c.yml": "foo: 1\nname: tests\nrun: z\n"}
    p = plan(files, "main", D)
    assert [r.file for r in p.runs] == [".lightning/workflows/a.yml", ".lightning/workflows/b.yml"]
    (err,) = p.errors
    assert err.file == ".lightning/workflows/c.yml"
    assert "foo" in err.message  # schema errors come before name clashes
    files[".lightning/workflows/c.yml"] = "# comment\nname: tests\nrun: z\n"
    (err,) = plan(files, "main", D).errors
    assert (err.file, err.line) == (".lightning/workflows/c.yml", 2)
    assert "'tests'" in err.message and ".lightning/workflows/a.yml" in err.message


def test_duplicate_check_names_inside_a_matrix() -> None:
    err = error_of("run: x\nparametrize:\n  matrix: {a: ['1', 1]}\n")
    assert err.line == 2 and "'ci (1)' appears twice" in err.message


def test_skipped_workflow_does_not_claim_its_check_name() -> None:
    files = {".lightning/workflows/a.yml": "name: t\ntrigger: {pull_request: {branches: [release/*]}}\nrun: x\n",
             ".lightning/workflows/b.yml": "name: t\nrun: y\n"}
    p = plan(files, "main", D)
    assert p.skipped == ["t"] and [r.file for r in p.runs] == [".lightning/workflows/b.yml"] and not p.errors


# --- .litci.yaml with a list -----------------------------------------------------------------

def test_litci_yaml_with_a_workflows_list() -> None:
    text = """
workflows:
  - name: lint
    run: ruff check .
  - name: tests
    trigger: {pull_request: {branches: [release/*]}}
    run: pytest
  - name: gpu
    machine: L4
    parametrize: {matrix: {py: ["3.11", "3.12"]}}
    run: pytest -m gpu
"""
    p = one(text, file=".litci.yaml")
    assert p.errors == []
    assert [r.check_name for r in p.runs] == ["lint", "gpu (3.11)", "gpu (3.12)"]
    assert p.skipped == ["tests"]
    assert {r.file for r in p.runs} == {".litci.yaml"}
    assert [r.check_name for r in one(text, file=".litci.yaml", base="release/2").runs] == [
        "lint", "tests", "gpu (3.11)", "gpu (3.12)"]


def test_one_bad_workflow_in_a_list_spoils_the_file() -> None:
    text = "workflows:\n  - name: ok\n    run: x\n  - name: bad\n    run: y\n    parametrize: {matrix: {env: [1]}}\n"
    err = error_of(text, file=".litci.yaml")
    assert err.line == 6
    assert err.message.startswith("workflows[1].parametrize.matrix.env: 'env' is not allowed in a matrix cell")


@pytest.mark.parametrize("text, file, line, fragment", [
    ("workflows:\n  - run: x\n", ".litci.yaml", 2, "workflows[0]: 'name' is required"),
    ("workflows: []\n", ".litci.yaml", 1, "workflows: expected at least one workflow"),
    ("workflows: {a: 1}\n", ".litci.yaml", 1, "workflows: expected a list of workflows, got mapping"),
    ("image: x\nworkflows:\n  - {name: a, run: x}\n", ".litci.yaml", 1, "image: cannot be combined"),
    ("workflows:\n  - {name: a, run: x}\n", F, 1, "workflows: a list of workflows is only allowed in .litci.yaml"),
    ("workflows:\n  - {name: a, run: x}\n  - {name: a, run: y}\n", ".litci.yaml", 3, "'a' appears twice"),
])
def test_workflows_list_errors(text: str, file: str, line: int, fragment: str) -> None:
    err = error_of(text, file=file)
    assert (err.file, err.line) == (file, line)
    assert fragment in err.message


# --- triggers ------------------------------------------------------------------------------

@pytest.mark.parametrize("patterns, branch, expected", [
    (["release/*"], "release/1.0", True),
    (["release/*"], "release/1.0/x", False),
    (["release/**"], "release/1.0/x", True),
    (["release/**"], "release/", True),
    (["release/**"], "releases/1", False),
    (["**"], "any/thing/at/all", True),
    (["*"], "main", True),
    (["*"], "feature/x", False),
    (["main"], "main", True),
    (["main"], "main2", False),
    (["main"], "xmain", False),
    (["v?.x"], "v1.x", True),
    (["v?.x"], "v/.x", False),
    (["v[0-9].*"], "v3.1", True),
    (["v[0-9].*"], "va.1", False),
    (["v[!0-9]"], "va", True),
    (["a.b"], "axb", False),          # regex metacharacters are literal
    (["**", "!release/**"], "release/1", False),
    (["**", "!release/**", "release/keep"], "release/keep", True),
    ([], "main", False),
])
def test_branch_globs(patterns: list[str], branch: str, expected: bool) -> None:
    assert wf.branch_matches(patterns, branch) is expected


@pytest.mark.parametrize("trigger, base, runs", [
    ("", "anything", True),                                   # no trigger: every pull_request
    ("trigger:\n", "anything", True),
    ("trigger: {pull_request: }\n", "x", True),
    ("trigger: {pull_request: {}}\n", "x", True),
    ("trigger: {pull_request: {branches: []}}\n", "x", True),  # as the original bot: no filter
    ("trigger: {pull_request: {branches: [main, 'release/*']}}\n", "release/1.0", True),
    ("trigger: {pull_request: {branches: [main, 'release/*']}}\n", "release/1.0/x", False),
    ("trigger: {pull_request: {branches: ['release/**']}}\n", "release/1.0/x", True),
    ("trigger: {push: {branches: [main]}}\n", "main", False),  # push only: never on a PR
    ("trigger: [push, pull_request]\n", "dev", True),
    ("trigger: [push]\n", "main", False),
])
def test_trigger_against_base_branch(trigger: str, base: str, runs: bool) -> None:
    p = one(trigger + "name: w\nrun: x\n", base=base)
    assert p.errors == []
    assert (len(p.runs), p.skipped) == ((1, []) if runs else (0, ["w"]))


@pytest.mark.parametrize("trigger, event, branch, runs", [
    ("", "merge_group", "main", True),                           # the merge queue runs what PRs run
    ("trigger: {pull_request: {branches: [main]}}\n", "merge_group", "main", True),
    ("trigger: {pull_request: {branches: [main]}}\n", "merge_group", "dev", False),
    ("trigger: {pull_request: {branches: [main]}, merge_group: false}\n", "merge_group", "main", False),
    ("trigger: {pull_request: , merge_group: }\n", "merge_group", "x", True),
    ("trigger: {push: {branches: [main]}}\n", "merge_group", "main", False),  # no PR trigger: no queue run
    ("", "push", "main", False),                                   # push: none by default
    ("trigger: {pull_request: {branches: [main]}}\n", "push", "main", False),
    ("trigger: {push: {branches: [main, 'release/*']}}\n", "push", "release/2", True),
    ("trigger: {push: {branches: [main, 'release/*']}}\n", "push", "feature", False),
    ("trigger: {push: }\n", "push", "anything/at/all", True),     # as `on: push` on GitHub Actions
    ("trigger: [push]\n", "push", "x", True),
    ("trigger: [pull_request, merge_group]\n", "push", "x", False),
])
def test_merge_group_and_push_triggers(trigger: str, event: str, branch: str, runs: bool) -> None:
    p = plan({F: trigger + "name: w\nrun: x\n"}, branch, D, event=event)
    assert p.errors == []
    assert (len(p.runs), p.skipped) == ((1, []) if runs else (0, ["w"]))


def test_the_merge_queue_gets_the_same_check_names_as_the_pr() -> None:
    text = (DATA / "original-bot-multi.yml").read_text()
    names = [r.check_name for r in one(text).runs]
    assert [r.check_name for r in plan({F: text}, "main", D, event="merge_group").runs] == names
    assert [r.check_name for r in plan({F: text}, "main", D, event="push").runs] == names


def test_triggers_are_described_for_lint() -> None:
    text = "name: w\ntrigger: {pull_request: {branches: [main, 'release/*']}, push: {branches: [main]}}\nrun: x\n"
    assert one(text).triggers == [(F, "w", "pull_request (base main, release/*), merge_group (base main, release/*),"
                                          " push (main)")]
    assert one("name: w\ntrigger: {merge_group: false}\nrun: x\n").triggers[0][2] == "pull_request (base any branch)"
    assert one("name: w\ntrigger: [push]\nrun: x\n").triggers[0][2] == "push (any branch)"


def test_reports_globs_reach_the_run_and_its_payload() -> None:
    run = one("name: w\nrun: x\nreports: ['reports/*.xml', '**/junit-*.xml']\n").runs[0]
    assert run.reports == ("reports/*.xml", "**/junit-*.xml")
    assert wf.run_from_jsonable(json.loads(json.dumps(wf.to_jsonable(run)))) == run
    legacy = wf.to_jsonable(run)
    del legacy["reports"]  # a task queued by an older litbotd
    assert wf.run_from_jsonable(legacy).reports == ()


def test_secret_names_reach_every_run_and_its_payload() -> None:
    text = ("name: w\nrun: x\nsecrets: [CODECOV_TOKEN, HF_TOKEN, CODECOV_TOKEN]\n"
            "parametrize: {matrix: {python: ['3.11', '3.12']}}\n")
    runs = one(text).runs
    assert [r.secrets for r in runs] == [("CODECOV_TOKEN", "HF_TOKEN")] * 2
    assert wf.run_from_jsonable(json.loads(json.dumps(wf.to_jsonable(runs[0])))) == runs[0]
    legacy = wf.to_jsonable(runs[0])
    del legacy["secrets"]
    assert wf.run_from_jsonable(legacy).secrets == ()
    assert one("name: w\nrun: x\n").runs[0].secrets == ()


@pytest.mark.parametrize("text, message", [
    ("secrets: CODECOV_TOKEN\n", "secrets: expected a list of secret names"),
    ("secrets: ['1ABC']\n", "secrets[0]: not a valid environment variable name"),
    ("secrets: [GITHUB_TOKEN]\n", "secrets[0]: GITHUB_TOKEN is set by litbotd"),
    ("secrets: [X]\nenv: {X: y}\n", "secrets[0]: X is also set under env"),
    ("reports: junit.xml\n", "reports: expected a list of glob patterns"),
    ("reports: ['']\n", "reports[0]: must not be empty"),
    ("reports: ['/tmp/x.xml']\n", "reports[0]: '/tmp/x.xml' leaves the repository"),
    ("reports: ['a/../../x.xml']\n", "leaves the repository"),
    ("trigger: {merge_group: sometimes}\n", "trigger.merge_group: expected true or false, got str"),
    ("trigger: {push: {tags: ['v*']}}\n", "trigger.push.tags: unknown key"),
])
def test_new_key_errors(text: str, message: str) -> None:
    assert message in error_of("name: w\nrun: x\n" + text).message


# --- schema errors: file, line, key ------------------------------------------------------

@pytest.mark.parametrize("text, line, message", [
    ("run: x\nmachin: CPU\n", 2, "machin: unknown key (expected one of: name, trigger, image, machine,"
                                 " interruptible, timeout, mode, env, parametrize, run, reports, paths, paths-ignore, needs, secrets); did you mean 'machine'?"),
    ("name: w\n", 1, "'run' is required"),
    ("run: ''\n", 1, "run: must not be empty"),
    ("run: [a]\n", 1, "run: expected a string, got list"),
    ("run: x\nname: 5\n", 2, "name: expected a string, got int"),
    ("run: x\nname: \"a\\nb\"\n", 2, "name: must be a single line"),
    ("run: x\nimage: 3\n", 2, "image: expected a string, got int"),
    ("run: x\ninterruptible: 'yes'\n", 2, "interruptible: expected a boolean (true or false), got str"),
    ("run: x\ntimeout: -5\n", 2, "timeout: must be a positive duration"),
    ("run: x\ntimeout: 30\ntimeout: 40\n", 3, "timeout: duplicate key (first on line 2)"),
    ("run: x\ntimeout: '30'\n", 2, "timeout: expected minutes as a number or a duration like '90s', '30m', '2h', got '30'"),
    ("run: x\ntimeout: true\n", 2, "timeout: expected minutes"),
    ("run: x\nmode: loud\n", 2, "mode: expected one of: info, debug"),
    ("run: x\nenv: [A]\n", 2, "env: expected a mapping of names to values, got list"),
    ("run: x\nenv:\n  OK: 1\n  BAD-NAME: 2\n", 4, "env.BAD-NAME: not a valid environment variable name"),
    ("run: x\nenv:\n  A: {b: c}\n", 3, "env.A: expected a string, number or boolean, got mapping"),
    ("run: x\nenv:\n  A: null\n", 3, "env.A: expected a string, number or boolean, got null"),
    ("run: x\ntrigger: pull_request\n", 2, "trigger: expected a mapping of events or a list of event names, got str"),
    ("run: x\ntrigger: [pull_request, issue_comment]\n", 2, "trigger[1]: unknown event 'issue_comment'"),
    ("run: x\ntrigger:\n  pull_requests: {}\n", 3, "trigger.pull_requests: unknown key (expected one of: pull_request, push, merge_group); did you mean 'pull_request'?"),
    ("run: x\ntrigger:\n  pull_request:\n    branch: [main]\n", 4, "trigger.pull_request.branch: unknown key"),
    ("run: x\ntrigger:\n  pull_request:\n    branches: main\n", 4, "trigger.pull_request.branches: expected a list of branch patterns, got str"),
    ("run: x\ntrigger:\n  pull_request:\n    branches:\n      - main\n      - 7\n", 6, "trigger.pull_request.branches[1]: expected a string, got int"),
    ("run: x\ntrigger:\n  pull_request:\n    branches: ['[z-a]']\n", 4, "trigger.pull_request.branches[0]: invalid pattern '[z-a]'"),
    ("run: x\ntrigger:\n  pull_request:\n    branches: ['!main']\n", 4, "needs at least one pattern without '!'"),
    ("run: x\nparametrize: [a]\n", 2, "parametrize: expected a mapping, got list"),
    ("run: x\nparametrize:\n  matrx: {}\n", 3, "parametrize.matrx: unknown key"),
    ("run: x\nparametrize:\n  matrix:\n    python: '3.10'\n", 4, "parametrize.matrix.python: expected a list, got str"),
    ("run: x\nparametrize:\n  matrix:\n    python: []\n", 4, "parametrize.matrix.python: expected a non-empty list"),
    ("run: x\nparametrize:\n  matrix:\n    python:\n      - '3.10'\n      - [3, 11]\n", 6,
     "parametrize.matrix.python[1]: expected a string, number or boolean, got list"),
    ("run: x\nparametrize:\n  matrix:\n    env: [a]\n", 4, "parametrize.matrix.env: 'env' is not allowed in a matrix cell"),
    ("run: x\nparametrize:\n  include:\n    - {os: linux, run: 'echo hi'}\n", 4,
     "parametrize.include[0].run: 'run' is not allowed in a matrix cell"),
    ("run: x\nparametrize:\n  include:\n    - os: linux\n      env: {A: b}\n", 5,
     "parametrize.include[0].env: 'env' is not allowed in a matrix cell"),
    ("run: x\nparametrize:\n  include:\n    - {}\n", 4, "parametrize.include[0]: an include entry must set at least one key"),
    ("run: x\nparametrize:\n  include: [a]\n", 3, "parametrize.include[0]: expected a mapping, got str"),
    ("run: x\nparametrize:\n  matrix: {a: [1]}\n  exclude:\n    - {b: 1}\n", 5, "parametrize.exclude[0].b: not a matrix key (a)"),
    ("run: x\nparametrize:\n  matrix: {a: [1]}\n  exclude:\n    - {a: 1}\n", 4, "parametrize.exclude: every matrix combination is excluded"),
    ("run: x\nparametrize:\n  matrix:\n    a-b: [1]\n    a_b: [2]\n", 5, "'a_b' and 'a-b' both become environment variable a_b"),
    ("run: x\nparametrize:\n  matrix:\n    1: [a]\n", 4, "parametrize.matrix.1: expected a non-empty string key, got int"),
    ("run: x\nparametrize:\n  matrix:\n    timeout: [10, soon]\n", 4, "parametrize.matrix.timeout[1]: expected minutes"),
    ("run: x\nparametrize:\n  matrix:\n    interruptible: [maybe]\n", 4, "parametrize.matrix.interruptible[0]: expected a boolean"),
    ("run: x\nparametrize:\n  matrix:\n    image: ['']\n", 4, "parametrize.matrix.image[0]: must not be empty"),
    ("- run: x\n", 1, "expected a mapping of workflow keys, got list"),
    ("", None, "the file is empty"),
    ("# only a comment\n", None, "the file is empty"),
    ("run: x\n1: y\n", 2, "1: expected a string key, got int"),
])
def test_schema_errors_name_file_line_and_key(text: str, line: int | None, message: str) -> None:
    err = error_of(text)
    assert err.file == F
    assert err.line == line
    assert message in err.message, err.message
    assert str(err).startswith(f"{F}:{line}: " if line else f"{F}: ")


def test_unknown_machine_names_it_and_lists_valid_ones() -> None:
    err = error_of("run: x\nmachine: l4\n")
    assert err.line == 2
    assert err.message == "machine: unknown machine 'l4' (valid: A10G, CPU, L4, T4); did you mean 'L4'?"
    many = Defaults("i", "CPU", 60.0, frozenset(f"M{i:02d}" for i in range(30)))
    msg = error_of("run: x\nmachine: ZZZ\n", defaults=many).message
    assert "M00, M01" in msg and "M11, … (30 in all)" in msg and "M29" not in msg
    # Without a list of machines nothing is checked.
    assert one("run: x\nmachine: anything\n", defaults=Defaults("i", "CPU", 60.0)).runs[0].machine == "anything"


def test_unknown_machine_in_a_matrix_points_at_the_value() -> None:
    err = error_of("run: x\nparametrize:\n  matrix:\n    machine:\n      - CPU\n      - H100\n")
    assert err.line == 6 and "parametrize.matrix.machine[1]: unknown machine 'H100'" in err.message


def test_no_run_comes_from_a_bad_file_but_other_files_still_run() -> None:
    files = {".lightning/workflows/bad.yml": "run: x\nbogus: 1\n", ".lightning/workflows/good.yml": "run: y\n"}
    p = plan(files, "main", D)
    assert [r.file for r in p.runs] == [".lightning/workflows/good.yml"]
    assert [e.file for e in p.errors] == [".lightning/workflows/bad.yml"]


# --- YAML safety -------------------------------------------------------------------------

def test_yaml_syntax_error_reports_the_problem_line() -> None:
    err = error_of("name: w\nrun: x\nenv: {A: b\nimage: y\n")
    assert err.line in (4, 5) and err.message.startswith("invalid YAML:")
    tab = error_of("run: x\nenv:\n\tA: b\n")
    assert tab.line == 3 and "invalid YAML" in tab.message


def test_multiple_documents_are_an_error() -> None:
    err = error_of("run: x\n---\nrun: y\n")
    assert err.line == 2 and "single document" in err.message


def test_python_tags_are_refused() -> None:
    err = error_of("run: !!python/object/apply:os.system ['echo pwned']\n")
    assert err.line == 1 and "constructor" in err.message


def test_impossible_date_is_an_error_not_a_crash() -> None:
    assert "invalid YAML value" in error_of("run: x\nenv: {D: 2024-02-30}\n").message


def test_control_characters_are_refused_with_their_line() -> None:
    err = error_of("run: x\nname: a\x07b\n")
    assert err.line == 2 and "U+0007" in err.message


def _billion_laughs(levels: int = 9) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\nrun: x\n"


def test_alias_bomb_is_rejected_fast() -> None:
    start = time.perf_counter()
    err = error_of(_billion_laughs())
    assert time.perf_counter() - start < 0.5
    assert "document too large" in err.message and "alias" in err.message
    assert err.line is not None and err.line <= 5  # refused while composing, long before the end


def test_many_aliases_are_rejected() -> None:
    text = "run: &r x\nenv:\n" + "".join(f"  V{i}: *r\n" for i in range(wf.MAX_ALIASES + 1))
    err = error_of(text)
    assert err.message == f"too many aliases: more than {wf.MAX_ALIASES}"
    assert err.line == 3 + wf.MAX_ALIASES


def test_recursive_alias_and_deep_nesting_are_rejected() -> None:
    assert "recursive alias *a" in error_of("run: x\nenv: &a [*a]\n").message
    deep = error_of("run: x\nenv: " + "[" * 200 + "]" * 200 + "\n")
    assert deep.line == 2 and "nested too deeply" in deep.message


def test_too_many_nodes_are_rejected() -> None:
    text = "run: x\nenv:\n" + "".join(f"  V{i}: {i}\n" for i in range(wf.MAX_NODES))
    assert "document too large" in error_of(text).message


def test_file_over_one_megabyte_is_refused_before_parsing() -> None:
    huge = b"run: |\n" + b"  echo x\n" * (wf.MAX_FILE_BYTES // 9 + 1)
    assert len(huge) > wf.MAX_FILE_BYTES
    start = time.perf_counter()
    err = error_of(huge)
    assert time.perf_counter() - start < 0.1
    assert err.line is None and err.message == f"file too large: {len(huge)} bytes, more than {wf.MAX_FILE_BYTES}"
    # A str is measured in UTF-8 bytes, not characters.
    multibyte = "run: " + "é" * (wf.MAX_FILE_BYTES // 2) + "\n"
    assert len(multibyte) < wf.MAX_FILE_BYTES
    assert "file too large" in error_of(multibyte).message


def test_file_just_under_the_limit_is_read() -> None:
    text = "run: x\n" + "#" * (wf.MAX_FILE_BYTES - 8) + "\n"
    assert len(text.encode()) == wf.MAX_FILE_BYTES
    assert len(one(text).runs) == 1


def test_invalid_utf8_is_an_error_with_its_line() -> None:
    err = error_of(b"name: w\nrun: caf\xe9\n")
    assert err.line == 2 and err.message == "not valid UTF-8: byte 0xe9 at offset 16"


def test_utf8_bytes_and_bom_are_accepted() -> None:
    (run,) = one("\ufeffname: café ☕\nrun: x\n".encode()).runs
    assert run.check_name == "café ☕"


# --- limits --------------------------------------------------------------------------------

def _matrix_file(n: int, name: str = "big") -> str:
    return f"name: {name}\nrun: x\nparametrize:\n  matrix:\n    i: [{', '.join(map(str, range(n)))}]\n"


def test_256_runs_are_allowed_and_257_are_not() -> None:
    assert len(one(_matrix_file(256)).runs) == 256
    err = error_of(_matrix_file(257))
    assert err.line == 3
    assert "257" in err.message and "more than the 256 allowed" in err.message


def test_257_from_a_16x16_matrix_plus_one_include() -> None:
    text = ("run: x\nparametrize:\n  matrix:\n    a: [" + ", ".join(map(str, range(16))) + "]\n"
            "    b: [" + ", ".join(map(str, range(16))) + "]\n  include: [{a: 99, b: 99}]\n")
    assert "257" in error_of(text).message


def test_run_limit_counts_across_files_and_blames_the_file_that_crosses_it() -> None:
    files = {".lightning/workflows/a.yml": _matrix_file(200, "a"),
             ".lightning/workflows/b.yml": _matrix_file(100, "b"),
             ".lightning/workflows/c.yml": _matrix_file(10, "c")}
    p = plan(files, "main", D)
    assert len(p.runs) == 210 and {r.workflow for r in p.runs} == {"a", "c"}
    (err,) = p.errors
    assert err.file == ".lightning/workflows/b.yml"
    assert "100 from this file make 300" in err.message


def test_huge_matrix_is_refused_without_being_built() -> None:
    text = "run: x\nparametrize:\n  matrix:\n" + "".join(f"    k{i}: [1, 2]\n" for i in range(60))
    start = time.perf_counter()
    err = error_of(text)
    assert time.perf_counter() - start < 0.5
    assert err.line == 3 and f"{2 ** 60} combinations" in err.message


def test_exclude_may_bring_a_large_matrix_under_the_limit() -> None:
    text = ("run: x\nparametrize:\n  matrix:\n    a: [" + ", ".join(map(str, range(20))) + "]\n"
            "    b: [" + ", ".join(map(str, range(20))) + "]\n  exclude:\n"
            + "".join(f"    - {{a: {i}}}\n" for i in range(10)))
    assert len(one(text).runs) == 200


# --- durations -----------------------------------------------------------------------------

@pytest.mark.parametrize("value, seconds", [
    (30, 1800.0), (1.5, 90.0), ("90s", 90.0), ("30m", 1800.0), ("2h", 7200.0), ("1d", 86400.0),
    ("1h30m", 5400.0), ("1h 30m 15s", 5415.0), (" 45 m ", 2700.0), ("0.5h", 1800.0),
])
def test_parse_timeout(value: object, seconds: float) -> None:
    assert wf.parse_timeout(value) == seconds


@pytest.mark.parametrize("value", ["30", "", "m", "10 minutes", "1h-30m", "-5m", "0s", 0, -1, True,
                                   float("inf"), float("nan"), None, [30]])
def test_parse_timeout_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        wf.parse_timeout(value)


# --- errors and payloads ---------------------------------------------------------------------

def test_workflow_error_str() -> None:
    assert str(WorkflowError("a.yml", 3, "run: must not be empty")) == "a.yml:3: run: must not be empty"
    assert str(WorkflowError("a.yml", None, "file too large")) == "a.yml: file too large"


def test_run_json_round_trip() -> None:
    for run in one(SPEC_EXAMPLE).runs + one("run: x\nparametrize: {matrix: {a: [1, 2.5, true]}}\n").runs:
        payload = json.loads(json.dumps(wf.to_jsonable(run)))
        back = wf.run_from_jsonable(payload)
        assert back == run
        assert type(back.cell.get("a", "")) is type(run.cell.get("a", ""))


def test_to_jsonable_copies_and_run_from_jsonable_checks() -> None:
    run = one(SPEC_EXAMPLE).runs[0]
    d = wf.to_jsonable(run)
    d["env"]["HELLO"] = "changed"
    assert run.env["HELLO"] == "world"
    assert wf.run_from_jsonable({**d, "future_field": 1}).key == run.key  # newer payloads still load
    del d["script"]
    with pytest.raises(ValueError, match="script"):
        wf.run_from_jsonable(d)


def test_plan_is_pure_and_deterministic() -> None:
    files = {".litci.yaml": "run: a\n", F: SPEC_EXAMPLE, ".lightning/workflows/b.yml": "run: b\n"}
    p1 = plan(files, "main", D)
    p2 = plan(dict(reversed(list(files.items()))), "main", D)
    assert p1 == p2
    assert [r.file for r in p1.runs] == [".lightning/workflows/b.yml"] + [F] * 4 + [".litci.yaml"]
    assert isinstance(p1.runs[0], Run)


# --- paths, paths-ignore, needs ---------------------------------------------------------------

def test_paths_and_needs_are_read_into_every_run_and_survive_the_queue() -> None:
    p = one('name: gpu\nparametrize: {matrix: {machine: ["L4", "A10G"]}}\npaths: ["src/**", "tests/**"]\n'
            'paths-ignore: ["docs/**"]\nneeds: lint\nrun: x\n', file=".lightning/workflows/gpu.yml")
    assert "needs: 'lint' names no workflow" in p.errors[0].message and p.runs == []  # alone: unknown
    p = plan({".lightning/workflows/gpu.yml": 'name: gpu\nparametrize: {matrix: {machine: ["L4", "A10G"]}}\n'
              'paths: ["src/**", "tests/**"]\npaths-ignore: ["docs/**"]\nneeds: lint\nrun: x\n',
              ".lightning/workflows/lint.yml": "run: ruff check .\n"}, "main", D)
    assert p.errors == []
    gpu = [r for r in p.runs if r.workflow == "gpu"]
    assert len(gpu) == 2 and all(r.needs == ("lint",) and r.paths == ("src/**", "tests/**")
                                 and r.paths_ignore == ("docs/**",) for r in gpu)
    lint = next(r for r in p.runs if r.workflow == "lint")
    assert lint.needs == () and lint.paths is None and not lint.path_filter.active
    assert wf.run_from_jsonable(json.loads(json.dumps(wf.to_jsonable(gpu[0])))) == gpu[0]
    # A payload written before these keys existed still loads.
    old = {k: v for k, v in wf.to_jsonable(lint).items() if k not in ("needs", "paths", "paths_ignore")}
    assert wf.run_from_jsonable(old) == lint


@pytest.mark.parametrize("text, line, message", [
    ("paths: src/**\nrun: x\n", 1, "paths: expected a list of path patterns"),
    ("paths: []\nrun: x\n", 1, "paths: expected at least one pattern"),
    ("paths-ignore: ['!docs/**']\nrun: x\n", 1, "paths-ignore: needs at least one pattern without '!'"),
    ("paths: ['src/**', '!']\nrun: x\n", 1, "paths[1]: invalid pattern"),
    ("paths: ['src/**', 3]\nrun: x\n", 1, "paths[1]: expected a string"),
    ("needs: [lint, 3]\nrun: x\n", 1, "needs[1]: expected a string"),
    ("needs: {lint: 1}\nrun: x\n", 1, "needs: expected a workflow name or a list"),
    ("run: x\nneeds: [lnt]\n", 2, "needs: 'lnt' names no workflow"),
    ("name: ci\nneeds: ci\nrun: x\n", 2, "needs: a cycle: ci → ci"),
])
def test_paths_and_needs_errors(text: str, line: int, message: str) -> None:
    err = error_of(text)
    assert err.line == line, err
    assert message in err.message, err.message


def test_needs_across_files_unknown_cycle_and_broken() -> None:
    files = {".lightning/workflows/lint.yml": "run: x\n",
             ".lightning/workflows/gpu.yml": "needs: [lint]\nrun: x\n",
             ".lightning/workflows/a.yml": "needs: [b]\nrun: x\n",
             ".lightning/workflows/b.yml": "needs: [a]\nrun: x\n"}
    p = plan(files, "main", D)
    assert sorted(r.workflow for r in p.runs) == ["gpu", "lint"]
    assert [(e.file, "cycle" in e.message) for e in p.errors] == [
        (".lightning/workflows/a.yml", True), (".lightning/workflows/b.yml", True)]
    # lint.yml broken: gpu.yml fails too, naming it; no run of either starts
    p = plan({**files, ".lightning/workflows/lint.yml": "run: [\n"}, "main", D)
    assert [r.workflow for r in p.runs] == []
    gpu_err = next(e for e in p.errors if e.file.endswith("gpu.yml"))
    assert "invalid: .lightning/workflows/lint.yml" in gpu_err.message and gpu_err.line == 1
    # A needed workflow whose trigger does not match this event is known (nothing to wait for then).
    p = plan({".lightning/workflows/lint.yml": "trigger: {push: {branches: [main]}}\nrun: x\n",
              ".lightning/workflows/gpu.yml": "needs: [lint]\nrun: x\n"}, "main", D)
    assert p.errors == [] and [r.workflow for r in p.runs] == ["gpu"] and p.skipped == ["lint"]
