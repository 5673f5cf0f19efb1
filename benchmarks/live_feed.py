"""What the console's live feed costs a call (voicebot/livefeed.py): a transcript line written with the feed as a
listener of the file and without, with nobody watching, one listener, ten; listeners that have fallen behind (their
queue full) being dropped; and what a whole call's lines cost.

A call writes a transcript line per event (turn, barge-in, tool, engine switch, keypad digit, start, end): tens
per call, never per audio frame. The feed takes the record the file is written from; the listener's own task
serialises it.

    .venv/bin/python benchmarks/live_feed.py
"""

from __future__ import annotations

import asyncio
import functools
import sys
import tempfile
import time
from pathlib import Path

LINES = 20_000
ROUNDS = 5
TURN = {"role": "assistant", "text": "Your order A-1093 has shipped and arrives on Sunday.", "item_id": "item_7",
        "engine": "realtime", "t_ms": 7100}


def write_us(folder: Path, listeners: int | None, *, stalled: bool = False) -> float:
    """µs per TranscriptFile.write of a turn line: ``listeners`` None means no tap at all."""
    from voicebot.livefeed import LiveFeed
    from voicebot.transcript import TranscriptFile

    async def run() -> float:
        feed = LiveFeed(queue_lines=LINES + 1 if not stalled else 4)
        tap = None if listeners is None else functools.partial(feed.publish, "0123456789abcdef")
        # (as Call does: the feed is one of the transcript file's listeners)
        watching = [feed.listen(None) for _ in range(listeners or 0)]
        best = float("inf")
        for round_ in range(ROUNDS):
            if stalled:
                watching = [feed.listen(None) for _ in range(listeners or 0)]
            transcript = TranscriptFile(folder, f"bench{round_}{listeners}{stalled}")
            if tap is not None:
                transcript.listeners.append(tap)
            t0 = time.perf_counter()
            for _ in range(LINES):
                transcript.write("turn", **TURN)
            best = min(best, (time.perf_counter() - t0) / LINES * 1e6)
            transcript.close()
            for listener in watching:
                while not listener._queue.empty():
                    listener._queue.get_nowait()
        return best

    return asyncio.run(run())


def publish_us(listeners: int) -> float:
    from voicebot.livefeed import LiveFeed

    async def run() -> float:
        feed = LiveFeed(queue_lines=LINES + 1)
        watching = [feed.listen("0123456789abcdef") for _ in range(listeners)]
        record = {"type": "turn", **TURN}
        best = float("inf")
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            for _ in range(LINES):
                feed.publish("0123456789abcdef", record)
            best = min(best, (time.perf_counter() - t0) / LINES * 1e6)
            for listener in watching:
                while not listener._queue.empty():
                    listener._queue.get_nowait()
        return best

    return asyncio.run(run())


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        plain = write_us(folder, None)
        rows = [("without the feed", plain)]
        for listeners in (0, 1, 10):
            rows.append((f"feed, {listeners} listener{'s' if listeners != 1 else ''}", write_us(folder, listeners)))
        rows.append(("feed, 10 listeners fallen behind", write_us(folder, 10, stalled=True)))
    print(f"python {sys.version.split()[0]}, {LINES} turn lines per run (best of {ROUNDS}), on {tempfile.gettempdir()}")
    print()
    print(f"{'transcript line written':40} {'µs':>7}")
    for label, value in rows:
        extra = "" if label.startswith("without") else f"   ({value - plain:+.2f})"
        print(f"  {label:38} {value:7.2f}{extra}")
    print()
    print(f"{'LiveFeed.publish alone':40} {'µs':>7}")
    for listeners in (0, 1, 10):
        print(f"  {listeners:2d} listener(s) of that call{'':13} {publish_us(listeners):7.3f}")
    calls_lines = 40
    one = dict(rows)["feed, 1 listener"] - plain
    print()
    print(f"a call of {calls_lines} lines (a 2-minute call with 15 turns, barge-ins, tools): "
          f"{calls_lines * max(one, 0):.0f} µs more with one browser watching it, for the whole call")


if __name__ == "__main__":
    main()
