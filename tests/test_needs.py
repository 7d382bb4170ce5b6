"""litbotd.needs: the order of a commit's workflows (SPEC §4 `needs`), as pure decisions."""
from __future__ import annotations

import pytest

from litbotd.needs import PENDING, SKIPPED, WAITING, Declared, Node, decide, graph_errors, rearm

A, B, C = ".lightning/workflows/a.yml", ".lightning/workflows/b.yml", ".lightning/workflows/c.yml"


@pytest.mark.parametrize("declared, broken, expected", [
    ([Declared(A, "lint", ()), Declared(B, "gpu", ("lint",))], {}, {}),
    ([Declared(B, "gpu", ("lnt",)), Declared(A, "lint", ())], {}, {B: "'lnt' names no workflow"}),
    ([Declared(A, "a", ("b",)), Declared(B, "b", ("a",))], {},
     {A: "a cycle: a → b → a", B: "a cycle: b → a → b"}),
    ([Declared(A, "a", ("a",))], {}, {A: "a cycle: a → a"}),
    # a file that needs one on a cycle cannot run either
    ([Declared(A, "a", ("b",)), Declared(B, "b", ("a",)), Declared(C, "c", ("a",))], {},
     {A: "cycle", B: "cycle", C: "'a' is in .lightning/workflows/a.yml, which has an error"}),
    # a needed workflow in an invalid file: unknown, so the needing file fails too (and the next)
    ([Declared(B, "gpu", ("lint",)), Declared(C, "e2e", ("gpu",))], {A: "bad yaml"},
     {B: "'lint' names no workflow", C: "'gpu' is in .lightning/workflows/b.yml, which has an error"}),
    ([Declared(A, "lint", ()), Declared(B, "gpu", ("lint",))], {A: "bad"}, {B: "'lint' is in .lightning/workflows/a.yml"}),
    # a file already invalid gets no second error, even on a cycle
    ([Declared(A, "a", ("b",)), Declared(B, "b", ("a",))], {A: "too many runs"}, {B: "'a' is in .lightning/workflows/a.yml, which has an error"}),
    # a diamond is no cycle
    ([Declared(A, "lint", ()), Declared(B, "x", ("lint",)), Declared(C, "y", ("lint", "x"))], {}, {}),
])
def test_graph_errors(declared: list[Declared], broken: dict[str, str], expected: dict[str, str]) -> None:
    got = graph_errors(declared, broken)
    assert set(got) == set(expected), got
    for file, fragment in expected.items():
        assert fragment in got[file], got[file]


NODES = {
    "lint": Node("lint", (), "lint"),
    "gpu1": Node("gpu", ("lint",), "gpu (L4)"),
    "gpu2": Node("gpu", ("lint",), "gpu (A10G)"),
    "e2e": Node("e2e", ("gpu",), "e2e"),
    "docs": Node("docs", (), "docs"),
}


