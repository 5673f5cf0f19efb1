"""Bot audio to the carrier, paced a little ahead of real time, knowing what the caller has heard.

The carrier plays what we send in order. We keep most of the bot's audio here and send only ``lead_ms``
ahead of the carrier's playhead, so a barge-in only has to throw away that lead. Marks go out at the start
of every item, every ``mark_every_ms`` and whenever the local queue runs dry; the carrier echoes a mark when
the audio before it has played. Between echoes the playhead advances with the wall clock, but never past
the next mark that has not come back, so an underrun on the carrier side is not counted as heard.
Carriers without marks get "virtual" echoes from the pacing clock instead: same bookkeeping, one code path.

Where the carrier takes audio messages of any length, consecutive frames of one item go out together, up to
``chunk_ms`` per message and never across a mark: once a frame is due, the message carrying it is filled
with the frames after it. That sends ~5× fewer messages (Twilio advises 50–100 ms chunks against choppy
audio) and keeps the carrier's buffer between ``lead_ms`` and ``lead_ms + chunk_ms``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .. import latency
from . import FRAME_MS, FRAME_SAMPLES, RATE

_FRAME_S = FRAME_MS / 1000
# The most bot audio held here ahead of the caller's ear. Engines produce speech faster than it plays (StepFun
# realtime several times real time, the chain a sentence at a time), so a long answer waits here; five minutes
# is longer than any answer a phone bot gives, and bounds what a runaway engine can make a call hold to ~8 MB.
# Audio past it is dropped and counted (``frames_overflowed``).
MAX_QUEUED_FRAMES = 5 * 60 * 1000 // FRAME_MS
# Marks not echoed yet: normally the lead's worth (a few). A carrier that stops echoing them would make the
# bookkeeping grow with every 100 ms of bot audio: past this many (ten minutes of audio) the oldest is forgotten,
# which only lets "heard" run ahead to the next one.
MAX_PENDING_MARKS = 6000

if TYPE_CHECKING:
    from ..recording import CallRecorder


class CarrierOutput(Protocol):
    """What the playout needs from a carrier connection. All three only queue a message: they never block."""

    supports_marks: bool
    can_flush: bool     # send_clear drops what the carrier has not played yet

    def send_audio(self, pcm: np.ndarray) -> None: ...     # whole 20 ms frames, at most chunk_ms of them

    def send_mark(self, name: str) -> None: ...

    def send_clear(self) -> None: ...


@dataclass
class HeardItem:
    """How much of one bot item the caller heard when playback was interrupted."""

    item_id: str
    heard_ms: int
    generated_ms: int


@dataclass
class _Item:
    item_id: str
    generated_samples: int = 0
    sent_ms: int = 0
    anchor_ms: int = 0          # position confirmed by the latest echoed mark
    anchor_t: float | None = None
    complete: bool = False      # the engine has finished producing this item


class LatencyTally(Protocol):
    """Where the playout adds each bot frame's server-added latency (voicebot/metrics.py's ``Tally``)."""

    def add(self, seconds: float) -> None: ...


class Playout:
    def __init__(self, out: CarrierOutput, *, lead_ms: int = 100, mark_every_ms: int = 100, chunk_ms: int = FRAME_MS,
                 clock: Callable[[], float] = time.monotonic, lateness: LatencyTally | None = None,
                 log=None) -> None:
        """``lateness``: gets the "out" latency of every frame sent (as voicebot/latency.py's histogram does
        with VOICEBOT_LATENCY=1), and ``frames_late`` counts the frames that missed their playback slot.
        ``log``: where overflowing MAX_QUEUED_FRAMES is said (once)."""
        self.out = out
        self.lead_s = lead_ms / 1000
        self.mark_every_ms = mark_every_ms
        self.chunk_frames = max(1, chunk_ms // FRAME_MS)
        self._chunk: list[np.ndarray] = []      # frames of the audio message being filled
        self.clock = clock
        # (item, frame, when its audio reached us: latency.arrival with latency.ENABLED, else when it was queued)
        self._frames: deque[tuple[_Item, np.ndarray, float]] = deque()
        self._partial: dict[str, np.ndarray] = {}
        self._items: dict[str, _Item] = {}
        self._marks: dict[str, tuple[_Item, int]] = {}    # pending mark name -> (item, position in ms)
        self._virtual_echoes: deque[tuple[float, str]] = deque()
        self._mark_seq = 0
        self._playhead_t = 0.0      # when everything sent so far will have played (pacing clock)
        self._ideal_t = 0.0         # the same for an infinitely fast server (while lateness is measured)
        self.first_audio_sent_t: float | None = None
        self.frames_sent = 0
        self.lateness = lateness
        self.frames_late = 0        # frames that waited here past their playback slot
        self.frames_overflowed = 0  # bot frames dropped: MAX_QUEUED_FRAMES were waiting already
        self.log = log
        self.recorder: CallRecorder | None = None     # told what plays when, and what a barge-in cut

    # -- producing side -------------------------------------------------------------------------
    def enqueue(self, item_id: str, pcm: np.ndarray) -> None:
        """Queue bot audio (8 kHz int16, any length) for ``item_id``; whole 20 ms frames become sendable."""
        item = self._items.get(item_id)
        if item is None:
            item = self._items[item_id] = _Item(item_id)
        item.generated_samples += len(pcm)
        pending = self._partial.pop(item_id, None)
        if pending is not None:
            pcm = np.concatenate((pending, pcm))
        whole = len(pcm) - len(pcm) % FRAME_SAMPLES
        if whole < len(pcm):
            self._partial[item_id] = pcm[whole:]
        arrived = latency.arrival if latency.ENABLED else self.clock()
        room = MAX_QUEUED_FRAMES - len(self._frames)
        if whole > room * FRAME_SAMPLES:
            self._overflow(item, whole // FRAME_SAMPLES - max(room, 0))
            whole = max(room, 0) * FRAME_SAMPLES
        for start in range(0, whole, FRAME_SAMPLES):
            self._frames.append((item, pcm[start:start + FRAME_SAMPLES], arrived))

    def _overflow(self, item: _Item, frames: int) -> None:
        if not self.frames_overflowed and self.log is not None:
            self.log.warning("playout_full", item_id=item.item_id, queued_s=len(self._frames) * FRAME_MS / 1000,
                             problem="the engine is minutes ahead of the caller: its audio past that is dropped")
        self.frames_overflowed += frames

    def end_item(self, item_id: str) -> None:
        """The engine produced all of ``item_id``: pad its last partial frame and let it play out."""
        item = self._items.get(item_id)
        if item is None:
            return
        item.complete = True
        tail = self._partial.pop(item_id, None)
        if tail is not None:
            frame = np.zeros(FRAME_SAMPLES, dtype=np.int16)
            frame[:len(tail)] = tail
            self._frames.append((item, frame, latency.arrival if latency.ENABLED else self.clock()))

    # -- pacing ---------------------------------------------------------------------------------
    def pump(self) -> float:
        """Send what is due now; returns seconds until the next call is useful (0 < delay)."""
        now = self.clock()
        self._fire_virtual_echoes(now)
        measure = latency.ENABLED or self.lateness is not None
        if self._playhead_t < now:
            if self._frames and self._frames[0][2] < self._playhead_t:
                # The carrier ran dry while audio waited here (not for the model): frames missed their slots.
                missed = int((now - self._playhead_t) * 1000) // FRAME_MS + 1
                self.frames_late += min(missed, len(self._frames))
            self._playhead_t = now
        sent_any = False
        previous: _Item | None = None
        recorder = self.recorder
        while self._frames and (self._chunk or self._playhead_t - now < self.lead_s - 1e-6):
            item, frame, arrived = self._frames.popleft()
            if item.sent_ms == 0 or not sent_any and self._carrier_idle(now):
                # Start of an item, or resuming after the carrier ran dry: anchor playback here.
                self._send_mark(item, item.sent_ms)
            if previous is not None and previous is not item:
                self._send_mark(previous, previous.sent_ms)
            self._chunk.append(frame)
            if recorder is not None:
                recorder.bot(frame, self._playhead_t)
            if len(self._chunk) >= self.chunk_frames:
                self._send_chunk()
            if measure:
                self._record_lateness(arrived)
            if self.first_audio_sent_t is None:
                self.first_audio_sent_t = now
            self.frames_sent += 1
            item.sent_ms += FRAME_MS
            self._playhead_t += FRAME_MS / 1000
            sent_any = True
            previous = item
            if item.sent_ms % self.mark_every_ms == 0 or not self._frames:
                self._send_mark(item, item.sent_ms)
        self._send_chunk()
        if self._frames:
            return max(self._playhead_t - now - self.lead_s, 0.0) + 0.001
        if self._virtual_echoes:
            return max(self._virtual_echoes[0][0] - now, 0.001)
        return FRAME_MS / 1000

    def _record_lateness(self, arrived: float) -> None:
        """latency "out": how long after it was due this frame went to the carrier. Due: its audio has
        arrived and a server that took no time would have sent it (lead_ms before its playback slot)."""
        ideal = self._ideal_t
        due = ideal - self.lead_s
        if arrived > due:
            due = arrived
        self._ideal_t = (ideal if ideal > due else due) + _FRAME_S
        late = self.clock() - due
        if latency.ENABLED:
            latency.record("out", late)
        if self.lateness is not None:
            # Frames that ride in a message with an earlier one leave before they are due: no delay added.
            self.lateness.add(late if late > 0.0 else 0.0)

    def _carrier_idle(self, now: float) -> bool:
        return not self._marks

    @property
    def has_work(self) -> bool:
        """Frames to send or virtual echoes to fire: the pump must keep running."""
        return bool(self._frames) or bool(self._virtual_echoes)

    def _send_chunk(self) -> None:
        chunk = self._chunk
        if chunk:
            self.out.send_audio(chunk[0] if len(chunk) == 1 else np.concatenate(chunk))
            self._chunk = []

    def _send_mark(self, item: _Item, position_ms: int) -> None:
        self._send_chunk()     # a mark follows exactly the audio before it
        if self._marks and next(reversed(self._marks.values())) == (item, position_ms):
            return
        self._mark_seq += 1
        name = f"vb{self._mark_seq}"
        self._marks[name] = (item, position_ms)
        if len(self._marks) > MAX_PENDING_MARKS:
            del self._marks[next(iter(self._marks))]
        if self.out.supports_marks:
            self.out.send_mark(name)
        else:
            self._virtual_echoes.append((self._playhead_t, name))

    def _fire_virtual_echoes(self, now: float) -> None:
        while self._virtual_echoes and self._virtual_echoes[0][0] <= now:
            _, name = self._virtual_echoes.popleft()
            self.on_mark(name, now)

    # -- what was heard -------------------------------------------------------------------------
    def on_mark(self, name: str, now: float | None = None) -> None:
        """The carrier echoed ``name``: the audio before it has played."""
        entry = self._marks.pop(name, None)
        if entry is None:
            return   # echo of a mark dropped by clear(), or not ours
        # Marks come back in order; any older pending mark has played too.
        for older in list(self._marks):
            if older == name:
                break
            if int(older[2:]) < int(name[2:]):
                self._marks.pop(older)
        item, position_ms = entry
        item.anchor_ms = position_ms
        item.anchor_t = self.clock() if now is None else now

    def heard_ms(self, item_id: str, now: float | None = None) -> int:
        item = self._items.get(item_id)
        return 0 if item is None else self._heard(item, self.clock() if now is None else now)

    def _heard(self, item: _Item, now: float) -> int:
        if item.anchor_t is None:
            return 0
        ceiling = item.sent_ms
        for pending_item, position in self._marks.values():
            if pending_item is item and position > item.anchor_ms:
                ceiling = min(ceiling, position)
                break
        heard = item.anchor_ms + int((now - item.anchor_t) * 1000)
        return max(item.anchor_ms, min(heard, ceiling))

    @property
    def speaking(self) -> bool:
        """Bot audio is queued here or not yet confirmed played by the carrier."""
        return bool(self._frames) or bool(self._marks) or bool(self._partial)

    def interrupt(self) -> list[HeardItem]:
        """Barge-in: clear the carrier, drop everything queued, report what each unfinished item played."""
        now = self.clock()
        if self.recorder is not None:
            self.recorder.cut(now)
        touched: list[HeardItem] = []
        for item in list(self._items.values()):
            generated_ms = item.generated_samples * 1000 // RATE
            heard = self._heard(item, now)
            if heard < generated_ms or not item.complete:
                touched.append(HeardItem(item.item_id, heard, generated_ms))
        if self._marks or self._frames:
            self.out.send_clear()
            if latency.ENABLED and latency.arrival_side:
                latency.record("barge_model" if latency.arrival_side == "model" else "barge_vad",
                               latency.clock() - latency.arrival)
        self._frames.clear()
        self._chunk = []
        self._partial.clear()
        self._marks.clear()
        self._virtual_echoes.clear()
        self._items.clear()
        if getattr(self.out, "can_flush", True):
            self._playhead_t = self._ideal_t = now
        else:   # what was sent still plays: new audio queues behind it, or the carrier is overrun
            self._playhead_t = max(self._playhead_t, now)
            self._ideal_t = max(self._ideal_t, now)
        return touched

    def forget_finished(self) -> None:
        """Drop bookkeeping of items that have fully played (keeps memory flat on long calls)."""
        queued = {id(item) for item, _, _ in self._frames}
        pending = {id(item) for item, _ in self._marks.values()}
        for item_id, item in list(self._items.items()):
            if item.complete and id(item) not in queued and id(item) not in pending and item_id not in self._partial:
                del self._items[item_id]
