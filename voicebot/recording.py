"""The stereo as-heard call recording: one WAV per call, caller left, bot right, written as the call goes.

What the caller heard is not what the engine produced. The playout sends bot audio a little ahead of the
carrier's playhead, and a barge-in clears what the carrier had not played yet. So a bot frame is held here
with the time it is scheduled to play (the playout's pacing clock) until that time has passed; ``cut`` drops
what a barge-in cleared, and only what is past for good is placed on the recording's timeline. Where nothing
played, the bot channel is silence.

The timeline. The caller's frames are the recording's clock: the carrier sends one every 20 ms and they
follow each other without gaps. Wall time maps onto sample positions through an origin ``t0`` (sample ``p``
was heard at ``t0 + p / rate``): at first the recorder's creation, since the greeting may play before the
caller's first frame arrives; then the earliest (arrival − end of frame) seen, since a frame ends when it
arrives at the earliest. A frame delayed by the network or a busy event loop therefore never moves the bot's
audio; a frame arriving before its slot shows the origin was late and moves it. Once per ``DRIFT_WINDOW_S``
the origin follows the least late frame of the window, so that a carrier clock slower than ours does not
drift the two channels apart over a long call. A caller that sends nothing for ``REBASE_S`` (a stream on
hold, a carrier that stops on silence) resumes at its arrival time, with silence in between.

Both channels are on the server's clock, as the rest of the call's "what was heard" is: the bot where the
playout's pacing clock says it played, the caller where its frames arrived. The network between the carrier
and us is not in it: on loopback nothing; on a real line the caller's channel sits up to one carrier round
trip later, against the bot's, than at the caller's ear.

The file. Every ``FLUSH_S`` of caller audio the event loop interleaves what is final into stereo bytes and
queues them for one writer thread shared by every recording of the process; the event loop never touches
the disk. The writer appends the bytes and rewrites the RIFF and data sizes after each batch, so the file is
a valid WAV at all times, holding everything up to about ``FLUSH_S`` before now: a crash loses less than a
second. Frames are kept by reference until they are written (the audio path never writes into a frame it
handed on).
"""

from __future__ import annotations

import asyncio
import atexit
import errno
import math
import os
import queue
import re
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import structlog

from .audio import RATE

if TYPE_CHECKING:
    from .audio.playout import Playout
    from .telephony.base import CallMeta

logger = structlog.get_logger("voicebot.recording")

FLUSH_S = 0.5            # caller audio gathered before it goes to the writer
REBASE_S = 0.5           # a caller frame this late after its slot starts again at its arrival
# Audio handed to the writer thread and not yet written, for all the recordings of the process. A disk that hangs
# (a stalled network mount) would otherwise make it grow with every recorded call's every frame: at 100 recorded
# calls (32 KB/s each) this is a 20 s stall. Past it the recording whose audio does not fit is given up (logged;
# the call goes on): memory stays bounded and no call ever waits for the disk.
MAX_WRITE_BACKLOG_BYTES = 64 * 1024 * 1024
DRIFT_WINDOW_S = 30.0    # how often the origin follows a caller clock slower than ours
SNAP_SAMPLES = 8         # bot audio within 1 ms of the previous audio's end follows it exactly (no click)
SNAP_S = SNAP_SAMPLES / RATE
_NO_CALLER = -(1 << 62)  # caller end position before the first caller frame


