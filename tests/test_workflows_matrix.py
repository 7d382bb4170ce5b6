"""Property tests of the matrix expansion, check names, keys and globs (litbotd.workflows)."""
from __future__ import annotations

import itertools
import re
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from litbotd import workflows as wf
from litbotd.workflows import Defaults, plan

D = Defaults(image="ubuntu:22.04", machine="CPU", timeout=3600.0)
F = ".lightning/workflows/m.yml"
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Values whose YAML text is distinct across types, so distinct cells get distinct check names
# unless the reference model says otherwise.
VALUES = st.one_of(st.sampled_from(["a", "b", "x y", "3.10", "ä"]), st.integers(0, 5), st.booleans())
KEYS = st.sampled_from(["python", "os", "torch-ver", "Feature.Flag", "n"])


def typed(cell: dict[str, Any]) -> frozenset[tuple[str, str, Any]]:
    return frozenset((k, type(v).__name__, v) for k, v in cell.items())


def text(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


@st.composite
def parametrize(draw: st.DrawFn) -> dict[str, Any]:
    keys = draw(st.lists(KEYS, min_size=1, max_size=3, unique=True))
    matrix = {k: draw(st.lists(VALUES, min_size=1, max_size=4, unique_by=lambda v: (type(v), v))) for k in keys}
    # Exclude entries reuse matrix values (so they hit) on a subset of the keys.
    exclude = []
    for _ in range(draw(st.integers(0, 3))):
        sub = draw(st.lists(st.sampled_from(keys), min_size=1, max_size=len(keys), unique=True))
        exclude.append({k: draw(st.sampled_from(matrix[k])) for k in sub})
    # Include entries: sometimes an existing cell, sometimes new values or an extra key.
    include = []
    for _ in range(draw(st.integers(0, 3))):
        entry = {k: draw(st.one_of(st.sampled_from(matrix[k]), VALUES)) for k in keys}
        if draw(st.booleans()):
            entry["extra"] = draw(VALUES)
        include.append(entry)
    return {"matrix": matrix, "exclude": exclude, "include": include}


def reference(p: dict[str, Any]) -> list[dict[str, Any]]:
    """GitHub Actions semantics written the obvious way: product, minus exclude, plus new includes."""
    keys = list(p["matrix"])
    cells = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*p["matrix"].values())]
    cells = [c for c in cells if not any(typed(e) <= typed(c) for e in p["exclude"])]
    for entry in p["include"]:
        if typed(entry) not in {typed(c) for c in cells}:
            cells.append(entry)
    return cells


def workflow_yaml(p: dict[str, Any]) -> str:
    return yaml.safe_dump({"name": "W", "env": {"BASE": "1"}, "parametrize": p, "run": "true"}, sort_keys=False)


@FAST
@given(parametrize())
def test_matrix_matches_the_reference_model(p: dict[str, Any]) -> None:
    expected = reference(p)
    names = [f"W ({', '.join(text(v) for v in c.values())})" for c in expected]
    result = plan({F: workflow_yaml(p)}, "main", D)
    if not expected:
        assert "every matrix combination is excluded" in result.errors[0].message
    elif len(set(names)) < len(names):
        # Two different cells that read the same: refused rather than reported twice.
        assert len(result.errors) == 1 and "appears twice" in result.errors[0].message
    else:
        assert result.errors == []
        assert [r.cell for r in result.runs] == expected
        assert [typed(r.cell) for r in result.runs] == [typed(c) for c in expected]
        assert [r.check_name for r in result.runs] == names


@FAST
@given(parametrize())
def test_size_is_product_minus_excluded_plus_distinct_includes(p: dict[str, Any]) -> None:
    product = [dict(zip(p["matrix"], combo, strict=True)) for combo in itertools.product(*p["matrix"].values())]
    kept = [c for c in product if not any(typed(e) <= typed(c) for e in p["exclude"])]
    new_includes = {typed(e) for e in p["include"]} - {typed(c) for c in kept}
    result = plan({F: workflow_yaml(p)}, "main", D)
    if result.errors == []:
        assert len(result.runs) == len(kept) + len(new_includes)
        assert len(product) == len(list(itertools.product(*p["matrix"].values())))


@FAST
@given(parametrize())
def test_invariants_of_every_plan(p: dict[str, Any]) -> None:
    runs = plan({F: workflow_yaml(p)}, "main", D).runs
    includes = [typed(e) for e in p["include"]]
    assert len({r.check_name for r in runs}) == len(runs)
    assert len({r.key for r in runs}) == len(runs)
    for r in runs:
        assert re.fullmatch(r"[a-z0-9-]{1,48}", r.key)
        assert r.key == wf.run_key(F, r.check_name)
        assert r.check_name.startswith("W (") and "\n" not in r.check_name
        assert r.env["BASE"] == "1"
        for name, value in r.env.items():
            assert re.fullmatch(r"\w+", name, re.ASCII) and isinstance(value, str)
        assert set(r.env) == {"BASE"} | {wf.env_name(k) for k in r.cell}
        # An excluded cell only comes back if an include entry names it exactly.
        for e in p["exclude"]:
            if typed(e) <= typed(r.cell):
                assert typed(r.cell) in includes


@FAST
@given(parametrize())
def test_plan_is_deterministic(p: dict[str, Any]) -> None:
    text_ = workflow_yaml(p)
    a = plan({F: text_, ".litci.yaml": "run: x\n"}, "main", D)
    b = plan({".litci.yaml": "run: x\n", F: text_}, "main", D)
    assert a == b
    assert [r.key for r in a.runs] == [r.key for r in b.runs]


@FAST
@given(parametrize())
def test_runs_survive_a_json_trip(p: dict[str, Any]) -> None:
    import json
    for run in plan({F: workflow_yaml(p)}, "main", D).runs:
        assert wf.run_from_jsonable(json.loads(json.dumps(wf.to_jsonable(run)))) == run


BRANCH = st.from_regex(r"[a-z0-9._-]{1,8}(/[a-z0-9._-]{1,8}){0,3}", fullmatch=True)


@settings(max_examples=100, deadline=None)
@given(BRANCH)
def test_glob_basics(branch: str) -> None:
    assert wf.branch_matches([branch], branch)                       # a literal name matches itself
    assert wf.branch_matches(["**"], branch)
    assert wf.branch_matches(["*"], branch) == ("/" not in branch)   # `*` never crosses "/"
    head, _, rest = branch.partition("/")
    assert wf.branch_matches([f"{head}/**"], branch) == bool(rest)
    assert wf.branch_matches([f"{head}/*"], branch) == (bool(rest) and "/" not in rest)
    assert not wf.branch_matches(["**", f"!{branch}"], branch)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 48), st.integers(0, 59), st.integers(0, 59))
def test_duration_strings_add_up(h: int, m: int, s: int) -> None:
    parts = [f"{n}{u}" for n, u in ((h, "h"), (m, "m"), (s, "s")) if n]
    if parts:
        assert wf.parse_timeout("".join(parts)) == h * 3600 + m * 60 + s
        assert wf.parse_timeout(" ".join(parts)) == h * 3600 + m * 60 + s
    if m:
        assert wf.parse_timeout(m) == m * 60.0
