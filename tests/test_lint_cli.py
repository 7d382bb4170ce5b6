"""`litbotd lint [DIR]`: what a checkout's workflow files would run (SPEC §2)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers.env import scrubbed_env


def lint(directory: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "litbotd", "lint", str(directory), *args],
                          capture_output=True, text=True, timeout=60, env=scrubbed_env({"PATH": "/usr/bin:/bin"}))


def test_lint_prints_the_runs_and_their_check_names(tmp_path):
    wf = tmp_path / ".lightning" / "workflows"
    wf.mkdir(parents=True)
    (wf / "ci.yaml").write_text("name: ci\nmachine: CPU\nparametrize:\n  matrix: {py: ['3.10', '3.11']}\nrun: pytest\n")
    (tmp_path / ".litci.yaml").write_text("name: docs\nrun: make docs\n")
    (tmp_path / "node_modules").mkdir()
    (tmp_path / "node_modules" / "x.yaml").write_text("not: a workflow")
    out = lint(tmp_path)
    assert out.returncode == 0, out.stderr
    assert "ci (3.10)" in out.stdout and "ci (3.11)" in out.stdout and "docs" in out.stdout
    assert "3 run(s) from 2 file(s), 0 error(s)" in out.stdout


def test_lint_names_the_file_and_line_of_an_error(tmp_path):
    wf = tmp_path / ".lightning" / "workflows"
    wf.mkdir(parents=True)
    (wf / "bad.yml").write_text("name: bad\nrun: echo\ntimout: 5\n")
    out = lint(tmp_path)
    assert out.returncode == 1
    assert "error: .lightning/workflows/bad.yml:3:" in out.stdout and "timout" in out.stdout


def test_lint_with_no_workflow_files_says_nothing_would_run(tmp_path):
    out = lint(tmp_path)
    assert out.returncode == 0 and "nothing would run" in out.stdout


def test_lint_skips_workflows_whose_trigger_does_not_match_the_base(tmp_path):
    (tmp_path / ".litci.yml").write_text("name: rel\ntrigger: {pull_request: {branches: ['release/*']}}\nrun: x\n")
    assert "skipped" in lint(tmp_path, "--base", "main").stdout
    assert "1 run(s)" in lint(tmp_path, "--base", "release/1.0").stdout


def test_lint_of_a_missing_directory_fails(tmp_path):
    out = lint(tmp_path / "nope")
    assert out.returncode == 1 and "not a directory" in out.stderr


def test_lint_says_which_events_trigger_each_run(tmp_path):
    (tmp_path / ".litci.yaml").write_text(
        "workflows:\n"
        "  - {name: pr, run: x, reports: ['out/*.xml']}\n"
        "  - {name: post, run: x, trigger: {push: {branches: [main, 'release/*']}}}\n"
        "  - {name: noqueue, run: x, trigger: {pull_request: {branches: [main]}, merge_group: false}}\n")
    out = lint(tmp_path)
    assert out.returncode == 0, out.stdout
    assert "pr\n" in out.stdout and "on: pull_request (base any branch), merge_group (base any branch)" in out.stdout
    assert "reports: out/*.xml" in out.stdout
    assert "on: pull_request (base main)\n" in out.stdout
    assert "skipped for pull requests to 'main': post (on: push (main, release/*))" in out.stdout


def test_lint_shows_the_filters_and_what_a_change_would_run(tmp_path):
    wf = tmp_path / ".lightning" / "workflows"
    wf.mkdir(parents=True)
    (wf / "lint.yaml").write_text("name: lint\npaths-ignore: ['docs/**', '*.md']\nrun: ruff check .\n")
    (wf / "gpu.yaml").write_text("name: gpu\npaths: ['src/**', 'tests/**']\nneeds: [lint]\n"
                                 "parametrize: {matrix: {cuda: ['12.1', '12.4']}}\nrun: pytest\n")
    out = lint(tmp_path)
    assert out.returncode == 0, out.stderr
    assert "paths-ignore: docs/**, *.md" in out.stdout and "paths: src/**, tests/**" in out.stdout
    assert "needs: lint" in out.stdout and "changed file" not in out.stdout
    docs = lint(tmp_path, "--changed", "docs/index.rst", "README.md")
    assert "lint: skipped: paths-ignore (docs/**, *.md) matches every one of the 2 changed files" in docs.stdout
    assert "gpu (12.1): skipped: none of the 2 changed files matches paths (src/**, tests/**)" in docs.stdout
    assert "0 of 3 run(s) would start" in docs.stdout
    src = lint(tmp_path, "--changed", "./src/lightning/trainer.py")
    assert "lint: runs" in src.stdout and "gpu (12.4): runs after its needs (waiting for lint)" in src.stdout
    assert "3 of 3 run(s) would start" in src.stdout
    tests_only = lint(tmp_path, "--changed", "tests/test_a.py", "docs/x.md")
    assert "lint: runs" in tests_only.stdout   # docs/x.md is ignored, tests/test_a.py is not
    lint_skipped = lint(tmp_path, "--changed", "README.md", "tests/test_a.py")
    assert "gpu (12.1): runs after its needs" in lint_skipped.stdout
