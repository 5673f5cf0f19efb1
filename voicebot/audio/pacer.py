"""One timer for every call's bot-audio pacing in the process.

Each call's playout wants to run again every 20 ms (its next frame is due) or when a virtual mark echo is
due. A timer per call means one event-loop wake-up per call per frame: at hundreds of calls that, not the
audio, is what costs. The pacer rounds every due time up to a ``granularity_s`` slot and wakes once per
slot, running every job due in it. A frame goes out at most ``granularity_s`` after it is due, against a
lead of ~100 ms already queued at the carrier, so nothing audible changes.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Callable

GRANULARITY_S = 0.002


class PacedJob:
    """A callable the pacer runs when due; it returns seconds until it wants to run again, or None."""

    __slots__ = ("run", "slot", "__weakref__")

    def __init__(self, run: Callable[[], float | None]) -> None:
        self.run = run
        self.slot: int | None = None      # the slot it is queued in; None: not queued


class Pacer:
    def __init__(self, loop: asyncio.AbstractEventLoop, granularity_s: float = GRANULARITY_S) -> None:
        self._loop = loop
        self._step = granularity_s
        self._slots: dict[int, list[PacedJob]] = {}
        self._fired = 0           # the last slot run: a job rescheduled while it runs goes to a later one

    def schedule(self, job: PacedJob, delay_s: float) -> None:
        """Run ``job`` in ``delay_s`` (rounded up to the next slot). An earlier schedule wins: a job is
        queued once, at the earliest time anyone asked for."""
        slot = max(math.ceil((self._loop.time() + max(delay_s, 0.0)) / self._step), self._fired + 1)
        if job.slot is not None and job.slot <= slot:
            return
        job.slot = slot
        jobs = self._slots.get(slot)
        if jobs is None:
            jobs = self._slots[slot] = []
            self._loop.call_at(slot * self._step, self._fire, slot)
        jobs.append(job)

    def cancel(self, job: PacedJob) -> None:
        job.slot = None       # its queue entry is skipped when the slot fires

    def _fire(self, slot: int) -> None:
        self._fired = max(self._fired, slot)
        for job in self._slots.pop(slot, ()):
            if job.slot != slot:
                continue      # cancelled, or moved to an earlier slot and run there
            job.slot = None
            try:
                delay = job.run()
            except Exception as exc:   # one call's failure must not stop the others' audio
                self._loop.call_exception_handler({"message": "paced job failed", "exception": exc})
                continue
            if delay is not None:
                self.schedule(job, delay)


_pacers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Pacer] = weakref.WeakKeyDictionary()


def shared_pacer() -> Pacer:
    """The running event loop's pacer."""
    loop = asyncio.get_running_loop()
    pacer = _pacers.get(loop)
    if pacer is None:
        pacer = _pacers[loop] = Pacer(loop)
    return pacer
