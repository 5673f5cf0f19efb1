"""Who answers the fake carriers' outbound calls, and the course of such a call, shared by the Twilio and Telnyx
fakes (each only puts it on its own wire: status callbacks or webhooks, and its media stream).

Per destination number a :class:`Callee` says what happens when we dial it:

* :class:`Human` answers after ``answer_after_s`` of ringing and runs its script on our media stream (by default it
  says "hello" first); the carrier's answering-machine verdict ``human`` comes ``amd_delay_s`` after that first
  utterance ends, as a detector decides after the first words.
* :class:`Voicemail` answers, plays a speech-like greeting and then a beep tone; the verdict (machine, greeting
  ended with a beep) comes right after the beep. It keeps listening for ``listen_s`` and keeps what it heard after
  the beep, with times (:attr:`DialledCall.after_beep`).
* :class:`Busy`, :class:`NoAnswer` (rings until the ring timeout) and :class:`Failed` (a SIP error) end without an
  answer.

:class:`DialledCall` is one call's record (status, times, the media call's :class:`CallResult`, the callbacks the
carrier sent and how they were answered); :class:`Dialling` is the part of a fake that places calls: it picks the
callee, runs the call's course in the background and counts live calls (``live_calls()``, ``max_live_seen``,
``dial_times``) so tests can measure limits at the carrier.
"""

from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from urllib.parse import urlencode

import aiohttp
import numpy as np
import structlog

from voicebot.audio import RATE
from voicebot.audio.resample import Resampler
from voicebot.emulator.speech import SAMPLE_RATE as SPEECH_RATE, synthesize_speech
from voicebot.simulator.caller import CallResult, CarrierProtocol, Say, SimulatedCall, Step

log = structlog.get_logger("voicebot.simulator.carrier_api")


@lru_cache(maxsize=32)
def _speech(text: str, voice: str) -> np.ndarray:
    pcm = Resampler(SPEECH_RATE, RATE).process(synthesize_speech(text, voice))
    pcm.flags.writeable = False
    return pcm


def speech(text: str, voice: str = "callee") -> np.ndarray:
    """Speech-like int16 audio at 8 kHz for ``text`` (deterministic; the length follows the text)."""
    return _speech(text, voice)


def tone(hz: float, seconds: float, dbfs: float = -12.0) -> np.ndarray:
    """A pure tone (a voicemail beep), int16 at 8 kHz, with 5 ms ramps."""
    n = int(round(seconds * RATE))
    t = np.arange(n) / RATE
    ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.005)
    return np.rint(32767 * 10 ** (dbfs / 20) * ramp * np.sin(2 * np.pi * hz * t)).astype(np.int16)


class Callee(abc.ABC):
    """What the person (or machine) at a dialled number does."""

    answer_after_s: float = 0.0

    def answers(self, ring_timeout_s: float) -> bool:
        return False


@dataclass(frozen=True)
class Human(Callee):
    script: tuple[Step, ...] = ()      # empty: says "hello" 0.2 s after answering, then listens
    answer_after_s: float = 0.5
    amd_delay_s: float = 0.3           # the detector's verdict after the first utterance ends
    max_duration_s: float = 30.0

    def answers(self, ring_timeout_s: float) -> bool:
        return self.answer_after_s < ring_timeout_s

    def steps(self) -> list[Step]:
        return list(self.script) or [Say(speech("Hello? Who is this?"), at_s=0.2, label="hello")]


@dataclass(frozen=True, eq=False)
class Voicemail(Callee):
    greeting_pcm: np.ndarray | None = None   # None: a speech-like "you have reached …" greeting
    beep_hz: float = 1000.0
    beep_s: float = 0.5
    answer_after_s: float = 0.5
    listen_s: float = 20.0                   # how long it records after the beep, at most

    def answers(self, ring_timeout_s: float) -> bool:
        return self.answer_after_s < ring_timeout_s

    def greeting(self) -> np.ndarray:
        if self.greeting_pcm is not None:
            return np.asarray(self.greeting_pcm, np.int16)
        return speech("Hi, you have reached the voicemail of five five five. Please leave a message after the tone.",
                      "mailbox")

    def steps(self) -> list[Step]:
        return [Say(self.greeting(), at_s=0.2, label="greeting"),
                Say(tone(self.beep_hz, self.beep_s), pause_s=0.3, label="beep")]

    def beep_end_s(self) -> float:
        """When the beep ends, in stream time."""
        return 0.2 + len(self.greeting()) / RATE + 0.3 + self.beep_s


@dataclass(frozen=True)
class Busy(Callee):
    answer_after_s: float = 0.3    # rings this long before the busy signal