@pytest.mark.parametrize("states, expected", [
    # lint still running: everyone waits, and says for what
    ({"lint": PENDING, "gpu1": WAITING, "gpu2": WAITING, "e2e": WAITING},
     {"gpu1": ("wait", "waiting for lint"), "gpu2": ("wait", "waiting for lint"), "e2e": ("wait", "waiting for gpu")}),
    # lint passed: the gpu runs start; e2e waits for them
    ({"lint": "success", "gpu1": WAITING, "gpu2": WAITING, "e2e": WAITING},
     {"gpu1": ("start", ""), "gpu2": ("start", ""), "e2e": ("wait", "waiting for gpu")}),
    # lint failed: gpu skipped naming lint, and e2e in the same step naming gpu
    ({"lint": "failure", "gpu1": WAITING, "gpu2": WAITING, "e2e": WAITING},
     {"gpu1": ("skip", "needs lint, which did not succeed: lint (failure)"),
      "gpu2": ("skip", "needs lint, which did not succeed: lint (failure)"),
      "e2e": ("skip", "needs gpu, which did not succeed: gpu (L4) (skipped), gpu (A10G) (skipped)")}),
    # one gpu cell failed, the other still runs: e2e is decided at once, no GPU left waiting
    ({"lint": "success", "gpu1": "failure", "gpu2": PENDING, "e2e": WAITING},
     {"e2e": ("skip", "needs gpu, which did not succeed: gpu (L4) (failure)")}),
    ({"lint": "success", "gpu1": "success", "gpu2": "success", "e2e": WAITING}, {"e2e": ("start", "")}),
    # cancelled, timed out and skipped (by paths) are no success either
    ({"lint": "cancelled", "gpu1": WAITING}, {"gpu1": ("skip", "lint (cancelled)")}),
    ({"lint": "timed_out", "gpu1": WAITING}, {"gpu1": ("skip", "lint (timed_out)")}),
    ({"lint": SKIPPED, "gpu1": WAITING}, {"gpu1": ("skip", "lint (skipped)")}),
    # runs not waiting are not decided
    ({"lint": "success", "gpu1": PENDING, "gpu2": "failure"}, {}),
])
def test_decide(states: dict[str, str], expected: dict[str, tuple[str, str]]) -> None:
    got = decide(NODES, states)
    assert {k: d.action for k, d in got.items()} == {k: a for k, (a, _) in expected.items()}
    for k, (_, reason) in expected.items():
        assert reason in got[k].reason, got[k]


def test_a_needed_workflow_without_runs_is_nothing_to_wait_for() -> None:
    # `lint` runs on pull requests only; on a push `gpu` has nothing to wait for.
    nodes = {"gpu": Node("gpu", ("lint",), "gpu")}
    assert decide(nodes, {"gpu": WAITING})["gpu"].action == "start"


@pytest.mark.parametrize("rerun, skipped, expected", [
    ({"lint"}, {"gpu1", "gpu2", "e2e"}, {"gpu1", "gpu2", "e2e"}),   # transitively
    ({"gpu1"}, {"e2e"}, {"e2e"}),
    ({"docs"}, {"gpu1", "e2e"}, set()),                             # not a dependant
    ({"lint"}, {"e2e"}, set()),                                     # e2e needs gpu, which is not re-run
    ({"lint"}, set(), set()),
])
def test_rearm(rerun: set[str], skipped: set[str], expected: set[str]) -> None:
    assert rearm(NODES, rerun, skipped) == expected


def test_plan_new_cascades_path_skips_and_waits() -> None:
    from litbotd.needs import plan_new

    # lint left out by its paths filter: gpu, which needs it, is skipped at once, naming lint
    got = plan_new(NODES, {}, ["lint", "gpu1", "docs"], {"lint": "none of the 1 changed files matches paths (src/**)"})
    assert got["lint"] == got["lint"].__class__("skip", "none of the 1 changed files matches paths (src/**)")
    assert got["gpu1"].action == "skip" and "lint (skipped)" in got["gpu1"].reason
    assert got["docs"].action == "start"
    # a fresh plan: gpu waits for lint, e2e for gpu
    got = plan_new(NODES, {}, list(NODES), {})
    assert {k: d.action for k, d in got.items()} == {"lint": "start", "gpu1": "wait", "gpu2": "wait",
                                                    "e2e": "wait", "docs": "start"}
    # a re-run of gpu alone after lint passed starts at once
    got = plan_new(NODES, {"lint": "success", "gpu2": "success", "e2e": "success"}, ["gpu1"], {})
    assert got["gpu1"].action == "start"


@pytest.mark.parametrize("st, state", [
    ({}, PENDING), ({"status": "queued", "waiting": "waiting for lint"}, WAITING),
    ({"status": "in_progress"}, PENDING), ({"conclusion": "failure"}, "failure"),
    ({"cancel_reason": "superseded", "status": "queued", "waiting": "w"}, "cancelled"),
])
def test_state_of(st: dict[str, str], state: str) -> None:
    from litbotd.needs import state_of

    assert state_of(st) == state
