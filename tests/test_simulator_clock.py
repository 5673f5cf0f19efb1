"""The simulated calls' shared clock: absolute schedules, late ticks caught up back to back, waits, ends."""

from __future__ import annotations

import asyncio
import time

import pytest

from voicebot.simulator import clock


async def test_ticks_keep_their_own_absolute_schedules_on_one_clock():
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.01
    seen: dict[str, list[tuple[int, float]]] = {"a": [], "b": []}

    def ticker(name: str, last: int):
        def tick(n: int):
            seen[name].append((n, loop.time()))
            return clock.STOP if n == last else None
        return tick

    await asyncio.gather(clock.every(0.02, t0, ticker("a", 5)), clock.every(0.02, t0 + 0.007, ticker("b", 3)))
    assert [n for n, _ in seen["a"]] == list(range(6)) and [n for n, _ in seen["b"]] == list(range(4))
    for name, start in (("a", t0), ("b", t0 + 0.007)):
        for n, at in seen[name]:
            assert at >= start + n * 0.02 - 0.0015  # never early (beyond a millisecond timer's rounding)


async def test_late_ticks_run_back_to_back_then_the_schedule_resumes():
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    times: list[float] = []

    def tick(n: int):
        times.append(loop.time())
        if n == 1:
            time.sleep(0.07)  # the loop is held up: ticks 2, 3 and 4 fall due meanwhile
        return clock.STOP if n == 6 else None

    await clock.every(0.02, t0, tick)
    assert len(times) == 7
    assert times[4] - times[2] < 0.005  # caught up at once
    assert times[6] >= t0 + 0.12 - 0.0015  # then on the original grid again, no drift


async def test_a_tick_can_make_the_clock_wait_and_errors_end_the_schedule():
    loop = asyncio.get_running_loop()
    gate = loop.create_future()
    ticks: list[int] = []

    def tick(n: int):
        ticks.append(n)
        if n == 1:
            loop.call_later(0.05, gate.set_result, None)
            return gate
        return clock.STOP if n == 2 else None

    t0 = loop.time()
    await clock.every(0.01, t0, tick)
    assert ticks == [0, 1, 2] and loop.time() >= t0 + 0.05

    def broken(n: int):
        raise RuntimeError("tick failed")

    with pytest.raises(RuntimeError, match="tick failed"):
        await clock.every(0.01, loop.time(), broken)


async def test_a_cancelled_schedule_stops_ticking():
    loop = asyncio.get_running_loop()
    ticks: list[int] = []
    done = clock.every(0.01, loop.time(), lambda n: ticks.append(n))
    await asyncio.sleep(0.035)
    done.cancel()
    count = len(ticks)
    await asyncio.sleep(0.04)
    assert len(ticks) == count and count >= 3