class CallRecorder:
    """Records one call. ``caller`` takes each 20 ms caller frame in arrival order; the playout calls ``bot``
    for each frame it hands to the carrier and ``cut`` on barge-in; ``close`` ends the file (the writer
    finishes it in the background: ``await finished()`` waits for that)."""

    def __init__(self, path: Path, *, rate: int = RATE, clock: Callable[[], float] = time.monotonic,
                 log: structlog.typing.FilteringBoundLogger | None = None) -> None:
        self.rate = rate
        self._clock = clock
        self._tick = 1.0 / rate
        self._t0 = clock()
        self._flushed = 0                  # samples handed to the writer
        self._caller_end = _NO_CALLER      # position right after the last caller frame
        self._frames: list[np.ndarray] = []
        self._runs: list[tuple[int, int]] = []     # (index in _frames, sample position) where a caller run starts
        self._late_min = math.inf          # least lateness of a caller frame in the drift window, seconds
        self._drift_check_t = self._t0 + DRIFT_WINDOW_S
        # Bot audio not yet written, in runs of frames that play back to back: (play_at of the first, frames).
        self._bot: deque[tuple[float, list[np.ndarray]]] = deque()
        self._bot_next_t = -math.inf       # when the last run ends: a frame playing then extends it
        self._bot_end = 0                  # position right after the last bot sample written
        self._flush_samples = round(FLUSH_S * rate)
        self._silent_caller_t = self._t0 + REBASE_S + FLUSH_S   # bot audio past this flushes without the caller
        self._closed = False
        self._file = _WavFile(Path(path), rate, log if log is not None else logger)
        self._writer = _shared_writer()

    @property
    def path(self) -> Path:
        """The file. If the name was taken (the same carrier call id recorded twice), the writer picks
        ``<name>-2.wav`` and so on: final once the file is open."""
        return self._file.path

    @property
    def duration_s(self) -> float:
        """Audio handed to the writer so far."""
        return self._flushed / self.rate

    @property
    def failed(self) -> str | None:
        """Why the file could not be written (logged once), or None."""
        return self._file.failed

    # -- the caller's side: the recording's clock ----------------------------------------------
    def caller(self, frame: np.ndarray) -> None:
        now = self._clock()
        n = len(frame)
        start = self._caller_end
        late = now - self._t0 - (start + n) * self._tick
        if late > REBASE_S or start < self._flushed:
            # The first frame, or the caller sent nothing for a while: start again where this frame ends now.
            start = max(round((now - self._t0) * self.rate) - n, self._flushed)
            self._runs.append((len(self._frames), start))
            late = now - self._t0 - (start + n) * self._tick
        if late < 0.0:
            self._t0 += late           # it arrived before its slot: the origin was later than the truth
        elif late < self._late_min:
            self._late_min = late
        self._frames.append(frame)
        end = self._caller_end = start + n
        if end - self._flushed >= self._flush_samples:
            self._flush(end, now)

    # -- the bot's side: held until played ------------------------------------------------------
    def bot(self, frame: np.ndarray, play_at: float) -> None:
        """``frame`` went to the carrier, to play from ``play_at`` (the playout's clock) on."""
        bot = self._bot
        if bot and -SNAP_S < play_at - self._bot_next_t < SNAP_S:
            bot[-1][1].append(frame)       # right after the previous frame, still held: the same run
        else:
            bot.append((play_at, [frame]))
        self._bot_next_t = play_at + len(frame) * self._tick
        if play_at > self._silent_caller_t:
            self._flush_without_caller()

    def cut(self, at: float) -> None:
        """Barge-in at ``at``: what was scheduled to play from then on was cleared, never heard."""
        bot = self._bot
        while bot and bot[-1][0] >= at:
            bot.pop()
        if bot:
            play_at, frames = bot[-1]
            keep = max(round((at - play_at) * self.rate), 0)
            if keep < sum(len(frame) for frame in frames):
                bot[-1] = (play_at, [np.concatenate(frames)[:keep]])
        self._bot_next_t = -math.inf

    def close(self) -> None:
        """The call is over: what was scheduled to play from now on never played; the rest goes to the file,
        which the writer then completes. Idempotent; frames given after it are ignored."""
        if self._closed:
            return
        now = self._clock()
        self.cut(now)
        end = max(self._caller_end, self._flushed)
        if self._bot:
            play_at, frames = self._bot[-1]
            end = max(end, round((play_at - self._t0) * self.rate) + sum(len(frame) for frame in frames))
        self._flush(end, now)
        if self._bot:     # the last run sat up to SNAP_SAMPLES after its clock position
            self._flush(self._flushed + sum(len(frame) for _, frames in self._bot for frame in frames), now)
        self._closed = True
        self._writer.put(self._file, None)

    async def finished(self) -> Path | None:
        """Wait until the file is complete on disk; its path, or None when it could not be written."""
        return await asyncio.wrap_future(self._file.done)

    # -- to the writer --------------------------------------------------------------------------
    def _flush_without_caller(self) -> None:
        """The bot talks and the caller has sent nothing for a while: write what is final anyway, taking
        the caller's missing audio as silence up to ``REBASE_S`` ago."""
        now = self._clock()
        self._flush(max(self._caller_end, round((now - REBASE_S - self._t0) * self.rate)), now)
        self._silent_caller_t = now + FLUSH_S

    def _flush(self, end: int, now: float) -> None:
        """Hand samples [flushed, end) to the writer: every pending caller frame (end ≥ caller end), and the
        bot audio scheduled before ``end`` (end ≤ now on the timeline, so no barge-in can still cut it)."""
        self._silent_caller_t = now + REBASE_S + FLUSH_S
        if now >= self._drift_check_t:
            if self._late_min != math.inf:
                self._t0 += self._late_min
            self._late_min = math.inf
            self._drift_check_t = now + DRIFT_WINDOW_S
        start = self._flushed
        if end <= start:
            return
        if self._closed or self._file.failed:
            self._frames, self._runs = [], []
            self._bot.clear()
            return
        seg = np.zeros((end - start, 2), dtype="<i2")
        frames = self._frames
        if frames:
            runs = self._runs
            for i, (first, pos) in enumerate(runs):
                last = runs[i + 1][0] if i + 1 < len(runs) else len(frames)
                if last > first:
                    audio = frames[first] if last - first == 1 else np.concatenate(frames[first:last])
                    seg[pos - start:pos - start + len(audio), 0] = audio
            self._frames = []
            self._runs = [(0, self._caller_end)]
        if self._bot:
            self._place_bot(seg[:, 1], start, end)
        self._flushed = end
        if not self._writer.put(self._file, seg.tobytes()):
            self._file.give_up(f"the disk is not keeping up: {self._writer.backlog_bytes} bytes of recordings "
                               "wait to be written")

    def _place_bot(self, right: np.ndarray, start: int, end: int) -> None:
        bot = self._bot
        t0, rate = self._t0, self.rate
        previous = self._bot_end
        while bot:
            play_at, frames = bot[0]
            pos = round((play_at - t0) * rate)
            if -SNAP_SAMPLES <= pos - previous <= SNAP_SAMPLES:
                pos = previous
            if pos >= end:
                break
            audio = frames[0] if len(frames) == 1 else np.concatenate(frames)
            stop = pos + len(audio)
            lo, hi = max(pos, start), min(stop, end)
            if hi > lo:
                right[lo - start:hi - start] = audio[lo - pos:hi - pos]
            if stop > end:
                bot[0] = (play_at + (end - pos) * self._tick, [audio[end - pos:]])
                previous = end
                break
            bot.popleft()
            previous = stop
        self._bot_end = previous


