"""Check runs and their rows: what a run's check run shows, and its completion (+ annotations)."""
from __future__ import annotations

import dataclasses
import time
from typing import Any

from .. import checks, decisions, infra, logs, metrics, report, workflows
from ..annotations import Scan, batches
from ..context import Context
from ..runstate import RunRef

log = logs.get("litbotd.lifecycle")
ROUTING = ("delivery", "installation", "repo", "pr", "sha", "private")


def routing(p: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The payload keys every task of a run carries along, plus `extra`."""
    return {**{k: p.get(k) for k in ROUTING}, **extra}


def report_row(run: workflows.Run, attempt: int, st: dict[str, str], log_tail: str = "",
               flaky: bool = False) -> report.RunReport:
    """A run's report from its recorded state (runstate's hash of that attempt); `flaky`: the run
    failed earlier on this commit (shown only if this attempt passed)."""
    def num(k: str) -> float | None:
        return float(st[k]) if st.get(k) else None

    try_n, total = int(st.get("try") or 1), int(st.get("tries") or 1)
    tries: tuple[str, ...] = ()
    if try_n > 1:  # SPEC §11: each try the infrastructure failed, then the one in force
        now = "running" if st.get("status") != "completed" else (
            "passed" if st.get("conclusion") == decisions.SUCCESS else st.get("message") or st.get("conclusion", ""))
        tries = (*(st.get(f"try:{n}", infra.attempt_line(n, total, "?")) for n in range(1, try_n)),
                 infra.attempt_line(try_n, total, now))
    return report.RunReport(
        check_name=run.check_name, status=st.get("status") or "queued", conclusion=st.get("conclusion") or None,
        machine=run.machine, image=run.image, attempt=attempt, started_at=num("started_at"),
        finished_at=num("finished_at"), details_url=st.get("url") or None, message=st.get("message", ""),
        log_tail=log_tail, tries=tries, try_n=try_n, tries_total=total,
        waiting=st.get("waiting", ""), note=st.get("note", ""),
        flaky=flaky and st.get("conclusion") == decisions.SUCCESS,
        secrets=tuple(n for n in st.get("secrets", "").split(",") if n),
        secret_notes=tuple(n for n in st.get("secret_notes", "").split("\n") if n),
        approved_by=st.get("approved_by", ""), **_cost(num),
    )


def _cost(num: Any) -> dict[str, Any]:
    """The run's cost as its row shows it (SPEC §11): spent once ended, else its projection."""
    spent, projected, price = num("spent"), num("projected"), num("price")
    if spent is not None:
        return {"cost": spent, "cost_projected": False, "price": price}
    if projected is not None:
        return {"cost": projected, "cost_projected": True, "price": price}
    return {}


async def report_completed(ctx: Context, p: dict[str, Any], ref: RunRef, tail: str = "",
                            found: Scan | None = None) -> None:
    """Complete the check run from the recorded state, then append its annotations 50 at a time;
    repeating it writes the same thing, and sends only the annotations GitHub does not hold yet."""
    rs = ctx.runs
    state = await rs.get(ref)
    run, _ = (await rs.runs(ref.repo, ref.sha))[ref.key]
    row = report_row(run, ref.attempt, state, tail)
    if found is not None:
        row = dataclasses.replace(row, tests=found.tests_text, annotations=len(found.annotations),
                                  notes=tuple(a.as_note() for a in found.messages))
    check_id = int(state.get("check_run_id") or p["check_run_id"])
    # Masked again as rendered: the tail without its ANSI codes, annotations unescaped (SPEC §10).
    masker = ctx.masker
    output = {k: masker.mask(v) for k, v in report.check_output(row).items()}
    gh, inst = ctx.github, p["installation"]
    fields: dict[str, Any] = {}
    details = ctx.page_url(ref.repo, ref.sha, ref.key, ref.attempt) or row.details_url
    if details and details.startswith(("http://", "https://")):
        fields["details_url"] = details  # also when its in_progress update was skipped
    await checks.update_check(gh, inst, ref.repo, check_id, status="completed",
                              conclusion=row.conclusion, completed_at=checks.iso(time.time()), output=output,
                              **fields)
    writes = await rs.count_write(ref)
    if not state.get("reported"):
        metrics.RUN_WRITES.observe(writes)
    if found is not None and found.annotations:
        sent = await checks.annotations_sent(gh, inst, ref.repo, check_id)
        todo = found.annotations[sent:]
        masked = [[{k: masker.mask(v) if isinstance(v, str) else v for k, v in a.items()} for a in batch]
                  for batch in batches(todo)]
        taken = await checks.add_annotations(gh, inst, ref.repo, check_id, output, masked)
        if taken < len(todo):
            log.warning("GitHub refused some annotations", refused=len(todo) - taken)
    await rs.update(ref, reported=1)
