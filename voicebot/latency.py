"""Optional latency histograms of the server's hot paths, for load tests (``voicebot loadtest``).

Off unless the environment has ``VOICEBOT_LATENCY=1`` when the process starts; then ``GET /debug/latency``
(``?reset=1`` to start a new window) returns them. Off, the hot paths pay one module-attribute test per
frame. What is measured (all on the process's monotonic clock, in one event loop):

* ``in``: a carrier message reaching the carrier module → its audio's ``append`` written to the StepFun
  socket (parse, decode, local VAD, resample, encode, the StepFun outbox, the socket write). For the chain
  engine, which uploads whole utterances to ASR instead: → the frame taken into the chain's endpointer
  (parse, decode, local VAD, the endpointer's VAD and buffer, and a barge-in the frame triggers);
* ``out``: a bot frame being due (its audio has arrived — a realtime delta, or a chunk of the chain's TTS
  stream — and the pacing lead allows it) → the frame handed to the carrier connection (decode, resample,
  playout, pacing timer lateness, encode);
* ``barge_model`` / ``barge_vad``: the message that triggered a barge-in (StepFun ``speech_started``, or
  the carrier frame that confirmed our own VAD) reaching us → the carrier ``clear`` queued;
* ``loop``: lateness of a 10 ms timer: how long anything ready (a socket, a queued message) waits for
  the event loop. It bounds what the spans above cannot see: time in the socket readers before our code
  runs and in the carrier outbox after it;
* ``gc``: pauses of Python's cyclic garbage collector (counters ``gc_gen0`` … ``gc_gen2``): the loop stands
  still while it runs.

Counters: ``carrier_frames_in`` (caller frames parsed), ``frames_fed`` (caller frames an engine took),
``appends_sent`` (realtime), ``chain_speech_frames`` (caller frames the chain's endpointer cut into
utterances) and ``chain_asr_frames`` (those sent to ASR).
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import time

ENABLED = os.environ.get("VOICEBOT_LATENCY", "").strip().lower() not in ("", "0", "false", "no", "off")
clock = time.monotonic

# When the message being handled right now reached us, and from which side ("carrier" / "model").
# Everything a message causes happens synchronously in the same loop step, so spans start here.
arrival = 0.0
arrival_side = ""

_GROWTH = 1.05           # bucket i holds values up to 1 µs × 1.05**i: 5 % resolution
_LOG_GROWTH = math.log(_GROWTH)
_BUCKETS = 420           # up to ~800 s


class Histogram:
    __slots__ = ("counts", "n", "total", "max")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.n = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        us = seconds * 1e6
        index = 0 if us <= 1.0 else min(int(math.log(us) / _LOG_GROWTH) + 1, _BUCKETS - 1)
        self.counts[index] += 1
        self.n += 1
        self.total += seconds
        if seconds > self.max:
            self.max = seconds

    def percentile(self, q: float) -> float:
        """Upper edge (seconds) of the bucket holding the q-quantile (0 < q ≤ 1); 0 when empty."""
        if not self.n:
            return 0.0
        rank = max(1, math.ceil(q * self.n))
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return min(_GROWTH ** index * 1e-6, self.max)
        return self.max

    def summary(self) -> dict:
        def ms(value: float) -> float:
            return round(value * 1000, 3)
        return {"count": self.n, "mean_ms": ms(self.total / self.n) if self.n else 0.0,
                "p50_ms": ms(self.percentile(0.50)), "p95_ms": ms(self.percentile(0.95)),
                "p99_ms": ms(self.percentile(0.99)), "max_ms": ms(self.max)}


NAMES = ("in", "out", "barge_model", "barge_vad", "loop", "gc")
histograms: dict[str, Histogram] = {name: Histogram() for name in NAMES}
counters: dict[str, int] = {}
_window_start = clock()


def record(name: str, seconds: float) -> None:
    histograms[name].add(seconds)


def count(name: str, n: int = 1) -> None:
    counters[name] = counters.get(name, 0) + n


def reset() -> None:
    """Start a new window for the histograms (counters keep counting)."""
    global _window_start
    for name in NAMES:
        histograms[name] = Histogram()
    _window_start = clock()


def snapshot() -> dict:
    return {"enabled": ENABLED, "window_s": round(clock() - _window_start, 3),
            "histograms": {name: h.summary() for name, h in histograms.items()},
            "counters": dict(counters)}


_gc_started = 0.0


def _gc_callback(phase: str, info: dict) -> None:
    global _gc_started
    if phase == "start":
        _gc_started = clock()
    else:
        histograms["gc"].add(clock() - _gc_started)
        count(f"gc_gen{info.get('generation', 0)}")


def watch_gc() -> None:
    """Record every garbage-collector pause from now on (once per process)."""
    if _gc_callback not in gc.callbacks:
        gc.callbacks.append(_gc_callback)


async def loop_lag_probe(interval_s: float = 0.010) -> None:
    """Runs until cancelled: records how late a ``interval_s`` timer fires."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval_s
        await asyncio.sleep(interval_s)
        histograms["loop"].add(max(0.0, loop.time() - due))
