"""locks.FencedLock against a real redis-server: one holder, kept alive past its time to live
while held, and a holder whose claim lapsed cannot record its result over its successor's."""
from __future__ import annotations

import asyncio

from litbotd.locks import FencedLock


async def test_one_holder_and_the_claim_outlives_its_ttl_while_held(aredis):
    a, b = FencedLock(aredis, "t:claim", 0.3), FencedLock(aredis, "t:claim", 0.3)
    async with a.held() as fence:
        assert fence is not None
        for _ in range(6):  # 1.2 s: four times the TTL; renewals keep it ours
            async with b.held() as other:
                assert other is None
            await asyncio.sleep(0.2)
        assert await aredis.get("t:claim") == str(fence)
    assert await aredis.exists("t:claim") == 0  # released
    async with b.held() as again:
        assert again is not None and again > fence


async def test_a_lapsed_holder_cannot_commit_over_its_successor(aredis):
    lock = FencedLock(aredis, "t:claim2", 0.1)
    first = await lock.acquire()
    assert first is not None
    await aredis.delete("t:claim2")  # the claim lapsed (e.g. a stalled loop missed its renewals)
    second = await lock.acquire()
    assert second is not None and second != first
    assert await lock.commit(second, "t:hash", 60, comment_id=2)
    assert not await lock.commit(first, "t:hash", 60, comment_id=1)
    assert await aredis.hget("t:hash", "comment_id") == "2"
    assert not await lock.renew(first)
    await lock.release(first)  # not ours any more: nothing happens
    assert await aredis.get("t:claim2") == str(second)
