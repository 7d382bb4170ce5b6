"""`needs` (SPEC §4): the order of a commit's workflows, as pure decisions. No I/O.

- `graph_errors`: which workflow files are errors because a `needs` names a workflow that does
  not exist (or whose file is itself an error), or because the names form a cycle.
- `decide`: for the runs of one commit, which waiting runs may start, must be skipped (a needed
  run ended other than `success`: failure, cancelled, timed out, skipped…) or still wait.
- `rearm`: which runs a re-run of some runs brings back (those skipped for their needs).

A workflow is named by its `name`; `needs: [lint]` means every run of every workflow named
`lint` for the same commit (each at its latest attempt). A needed workflow that has no run for
the commit at all (its trigger does not match this event) is nothing to wait for.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

WAITING = "waiting"     # queued, waiting for its needs
PENDING = "pending"     # queued to start, or running
SUCCESS = "success"
SKIPPED = "skipped"


@dataclass(frozen=True)
class Declared:
    """One workflow as read: its file, its name and what it needs."""
    file: str
    name: str
    needs: tuple[str, ...]


def graph_errors(workflows: Iterable[Declared], broken: Mapping[str, str] = {}) -> dict[str, str]:
    """{file: message} for every file that must fail because of `needs`. `broken`: the files that
    are errors already (file → why), whose workflows are therefore unknown."""
    wfs = list(workflows)
    bad: dict[str, str] = {}
    known_all = {w.name for w in wfs}
    # Cycles first: each workflow on one names it.
    graph: dict[str, set[str]] = {}
    for w in wfs:
        if w.file in broken:
            continue
        graph.setdefault(w.name, set()).update(n for n in w.needs if n in known_all)
    for w in wfs:
        if w.file in bad or w.file in broken:
            continue
        cycle = _cycle_through(w.name, graph)
        if cycle:
            bad[w.file] = f"a cycle: {' → '.join(cycle)}"
    # Unknown names, and names whose every workflow is in a bad file: to a fixed point, since a
    # workflow that needs one in a bad file cannot run either.
    while True:
        usable = {w.name for w in wfs if w.file not in bad and w.file not in broken}
        added = False
        for w in wfs:
            if w.file in bad or w.file in broken:
                continue
            for n in w.needs:
                if n in usable:
                    continue
                if n not in known_all:
                    close = sorted(known_all - {w.name})
                    hint = f"; workflows here: {', '.join(close[:10])}" if close else ""
                    if broken:
                        hint += f"; invalid: {', '.join(sorted(broken))}"
                    bad[w.file] = f"{n!r} names no workflow{' (' + hint[2:] + ')' if hint else ''}"
                else:
                    where = sorted({x.file for x in wfs if x.name == n})
                    bad[w.file] = f"{n!r} is in {', '.join(where)}, which has an error"
                added = True
                break
        if not added:
            return bad


def _cycle_through(start: str, graph: Mapping[str, set[str]]) -> list[str] | None:
    """A path start → … → start along the needs, or None."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


@dataclass(frozen=True)
class Node:
    """One run of the commit: its workflow's name, what that workflow needs, its check name."""
    workflow: str
    needs: tuple[str, ...]
    check_name: str


@dataclass(frozen=True)
class Decision:
    action: str      # "start" | "skip" | "wait"
    reason: str = ""  # skip: what did not succeed; wait: "waiting for lint"


def _needed(node: Node, nodes: Mapping[str, Node]) -> list[str]:
    return sorted(k for k, n in nodes.items() if n.workflow in node.needs)


def _one(node: Node, nodes: Mapping[str, Node], states: Mapping[str, str]) -> Decision:
    needed = _needed(node, nodes)
    failed = [k for k in needed if states.get(k, PENDING) not in (WAITING, PENDING, SUCCESS)]
    if failed:
        shown = ", ".join(f"{nodes[k].check_name} ({states[k]})" for k in failed[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        names = ", ".join(sorted({nodes[k].workflow for k in failed}))
        return Decision("skip", f"needs {names}, which did not succeed: {shown}{more}")
    pending = sorted({nodes[k].workflow for k in needed if states.get(k, PENDING) in (WAITING, PENDING)})
    if pending:
        return Decision("wait", f"waiting for {', '.join(pending)}")
    return Decision("start")


def decide(nodes: Mapping[str, Node], states: Mapping[str, str]) -> dict[str, Decision]:
    """For every run whose state is WAITING: start, skip or wait. `states`: each run's state at
    its latest attempt (WAITING, PENDING or its conclusion). A skip counts as a conclusion for
    the runs that need it in turn; a start counts as pending."""
    now = dict(states)
    out: dict[str, Decision] = {}
    changed = True
    while changed:
        changed = False
        for key in sorted(nodes):
            if now.get(key) != WAITING:
                continue
            d = _one(nodes[key], nodes, now)
            out[key] = d
            if d.action == "skip":
                now[key] = SKIPPED
                changed = True
            elif d.action == "start":
                now[key] = PENDING
    return out


def waits(node: Node, nodes: Mapping[str, Node]) -> bool:
    """Whether a run has anything to wait for at all (a needed workflow with runs)."""
    return bool(_needed(node, nodes))


def rearm(nodes: Mapping[str, Node], rerun: Iterable[str], needs_skipped: Iterable[str]) -> set[str]:
    """The runs a re-run of `rerun` brings back: those in `needs_skipped` (skipped because of their
    needs) that need, directly or through others brought back, a re-run workflow."""
    again = set(rerun)
    candidates = set(needs_skipped) - again
    out: set[str] = set()
    changed = True
    while changed:
        changed = False
        workflows = {nodes[k].workflow for k in again | out if k in nodes}
        for k in sorted(candidates - out):
            if k in nodes and workflows & set(nodes[k].needs):
                out.add(k)
                changed = True
    return out


def state_of(st: Mapping[str, str]) -> str:
    """A run attempt's recorded state (runstate's hash) as `decide` sees it."""
    if st.get("conclusion"):
        return st["conclusion"]
    if st.get("cancel_reason"):
        return "cancelled"
    if st.get("waiting"):
        return WAITING
    return PENDING


def plan_new(nodes: Mapping[str, Node], states: Mapping[str, str], new: Iterable[str],
             path_skips: Mapping[str, str]) -> dict[str, Decision]:
    """What runs being queued now do: skip (their paths filter left them out, or a need did not
    succeed), wait, or start. `states`: the other runs' latest states; `path_skips`: new run → why."""
    now = dict(states)
    new = list(new)
    for k in new:
        now[k] = SKIPPED if k in path_skips else (WAITING if waits(nodes[k], nodes) else PENDING)
    decided = decide(nodes, now)
    out: dict[str, Decision] = {}
    for k in new:
        if k in path_skips:
            out[k] = Decision("skip", path_skips[k])
        else:
            out[k] = decided.get(k, Decision("start"))
    return out