@dataclass(frozen=True)
class NoAnswer(Callee):
    pass                           # rings until the ring timeout


@dataclass(frozen=True)
class Failed(Callee):
    sip: int = 404                 # the SIP answer that failed the call
    answer_after_s: float = 0.1


@dataclass
class Callback:
    """One callback the carrier sent, and how it was answered."""

    at: float                 # loop time
    url: str
    event: str                # the carrier's name for it (CallStatus, AnsweredBy, event_type)
    body: str                 # as sent (form or JSON)
    headers: dict[str, str]
    status: int | None = None  # our server's answer; None when the request failed
    error: str | None = None


@dataclass
class DialledCall:
    """One outbound call the fake placed."""

    call_id: str
    to: str
    from_: str
    callee: Callee
    request: dict                      # the dial request as the fake understood it
    dialled_at: float                  # loop time
    status: str = "queued"             # the carrier's word for where it is
    answered_at: float | None = None
    ended_at: float | None = None
    answered_by: str | None = None     # the AMD verdict sent
    result: CallResult | None = None   # the media call, once it ended
    media_error: str | None = None     # following the instructions into the media stream failed
    sip: int | None = None
    created: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    sequence: int = 0                  # status callbacks sent so far (Twilio numbers them)
    ids: dict[str, str] = field(default_factory=dict)   # the carrier's other ids of the call (Telnyx leg, session)
    callbacks: list[Callback] = field(default_factory=list)
    media: SimulatedCall | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def live(self) -> bool:
        return self.ended_at is None

    @property
    def duration_s(self) -> int:
        """Talk time in whole seconds, as carriers report it."""
        if self.answered_at is None or self.ended_at is None:
            return 0
        return int(round(self.ended_at - self.answered_at))

    @property
    def after_beep(self) -> tuple[float, np.ndarray] | None:
        """A voicemail's recording: (when the beep ended, in stream seconds; what it heard from then on)."""
        if not isinstance(self.callee, Voicemail) or self.result is None:
            return None
        start = self.callee.beep_end_s()
        return start, self.result.heard[int(start * RATE):]


