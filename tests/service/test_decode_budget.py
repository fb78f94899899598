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


def test_a_small_image_costs_about_its_own_size_and_skips_the_trim() -> None:
    """The decode cost of a small image is its pixels' worth (Pillow's copy, the RGB array, the
    conversion's block, which is never larger than the image), not a fixed block of 64 MB: it
    leaves the budget to other requests and does not trim the heap after every decode."""
    import io

    from PIL import Image

    from service.decode_budget import TRIM_AFTER_BYTES
    from service.imageio import probe_image

    def cost(size: tuple[int, int], fmt: str) -> int:
        buf = io.BytesIO()
        Image.new("RGB", size, (90, 120, 30)).save(buf, format=fmt)
        return probe_image(buf.getvalue(), allowed=("jpeg", "png"), max_pixels=10**9)

    small = cost((256, 256), "JPEG")
    assert small <= 256 * 256 * (4 + 3 + 4 + 64)  # Pillow's RGB is 4 bytes a pixel
    assert small < TRIM_AFTER_BYTES
    # a large image still counts its conversion block of 2^20 pixels, not its whole size
    big = cost((4000, 3000), "PNG")
    assert (big - 64 * (1 << 20)) % (4000 * 3000) == 0
    assert big >= TRIM_AFTER_BYTES


def test_a_small_decode_runs_on_the_event_loop_and_a_larger_one_on_a_thread() -> None:
    async def main() -> None:
        budget = DecodeBudget(100, threads=1, inline_bytes=10)
        loop_thread = threading.get_ident()
        for cost, here in ((10, True), (11, False)):
            async with budget.hold(cost) as h:
                ran_on = await budget.run(h, threading.get_ident)
                assert (ran_on == loop_thread) is here
                if here:  # no thread to wait for
                    assert (h.threads, budget.running) == (0, 0)
            assert budget.held == 0
        budget.close()

    asyncio.run(main())
