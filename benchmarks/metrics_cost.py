"""What the metrics cost a call, per piece, side by side with the same work without them (one run).

Per 20 ms bot frame: the playout's pump sending one frame to a null carrier with the per-call frame-latency
tally (``metrics on``) and without (``metrics off``); per call: the metric updates of a call's whole life
(active gauge up and down, outcome counter, first audio, three turn latencies, one barge-in, the frame tally
of a 60 s call published), in this process's registry and in prometheus-client's multiprocess mode (a
``--workers N`` server, values in memory-mapped files); and one scrape's body (built off the event loop). A realtime call is ~50 caller frames and ~50 bot
frames a second; its whole server cost is ~0.5 % of a core (benchmarks/RESULTS.md, "Load"), i.e. ~100 µs per
20 ms. The end-to-end figure is the load test with ``VOICEBOT_METRICS=0`` and without (RESULTS.md, "Metrics
cost").

    .venv/bin/python benchmarks/metrics_cost.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import numpy as np

FRAMES = 50_000
CALLS = 2_000
CALL_FRAMES = 3_000          # a 60 s call's bot frames


class NullCarrier:
    supports_marks = True
    can_flush = True

    def send_audio(self, pcm) -> None:
        pass

    def send_mark(self, name: str) -> None:
        pass

    def send_clear(self) -> None:
        pass


def pump_us_per_frame(with_tally: bool) -> float:
    from voicebot import metrics
    from voicebot.audio.playout import Playout

    now = [0.0]
    tally = metrics.Tally(metrics.FRAME_LATENCY) if with_tally else None
    playout = Playout(NullCarrier(), lead_ms=100, mark_every_ms=100, chunk_ms=20, clock=lambda: now[0],
                      lateness=tally)
    pcm = np.zeros(160 * 5, dtype=np.int16)
    t0 = time.perf_counter()
    for i in range(FRAMES // 5):
        playout.enqueue(f"item{i // 100}", pcm)      # a 100 ms delta, as the realtime engine hands it over
        for _ in range(5):
            now[0] += 0.02
            playout.pump()
        if i % 100 == 99:
            playout.on_mark(f"vb{playout._mark_seq}")
            playout.forget_finished()
    return (time.perf_counter() - t0) / FRAMES * 1e6


def call_lifecycle_us() -> float:
    """A call's metric updates from start to end; its frame tally filled beforehand (untimed) as a 60 s call's
    would be, so that the timing holds what publishing it costs but not the per-frame adds (timed apart)."""
    from voicebot import metrics

    calls = []
    for i in range(CALLS):
        call = metrics.CallMetrics("twilio", f"persona-{i % 5}", "realtime")
        for k in range(CALL_FRAMES):
            call.frame_latency.add(0.0004 + (k % 7) * 0.001)
        calls.append(call)
    t0 = time.perf_counter()
    for call in calls:
        call.started()
        for _ in range(3):
            metrics.turn_latency(0.6)
        metrics.barge_in(0.0003)
        call.ended("completed", 0.4, 0)
    return (time.perf_counter() - t0) / CALLS * 1e6


def tally_add_us() -> float:
    from voicebot import metrics
    tally = metrics.Tally(metrics.FRAME_LATENCY)
    t0 = time.perf_counter()
    for k in range(200_000):
        tally.add(0.0004 + (k % 7) * 0.001)
    return (time.perf_counter() - t0) / 200_000 * 1e6


def scrape_ms() -> float:
    """One /metrics body after 2 000 calls over 5 personas (what call_lifecycle_us left behind)."""
    from voicebot import metrics

    call_lifecycle_us()
    t0 = time.perf_counter()
    for _ in range(20):
        metrics.exposition()
    return (time.perf_counter() - t0) / 20 * 1e3


def child(mode: str) -> None:
    if mode == "scrape":
        print(f"{scrape_ms():.2f}")
    elif mode == "pump":
        off = min(pump_us_per_frame(False) for _ in range(5))
        on = min(pump_us_per_frame(True) for _ in range(5))
        print(f"{off:.3f} {on:.3f} {tally_add_us():.3f}")
    else:
        print(f"{min(call_lifecycle_us() for _ in range(3)):.1f}")


def run(mode: str, env: dict | None = None) -> str:
    return subprocess.run([sys.executable, __file__, "--child", mode], capture_output=True, text=True, check=True,
                          env={**os.environ, **(env or {})}).stdout.strip()


def main() -> None:
    off, on, add = (float(x) for x in run("pump").split())
    single = float(run("call"))
    scrape_single = float(run("scrape"))
    with tempfile.TemporaryDirectory() as path:
        multi = float(run("call", {"PROMETHEUS_MULTIPROC_DIR": path}))
        run("call", {"PROMETHEUS_MULTIPROC_DIR": path})          # a second worker's files
        scrape_multi = float(run("scrape", {"PROMETHEUS_MULTIPROC_DIR": path}))
    print(f"python {sys.version.split()[0]}, {FRAMES} frames per pump run (best of 5), {CALLS} calls (best of 3)")
    print()
    print("per bot frame                    µs")
    print(f"  pump, metrics off            {off:6.3f}")
    print(f"  pump, metrics on             {on:6.3f}   (+{on - off:.3f}; Tally.add alone {add:.3f})")
    print("per call (start → end, without the per-frame tally adds)")
    print(f"  one process                  {single:6.1f}")
    print(f"  multiprocess (--workers N)   {multi:6.1f}")
    print("per scrape (5 personas; multiprocess: 3 workers' files)       ms")
    print(f"  one process                  {scrape_single:6.2f}")
    print(f"  multiprocess (--workers N)   {scrape_multi:6.2f}")
    frames_per_s, call_us_per_s = 50, 5000        # a realtime call: ~50 bot frames/s, ~0.5 % of a core
    tally_us_per_s = (on - off) * frames_per_s
    print()
    print(f"a realtime call (~{frames_per_s} bot frames/s, ~{call_us_per_s} µs of server CPU per second of call):")
    print(f"  frame tally       +{tally_us_per_s:5.1f} µs/s = {tally_us_per_s / call_us_per_s * 100:.2f} % of the call")
    print(f"  start and end     +{multi / 60:5.1f} µs/s over a 60 s call = "
          f"{multi / 60 / call_us_per_s * 100:.3f} % of the call (multiprocess)")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        main()