class Dialling(abc.ABC):
    """A fake carrier's dialling side. The fake implements the wire: :meth:`report` (one progress event as its
    callbacks carry it) and :meth:`media_protocol` (the caller side of its media stream for an answered call)."""

    def init_dialling(self, default_callee: Callee | None = None) -> None:
        self.callees: dict[str, Callee] = {}
        self.default_callee: Callee = default_callee or Human()
        self.dialled: dict[str, DialledCall] = {}
        self.dial_times: list[float] = []     # loop time of each accepted dial request
        self.max_live_seen = 0

    def live_calls(self) -> list[DialledCall]:
        return [call for call in self.dialled.values() if call.live]

    def callee_for(self, number: str) -> Callee:
        return self.callees.get(number, self.default_callee)

    def place(self, call: DialledCall, ring_timeout_s: float) -> None:
        """The dial was accepted: count it and run the call's course in the background."""
        self.dialled[call.call_id] = call
        self.dial_times.append(call.dialled_at)
        self.max_live_seen = max(self.max_live_seen, len(self.live_calls()))
        self.later(self._course(call, ring_timeout_s))

    async def wait_ended(self, call_id: str, timeout: float = 30.0) -> DialledCall:
        """The call once it has ended and its last callback was answered."""
        call = self.dialled[call_id]
        await asyncio.wait_for(call.done.wait(), timeout)
        return call

    @abc.abstractmethod
    async def report(self, call: DialledCall, event: str, **details) -> None:
        """Send the callbacks for ``event``: "initiated", "ringing", "answered", "amd" (``answered_by``, with
        ``greeting`` True when a machine's greeting ended), "machine" (a machine detected, greeting going on),
        "ended" (``status``: completed, busy, no-answer, failed, canceled)."""

    @abc.abstractmethod
    def media_protocol(self, call: DialledCall) -> CarrierProtocol:
        """The caller side of the carrier's media stream for this answered call."""

    async def prepare_media(self, protocol: CarrierProtocol) -> None:
        """Anything the carrier does before the stream (Twilio fetches the instructions inside ``setup``)."""

    async def deliver(self, call: DialledCall, url: str, event: str, data: dict[str, str] | str,
                      headers: dict[str, str]) -> Callback:
        """POST one callback (a form, or a raw body) to our server and record it with the answer."""
        body = data if isinstance(data, str) else urlencode(data)
        record = Callback(self.now(), url, event, body, headers)
        call.callbacks.append(record)
        record.status, record.error = await self.post_callback(url, body, headers)
        if record.status is None or not 200 <= record.status < 300:
            log.warning("fake_callback_not_accepted", carrier=self.carrier, call_id=call.call_id, callback_event=event,
                        status=record.status, error=record.error)
        self._wake("callback", record)
        return record

    async def post_callback(self, url: str, body: str, headers: dict[str, str]) -> tuple[int | None, str | None]:
        """(our server's status, None) for one POST, or (None, what failed). Tests replay or forge callbacks
        with it: ``await fake.post_callback(sent.url, sent.body, sent.headers)``."""
        try:
            async with self._http.post(url, data=body.encode(), headers=headers, allow_redirects=False,
                                       timeout=aiohttp.ClientTimeout(total=5)) as response:
                await response.read()
                return response.status, None
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return None, f"{type(exc).__name__}: {exc}"

    async def wait_for_callback(self, predicate=lambda callback: True, timeout: float = 10.0) -> Callback:
        """The first callback (sent or coming) that ``predicate`` accepts."""
        sent = [callback for call in self.dialled.values() for callback in call.callbacks if callback.status
                is not None or callback.error is not None]
        return await self._wait("callback", sent, predicate, timeout)

    # -- the course of one call ------------------------------------------------------------------------------
    async def _course(self, call: DialledCall, ring_timeout_s: float) -> None:
        try:
            await self._ring_and_talk(call, ring_timeout_s)
        except Exception as exc:        # the fake's own bug: the call must still end, loudly
            log.exception("fake_dialled_call_failed", carrier=self.carrier, call_id=call.call_id)
            call.media_error = call.media_error or f"{type(exc).__name__}: {exc}"
            if call.live:
                await self._end(call, "failed")
        finally:
            call.done.set()

    async def _ring_and_talk(self, call: DialledCall, ring_timeout_s: float) -> None:
        callee = call.callee
        await self._set(call, "initiated")
        if isinstance(callee, Failed):
            await asyncio.sleep(callee.answer_after_s)
            call.sip = callee.sip
            return await self._end(call, "failed")
        await self._set(call, "ringing")
        if isinstance(callee, Busy):
            await asyncio.sleep(callee.answer_after_s)
            call.sip = 486
            return await self._end(call, "busy")
        if not callee.answers(ring_timeout_s):
            await asyncio.sleep(ring_timeout_s)
            call.sip = 487
            return await self._end(call, "no-answer")
        await asyncio.sleep(callee.answer_after_s)
        call.answered_at = self.now()
        await self._set(call, "answered")
        await self._talk(call)
        await self._end(call, "completed")

    async def _talk(self, call: DialledCall) -> None:
        callee = call.callee
        protocol = self.media_protocol(call)
        max_s = callee.max_duration_s if isinstance(callee, Human) else callee.beep_end_s() + callee.listen_s
        media = call.media = SimulatedCall(protocol, callee.steps(), max_duration_s=max_s, carrier_api=self,
                                           http_session=self._http)
        verdict = asyncio.ensure_future(self._detect(call, media))
        try:
            call.result = await media.run()
        except Exception as exc:        # the instructions or the stream were refused: the carrier hangs up
            call.media_error = f"{type(exc).__name__}: {exc}"
            log.warning("fake_dialled_call_media_failed", carrier=self.carrier, call_id=call.call_id,
                        error=call.media_error)
        finally:
            verdict.cancel()
            await asyncio.gather(verdict, return_exceptions=True)

    async def _detect(self, call: DialledCall, media: SimulatedCall) -> None:
        """Answering-machine detection, when the dial asked for it: the verdict at the moment a detector has it."""
        if not call.request.get("machine_detection"):
            return
        await media.stream_started.wait()
        t0 = media.stream_t0
        callee = call.callee
        if isinstance(callee, Human):
            first = callee.steps()[0]
            heard_until = (first.at_s or 0.0) + (len(first.pcm) / RATE if isinstance(first, Say) else 0.0)
            await asyncio.sleep(max(0.0, t0 + heard_until + callee.amd_delay_s - self.now()))
            call.answered_by = "human"
            await self.report(call, "amd", answered_by="human", greeting=False)
        else:
            await asyncio.sleep(max(0.0, t0 + 1.2 - self.now()))   # a second of greeting: a machine
            await self.report(call, "machine")
            await asyncio.sleep(max(0.0, t0 + callee.beep_end_s() - self.now()))
            call.answered_by = "machine_end_beep"
            await self.report(call, "amd", answered_by="machine_end_beep", greeting=True)

    async def _set(self, call: DialledCall, event: str) -> None:
        call.status = {"answered": "in-progress"}.get(event, event)
        await self.report(call, event)

    async def _end(self, call: DialledCall, status: str) -> None:
        call.status = status
        call.ended_at = self.now()
        await self.report(call, "ended", status=status)
