"""litbotd.paths: does a change touch a workflow (SPEC §4 `paths`, `paths-ignore`)."""
from __future__ import annotations

import pytest

from litbotd import paths
from litbotd.paths import Change, PathFilter, decide

# A real GPU repository's layout (Lightning-AI/pytorch-lightning): src/, tests/, docs/, *.md.
DOCS_ONLY = ("docs/source-pytorch/index.rst", "README.md")
SRC_CHANGE = ("src/lightning/pytorch/trainer/trainer.py", "docs/source-pytorch/index.rst")
TESTS_ONLY = ("tests/tests_pytorch/test_trainer.py",)


@pytest.mark.parametrize("f, files, runs", [
    # paths: run when any changed file matches; ** crosses folders
    (PathFilter(paths=("src/**", "tests/**")), SRC_CHANGE, True),
    (PathFilter(paths=("src/**", "tests/**")), TESTS_ONLY, True),
    (PathFilter(paths=("src/**", "tests/**")), DOCS_ONLY, False),
    (PathFilter(paths=("src/**/*.py",)), ("src/a/b/c.py",), True),
    (PathFilter(paths=("src/**/*.py",)), ("src/a/b/c.txt",), False),
    (PathFilter(paths=("src/*.py",)), ("src/a/c.py",), False),       # * stays within one folder
    (PathFilter(paths=("src/*.py",)), ("src/c.py",), True),
    (PathFilter(paths=("a/**/b.py",)), ("a/b.py",), True),            # ** matches no folder too
    (PathFilter(paths=("*.py",)), ("deep/down/x.py",), True),         # no slash: any depth (.gitignore)
    (PathFilter(paths=("/setup.py",)), ("pkg/setup.py",), False),     # leading / anchors at the root
    (PathFilter(paths=("/setup.py",)), ("setup.py",), True),
    (PathFilter(paths=("src/", "!src/vendor/**")), ("src/vendor/x.py",), False),  # ! takes back
    (PathFilter(paths=("src/", "!src/vendor/**")), ("src/vendor/x.py", "src/y.py"), True),
    (PathFilter(paths=("src/**",)), (), False),                       # nothing changed
    # paths-ignore: skip only when every changed file matches
    (PathFilter(ignore=("docs/**", "*.md")), DOCS_ONLY, False),
    (PathFilter(ignore=("docs/**", "*.md")), SRC_CHANGE, True),
    (PathFilter(ignore=("docs/**", "*.md")), ("CHANGELOG.md", "src/CHANGES.md"), False),
    (PathFilter(ignore=("docs/**",)), (), False),
    # both: the files outside paths-ignore must match paths
    (PathFilter(paths=("src/**",), ignore=("**/*.md",)), ("src/README.md",), False),
    (PathFilter(paths=("src/**",), ignore=("**/*.md",)), ("src/README.md", "src/a.py"), True),
    (PathFilter(paths=("src/**",), ignore=("**/*.md",)), ("tests/a.py",), False),
    # no filter: always runs
    (PathFilter(), DOCS_ONLY, True),
    (PathFilter(), (), True),
])
def test_decide(f: PathFilter, files: tuple[str, ...], runs: bool) -> None:
    why = decide(f, Change(files))
    assert (why is None) is runs, why
    if why is not None:
        assert ("paths-ignore" in why) or ("paths (" in why) or "no file changed" in why  # names the filter


def test_skip_reasons_name_the_filter_and_the_count() -> None:
    assert decide(PathFilter(ignore=("docs/**", "*.md")), Change(DOCS_ONLY)) == \
        "paths-ignore (docs/**, *.md) matches every one of the 2 changed files"
    assert decide(PathFilter(paths=("src/**", "tests/**")), Change(DOCS_ONLY)) == \
        "none of the 2 changed files matches paths (src/**, tests/**)"
    assert decide(PathFilter(paths=("src/**",), ignore=("*.md",)), Change(("README.md", "x/y"))) == \
        "no file of the 2 changed files outside paths-ignore (*.md) matches paths (src/**)"


def test_a_change_that_cannot_be_listed_runs_everything_and_says_why() -> None:
    f = PathFilter(paths=("src/**",))
    unknown = Change(None, "GitHub lists at most 3000 files of a pull request, and this one has 3000 or more")
    assert decide(f, unknown) is None
    assert paths.note(f, unknown) == ("paths: src/** not applied: GitHub lists at most 3000 files of a pull"
                                      " request, and this one has 3000 or more, so every workflow runs")
    assert paths.note(PathFilter(), unknown) == ""        # an unfiltered workflow needs no note
    assert paths.note(f, Change(("src/a",))) == ""


@pytest.mark.parametrize("n, complete", [(0, True), (2999, True), (3000, False), (3001, False)])
def test_pull_files_over_the_limit(n: int, complete: bool) -> None:
    change = paths.from_pull_files([{"filename": f"f{i}"} for i in range(n)])
    assert (change.files is not None) is complete
    if not complete:
        assert "3000" in change.why


def test_a_rename_touches_both_paths() -> None:
    change = paths.from_pull_files([{"filename": "src/new.py", "previous_filename": "docs/old.py",
                                     "status": "renamed"}, {"filename": "README.md"}])
    assert change.files == ("README.md", "docs/old.py", "src/new.py")
    assert decide(PathFilter(paths=("docs/**",)), change) is None


@pytest.mark.parametrize("body, complete", [
    ({"files": [{"filename": "a"}]}, True),
    ({"files": []}, True),
    ({"files": [{"filename": f"f{i}"} for i in range(300)]}, False),
    ({}, False),
])
def test_compare(body: dict, complete: bool) -> None:
    assert (paths.from_compare(body).files is not None) is complete


@pytest.mark.parametrize("before, forced, created, usable", [
    ("a" * 40, False, False, True),
    ("a" * 40, True, False, False),       # force-push: `before` is no ancestor
    ("0" * 40, False, True, False),       # a new branch
    ("0" * 40, False, False, False),
    (None, False, False, False),
])
def test_push_base(before: str | None, forced: bool, created: bool, usable: bool) -> None:
    base, why = paths.push_base(before, forced, created)
    assert (base is not None) is usable
    assert bool(why) is not usable


@pytest.mark.parametrize("pattern, ok", [("src/**", True), ("*.md", True), ("!x", True), ("\\", False),
                                         ("!", False)])
def test_pattern_error(pattern: str, ok: bool) -> None:
    assert (paths.pattern_error(pattern) is None) is ok
