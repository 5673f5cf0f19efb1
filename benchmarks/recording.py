"""What recording a call costs: N simulated calls through the playout alone, then the same calls with a
stereo as-heard recorder each, side by side in one run.

Run:  .venv/bin/python benchmarks/recording.py [--calls 150] [--seconds 20] [--repeats 5] [--realtime 15]

Each simulated call, on one fake clock stepped 20 ms at a time (as fast as the CPU goes, not in real time):
a caller frame every step (the speech fixtures, looped), bot turns of 3 s with 2 s pauses arriving as 100 ms
deltas the way the realtime engine delivers them, the playout pumped every step (100 ms carrier messages,
virtual mark echoes: no carrier model to spend time in), and a barge-in on every third turn 1.2 s into it.
With recording, each call also has a ``CallRecorder``: ``caller`` per caller frame, the playout's hook per
bot frame and per barge-in, ``close`` at the end, files written by the shared writer thread to a temporary
folder (on this VM's disk).

Figures are CPU time per 20 ms of one call's audio: the whole process (``time.process_time``: the event
loop's thread and the writer thread) and the loop's thread alone (``time.thread_time``), median of
``--repeats`` alternating runs. A run with recording ends when the writer has written everything
(``wait_written``), so its CPU is in the figure. How long a single ``caller`` call holds the loop is timed
apart in a last pass (timing every call in the runs above would cost more than the call): all of them, and
the one in 25 that builds a half-second segment and queues it for the writer. The loop here never waits
for anything, which is the worst case for the writer thread's share of the GIL.

``--realtime S`` adds what the event loop feels: the same calls in real time on an asyncio loop, each with
80 µs of busy work per 20 ms standing in for the rest of the server (decoding, resampling, sockets), so the
loop is busy about as much as a loaded server's, and a 10 ms timer whose lateness is the loop's lag;
without and with recording, twice each, alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import statistics
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voicebot.audio.playout import Playout  # noqa: E402
from voicebot.audio.wav import read_wav_8k  # noqa: E402
from voicebot.recording import FLUSH_S, CallRecorder, wait_written  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
FRAME = 160
STEP_S = 0.02
FLUSH_STEPS = round(FLUSH_S / STEP_S)
TURN_S, PAUSE_S, BARGE_EVERY, BARGE_AT_S = 3.0, 2.0, 3, 1.2
# The server's measured cost per realtime call (benchmarks/RESULTS.md, "Load"): 0.5-0.75 % of a core,
# i.e. 100-150 µs of CPU per 20 ms of call.
SERVER_US_PER_FRAME = (100.0, 150.0)
OTHER_WORK_S = 0.0008     # per 10 calls per 20 ms in the real-time run: 80 µs a call


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class NullCarrier:
    supports_marks = False

    def send_audio(self, pcm) -> None:
        pass

    def send_mark(self, name) -> None:
        pass

    def send_clear(self) -> None:
        pass


class SimulatedCall:
    def __init__(self, index: int, clock: Clock, caller: np.ndarray, bot: np.ndarray, folder: Path | None) -> None:
        self.playout = Playout(NullCarrier(), lead_ms=100, mark_every_ms=100, chunk_ms=100, clock=clock)
        self.recorder = CallRecorder(folder / f"call{index}.wav", clock=clock) if folder is not None else None
        self.playout.recorder = self.recorder
        self.caller, self.bot = caller, bot
        self.offset = (index * 7919) % (len(caller) // FRAME)     # calls not in lockstep
        self.turn_offset = index % 250                          # bot turns staggered over 5 s

    def step(self, k: int) -> None:
        j = (self.offset + k) % (len(self.caller) // FRAME)
        frame = self.caller[j * FRAME:(j + 1) * FRAME]
        if self.recorder is not None:
            self.recorder.caller(frame)
        turn_steps, cycle = int(TURN_S / STEP_S), int((TURN_S + PAUSE_S) / STEP_S)
        phase = (k + self.turn_offset) % cycle
        turn = (k + self.turn_offset) // cycle
        if phase < turn_steps and phase % 5 == 0:          # a 100 ms delta of the bot's answer
            at = (phase * FRAME) % (len(self.bot) - 800)
            self.playout.enqueue(f"t{turn}", self.bot[at:at + 800])
        if turn % BARGE_EVERY == 0 and phase == int(BARGE_AT_S / STEP_S):
            self.playout.interrupt()
        self.playout.pump()

    def close(self) -> None:
        if self.recorder is not None:
            self.recorder.close()


def run(calls: int, seconds: float, record: bool, caller: np.ndarray, bot: np.ndarray,
        folder: Path | None) -> tuple[float, float]:
    """CPU µs per 20 ms of one call: (whole process, the loop's thread)."""
    clock = Clock()
    sims = [SimulatedCall(i, clock, caller, bot, folder if record else None) for i in range(calls)]
    steps = int(seconds / STEP_S)
    p0, t0 = time.process_time(), time.thread_time()
    for k in range(steps):
        clock.t += STEP_S
        for sim in sims:
            sim.step(k)
    for sim in sims:
        sim.close()
    t1 = time.thread_time()
    if record:
        wait_written()
    p1 = time.process_time()
    per = 1e6 / (calls * steps)
    return (p1 - p0) * per, (t1 - t0) * per


def caller_call_us(calls: int, seconds: float, caller: np.ndarray, folder: Path) -> tuple[float, np.ndarray]:
    """How long one ``caller`` call holds the loop (wall time, µs): the median of all, and the calls that
    hand a half-second segment to the writer (one in 25)."""
    clock = Clock()
    recorders = [CallRecorder(folder / f"timed{i}.wav", clock=clock) for i in range(calls)]
    steps = int(seconds / STEP_S)
    times = np.empty((steps, calls))
    for k in range(steps):
        clock.t += STEP_S
        frame = caller[(k % (len(caller) // FRAME)) * FRAME:][:FRAME]
        for i, recorder in enumerate(recorders):
            recorder.bot(frame, clock.t + 0.1)
            t = time.perf_counter()
            recorder.caller(frame)
            times[k, i] = time.perf_counter() - t
    for recorder in recorders:
        recorder.close()
    wait_written()
    times *= 1e6
    return float(np.median(times)), times[FLUSH_STEPS - 1::FLUSH_STEPS].ravel()


async def realtime_run(calls: int, seconds: float, record: bool, caller: np.ndarray, bot: np.ndarray,
                       folder: Path) -> tuple[float, np.ndarray]:
    """In real time on an asyncio loop: every 20 ms each call's step (on the real clock), in groups of 10
    calls each followed by ``OTHER_WORK_S`` of busy work standing in for the rest of the server's work for
    them, and a 10 ms timer whose lateness is the loop's lag. Returns (% of a core, lags in ms)."""
    loop = asyncio.get_running_loop()
    sims = [SimulatedCall(i, time.monotonic, caller, bot, folder if record else None) for i in range(calls)]
    lags: list[float] = []
    start = loop.time()

    async def probe() -> None:
        while loop.time() - start < seconds:
            t = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - t - 0.01)

    async def traffic() -> None:
        k, due = 0, loop.time()
        while loop.time() - start < seconds:
            due += STEP_S
            for group in range(0, calls, 10):
                for sim in sims[group:group + 10]:
                    sim.step(k)
                busy_until = time.perf_counter() + OTHER_WORK_S
                while time.perf_counter() < busy_until:
                    pass
                await asyncio.sleep(0)
            k += 1
            await asyncio.sleep(max(0.0, due - loop.time()))

    cpu0 = time.process_time()
    await asyncio.gather(probe(), traffic())
    cpu = 100 * (time.process_time() - cpu0) / seconds
    for sim in sims:
        sim.close()
    wait_written()
    return cpu, np.array(lags) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=150)
    ap.add_argument("--seconds", type=float, default=20.0, help="call audio simulated per run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--realtime", type=float, default=0.0,
                    help="also run this many seconds in real time on an asyncio loop, without and with recording, "
                         "twice each, and report the loop's lag")
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))   # no line per file

    caller = np.concatenate([read_wav_8k(FIXTURES / name) for name in ("caller_en.wav", "caller_interrupt.wav")])
    bot = read_wav_8k(FIXTURES / "caller_zh.wav")
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}")
    print(f"{args.calls} calls x {args.seconds:g} s of call audio per run, median of {args.repeats} alternating runs")
    with tempfile.TemporaryDirectory(prefix="voicebot-recording-bench-") as tmp:
        folder = Path(tmp)
        results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for r in range(args.repeats):
            for record in (False, True):
                run_folder = folder / f"run{r}"
                results[record].append(run(args.calls, args.seconds, record, caller, bot, run_folder))
        with wave.open(str(folder / "run0" / "call0.wav"), "rb") as w:
            written_s = w.getnframes() / w.getframerate()
        files = list(folder.glob("run0/*.wav"))
        mb = sum(f.stat().st_size for f in files) / 1e6
        median_us, flushing = caller_call_us(args.calls, args.seconds, caller, folder)

    def med(record: bool, i: int) -> float:
        return statistics.median(x[i] for x in results[record])

    without, with_ = med(False, 0), med(True, 0)
    loop_without, loop_with = med(False, 1), med(True, 1)
    added, added_loop = with_ - without, loop_with - loop_without
    print()
    print(f"{'CPU per 20 ms of one call':32} {'process':>9} {'loop thread':>12}")
    print(f"{'playout alone':32} {without:7.2f} µs {loop_without:9.2f} µs")
    print(f"{'playout + recorder':32} {with_:7.2f} µs {loop_with:9.2f} µs")
    print(f"{'recording adds':32} {added:7.2f} µs {added_loop:9.2f} µs   (writer thread: {added - added_loop:.2f} µs)")
    lo, hi = SERVER_US_PER_FRAME
    print(f"\nshare of a realtime call's measured server cost ({lo:g}-{hi:g} µs per 20 ms): "
          f"{100 * added / hi:.1f}-{100 * added / lo:.1f} %  (criterion: < 10 %)")
    print(f"files: {len(files)} per run, {mb / len(files) * 1e3:.0f} kB and {written_s:.2f} s each "
          f"({args.seconds:g} s simulated)")
    print(f"caller() on the loop: median {median_us:.2f} µs; the calls handing a segment to the writer: "
          f"median {np.median(flushing):.0f} µs, p99 {np.percentile(flushing, 99):.0f} µs, "
          f"max {flushing.max():.0f} µs, {(flushing > 1000).sum()} of {len(flushing)} over 1 ms")
    if args.realtime:
        print(f"\nreal time, {args.calls} calls on one asyncio loop, each with {OTHER_WORK_S * 1e6 / 10:.0f} µs of "
              f"other work per 20 ms; loop lag = lateness of a 10 ms timer:")
        with tempfile.TemporaryDirectory(prefix="voicebot-recording-bench-") as tmp:
            for r in range(2):
                for record in (False, True):
                    cpu, lags = asyncio.run(realtime_run(args.calls, args.realtime, record, caller, bot,
                                                         Path(tmp) / f"rt{r}"))
                    print(f"  {'with recording' if record else 'playout alone ':14}  CPU {cpu:5.1f} %   loop lag p50 "
                          f"{np.median(lags):.1f}  p99 {np.percentile(lags, 99):.1f}  max {lags.max():.1f} ms")

if __name__ == "__main__":
    main()
