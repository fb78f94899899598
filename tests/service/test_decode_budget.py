"""The decode memory budget: holds wait for room, an image larger than the whole budget is 413,
and a decode that outlives its request keeps its bytes held (and shows) until its thread ends."""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.decode_budget import DecodeBudget
from service.errors import ApiError


def test_too_large_for_the_whole_budget_is_413() -> None:
    async def main() -> None:
        budget = DecodeBudget(100, threads=1)
        with pytest.raises(ApiError) as e:
            async with budget.hold(101):
                pass
        assert e.value.status == 413
        assert budget.held == 0
        budget.close()

    asyncio.run(main())


def test_a_hold_waits_for_room_and_shrinks_after_the_decode() -> None:
    async def main() -> None:
        budget = DecodeBudget(100, threads=2)
        order: list[str] = []

        async def first() -> None:
            async with budget.hold(80) as h:
                order.append("first in")
                await asyncio.sleep(0.1)
                h.shrink(10)  # decoded: only the RGB array is still in use
                order.append("first shrank")
                await asyncio.sleep(0.1)

        async def second() -> None:
            await asyncio.sleep(0.02)
            async with budget.hold(50):
                order.append("second in")
                assert budget.held == 60

        await asyncio.gather(first(), second())
        assert order == ["first in", "first shrank", "second in"]
        assert budget.held == 0
        budget.close()

    asyncio.run(main())


def test_abandoned_decode_stays_held_and_visible_until_its_thread_ends() -> None:
    release = threading.Event()

    async def main() -> None:
        budget = DecodeBudget(100, threads=1)

        async def request() -> None:
            async with budget.hold(70) as h:
                await budget.run(h, lambda: release.wait(5))

        task = asyncio.create_task(request())
        await asyncio.sleep(0.1)
        task.cancel()  # the request's deadline: it gives up waiting
        with pytest.raises(asyncio.CancelledError):
            await task
        assert budget.held == 70  # the thread still decodes: its memory is still in use
        assert budget.running == 1
        release.set()
        for _ in range(100):
            await asyncio.sleep(0.02)
            if budget.running == 0:
                break
        assert budget.running == 0
        assert budget.held == 0
        budget.close()

    asyncio.run(main())