# -- naming and the Call's hook ---------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def recording_name(carrier: str, call_id: str) -> str:
    """``<carrier>-<carrier call id>.wav``, anything unsafe in a file name replaced by ``_``."""
    stem = _UNSAFE.sub("_", f"{carrier}-{call_id}")[:200].lstrip(".") or "call"
    return f"{stem}.wav"


def start_recording(recordings_dir: Path, meta: "CallMeta", playout: "Playout",
                    log: structlog.typing.FilteringBoundLogger | None = None) -> CallRecorder:
    """A recorder for this call in ``recordings_dir``, fed by ``playout`` from now on; the Call feeds it
    the caller's frames and closes it when the call ends."""
    recorder = CallRecorder(Path(recordings_dir) / recording_name(meta.carrier, meta.call_id),
                            clock=playout.clock, log=log)
    playout.recorder = recorder
    return recorder


# -- the writer thread ------------------------------------------------------------------------------

_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")
_MAX_DATA_BYTES = 0xFFFFFFFF - (_HEADER.size - 8)     # what a RIFF size field can describe


class _WavFile:
    """One recording's file. Written by the writer thread only; ``path``, ``failed`` and ``done`` are
    what the event loop reads."""

    def __init__(self, path: Path, rate: int, log: structlog.typing.FilteringBoundLogger) -> None:
        self.path = path
        self.rate = rate
        self.log = log
        self.failed: str | None = None
        self.done: Future[Path | None] = Future()
        self._fd: int | None = None
        self._data_bytes = 0
        self._dirty = False
        self._closed = False

    def _header(self) -> bytes:
        channels, width = 2, 2
        return _HEADER.pack(b"RIFF", _HEADER.size - 8 + self._data_bytes, b"WAVE", b"fmt ", 16, 1, channels,
                            self.rate, self.rate * channels * width, channels * width, 8 * width,
                            b"data", self._data_bytes)

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot create the recordings folder ({exc.strerror})",
                          str(self.path.parent)) from exc
        wanted, path = self.path, self.path
        for attempt in range(2, 1000):
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                break
            except FileExistsError:
                path = wanted.with_name(f"{wanted.stem}-{attempt}{wanted.suffix}")
        else:
            raise FileExistsError(errno.EEXIST, "every name up to -999 is taken", str(wanted))
        self.path = path
        if path != wanted:
            self.log.warning("recording_name_taken", wanted=str(wanted), path=str(path))
        _write_all(self._fd, self._header())

    def append(self, data: bytes) -> None:
        if self._closed or self.failed:
            return
        try:
            if self._fd is None:
                self._open()
            if self._data_bytes + len(data) > _MAX_DATA_BYTES:
                raise OSError(errno.EFBIG, "the recording reached the largest size a WAV file can hold")
            _write_all(self._fd, data)
            self._data_bytes += len(data)
            self._dirty = True
        except OSError as exc:
            self._fail(exc)

    def write_sizes(self) -> None:
        """Make the header describe everything appended so far."""
        if self._dirty and self._fd is not None and not self.failed:
            try:
                os.pwrite(self._fd, self._header(), 0)
                self._dirty = False
            except OSError as exc:
                self._fail(exc)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.failed:
            try:
                if self._fd is None:
                    self._open()      # a call with no audio at all still leaves a (valid, empty) file
                self._dirty = True
                self.write_sizes()
            except OSError as exc:
                self._fail(exc)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.failed:
            self.done.set_result(None)
        else:
            self.log.info("recording_saved", path=str(self.path),
                          duration_s=round(self._data_bytes / (4 * self.rate), 2))
            self.done.set_result(self.path)

    def give_up(self, why: str) -> None:
        """Stop recording (from the event loop): nothing more is written; the file keeps what was."""
        if self.failed is None:
            self.failed = why
            self.log.error("recording_failed", path=str(self.path), error=why)

    def _fail(self, exc: OSError) -> None:
        self.failed = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        self.log.error("recording_failed", path=str(self.path), error=self.failed,
                       kept_s=round(self._data_bytes / (4 * self.rate), 2))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _Writer:
    """One thread writing every recording of the process, fed through a queue: a slow disk delays the
    files, never a frame. Each wake-up takes everything queued, appends it, then rewrites each touched
    file's header once."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()    # bounded by MAX_WRITE_BACKLOG_BYTES in put()
        self.queued_bytes = 0      # audio put, by the event loop
        self.written_bytes = 0     # of it written (or given up), by the writer thread
        self._thread = threading.Thread(target=self._run, name="recording-writer", daemon=True)
        self._thread.start()

    @property
    def backlog_bytes(self) -> int:
        return self.queued_bytes - self.written_bytes

    def put(self, file: _WavFile, data: bytes | None) -> bool:
        """Append ``data`` to ``file``; None closes it. False (nothing queued): the backlog is full."""
        if data:
            if self.queued_bytes - self.written_bytes + len(data) > MAX_WRITE_BACKLOG_BYTES:
                return False
            self.queued_bytes += len(data)
        self._queue.put((file, data))
        return True

    def sync(self, timeout: float | None = None) -> bool:
        """Wait until everything queued before this call is written (in the OS: no fsync)."""
        written = threading.Event()
        self._queue.put((None, written))
        return written.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        self._queue.put((None, None))
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            try:
                while True:
                    batch.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            touched: dict[_WavFile, None] = {}
            waiting: list[threading.Event] = []
            stop = False
            for file, data in batch:
                try:
                    if file is None:
                        if data is None:
                            stop = True
                        else:
                            waiting.append(data)
                    elif data is None:
                        file.close()
                    else:
                        file.append(data)
                        touched[file] = None
                except Exception:   # a bug here must not stop every other call's recording
                    logger.exception("recording_writer_error", path=str(getattr(file, "path", None)))
                finally:
                    if file is not None and data:
                        self.written_bytes += len(data)
            for file in touched:
                file.write_sizes()
            for event in waiting:
                event.set()
            if stop:
                return


_writer: _Writer | None = None
_writer_lock = threading.Lock()


def _shared_writer() -> _Writer:
    global _writer
    if _writer is None:
        with _writer_lock:
            if _writer is None:
                _writer = _Writer()
                atexit.register(_writer.stop)     # what is queued at a clean exit still reaches the files
    return _writer


def _forget_writer_in_child() -> None:
    global _writer
    _writer = None       # a forked process has no writer thread: it starts its own


os.register_at_fork(after_in_child=_forget_writer_in_child)


def wait_written(timeout: float | None = None) -> bool:
    """Block until every recording's audio handed over so far is in its file (shutdown, tests)."""
    return _shared_writer().sync(timeout)
