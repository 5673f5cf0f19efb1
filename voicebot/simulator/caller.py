"""A simulated phone caller, independent of the carrier.

The carrier's wire protocol lives in a :class:`CarrierProtocol` (``protocol.py``; e.g. ``twilio.py``), the
script's steps in ``script.py`` and what a finished call gives back in ``result.py``; here is the rest: the
real-time 20 ms loop running the script, the carrier's playback buffer (with marks and clear), and the
recording of both directions.

Time is "caller time": seconds since the stream started (the carrier's ``start`` message). Tick ``n``
runs at ``t0 + n * 20 ms`` on an absolute schedule (late ticks catch up, nothing drifts), driven by the
loop's shared clock (``clock.py``) together with every other call on the loop. At each tick the
carrier echoes marks whose audio has finished playing, the caller decides what to do from what it has
heard so far (a keypress goes out as the carrier's DTMF message right then) and sends frame ``n`` (its
audio for ``[n*20, n*20+20)`` ms), and the carrier takes the next 20 ms from its buffer: what the caller
hears during that interval. Timing resolution is one frame. The call ends when the caller hangs up, the
server closes the stream, the carrier ends it (:meth:`SimulatedCall.end_by_carrier`, e.g. from a fake
REST API), the connection drops (a :class:`Drop` step, or :meth:`SimulatedCall.drop`: a TCP reset, no closing
messages) or ``max_duration_s`` is reached.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import Literal

import aiohttp
import numpy as np
import structlog

from voicebot.audio import FRAME_MS, FRAME_SAMPLES, RATE
from voicebot.simulator import clock
from voicebot.simulator.voice import Microphone, speech_frames
from voicebot.simulator.protocol import (CallSetupError, CarrierProtocol, ClearPlayback, MediaConnection,
                                         Message, PlayAudio, ProtocolViolation, QueueMark, ServerEvent,
                                         StreamRefused, StreamTarget, reset_transport)
from voicebot.simulator.result import (CallerUtterance, CallResult, MarkRecord, PlaybackSegment,
                                       TimelineEvent, Underrun)
from voicebot.simulator.script import DTMF_DIGITS, Drop, Hangup, Press, Say, Step

log = structlog.get_logger(__name__)

# The simulator's public names, the ones of its sibling modules included (carrier modules import them from here).
__all__ = ["CallResult", "CallSetupError", "CallerUtterance", "CarrierProtocol", "ClearPlayback", "DTMF_DIGITS",
           "Drop", "Hangup", "MarkRecord", "MediaConnection", "Message", "PlayAudio", "PlaybackSegment", "Press",
           "ProtocolViolation", "QueueMark", "Say", "ServerEvent", "SimulatedCall", "Step", "StreamRefused",
           "StreamTarget", "TimelineEvent", "UNDERRUN_GAP_S", "Underrun", "reset_transport"]

FRAME_S = FRAME_MS / 1000
# Bot audio stopping for less than this and resuming is an underrun inside one segment, not a pause between two:
# a listener hears a glitch in one utterance (and the bot's own pauses between sentences are longer).
UNDERRUN_GAP_S = 0.300


# --------------------------------------------------------------------------------------------------
# The carrier's playback buffer


_SILENCE = np.zeros(FRAME_SAMPLES, np.int16)  # what a frame with nothing to play sounds like (shared)
_SILENCE.flags.writeable = False
_NOTHING = _SILENCE[:0]


class _PlaybackBuffer:
    """Server audio queued for playout, with marks at absolute sample positions."""

    def __init__(self) -> None:
        self._chunks: deque[np.ndarray] = deque()
        self._offset = 0  # into _chunks[0]
        self.buffered = 0
        self.enqueued_total = 0
        self.played_total = 0
        self.marks: deque[tuple[int, MarkRecord]] = deque()

    def append(self, pcm: np.ndarray) -> None:
        if len(pcm):
            self._chunks.append(pcm)
            self.buffered += len(pcm)
            self.enqueued_total += len(pcm)

    def take(self, n: int) -> np.ndarray:
        if not self._chunks:
            return _NOTHING
        parts = []
        while n > 0 and self._chunks:
            head = self._chunks[0]
            part = head[self._offset : self._offset + n]
            parts.append(part)
            n -= len(part)
            self._offset += len(part)
            if self._offset >= len(head):
                self._chunks.popleft()
                self._offset = 0
        out = np.concatenate(parts) if len(parts) > 1 else (parts[0] if parts else np.zeros(0, np.int16))
        self.buffered -= len(out)
        self.played_total += len(out)
        return out

    def clear(self) -> int:
        dropped = self.buffered
        self._chunks.clear()
        self._offset = 0
        self.buffered = 0
        self.played_total += dropped  # positions past here count as reached (marks before them are flushed)
        return dropped

    def reached_marks(self) -> list[MarkRecord]:
        out = []
        while self.marks and self.marks[0][0] <= self.played_total:
            out.append(self.marks.popleft()[1])
        return out


# --------------------------------------------------------------------------------------------------
# The call


_HANGUP = object()
_DROP = object()


class SimulatedCall:
    """One simulated call over ``protocol``, driven by ``script``. ``await run()`` → :class:`CallResult`."""

    def __init__(self, protocol: CarrierProtocol, script: list[Step], *, max_duration_s: float = 30.0,
                 noise_dbfs: float | None = -60.0, seed: int = 0, record: bool = True,
                 audible_dbfs: float = -50.0, utterance_gap_s: float = 0.5,
                 underrun_gap_s: float = UNDERRUN_GAP_S,
                 http_session: aiohttp.ClientSession | None = None, connect_timeout_s: float = 10.0,
                 max_message_bytes: int = 64 * 2**20, max_protocol_errors: int = 1000,
                 carrier_api=None) -> None:
        for step in script:
            if not isinstance(step, (Say, Press, Hangup, Drop)):
                raise TypeError(f"script steps are Say, Press, Hangup or Drop, got {step!r}")
            if isinstance(step, Press) and not protocol.carries_dtmf:
                raise ValueError(f"the script presses {step.digits!r}, but the {protocol.name} media stream "
                                 "carries no DTMF to the server")
        self.protocol = protocol
        self.script = list(script)
        self.max_duration_s = max_duration_s
        self.noise_rms = None if noise_dbfs is None else 32768.0 * 10 ** (noise_dbfs / 20)
        self.rng = np.random.default_rng(seed)
        self._mic = Microphone(self.rng, self.noise_rms)
        self.record = record
        self.audible_rms = 32768.0 * 10 ** (audible_dbfs / 20)
        self.utterance_gap_s = utterance_gap_s
        self.underrun_gap_s = underrun_gap_s
        self.http_session = http_session
        self.connect_timeout_s = connect_timeout_s
        self.max_message_bytes = max_message_bytes
        self.max_protocol_errors = max_protocol_errors
        # A fake of the carrier's call-control API (simulator/carrier_api): it knows this call, and when it
        # ends or moves the call the carrier ends the media stream, as the real one does.
        self.carrier_api = carrier_api
        # Set when the stream starts (its opening messages sent): ``stream_t0`` is then caller time 0 on the loop.
        self.stream_started = asyncio.Event()

        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0
        self._ws: MediaConnection | None = None
        self._buffer = _PlaybackBuffer()
        self._timeline: list[TimelineEvent] = []
        self._heard: list[np.ndarray] = []
        self._sent: list[np.ndarray] = []
        self._segments: list[PlaybackSegment] = []
        self._segment: PlaybackSegment | None = None  # open playback segment
        self._dry = False              # the open segment's last tick found nothing to play
        self._underruns: list[Underrun] = []
        self._late_tick_lags: deque[tuple[float, float]] = deque(maxlen=64)   # (t, lag) of late ticks
        self._clears: list[float] = []
        self._errors: list[str] = []
        self._marks: list[MarkRecord] = []
        self._media: list[tuple[float, int]] = []
        self._utterances: list[CallerUtterance] = []
        self._first_audible: float | None = None
        self._last_played_end = -math.inf
        self._utterance_ms: float | None = None  # played ms of the bot's current utterance since it became audible
        self._ended = False
        self._server_closed = False
        self._carrier_ended = False
        self._dropping = False
        self._end_reason = "server_closed"
        self._ticks = 0
        self._max_lag_s = 0.0
        self._late_ticks = 0
        # script state
        self._step = 0
        self._armed_at = 0.0
        self._bot_heard_since_armed = False
        self._speaking: Say | None = None
        self._speech_pos = 0
        self._pressing: Press | None = None
        self._press_pos = 0          # digits of _pressing sent so far
        self._next_press_at = 0.0
        self._utterance: CallerUtterance | None = None

    # -- bookkeeping ---------------------------------------------------------------------------------

    @property
    def stream_t0(self) -> float:
        """The loop time of caller time 0 (once ``stream_started`` is set)."""
        return self._t0

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time() - self._t0

    def _event(self, t: float, kind: str, detail: str = "") -> None:
        self._timeline.append(TimelineEvent(round(t, 6), kind, detail))

    def _protocol_error(self, t: float, text: str) -> None:
        if len(self._errors) < self.max_protocol_errors:
            self._errors.append(text)
            self._event(t, "protocol_error", text)
            log.warning("simulator.protocol_error", carrier=self.protocol.name, stream=self.protocol.stream_id,
                        error=text[:200])

    def _send(self, messages: list[Message]) -> None:
        """Write ``messages`` now, after everything sent before (the connection buffers; see ``_drain``)."""
        if self._ws is None:
            return
        try:
            for m in messages:
                self._ws.send_nowait(m)
        except ConnectionError:
            self._server_closed = True

    async def _drain(self) -> None:
        """Wait while the connection's write buffer is full (as an awaited send would)."""
        assert self._ws is not None
        try:
            await self._ws.drain()
        except ConnectionError:
            self._server_closed = True

    def _echo_marks(self, marks: list[MarkRecord], t: float, cleared: bool) -> None:
        for m in marks:
            m.echoed_s, m.cleared = t, cleared
            self._event(t, "mark_sent_back", f"{m.name}" + (" (cleared)" if cleared else ""))
            self._send(self.protocol.mark_played(m.name, cleared))

    def _close_segment(self, ended_by: Literal["drained", "clear", "hangup"]) -> None:
        seg = self._segment
        if seg is None:
            return
        seg.end_s = self._last_played_end
        seg.ended_by = ended_by
        self._segments.append(seg)
        self._segment = None
        self._dry = False
        self._event(seg.end_s, "bot_audio_stop", f"{seg.played_ms:.0f} ms played, {ended_by}")

    # -- server → caller -----------------------------------------------------------------------------

    async def _receive(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                if self._ended:
                    continue
                t = self._now()
                try:
                    events = self.protocol.decode(message)
                except ProtocolViolation as exc:
                    self._protocol_error(t, str(exc))
                    continue
                for ev in events:
                    self._apply(ev, t)
                if self._ws.writing_paused:
                    await self._drain()
        except ConnectionError:
            pass
        finally:
            if not self._ended:
                self._server_closed = True

    def _apply(self, ev: ServerEvent, t: float) -> None:
        buf = self._buffer
        if isinstance(ev, PlayAudio):
            if not self._media:
                self._event(t, "bot_media_first_received", f"{ev.wire_bytes} bytes")
            self._media.append((t, ev.wire_bytes))
            buf.append(np.asarray(ev.pcm, dtype=np.int16))
            self._report_level(t)
        elif isinstance(ev, QueueMark):
            rec = MarkRecord(ev.name, t)
            self._marks.append(rec)
            self._event(t, "mark_received", f"{ev.name} ({buf.buffered * 1000 // RATE} ms buffered)")
            if buf.buffered == 0 and not buf.marks:  # nothing queued before it (marks keep their order)
                self._echo_marks([rec], t, cleared=False)
            else:
                buf.marks.append((buf.enqueued_total, rec))
        elif isinstance(ev, ClearPlayback):
            dropped = buf.clear()
            pending = buf.reached_marks()
            self._clears.append(t)
            self._utterance_ms = None
            self._event(t, "clear_received", f"dropped {dropped * 1000 / RATE:.0f} ms, {len(pending)} marks pending")
            if self._segment is not None:
                self._close_segment("clear" if dropped else "drained")
            self._send(self.protocol.cleared())
            self._echo_marks(pending, t, cleared=True)

    def _report_level(self, t: float) -> None:
        try:
            messages = self.protocol.playback_level(self._buffer.buffered)
        except ProtocolViolation as exc:
            self._protocol_error(t, str(exc))
            return
        if messages:
            for m in messages:
                self._event(t, "flow_control_sent", m if isinstance(m, str) else f"{len(m)} bytes")
            self._send(messages)

    # -- the 20 ms tick --------------------------------------------------------------------------------

    def _play_tick(self, t: float) -> np.ndarray:
        pcm = self._buffer.take(FRAME_SAMPLES)
        n = len(pcm)
        if n:
            if self._segment is None:
                self._segment = PlaybackSegment(t, t, 0.0, "drained")
                self._event(t, "bot_audio_start")
            elif self._dry:
                self._underrun_ended(t)
            self._segment.played_ms += n * 1000 / RATE
            self._last_played_end = t + n / RATE
            self._bot_heard_since_armed = True
            x = pcm.astype(np.float64)
            audible = math.sqrt(float(np.dot(x, x)) / n) >= self.audible_rms
            if audible and self._utterance_ms is None:
                self._utterance_ms = 0.0  # the bot's utterance became audible: its clock starts
            if self._utterance_ms is not None:
                self._utterance_ms += n * 1000 / RATE
            if audible:
                if self._first_audible is None:
                    first = int(np.argmax(np.abs(x) >= self.audible_rms))
                    self._first_audible = t + first / RATE
                    self._event(self._first_audible, "bot_audio_first_heard")
            if n < FRAME_SAMPLES:
                pcm = np.concatenate([pcm, np.zeros(FRAME_SAMPLES - n, np.int16)])
        else:
            if self._segment is not None:
                self._dry = True
                if t - self._last_played_end >= self.underrun_gap_s - 1e-9:
                    self._close_segment("drained")
            if t - self._last_played_end >= self.utterance_gap_s:
                self._utterance_ms = None
            pcm = _SILENCE
        return pcm

    def _underrun_ended(self, t: float) -> None:
        start = self._last_played_end
        window = self.underrun_gap_s + FRAME_S
        lag = max((lag for at, lag in self._late_tick_lags if t - window <= at <= t), default=0.0)
        underrun = Underrun(round(start, 6), round((t - start) * 1000, 3), round(lag * 1000, 1))
        self._underruns.append(underrun)
        self._dry = False
        self._event(start, "bot_audio_underrun", f"{underrun.gap_ms:.0f} ms without audio, "
                                                 f"caller loop up to {underrun.loop_lag_ms:.0f} ms late")

    def _triggered(self, step: Step, t: float) -> bool:
        if step.at_s is not None:
            return t >= step.at_s - 1e-9
        if step.after_bot_done:
            return (self._bot_heard_since_armed and self._buffer.buffered == 0
                    and t - self._last_played_end >= step.pause_s - 1e-9)
        after_bot_ms = step.after_bot_ms if isinstance(step, Drop) else getattr(step, "barge_after_bot_ms", None)
        if after_bot_ms is not None:
            return self._utterance_ms is not None and self._utterance_ms >= after_bot_ms
        return t >= self._armed_at + step.pause_s - 1e-9

    def _next_step(self, t: float) -> None:
        """The current step is done at ``t``: the next one is armed."""
        self._step += 1
        self._armed_at, self._bot_heard_since_armed = t, False

    def _caller_tick(self, t: float):
        """The caller's frame for this tick, or _HANGUP, or _DROP."""
        if self._speaking is None and self._pressing is None and self._step < len(self.script):
            step = self.script[self._step]
            if self._triggered(step, t):
                if isinstance(step, Hangup):
                    return _HANGUP
                if isinstance(step, Drop):
                    return _DROP
                if isinstance(step, Press):
                    self._pressing, self._press_pos, self._next_press_at = step, 0, t
                else:
                    self._speaking, self._speech_pos = step, 0
                    bot_playing = self._segment is not None and self._buffer.buffered > 0
                    barge = step.barge_after_bot_ms is not None or bot_playing
                    self._utterance = CallerUtterance(t, t, step.label, barge)
                    self._event(t, "caller_speech_start", (step.label or f"step {self._step + 1}")
                                + (" (barge-in)" if barge else ""))
                    self._mic.speak(speech_frames(step.pcm))
        if self._pressing is not None and t >= self._next_press_at - 1e-9:
            self._press(self._pressing, t)
        frame = self._mic.next_frame()
        if self._speaking is not None:
            chunk_len = min(FRAME_SAMPLES, len(self._speaking.pcm) - self._speech_pos)
            self._speech_pos += FRAME_SAMPLES
            if self._speech_pos >= len(self._speaking.pcm):
                end = t + chunk_len / RATE
                assert self._utterance is not None
                self._utterance.end_s = end
                self._utterances.append(self._utterance)
                self._event(end, "caller_speech_end", self._utterance.label or f"step {self._step + 1}")
                self._speaking, self._utterance = None, None
                self._next_step(end)
        return frame

    def _press(self, step: Press, t: float) -> None:
        """Send the next digit of ``step`` now."""
        digit = step.digits[self._press_pos]
        self._press_pos += 1
        self._event(t, "dtmf_sent", digit + (f" ({step.label})" if step.label else ""))
        self._send(self.protocol.encode_dtmf(digit, step.duration_ms))
        if self._press_pos < len(step.digits):
            self._next_press_at += step.gap_s
        else:
            self._pressing = None
            self._next_step(t)

    def _tick(self, n: int):
        """Tick ``n``, due at ``t0 + n * 20 ms`` (run by the loop's shared clock): None to go on,
        ``clock.STOP`` when the call ends (``_end_reason`` says why), or an awaitable while the connection
        asks to wait before the next tick."""
        assert self._ws is not None and self._loop is not None
        lag = self._loop.time() - (self._t0 + n * FRAME_S)
        if lag > self._max_lag_s:
            self._max_lag_s = lag
        if lag > 0.010:
            self._late_ticks += 1
            self._late_tick_lags.append((n * FRAME_S, lag))
        self._ticks = n
        if self._server_closed:
            return self._stop("server_closed")
        if self._carrier_ended:
            return self._stop("carrier_ended")
        t = n * FRAME_S
        if t >= self.max_duration_s - 1e-9:
            return self._stop("max_duration")
        # audio queued before these marks finished playing by now
        if self._buffer.marks:
            self._echo_marks(self._buffer.reached_marks(), t, cleared=False)
        # the caller acts on what it has heard up to now, then the carrier plays the next 20 ms
        frame = self._caller_tick(t)
        if frame is _HANGUP:
            return self._stop("hangup")
        if frame is _DROP or self._dropping:
            self._event(t, "connection_dropped")
            return self._stop("dropped")
        heard = self._play_tick(t)
        self._report_level(t)
        if self.record:
            self._heard.append(heard)
            self._sent.append(frame)
        self._send(self.protocol.encode_frame(frame, n, n * FRAME_MS))
        self._ticks = n + 1
        return self._drain() if self._ws.writing_paused else None

    def end_by_carrier(self, reason: str) -> None:
        """The carrier ends the call from its side, as after a REST hang-up or a transfer: at the next tick
        it sends its closing messages and closes the socket, and the call ends with ``end_reason``
        ``"carrier_ended"``; the timeline gets a ``carrier_ended`` event with ``reason`` now. For any task
        on the call's event loop. Once the call is over (or the server closed the stream) it changes
        nothing."""
        if self._ended or self._server_closed or self._carrier_ended:
            log.info("simulator.carrier_end_ignored", carrier=self.protocol.name, call=self.protocol.call_id,
                     reason=reason, ended=self._ended, server_closed=self._server_closed)
            return
        self._carrier_ended = True
        started = self._loop is not None and self._t0 > 0     # _t0: when the stream started
        self._event(self._now() if started else 0.0, "carrier_ended", reason)

    def drop(self) -> None:
        """The connection is lost at the next tick, whatever the script says (see :class:`Drop`). For any
        task on the call's event loop; after the call's end it changes nothing."""
        self._dropping = True

    @property
    def bot_speaking(self) -> bool:
        """Bot audio is playing to the caller right now."""
        return self._segment is not None and not self._dry

    @property
    def last_bot_audio_t(self) -> float | None:
        """Loop time of the last bot audio the server sent (None: none yet)."""
        return self._t0 + self._media[-1][0] if self._media else None

    def _stop(self, reason: str) -> object:
        self._end_reason = reason
        return clock.STOP

    async def _tick_loop(self) -> str:
        await clock.every(FRAME_S, self._t0, self._tick)
        return self._end_reason

    # -- the whole call ----------------------------------------------------------------------------------

    async def _connect(self, target: StreamTarget) -> MediaConnection:
        connection = await self.protocol.connect(target, self.connect_timeout_s)
        if connection is not None:
            return connection
        from voicebot.simulator.wsclient import open_websocket  # it builds on this module

        return await open_websocket(target, session=self.http_session, timeout_s=self.connect_timeout_s,
                                    max_message_bytes=self.max_message_bytes)

    async def run(self) -> CallResult:
        self._loop = asyncio.get_running_loop()
        setup_start = self._loop.time()
        session = self.http_session or aiohttp.ClientSession()
        try:
            target = await self.protocol.setup(session)
            if self.carrier_api is not None:
                self.carrier_api.register_call(
                    self.protocol.call_id,
                    on_update=lambda update: self.end_by_carrier(update.action) if update.ends_stream else None)
        finally:
            if self.http_session is None:
                await session.close()
        self._ws = await self._connect(target)
        setup_s = self._loop.time() - setup_start
        log.info("simulator.call_connected", carrier=self.protocol.name, call=self.protocol.call_id,
                 stream=self.protocol.stream_id, setup_ms=round(setup_s * 1000))
        receiver: asyncio.Task | None = None
        end_reason = "server_closed"
        try:
            self._t0 = self._loop.time()
            self._send(self.protocol.opening_messages())
            self._event(0.0, "stream_started")
            self.stream_started.set()
            receiver = asyncio.create_task(self._receive())
            end_reason = await self._tick_loop()
        finally:
            t_end = self._ticks * FRAME_S
            self._ended = True
            if self._speaking is not None and self._utterance is not None:
                self._utterance.end_s = t_end
                self._utterances.append(self._utterance)
                self._event(t_end, "caller_speech_end", (self._utterance.label or "") + " (cut off)")
            self._close_segment("hangup" if self._buffer.buffered else "drained")
            if end_reason not in ("server_closed", "dropped"):
                self._send(self.protocol.closing_messages())
            try:
                await (self._ws.abort() if end_reason == "dropped" else self._ws.close())
            except Exception:  # noqa: BLE001 - the socket may already be gone
                pass
            if receiver is not None:
                try:
                    await asyncio.wait_for(receiver, 5.0)
                except (asyncio.TimeoutError, asyncio.CancelledError):
                    receiver.cancel()
            close = f"close {self._ws.close_code}" + (f" {self._ws.close_reason!r}" if self._ws.close_reason else "")
            self._event(t_end, "stopped", f"{end_reason}, {close}")
        return self._result(end_reason, t_end, setup_s)

    def _result(self, end_reason: str, t_end: float, setup_s: float) -> CallResult:
        heard = np.concatenate(self._heard) if self._heard else np.zeros(0, np.int16)
        sent = np.concatenate(self._sent) if self._sent else np.zeros(0, np.int16)
        result = CallResult(
            carrier=self.protocol.name, call_id=self.protocol.call_id, stream_id=self.protocol.stream_id,
            timeline=sorted(self._timeline, key=lambda e: e.t), heard=heard, sent=sent,
            segments=list(self._segments), clears=list(self._clears), protocol_errors=list(self._errors),
            marks=list(self._marks), media_received=list(self._media), utterances=list(self._utterances),
            first_bot_audio_s=self._first_audible, end_reason=end_reason,  # type: ignore[arg-type]
            close_code=self._ws.close_code if self._ws else None,
            close_reason=self._ws.close_reason if self._ws else None,
            duration_s=t_end, setup_s=setup_s, max_tick_lag_ms=self._max_lag_s * 1000, late_ticks=self._late_ticks,
            underruns=list(self._underruns), t0=self._t0)
        log.info("simulator.call_ended", carrier=result.carrier, call=result.call_id, reason=end_reason,
                 duration_s=round(t_end, 2), bot_played_ms=round(result.bot_played_ms),
                 clears=len(result.clears), marks_echoed=result.marks_echoed,
                 protocol_errors=len(result.protocol_errors), max_tick_lag_ms=round(self._max_lag_s * 1000, 1))
        return result
