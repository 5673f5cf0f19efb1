"""How much caller audio a carrier connection may deliver: real time, plus a burst.

A carrier sends 20 ms of audio every 20 ms. One that sends much faster (a broken or hostile peer, a replay)
would otherwise have every frame resampled, encoded and pushed to the model: its call's CPU grows with the
flood, the model hears garbage, and the calls sharing the process wait. The shared stream runner
(voicebot/answer.py) asks :class:`CallerAudioBudget` about every audio message of every carrier before
anything else touches it; what is over the budget is dropped there and counted, never queued.

The budget is a token bucket in samples: it fills at the 8 kHz sample rate up to ``burst_ms`` and each audio
message takes its length. A message is let through while the bucket is not empty (a single message may be
larger than what is left; the debt is paid back in real time), so the audio that passes never runs more than
one burst plus one message ahead of the clock, and a steady flood passes exactly real time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..audio import RATE

# Audio that may arrive at once, ahead of real time. Bursts are normal: a carrier catching up after a network
# stall (TCP retransmission backs off for hundreds of ms), or this process after a pause of its own (a GC, a
# busy moment) finding a second of frames waiting in the socket. Two seconds covers both with room; what
# comes faster than that is no phone call.
FLOOD_BURST_MS = 2000


class CallerAudioBudget:
    """Admits a carrier's audio messages at real time plus ``burst_ms``; counts what it drops."""

    __slots__ = ("_capacity", "_tokens", "_last", "_clock", "dropped_samples", "dropped_messages", "first_drop_t")

    def __init__(self, burst_ms: int = FLOOD_BURST_MS, clock: Callable[[], float] = time.monotonic) -> None:
        self._capacity = burst_ms * RATE / 1000
        self._tokens = self._capacity
        self._clock = clock
        self._last = clock()
        self.dropped_samples = 0
        self.dropped_messages = 0
        self.first_drop_t: float | None = None   # clock() of the first message dropped

    def admit(self, samples: int) -> bool:
        """True: pass on this message of ``samples`` (8 kHz) samples; False: it is over the budget."""
        now = self._clock()
        tokens = self._tokens + (now - self._last) * RATE
        self._last = now
        if tokens > self._capacity:
            tokens = self._capacity
        if tokens > 0:
            self._tokens = tokens - samples
            return True
        self._tokens = tokens
        self.dropped_samples += samples
        self.dropped_messages += 1
        if self.first_drop_t is None:
            self.first_drop_t = now
        return False
