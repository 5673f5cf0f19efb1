"""StepFun realtime endpoint of the emulator: ``GET {prefix}/realtime?model=stepaudio-2.5-realtime`` (WebSocket).

Follows the StepFun protocol reference, stepfun-api.md §1 (an OpenAI-Realtime-beta dialect, 24 kHz PCM16
both ways, JSON text frames only), and is deliberately strict: every client event is validated, and anything outside the documented
protocol gets an ``error`` event (``invalid_request_error`` with a ``code``, ``message``, ``param`` where
one applies, and the offending client ``event_id``); the session stays open. Unknown fields are errors
too, so a client that works here sends only documented fields.

What the emulator says, and the conventions a client can rely on:

* **Handshake.** Refused with a non-101 HTTP status and a ``{"error":{message,type}}`` body: 401 without
  ``Authorization: Bearer <key>``, 400 for a missing or unknown ``model``, or ``Faults.refuse_realtime_status``.
  Then ``session.created`` (defaults: server VAD on with prefix 500 ms / silence 100 ms / threshold 2500,
  voice ``linjiajiejie``), and ``session.updated`` with the effective config after each ``session.update``.
* **Greeting / text replies.** A response speaks text chosen in this order: ``response.instructions`` if it
  contains a marker; else the newest user or tool item (a user ``input_text`` → that text; user audio →
  the echo below; ``function_call_output`` → "The tool returned: <output>"); else ``session.instructions``
  if it contains a marker; else "Hello, how can I help you?". A **marker** is ``Say exactly:``,
  ``verbatim:`` (case-insensitive; ``：`` also accepted) or ``原样输出:``; the text after it, stripped of
  surrounding quotes, is what gets spoken. So ``{"role":"user","content":[{"type":"input_text",
  "text":"Say exactly: Thanks for calling Acme."}]}`` + ``response.create`` makes the assistant say
  "Thanks for calling Acme." (transcript equal to that text, audio from :mod:`.speech`: 65 ms per Latin
  character, 180 ms per CJK character, 0.3–8 s).
* **Caller turns (server VAD).** Energy VAD over the appended audio (threshold mapping in :mod:`.speech`:
  2500 → -40 dBFS block RMS). ``speech_started.audio_start_ms`` / ``speech_stopped.audio_end_ms`` are
  positions in the appended stream (samples / 24). The user item holds the audio from
  ``audio_start_ms - prefix_padding_ms`` to ``audio_end_ms``; its transcript is ``"(caller speech 1.42 s)"``
  (speech duration ``audio_end_ms - audio_start_ms``). The reply plays that item audio back, with the
  transcript ``"You said something for 1.4 seconds."``. A reply still running when a new turn is committed
  is ended first (``response.done`` status ``cancelled``, reason ``turn_detected``); the emulator does not
  cancel on ``speech_started`` — the client must send ``response.cancel`` itself.
* **Streaming.** 100 ms ``response.audio.delta`` chunks paced at ``Emulator.speed`` × real time, each preceded
  by the ``response.audio_transcript.delta`` of the words it carries. ``Faults.response_delay_s`` is waited
  after ``response.content_part.added``, before the first delta.
* **Barge-in.** ``response.cancel`` stops deltas at once and closes the response with ``response.audio.done``
  … ``response.done`` (``status:"cancelled"``). ``conversation.item.truncate`` accepts ``audio_end_ms`` up
  to the audio generated so far for that item (rounded up to the ms), cuts the item's audio and transcript,
  and answers ``conversation.item.truncated``.
* **Tool calls** (stepfun-api.md §1.7), steered by the directives of :mod:`.tool_calls` in
  ``session.instructions`` (``On caller turn N, say "…" and call <name> <json-args>.``) or in a user text
  item (``Call tool: <name> <json-args>``), for a function tool offered in ``session.tools`` (or the
  response's ``tools``) unless ``tool_choice`` is ``"none"``. The response then holds the spoken line, if
  any, as the assistant message (output 0, streamed as above), then a ``function_call`` item (output 1, or
  0 alone): ``response.output_item.added`` (status ``in_progress``, ``arguments: ""``),
  ``conversation.item.created`` (status ``incomplete``, as StepFun's guide shows it), a few
  ``response.function_call_arguments.delta`` with the fragment under ``arguments`` (StepFun's key, not
  OpenAI's ``delta``), ``response.function_call_arguments.done`` (``call_id``, ``name``, the arguments
  verbatim), ``response.output_item.done``, then ``response.done`` listing both items. Call ids are
  ``call_`` + 24 hex digits. A cancel (or a new turn) while the line plays ends the response before the
  call is made. The client answers with a ``function_call_output`` item, accepted only for a
  ``function_call`` of this conversation that has no output yet, placed after it, and not while a
  response runs (``ongoing response already exists``, as for ``response.create``); a following
  ``response.create`` says "The tool returned: <output>". Directives are not acted on for replies to
  anything but a user item, so the reply to a tool's output never calls again by itself.
* **Limits.** ``Emulator.session_limit_s`` (30 min) → ``error`` ``session_expired`` then close 1000. An
  ``append`` may carry at most 15 MB of base64.
* **Faults** (``Emulator.faults``, any time): ``refuse_realtime_status`` (the upgrade), ``drop_realtime_after_s``
  (the connection aborted that long after connect), ``error_event_after_s`` (one ``server_error``; a response
  in progress ends ``failed``), ``response_delay_s`` (before each response's first delta), and, once, mid-way
  through the next response that streams audio (after ``realtime_fault_after_deltas`` of its deltas),
  ``realtime_fault_once`` = :data:`MID_RESPONSE_FAULTS`: ``reset`` — the TCP connection reset (RST, no close
  frame); ``stall`` — nothing more is sent and nothing read (client close frames and pings included), the
  socket stays open until the client drops it; ``garbage`` — :func:`garbage_messages` (a proxy's HTML error
  page, cut-off JSON, JSON that is no event, events with missing or mistyped fields, an unknown event type,
  undecodable audio, a binary frame), then the response goes on as if nothing happened; ``bad_frame`` — a
  frame with a reserved opcode (RFC 6455 §5.2: the client must fail the connection), then the server stalls.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import math
import time
import weakref
from http import HTTPStatus
from typing import Any, NamedTuple

import numpy as np
import structlog
from aiohttp import hdrs, web

from .. import jsoncodec
from ..wsserver import ServerWebSocket
from . import speech
from .app import MID_RESPONSE_FAULTS, TRACE_ID, Emulator, check_bearer, error_response
from .http_common import reset_connection
from .realtime_events import (BYTES_PER_MS, DEFAULT_TURN_DETECTION, DEFAULT_VOICE, MARKER_RE,
                              MAX_APPEND_BASE64, RESPONSE_FIELDS, SESSION_FIELDS, InputAudio, Item,
                              ProtocolError, Response, bad_type, bad_value, check_keys, decode_audio, int_field,
                              missing, new_id, spoken_text, str_field, validate_fields, validate_item)
from .tool_calls import (ToolCall, allowed, fragments, inline_call, new_call_id, offered_functions,
                         turn_directives)

log = structlog.get_logger("voicebot.emulator")

WATCH_INTERVAL_S = 0.02                   # how often faults and the session limit are checked
MAX_WS_MESSAGE = 20 * 1024 * 1024
UNPACED_MAX_BUFFERED = 256 * 1024         # unpaced replies wait for the socket below this many unsent bytes
UNPACED_POLL_S = 0.005
KEEP_INPUT_SAMPLES = 5 * speech.SAMPLE_RATE  # input audio kept between turns when sessions do not record
CHUNK_MS = 100
APPEND_KEYS = frozenset({"type", "event_id", "audio"})
DEFAULT_REPLY = "Hello, how can I help you?"
# FIN + reserved opcode 0x3, two bytes of payload: a frame no WebSocket client may accept (RFC 6455 §5.2).
BAD_FRAME = b"\x83\x02??"


def garbage_messages(response_id: str, item_id: str) -> list[str | bytes]:
    """What a broken server or a proxy in the way may put in the middle of a response: none of it is a
    valid StepFun event, and a client must drop each one and carry on."""
    ids = {"response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0}
    return [
        "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>",
        '{"type":"response.audio.delta","response_id":"' + response_id + '","delta":"AAAA',   # cut off
        "[1, 2, 3]",
        "null",
        jsoncodec.dumps({"event_id": new_id("evt")}),                                           # no type
        jsoncodec.dumps({"type": "response.audio.delta", "event_id": new_id("evt"), **ids,
                         "delta": "@@ not base64 @@"}),
        jsoncodec.dumps({"type": "response.audio.delta", "event_id": new_id("evt"), "response_id": response_id,
                         "item_id": 7, "delta": 12345}),                                        # mistyped
        jsoncodec.dumps({"type": "response.output_item.added", "event_id": new_id("evt"),
                         "response_id": response_id, "output_index": 0, "item": "garbled"}),
        jsoncodec.dumps({"type": "response.audio_transcript.delta", "event_id": new_id("evt"), **ids,
                         "delta": None}),
        jsoncodec.dumps({"type": "response.imaginary.event", "event_id": new_id("evt"), **ids}),
        b"\x00\xff\x13\x37 binary junk",
    ]


class Plan(NamedTuple):
    """What a reply does: say ``text`` (None: no message), with ``echo`` as its audio if given, then
    ``call`` a tool if given."""

    text: str | None
    echo: bytes | None = None
    call: ToolCall | None = None

# ---------------------------------------------------------------------------------------------- session

class RealtimeSession:
    """One realtime WebSocket connection: protocol state plus a record of everything exchanged."""

    def __init__(self, emulator: Emulator, ws: ServerWebSocket, request: web.Request, model: str) -> None:
        self.emulator = emulator
        self.ws = ws
        self.request = request
        self.model = model
        self.id = new_id("sess")
        self.trace_id: str | None = request.get(TRACE_ID)
        self.ordinal = 0
        self.connected_at = time.monotonic()
        self.received: list[tuple[float, dict]] = []
        self.sent: list[dict] = []
        self.record = emulator.record             # False: ``received``/``sent`` stay empty, counters only
        self.events_received = 0
        self.events_sent = 0
        self.appends = 0                          # input_audio_buffer.append events accepted
        self.audio_in = InputAudio()              # keeps only the recent audio when not recording
        self.config: dict[str, Any] = {
            "modalities": ["text", "audio"],
            "instructions": "",
            "voice": DEFAULT_VOICE,
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm16",
            "turn_detection": dict(DEFAULT_TURN_DETECTION),
            "tools": [],
            "tool_choice": "auto",
            "temperature": 0.8,
            "max_response_output_tokens": 4096,
            "input_audio_transcription": None,
        }
        self.items: list[Item] = []
        self.responses: list[Response] = []
        self.response: Response | None = None     # the response in progress, if any
        self.audio_produced = False
        self.closed = False
        self.close_reason: str | None = None
        self.errors_sent = 0
        self.fault: str | None = None             # the mid-response fault this session got, if any
        self.stalled = False                      # it says and reads nothing any more (a fault)
        self._error_fault_sent = False
        self._closing: asyncio.Task | None = None
        self._buffer_start = 0                    # sample where the uncommitted input buffer starts
        self._speech: tuple[str, int] | None = None  # (item_id, start sample) of the turn in progress
        td = self.config["turn_detection"]
        self.vad = speech.EnergyVAD(td["energy_awakeness_threshold"], td["silence_duration_ms"])
        self._changed = asyncio.Event()
        self._handlers = {
            "session.update": self._on_session_update,
            "input_audio_buffer.append": self._on_append,
            "input_audio_buffer.commit": self._on_commit,
            "input_audio_buffer.clear": self._on_clear,
            "conversation.item.create": self._on_item_create,
            "conversation.item.delete": self._on_item_delete,
            "conversation.item.truncate": self._on_item_truncate,
            "response.create": self._on_response_create,
            "response.cancel": self._on_response_cancel,
        }

    # -- test helpers --
    @property
    def input_samples(self) -> int:
        return self.audio_in.samples

    @property
    def input_audio(self) -> bytes:
        """The input audio held (all of it when recording)."""
        return self.audio_in.held()

    def received_of(self, type: str) -> list[dict]:
        return [event for _, event in self.received if event.get("type") == type]

    def sent_of(self, type: str) -> list[dict]:
        return [event for event in self.sent if event.get("type") == type]

    async def wait_event(self, type: str, timeout: float = 5.0, *, count: int = 1) -> dict:
        """The ``count``-th client event of ``type`` received (waits for it)."""
        return await self._wait(lambda: self.received_of(type), count, timeout)

    async def wait_sent(self, type: str, timeout: float = 5.0, *, count: int = 1) -> dict:
        """The ``count``-th server event of ``type`` sent (waits for it)."""
        return await self._wait(lambda: self.sent_of(type), count, timeout)

    async def wait_closed(self, timeout: float = 5.0) -> None:
        async def wait() -> None:
            while not self.closed:
                await self._changed.wait()
        await asyncio.wait_for(wait(), timeout)

    async def _wait(self, source, count: int, timeout: float) -> dict:
        async def wait() -> dict:
            while True:
                matches = source()
                if len(matches) >= count:
                    return matches[count - 1]
                await self._changed.wait()
        return await asyncio.wait_for(wait(), timeout)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- sending --
    def send(self, event: dict) -> None:
        """Write a server event to the socket at once (recorded in ``sent`` when recording)."""
        if self.closed or self.stalled:
            return
        if "event_id" not in event:
            event["event_id"] = new_id("evt")
        self.events_sent += 1
        if self.record:
            self.sent.append(event)
            self._notify()
        self.ws.send_text(jsoncodec.dumps(event))

    def send_error(self, exc: ProtocolError, client_event: dict | None = None) -> None:
        client_event_id = client_event.get("event_id") if isinstance(client_event, dict) else None
        error: dict[str, Any] = {"type": exc.type, "code": exc.code, "message": exc.message}
        if exc.param is not None:
            error["param"] = exc.param
        error["event_id"] = client_event_id if isinstance(client_event_id, str) else None
        self.errors_sent += 1
        self.send({"type": "error", "event_id": new_id("evt"), "error": error})
        log.warning("emulator_realtime_error", session_id=self.id, code=exc.code, error_type=exc.type,
                    message=exc.message, param=exc.param,
                    client_event=client_event.get("type") if isinstance(client_event, dict) else None)

    # -- lifecycle --
    async def run(self) -> None:
        """Handle every client message in the socket's data callback (:meth:`receive`) until it closes."""
        watchdog = _Watchdog.of_loop()
        watchdog.add(self)
        self.send({"type": "session.created", "session": self._created_view()})
        try:
            self.ws.listen(self.receive)
            await self.ws.wait_closed()
        finally:
            if self.close_reason is None:
                problem = self.ws.problem
                self.close_reason = f"error: {problem}" if problem else f"client closed ({self.ws.close_code})"
            if self.response is not None and self.response.task is not None:
                self.response.task.cancel()
            watchdog.discard(self)
            self.closed = True
            if not self.record:
                self._release_audio()
            self._notify()
            self.emulator.notify()
            log.info("emulator_realtime_session", session_id=self.id, model=self.model, trace_id=self.trace_id,
                     duration_s=round(time.monotonic() - self.connected_at, 3),
                     events_received=self.events_received, events_sent=self.events_sent,
                     audio_in_s=round(self.input_samples / speech.SAMPLE_RATE, 2),
                     responses=len(self.responses), errors=self.errors_sent, close_reason=self.close_reason)

    def _release_audio(self) -> None:
        """A closed session that does not record keeps its counters, not its audio: a session is garbage only once
        Python's cyclic collector reaches it (minutes under load), and its audio should not wait for that."""
        for item in self.items:
            item.audio = bytearray()
        self.audio_in.keep_from(self.audio_in.samples)

    async def _close(self, reason: str, code: int = 1000, message: str = "") -> None:
        """Close the socket (every event sent so far is already written)."""
        self.close_reason = reason
        self.closed = True  # no further events
        await self.ws.close(code, message)

    def _drop(self) -> None:
        """Abort the connection without a close frame, like a network failure."""
        self.close_reason = "fault: dropped"
        self.ws.transport.abort()

    async def _mid_response_fault(self, kind: str, resp: Response, item: Item) -> None:
        """Apply a :data:`MID_RESPONSE_FAULTS` fault to ``resp``; returns only for ``garbage`` (the response
        then goes on), else waits until the session ends."""
        self.fault = kind
        log.warning("emulator_realtime_fault", session_id=self.id, response_id=resp.id, fault=kind)
        if kind == "garbage":
            for message in garbage_messages(resp.id, item.id):
                if type(message) is bytes:
                    self.ws.send_bytes(message)
                else:
                    self.ws.send_text(message)
            return
        if kind == "reset":
            self.close_reason = "fault: reset"
            reset_connection(self.ws.transport)
        else:
            if kind == "bad_frame":
                self.ws.transport.write(BAD_FRAME)
            elif kind != "stall":
                log.error("emulator_realtime_fault_unknown", fault=kind, known=MID_RESPONSE_FAULTS)
            self.close_reason = f"fault: {kind}"
            self.stalled = True
            self.ws.ignore_input()
        await asyncio.Event().wait()   # cancelled when the session ends

    def _watch(self, now: float) -> bool:
        """Apply the faults and the session limit due by ``now``; False once there is nothing left to watch."""
        if self.closed:
            return False
        elapsed = now - self.connected_at
        faults = self.emulator.faults
        if faults.drop_realtime_after_s is not None and elapsed >= faults.drop_realtime_after_s:
            self._drop()
            return False
        if faults.stall_realtime_after_s is not None and elapsed >= faults.stall_realtime_after_s:
            # Hung: nothing more said (``closed``: no further events), nothing read; the socket stays open.
            self.close_reason, self.closed = "fault: stalled", True
            self.ws.transport.pause_reading()
            log.warning("emulator_realtime_stalled", session_id=self.id)
            return False
        if (not self._error_fault_sent and faults.error_event_after_s is not None
                and elapsed >= faults.error_event_after_s):
            self._error_fault_sent = True
            self.send_error(ProtocolError("server_error", "The server had an error while processing your "
                                          "request.", type="server_error"))
            if self.response is not None:
                self._finish(self.response, "failed", {"type": "failed", "error": {
                    "type": "server_error", "code": "server_error"}})
        if elapsed >= self.emulator.session_limit_s:
            self.send_error(ProtocolError("session_expired", "Your session hit the maximum duration of "
                                          f"{self.emulator.session_limit_s / 60:g} minutes."))
            if self.response is not None:
                self._finish(self.response, "incomplete", {"type": "incomplete", "reason": "session_expired"})
            self._closing = asyncio.create_task(self._close("session limit", 1000, "session expired"))
            return False
        return True

    # -- dispatch --
    def receive(self, message: str | bytes) -> None:
        """One client message (the socket's listener)."""
        if self.stalled:
            return
        if type(message) is str:
            self.handle_text(message)
            return
        self.events_received += 1
        self._record({"_binary": len(message)})
        self.send_error(ProtocolError("invalid_event", "invalid event format: binary frames are not supported, "
                                      "send JSON text events"))

    def _record(self, event: dict) -> None:
        if self.record:
            self.received.append((time.monotonic(), event))
            self._notify()

    def handle_text(self, data: str) -> None:
        self.events_received += 1
        try:
            event = jsoncodec.loads(data)
        except ValueError:
            self._record({"_invalid": data[:500]})
            self.send_error(ProtocolError("invalid_json", "invalid event format: the message is not valid JSON"))
            return
        if type(event) is not dict:
            self._record({"_invalid": data[:500]})
            self.send_error(ProtocolError("invalid_event", "invalid event format: an event must be a JSON object"))
            return
        self._record(event)
        try:
            if "event_id" in event and not isinstance(event["event_id"], str):
                raise bad_type("event_id", "string")
            kind = event.get("type")
            if kind is None:
                raise missing("type")
            if not isinstance(kind, str):
                raise bad_type("type", "string")
            handler = self._handlers.get(kind)
            if handler is None:
                raise ProtocolError("unknown_event_type", f"Invalid value: '{kind}'. Unknown client event type.",
                                    "type")
            handler(event)
        except ProtocolError as exc:
            self.send_error(exc, event)

    # -- session --
    def _created_view(self) -> dict:
        c = self.config
        return {"id": self.id, "object": "realtime.session", "model": self.model,
                "modalities": list(c["modalities"]), "instructions": c["instructions"], "voice": c["voice"],
                "input_audio_format": c["input_audio_format"], "output_audio_format": c["output_audio_format"],
                "max_response_output_tokens": c["max_response_output_tokens"]}

    def _updated_view(self) -> dict:
        view = self._created_view()
        c = self.config
        view.update({"turn_detection": copy.deepcopy(c["turn_detection"]), "tools": copy.deepcopy(c["tools"]),
                     "tool_choice": c["tool_choice"], "temperature": c["temperature"],
                     "max_response_output_tokens": c["max_response_output_tokens"]})
        return view

    def _check_voice_change(self, voice: str | None, param: str) -> None:
        if voice is not None and voice != self.config["voice"] and self.audio_produced:
            raise ProtocolError("voice_locked", "voice cannot be changed after the model has produced audio "
                                "in this session", param)

    def _on_session_update(self, event: dict) -> None:
        check_keys(event, {"type", "event_id", "session"})
        if "session" not in event:
            raise missing("session")
        changes = validate_fields(event["session"], SESSION_FIELDS, "session")
        self._check_voice_change(changes.get("voice"), "session.voice")
        was_vad = self.config["turn_detection"] is not None
        self.config.update(changes)
        td = self.config["turn_detection"]
        if td is not None:
            self.vad.configure(td["energy_awakeness_threshold"], td["silence_duration_ms"])
            if not was_vad:
                self.vad.reset(self.input_samples)
        elif was_vad:
            self._speech = None
            self.vad.reset(self.input_samples)
        self.send({"type": "session.updated", "session": self._updated_view()})

    # -- input audio --
    def _on_append(self, event: dict) -> None:
        check_keys(event, APPEND_KEYS)
        if "audio" not in event:
            raise missing("audio")
        audio = event["audio"]
        if type(audio) is str and len(audio) > MAX_APPEND_BASE64:
            raise bad_value("audio", "an append event may carry at most 15 MB.")
        raw = decode_audio(audio, "audio")
        self.appends += 1
        audio_in = self.audio_in
        audio_in.append(raw)
        vad_on = self.config["turn_detection"] is not None
        if not self.record and vad_on and self._speech is None and audio_in.held_samples > 2 * KEEP_INPUT_SAMPLES:
            # Nothing before the last few seconds can still become part of an item: let it go.
            audio_in.keep_from(audio_in.samples - KEEP_INPUT_SAMPLES)
        if not vad_on or not raw:
            return
        for vad_event in self.vad.feed(np.frombuffer(raw, dtype="<i2")):
            if vad_event.kind == "start":
                self._speech_started(vad_event.sample)
            else:
                self._speech_stopped(vad_event.sample)

    def _speech_started(self, sample: int) -> None:
        item_id = new_id("item")
        self._speech = (item_id, sample)
        self.send({"type": "input_audio_buffer.speech_started", "audio_start_ms": round(sample / 24),
                   "item_id": item_id})

    def _speech_stopped(self, end: int) -> None:
        if self._speech is None:
            return
        item_id, start = self._speech
        self._speech = None
        self.send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": round(end / 24),
                   "item_id": item_id})
        prefix = self.config["turn_detection"]["prefix_padding_ms"] * 24
        first = max(self._buffer_start, start - prefix)
        audio = self.audio_in.slice(first, end)
        self._buffer_start = end
        speech_ms = round(end / 24) - round(start / 24)
        item = Item(id=item_id, type="message", role="user", content=[{"type": "input_audio", "transcript": None}],
                    audio=bytearray(audio), speech_ms=speech_ms)
        self._commit_item(item)
        if self.response is not None:
            self._finish(self.response, "cancelled", {"type": "cancelled", "reason": "turn_detected"})
        self._start_response({})

    def _commit_item(self, item: Item) -> None:
        previous = self.items[-1].id if self.items else None
        self.items.append(item)
        self.send({"type": "input_audio_buffer.committed", "previous_item_id": previous, "item_id": item.id})
        self.send({"type": "conversation.item.created", "previous_item_id": previous, "item": item.public()})
        self._transcribe(item)

    def _transcribe(self, item: Item) -> None:
        seconds = (item.speech_ms if item.speech_ms is not None else item.audio_ms) / 1000.0
        transcript = f"(caller speech {seconds:.2f} s)"
        for index, part in enumerate(item.content):
            if part["type"] == "input_audio" and part.get("transcript") is None:
                part["transcript"] = transcript
                self.send({"type": "conversation.item.input_audio_transcription.completed", "item_id": item.id,
                           "content_index": index, "transcript": transcript})

    def _on_commit(self, event: dict) -> None:
        check_keys(event, {"type", "event_id"})
        if self.config["turn_detection"] is not None:
            raise ProtocolError("input_audio_buffer_commit_server_vad", "commit when server vad")
        audio = self.audio_in.slice(self._buffer_start)
        if not audio:
            raise ProtocolError("input_audio_buffer_commit_empty",
                                "Error committing input audio buffer: the buffer is empty.")
        self._buffer_start = self.input_samples
        item = Item(id=new_id("item"), type="message", role="user",
                    content=[{"type": "input_audio", "transcript": None}], audio=bytearray(audio))
        self._commit_item(item)

    def _on_clear(self, event: dict) -> None:
        check_keys(event, {"type", "event_id"})
        self._buffer_start = self.input_samples
        self._speech = None
        self.vad.reset(self.input_samples)
        self.send({"type": "input_audio_buffer.cleared"})

    # -- conversation --
    def _find_item(self, item_id: str) -> Item | None:
        return next((item for item in self.items if item.id == item_id), None)

    def _on_item_create(self, event: dict) -> None:
        check_keys(event, {"type", "event_id", "previous_item_id", "item"})
        previous_id = str_field(event, "previous_item_id", "previous_item_id", required=False)
        item = validate_item(event.get("item"))
        if self._find_item(item.id) is not None:
            raise ProtocolError("duplicate_item_id", f"Item with id '{item.id}' already exists.", "item.id")
        if previous_id is None:
            index = len(self.items)
        elif previous_id == "root":
            index = 0
        else:
            previous = self._find_item(previous_id)
            if previous is None:
                raise ProtocolError("item_not_found", f"Item with id '{previous_id}' not found.",
                                    "previous_item_id")
            index = self.items.index(previous) + 1
        if item.type == "function_call_output":
            self._check_function_output(item, index)
        self.items.insert(index, item)
        previous_item_id = self.items[index - 1].id if index > 0 else None
        self.send({"type": "conversation.item.created", "previous_item_id": previous_item_id,
                   "item": item.public()})
        if item.audio:
            self._transcribe(item)

    def _check_function_output(self, item: Item, index: int) -> None:
        """A tool's result answers a function_call of this conversation, once, after it, and not while a
        response runs (the model would not see it: StepFun refuses it as it refuses response.create)."""
        if self.response is not None:
            raise ProtocolError("conversation_already_has_active_response", "ongoing response already exists")
        call = next((i for i in self.items if i.type == "function_call" and i.call_id == item.call_id), None)
        if call is None:
            raise bad_value("item.call_id", f"no function_call with call_id '{item.call_id}' in the "
                            "conversation.")
        if any(i.type == "function_call_output" and i.call_id == item.call_id for i in self.items):
            raise bad_value("item.call_id", f"the function_call '{item.call_id}' already has an output.")
        if index <= self.items.index(call):
            raise bad_value("previous_item_id", f"a function_call_output must come after its function_call "
                            f"'{item.call_id}' (item '{call.id}').")

    def _on_item_delete(self, event: dict) -> None:
        check_keys(event, {"type", "event_id", "item_id"})
        item_id = str_field(event, "item_id", "item_id", required=True, nonempty=True)
        item = self._find_item(item_id)
        if item is None:
            raise ProtocolError("item_not_found", f"Item with id '{item_id}' not found.", "item_id")
        if self.response is not None and self.response.item is item:
            raise ProtocolError("item_in_progress", f"Item '{item_id}' belongs to the response in progress; "
                                "cancel it first.", "item_id")
        self.items.remove(item)
        self.send({"type": "conversation.item.deleted", "item_id": item_id})

    def _on_item_truncate(self, event: dict) -> None:
        check_keys(event, {"type", "event_id", "item_id", "content_index", "audio_end_ms"})
        item_id = str_field(event, "item_id", "item_id", required=True, nonempty=True)
        content_index = int_field(event, "content_index", "content_index", required=True)
        audio_end_ms = int_field(event, "audio_end_ms", "audio_end_ms", required=True)
        item = self._find_item(item_id)
        if item is None:
            raise ProtocolError("item_not_found", f"Item with id '{item_id}' not found.", "item_id")
        if item.type != "message" or item.role != "assistant":
            raise bad_value("item_id", "only assistant message items can be truncated.")
        if content_index >= len(item.content) or item.content[content_index].get("type") != "audio":
            raise bad_value("content_index", f"item '{item_id}' has no audio content at index {content_index}.")
        generated_ms = item.audio_ms
        if audio_end_ms > math.ceil(generated_ms):
            raise bad_value("audio_end_ms", f"audio_end_ms is longer than the audio: {audio_end_ms} ms requested, "
                             f"{generated_ms:.0f} ms of audio generated for item '{item_id}'.")
        part = item.content[content_index]
        said = part.get("transcript") or ""
        response = next((r for r in self.responses if r.item is item), None)
        if response is not None and response.text:
            # The transcript is spread over the reply's full planned audio, which may be longer than what
            # was generated before a cancel: cut the full text, never beyond what was streamed.
            full_ms = max(generated_ms, planned_audio_ms(response))
            cut = speech.cut_transcript(response.text, audio_end_ms / full_ms if full_ms > 0 else 0.0)
            part["transcript"] = cut if len(cut) <= len(said) else said
        else:
            fraction = audio_end_ms / generated_ms if generated_ms > 0 else 0.0
            part["transcript"] = speech.cut_transcript(said, fraction)
        del item.audio[audio_end_ms * BYTES_PER_MS:]
        item.truncated_ms = audio_end_ms
        self.send({"type": "conversation.item.truncated", "item_id": item_id, "content_index": content_index,
                   "audio_end_ms": audio_end_ms})

    # -- responses --
    def _on_response_create(self, event: dict) -> None:
        check_keys(event, {"type", "event_id", "response"})
        overrides = validate_fields(event["response"], RESPONSE_FIELDS, "response") if "response" in event else {}
        self._check_voice_change(overrides.get("voice"), "response.voice")
        if self.response is not None:
            raise ProtocolError("conversation_already_has_active_response", "ongoing response already exists")
        self._start_response(overrides)

    def _on_response_cancel(self, event: dict) -> None:
        check_keys(event, {"type", "event_id", "response_id"})
        response_id = str_field(event, "response_id", "response_id", required=False)
        if self.response is None:
            raise ProtocolError("response_cancel_not_active", "no ongoing response to cancel")
        if response_id is not None and response_id != self.response.id:
            raise ProtocolError("response_cancel_not_active", f"no ongoing response with id '{response_id}' "
                                "to cancel", "response_id")
        self._finish(self.response, "cancelled", {"type": "cancelled", "reason": "client_cancelled"})

    def _start_response(self, overrides: dict) -> None:
        tools = offered_functions(overrides.get("tools", self.config["tools"]),
                                  overrides.get("tool_choice", self.config["tool_choice"]))
        resp = Response(id=new_id("resp"), modalities=overrides.get("modalities", self.config["modalities"]),
                        voice=overrides.get("voice", self.config["voice"]),
                        instructions=overrides.get("instructions"), tools=frozenset(tools))
        self.response = resp
        self.responses.append(resp)
        self.send({"type": "response.created", "response": {
            "id": resp.id, "object": "realtime.response", "status": "in_progress", "status_details": None,
            "output": [], "usage": None}})
        resp.task = asyncio.create_task(self._run_response(resp))

    def _plan_reply(self, resp: Response) -> Plan:
        """What a reply says and calls, following the conventions in the module docstring."""
        if resp.instructions and MARKER_RE.search(resp.instructions):
            return Plan(spoken_text(resp.instructions))
        for item in reversed(self.items):
            if item.type == "function_call_output":
                return Plan(f"The tool returned: {item.output}")
            plan = self._answer_user(resp, item) if item.role == "user" else None
            if plan is not None:
                return plan
        instructions = self.config["instructions"]
        if instructions and MARKER_RE.search(instructions):
            return Plan(spoken_text(instructions))
        return Plan(DEFAULT_REPLY)

    def _answer_user(self, resp: Response, item: Item) -> Plan | None:
        """The reply to a user item: a tool call if one is asked for and offered, else what it says (None for
        an item with neither audio nor text: the reply looks further back)."""
        texts = [part["text"] for part in item.content if part["type"] == "input_text"]
        text = " ".join(texts)
        inline = inline_call(text) if texts else None
        if inline is not None:
            before, call = inline
            if allowed(call, resp.tools, session_id=self.id, response_id=resp.id, item_id=item.id):
                return Plan(spoken_text(before) or None, None, call)
            text = before
        turn = sum(1 for i in self.items[:self.items.index(item) + 1] if i.type == "message" and i.role == "user")
        instructions = resp.instructions if resp.instructions is not None else self.config["instructions"]
        call = allowed(turn_directives(instructions).get(turn), resp.tools, session_id=self.id,
                       response_id=resp.id, caller_turn=turn)
        if call is not None:
            return Plan(call.say, None, call)
        if item.audio:
            seconds = (item.speech_ms if item.speech_ms is not None else item.audio_ms) / 1000.0
            return Plan(f"You said something for {seconds:.1f} seconds.", bytes(item.audio))
        if texts:
            return Plan(spoken_text(text) or DEFAULT_REPLY)
        return None

    async def _run_response(self, resp: Response) -> None:
        try:
            plan = self._plan_reply(resp)
            if plan.text is not None:
                await self._say(resp, plan.text, plan.echo)
            elif self.emulator.faults.response_delay_s > 0:
                await asyncio.sleep(self.emulator.faults.response_delay_s)
            if plan.call is not None:
                self._call(resp, plan.call)
            self._finish(resp, "completed")
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # a bug in the emulator must not hang the client
            log.exception("emulator_realtime_response_failed", session_id=self.id, response_id=resp.id)
            self.send_error(ProtocolError("server_error", f"internal error: {exc!r}", type="server_error"))
            self._finish(resp, "failed", {"type": "failed", "error": {"type": "server_error",
                                                                      "code": "server_error"}})

    async def _say(self, resp: Response, text: str, echo: bytes | None) -> None:
        """The reply's assistant message (output 0): ``text``, spoken (``echo`` as its audio if given)."""
        resp.text = text
        previous = self.items[-1].id if self.items else None
        item = Item(id=new_id("item"), type="message", role="assistant", status="in_progress",
                    response_id=resp.id)
        resp.item = item
        self.items.append(item)
        self.send({"type": "response.output_item.added", "response_id": resp.id, "output_index": 0,
                   "item": item.public()})
        self.send({"type": "conversation.item.created", "previous_item_id": previous, "item": item.public()})
        part = {"type": "audio", "transcript": ""} if resp.audio else {"type": "text", "text": ""}
        item.content.append(part)
        self.send({"type": "response.content_part.added", "response_id": resp.id, "item_id": item.id,
                   "output_index": 0, "content_index": 0, "part": dict(part)})
        delay = self.emulator.faults.response_delay_s
        if delay > 0:
            await asyncio.sleep(delay)
        if resp.audio:
            pcm = echo if echo is not None else await asyncio.to_thread(speech.synthesize_speech_bytes, text,
                                                                        resp.voice)
            resp.planned_ms = len(pcm) / BYTES_PER_MS
            await self._stream_audio(resp, item, part, pcm)
        else:
            for piece in speech.split_transcript(text, max(1, len(text) // 8)):
                if piece:
                    resp.transcript_sent += piece
                    part["text"] = resp.transcript_sent
                    self.send({"type": "response.text.delta", "response_id": resp.id, "item_id": item.id,
                               "output_index": 0, "content_index": 0, "delta": piece})
                    await asyncio.sleep(0)
        self._close_message(resp, "completed")

    def _call(self, resp: Response, call: ToolCall) -> None:
        """The reply's function_call (after its message, if any): the item, its arguments streamed under
        the key ``arguments`` (StepFun's guide; OpenAI says ``delta``), then the item done."""
        index = 1 if resp.item is not None else 0
        previous = self.items[-1].id if self.items else None
        item = Item(id=new_id("item"), type="function_call", status="in_progress", call_id=new_call_id(),
                    name=call.name, arguments="", response_id=resp.id)
        resp.call = item
        self.items.append(item)
        ids = {"response_id": resp.id, "item_id": item.id, "output_index": index, "call_id": item.call_id,
               "name": item.name}
        self.send({"type": "response.output_item.added", "response_id": resp.id, "output_index": index,
                   "item": item.public()})
        item.status = "incomplete"    # as StepFun's guide shows it while the arguments are generated
        self.send({"type": "conversation.item.created", "previous_item_id": previous, "item": item.public()})
        for piece in fragments(call.arguments):
            self.send({"type": "response.function_call_arguments.delta", **ids, "arguments": piece})
        item.arguments, item.status = call.arguments, "completed"
        self.send({"type": "response.function_call_arguments.done", **ids, "arguments": item.arguments})
        self.send({"type": "response.output_item.done", "response_id": resp.id, "output_index": index,
                   "item": item.public()})
        log.info("emulator_realtime_tool_call", session_id=self.id, response_id=resp.id, tool=call.name,
                 call_id=item.call_id)

    async def _stream_audio(self, resp: Response, item: Item, part: dict, pcm: bytes) -> None:
        chunk_bytes = CHUNK_MS * BYTES_PER_MS
        n_chunks = max(1, -(-len(pcm) // chunk_bytes))
        words = speech.split_transcript(resp.text, n_chunks)
        due = time.monotonic()
        for i in range(n_chunks):
            chunk = pcm[i * chunk_bytes:(i + 1) * chunk_bytes]
            if words[i]:
                resp.transcript_sent += words[i]
                part["transcript"] = resp.transcript_sent
                self.send({"type": "response.audio_transcript.delta", "response_id": resp.id, "item_id": item.id,
                           "output_index": 0, "content_index": 0, "delta": words[i]})
            if chunk:
                if resp.first_delta_at is None:
                    resp.first_delta_at = time.monotonic()
                self.audio_produced = True
                item.audio += chunk
                self.send({"type": "response.audio.delta", "response_id": resp.id, "item_id": item.id,
                           "output_index": 0, "content_index": 0,
                           "delta": base64.b64encode(chunk).decode("ascii")})
                faults = self.emulator.faults
                if faults.realtime_fault_once is not None and i + 1 >= faults.realtime_fault_after_deltas:
                    kind, faults.realtime_fault_once = faults.realtime_fault_once, None
                    await self._mid_response_fault(kind, resp, item)
            speed = self.emulator.speed
            if speed > 0 and math.isfinite(speed):
                due += len(chunk) / BYTES_PER_MS / 1000.0 / speed
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            else:
                due = time.monotonic()
                await self._writable()

    async def _writable(self) -> None:
        """Unpaced replies: wait until the client has read most of what was written (sends never block)."""
        transport = self.ws.transport
        await asyncio.sleep(0)
        while transport.get_write_buffer_size() > UNPACED_MAX_BUFFERED and not self.ws.closed:
            await asyncio.sleep(UNPACED_POLL_S)

    def _close_message(self, resp: Response, status: str) -> None:
        """Send the closing events of the reply's message, if it has one still open."""
        item = resp.item
        if item is None or item.status != "in_progress":
            return
        part = item.content[0]
        ids = {"response_id": resp.id, "item_id": item.id, "output_index": 0, "content_index": 0}
        if part["type"] == "audio":
            if item.truncated_ms is None:
                part["transcript"] = resp.transcript_sent
            self.send({"type": "response.audio.done", **ids})
            self.send({"type": "response.audio_transcript.done", **ids, "transcript": resp.transcript_sent})
        else:
            part["text"] = resp.transcript_sent
            self.send({"type": "response.text.done", **ids, "text": resp.transcript_sent})
        self.send({"type": "response.content_part.done", **ids, "part": dict(part)})
        item.status = "completed" if status == "completed" else "incomplete"
        self.send({"type": "response.output_item.done", "response_id": resp.id, "output_index": 0,
                   "item": item.public()})

    def _finish(self, resp: Response, status: str, details: dict | None = None) -> None:
        """Close ``resp`` with ``status``: stop its task and send the closing events (once)."""
        if resp.status != "in_progress":
            return
        resp.status = status
        resp.status_details = details
        if resp.task is not None and resp.task is not asyncio.current_task():
            resp.task.cancel()
        self._close_message(resp, status)
        outputs = [item for item in (resp.item, resp.call) if item is not None]
        out_tokens = (len(resp.transcript_sent) + sum(round(item.audio_ms / 40) for item in outputs)
                      + sum(len(item.arguments or "") for item in outputs))
        in_tokens = sum(len(i.audio) // (BYTES_PER_MS * 40) + sum(len(p.get("text") or "") for p in i.content)
                        + len(i.output or "") for i in self.items if all(i is not o for o in outputs))
        self.send({"type": "response.done", "response": {
            "id": resp.id, "object": "realtime.response", "status": status, "status_details": details,
            "output": [item.public() for item in outputs],
            "usage": {"total_tokens": in_tokens + out_tokens, "input_tokens": in_tokens,
                      "output_tokens": out_tokens}}})
        if self.response is resp:
            self.response = None


class _Watchdog:
    """One timer for every open realtime session on an event loop (not one each): every
    ``WATCH_INTERVAL_S`` each session applies the faults and the session limit that are due."""

    _by_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watchdog]" = weakref.WeakKeyDictionary()

    def __init__(self) -> None:
        self.sessions: dict[RealtimeSession, None] = {}   # in the order they connected
        self.task: asyncio.Task | None = None

    @classmethod
    def of_loop(cls) -> "_Watchdog":
        loop = asyncio.get_running_loop()
        watchdog = cls._by_loop.get(loop)
        if watchdog is None:
            watchdog = cls._by_loop[loop] = cls()
        return watchdog

    def add(self, session: RealtimeSession) -> None:
        self.sessions[session] = None
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run())

    def discard(self, session: RealtimeSession) -> None:
        self.sessions.pop(session, None)

    async def _run(self) -> None:
        while self.sessions:
            await asyncio.sleep(WATCH_INTERVAL_S)
            now = time.monotonic()
            for session in list(self.sessions):
                try:
                    keep = session._watch(now)
                except Exception:  # noqa: BLE001 - one session's failure must not stop the others' watch
                    log.exception("emulator_realtime_watchdog_failed", session_id=session.id)
                    keep = False
                if not keep:
                    self.discard(session)


def planned_audio_ms(resp: Response) -> float:
    """Full length (ms) of a reply's audio, for cutting its transcript on truncation."""
    return resp.planned_ms if resp.planned_ms is not None else speech.speech_duration_s(resp.text) * 1000.0


# ---------------------------------------------------------------------------------------------- HTTP side

async def handle_realtime(request: web.Request, emulator: Emulator) -> web.StreamResponse:
    refuse = emulator.faults.refuse_realtime_status
    if refuse is not None:
        log.warning("emulator_realtime_refused", reason="fault", status=refuse, trace_id=request.get(TRACE_ID))
        try:
            phrase = HTTPStatus(refuse).phrase
        except ValueError:
            phrase = "error"
        return error_response(refuse, f"{phrase} (injected fault)")
    denied = check_bearer(request)
    if denied is not None:
        return denied
    model = request.query.get("model")
    if not model:
        log.warning("emulator_realtime_refused", reason="missing model", trace_id=request.get(TRACE_ID))
        return error_response(400, "Missing required query parameter 'model'", "request_params_invalid")
    if model not in emulator.realtime_models:
        log.warning("emulator_realtime_refused", reason="unknown model", model=model, trace_id=request.get(TRACE_ID))
        return error_response(400, f"model '{model}' is not supported on this endpoint", "request_params_invalid")
    try:
        # Unpaced (load tests), a whole response is written at once: far more than a carrier's backlog limit.
        ws = await ServerWebSocket.accept(request, max_message_bytes=MAX_WS_MESSAGE, heartbeat_s=None,
                                          max_buffered_bytes=MAX_WS_MESSAGE)
    except web.HTTPException as exc:   # no valid upgrade: the documented error body, with the same status
        refused = error_response(exc.status, f"this endpoint needs a WebSocket upgrade ({exc.text.strip()})",
                                 "request_params_invalid")
        if hdrs.SEC_WEBSOCKET_VERSION in exc.headers:
            refused.headers[hdrs.SEC_WEBSOCKET_VERSION] = exc.headers[hdrs.SEC_WEBSOCKET_VERSION]
        return refused
    session = RealtimeSession(emulator, ws, request, model)
    emulator.add_session(session)
    await session.run()
    return ws.response


def add_routes(app: web.Application, emulator: Emulator, prefix: str) -> None:
    async def realtime(request: web.Request) -> web.StreamResponse:
        return await handle_realtime(request, emulator)

    app.router.add_get(f"{prefix}/realtime", realtime)
