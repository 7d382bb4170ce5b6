"""A finished run's page, kept (SPEC §9): its whole log copied from the backend to the VM, and
what the page shows of it (meta.json), so the page outlives the job's directory and Redis' record.
Called by the `results` phase when `server.public_url` is set; pruned after `report.keep_logs`."""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Mapping

from .. import logs
from ..backends.base import Backend
from ..logstore import LogSource, Store

log = logs.get(__name__)

# The run's recorded fields a page shows; nothing else of the run's hash is kept.
STATE_FIELDS = ("status", "conclusion", "message", "started_at", "finished_at", "url", "cancel_reason",
                "retry_reason", "spent")
SPEC_FIELDS = ("check_name", "machine", "image", "backend", "pr")


def _meta(store: Store, job: str, state: Mapping[str, str], spec: Mapping[str, Any],
          mask: Callable[[str], str] | None) -> dict[str, Any]:
    src = LogSource(store.log_path(job), (lambda: mask) if mask is not None else None)
    ix = src.refresh(final=True)
    return {"state": {k: state[k] for k in STATE_FIELDS if state.get(k)},
            "spec": {k: spec[k] for k in SPEC_FIELDS if spec.get(k) is not None},
            "marks": [m.to_json() for m in ix.marks.marks], "tests": ix.marks.tests, "lines": ix.lines,
            "kept_at": time.time()}


async def keep_run(backend: Backend, store: Store, job: str, state: Mapping[str, str],
                   spec: Mapping[str, Any], mask: Callable[[str], str] | None = None) -> bool:
    """Copy the job's log, masked (`mask`: the job secrets masking, before it is stored, and again
    when it is read), and write its page's record (its annotation texts masked too); False
    (logged) when that failed: the run's result never depends on its page."""
    try:
        await asyncio.to_thread(store.prepare, job)
        await backend.copy_log(job, str(store.log_path(job)), mask)
        meta = await asyncio.to_thread(_meta, store, job, state, spec, mask)
        await asyncio.to_thread(store.write_meta, job, meta)
        return True
    except Exception as e:
        log.warning("keeping the run's page failed", job=job, error=logs.redact(f"{type(e).__name__}: {e}"))
        return False
