"""The dialer's clock: what time it is (windows, retry delays, the dial-rate schedule) and waiting for a moment.

Dial slots are epoch seconds shared by every instance through the database, so instances must agree on the time
(NTP). :class:`ShiftedClock` runs at the real pace from another starting point and can jump ahead: a campaign can be
tried at 09:00 on a Monday in New York, and a test can move past a two-hour retry delay without waiting for it."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone


class Clock:
    def time(self) -> float:
        """Epoch seconds."""
        return time.time()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), timezone.utc)

    async def sleep_until(self, epoch_s: float) -> None:
        delay = epoch_s - self.time()
        if delay > 0:
            await asyncio.sleep(delay)


class ShiftedClock(Clock):
    """Real-paced time that starts at ``start`` and moves on by :meth:`advance`; sleepers wake when it jumps."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ShiftedClock needs a timezone-aware start")
        self._offset = start.timestamp() - time.time()
        self._jumped = asyncio.Event()

    def time(self) -> float:
        return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        self._offset += seconds
        jumped, self._jumped = self._jumped, asyncio.Event()
        jumped.set()

    async def sleep_until(self, epoch_s: float) -> None:
        while (delay := epoch_s - self.time()) > 0:
            jumped = self._jumped
            try:
                await asyncio.wait_for(jumped.wait(), delay)
            except asyncio.TimeoutError:
                pass
