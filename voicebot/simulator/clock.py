"""One clock per event loop for the 20 ms ticks of every simulated call on it.

Each call keeps its own absolute schedule (tick ``n`` at ``t0 + n * period``; a late tick runs at once and
the ticks it held up follow back to back, so nothing drifts), but all calls are driven from one timer: the
loop wakes once per distinct due time and runs every tick due by then, instead of each call's task
sleeping and waking on its own (a timer, a future and a task step per call and tick, which at 50 ticks a
second per call was most of the load generator's CPU).

A tick is a plain function ``tick(n)``: it returns None to go on with tick ``n + 1``, :data:`STOP` to end
the schedule, or an awaitable that must complete before the next tick (the call's connection asking it to
wait, as an awaited send would have); ticks that fall due meanwhile run late, back to back, when it has.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

STOP = object()

Tick = Callable[[int], Any]


class _Schedule:
    __slots__ = ("t0", "period", "tick", "n", "done")

    def __init__(self, t0: float, period: float, tick: Tick, done: asyncio.Future) -> None:
        self.t0, self.period, self.tick, self.n, self.done = t0, period, tick, 0, done


class Metronome:
    """The ticks of all schedules on one loop, run in due order from a single timer callback."""

    def __init__(self) -> None:  # used only from its loop (not held: a closed loop can be collected)
        self._heap: list[tuple[float, int, _Schedule]] = []
        self._order = itertools.count()  # ties run in the order they were scheduled
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def run(self, t0: float, period: float, tick: Tick) -> asyncio.Future:
        """Call ``tick(0)`` at ``t0``, ``tick(1)`` at ``t0 + period``, … until it returns :data:`STOP`.
        The future resolves then (or raises what ``tick`` raised); cancelling it ends the schedule."""
        schedule = _Schedule(t0, period, tick, asyncio.get_running_loop().create_future())
        self._push(schedule, t0)
        return schedule.done

    def _push(self, schedule: _Schedule, due: float) -> None:
        heapq.heappush(self._heap, (due, next(self._order), schedule))
        self._arm()

    def _arm(self) -> None:
        """The timer set for the earliest due tick."""
        due = self._heap[0][0]
        if due < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = due
            self._timer = asyncio.get_running_loop().call_at(due, self._beat, due)

    def _beat(self, fired_for: float) -> None:
        self._timer, self._timer_at = None, math.inf
        heap, loop = self._heap, asyncio.get_running_loop()
        try:
            # A timer may fire a little before its time (uvloop counts in whole milliseconds): what it
            # was set for is due all the same, as an asyncio.sleep until then would have returned.
            while heap and (heap[0][0] <= fired_for or heap[0][0] <= loop.time()):
                schedule = heapq.heappop(heap)[2]
                if schedule.done.done():  # cancelled
                    continue
                try:
                    out = schedule.tick(schedule.n)
                except Exception as exc:  # noqa: BLE001 - it is the schedule's outcome, not the clock's
                    schedule.done.set_exception(exc)
                    continue
                if out is None:
                    schedule.n += 1
                    heapq.heappush(heap, (schedule.t0 + schedule.n * schedule.period, next(self._order), schedule))
                elif out is STOP:
                    schedule.done.set_result(None)
                else:
                    self._wait(schedule, out)
        finally:
            if heap:
                self._arm()

    def _wait(self, schedule: _Schedule, awaitable: Awaitable) -> None:
        def resume(waited: asyncio.Future) -> None:
            if schedule.done.done():
                return
            if not waited.cancelled() and waited.exception() is not None:
                schedule.done.set_exception(waited.exception())
                return
            schedule.n += 1
            self._push(schedule, schedule.t0 + schedule.n * schedule.period)

        asyncio.ensure_future(awaitable).add_done_callback(resume)


_metronomes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Metronome] = weakref.WeakKeyDictionary()


def every(period: float, t0: float, tick: Tick) -> asyncio.Future:
    """Run ``tick`` on the running loop's shared clock (see :meth:`Metronome.run`)."""
    loop = asyncio.get_running_loop()
    metronome = _metronomes.get(loop)
    if metronome is None:
        metronome = _metronomes[loop] = Metronome()
    return metronome.run(t0, period, tick)
