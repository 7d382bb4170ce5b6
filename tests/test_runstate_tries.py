"""RunState.advance_try: one infrastructure retry per ended try, also when the task repeats (SPEC §11)."""
from __future__ import annotations

from litbotd.queue import Queue
from litbotd.runstate import RunRef, RunState


async def test_advance_try_once_and_repeatably(aredis) -> None:
    rs = RunState(Queue(aredis, "tries"))
    ref = RunRef("o/r", "a" * 40, "run-1", 1)
    assert await rs.transition(ref, ("",), status="in_progress")
    assert await rs.advance_try(ref, 1, "attempt 1 of 3: preempted", 3, 0.42) == 2
    assert await rs.advance_try(ref, 1, "attempt 1 of 3: preempted", 3, 0.42) == 2  # the same task again: same answer
    assert await rs.advance_try(ref, 2, "attempt 2 of 3: machine lost", 3) == 3
    assert await rs.advance_try(ref, 1, "attempt 1 of 3: preempted", 3) == 3  # a stale task: not its try to start
    state = await rs.get(ref)
    assert (state["try"], state["try:1"], state["try:2"]) == ("3", "attempt 1 of 3: preempted", "attempt 2 of 3: machine lost")
    assert (state["try_cost:1"], "try_cost:2" in state, state["tries"]) == ("0.42", False, "3")  # try 2: cost unknown
    assert await rs.request_cancel(ref, "superseded")
    assert await rs.advance_try(ref, 3, "attempt 3 of 3: preempted", 3) == 0  # being cancelled: no further try
    assert (await rs.get(ref))["try"] == "3"
