"""Speech-to-speech relay: caller audio to stepaudio-2.5-realtime, its speech and transcripts back."""

from __future__ import annotations

import asyncio
import binascii

import numpy as np
import structlog

from .. import latency, metrics
from ..audio.playout import HeardItem
from ..audio.resample import Resampler
from ..config import StepFunSettings
from ..dialplan import Persona
from ..stepfun.errors import StepFunError
from ..stepfun.realtime import RealtimeConnection
from ..tools import FunctionSpec, ToolResult
from .base import EngineSink, EngineUnavailable, heard_text

MODEL_RATE = 24000
# An append is built as UTF-8 bytes around the base64 of the samples (no str round trip per frame).
_APPEND_PREFIX = b'{"type":"input_audio_buffer.append","audio":"'
_APPEND_SUFFIX = b'"}'
# Errors that say the session itself is gone, as opposed to one bad event (server_error type is fatal too).
_FATAL_ERROR_CODES = {"session_expired", "session_timeout", "insufficient_quota", "invalid_api_key",
                      "authentication_error", "rate_limit_exceeded"}
WATCHDOG_CHECKS_PER_TIMEOUT = 8   # a stuck session is reported at most 1/8 of its timeout late
# StepFun may deliver a caller's transcript after the reply to it; the reply's transcript waits this long
# for it so that the conversation stays in spoken order.
USER_TRANSCRIPT_WAIT_S = 3.0
SILENT_TAIL = 64      # peak below which the resampler's tail at the end of an item is not worth a frame


# What the event reader relies on (stepfun-api.md §1.4): these fields, where an event has them and they are not
# null, are of these types, at the top level and inside ``response`` and ``item``. An event that breaks this
# is dropped with a log line before anything acts on it: one garbled event must not end the session.
_EVENT_FIELDS = {"type": str, "response_id": str, "item_id": str, "call_id": str, "name": str, "delta": str,
                 "transcript": str, "arguments": str, "response": dict, "item": dict, "error": dict}
_NESTED_FIELDS = {"response": {"id": str, "status": str, "output": list},
                  "item": {"id": str, "type": str, "call_id": str, "name": str, "arguments": str}}


def malformed(event: dict) -> str | None:
    """What is wrong with the shape of a server event (None: the reader can act on it)."""
    for key, kind in _EVENT_FIELDS.items():
        value = event.get(key)
        if value is not None and not isinstance(value, kind):
            return f"'{key}' is {type(value).__name__}, not {kind.__name__}"
    for outer, fields in _NESTED_FIELDS.items():
        inner = event.get(outer)
        for key, kind in fields.items() if inner else ():
            value = inner.get(key)
            if value is not None and not isinstance(value, kind):
                return f"'{outer}.{key}' is {type(value).__name__}, not {kind.__name__}"
    return None


def greeting_instructions(persona: Persona) -> str:
    return (f"{persona.instructions.strip()}\n\nThe phone call has just been connected. "
            f"Greet the caller by saying exactly, verbatim: {persona.greeting}")


def line_instructions(persona: Persona, text: str) -> str:
    """A response that says one fixed line (a re-prompt, a goodbye)."""
    return f"{persona.instructions.strip()}\n\nSay exactly, verbatim: {text}"


def tool_config(specs: list[FunctionSpec]) -> list[dict]:
    """StepFun nests the definition under ``function`` (stepfun-api.md §1.3)."""
    return [{"type": "function", "function": {"name": s.name, "description": s.description,
                                              "parameters": s.parameters}} for s in specs]


def session_config(persona: Persona, tools: list[FunctionSpec] | None = None) -> dict:
    td = persona.realtime.turn_detection
    config = {
        "modalities": ["text", "audio"],
        "instructions": persona.instructions,
        "voice": persona.voice,
        "input_audio_format": "pcm16",
        "output_audio_format": "pcm16",
        "turn_detection": {
            "type": "server_vad",
            "silence_duration_ms": td.silence_duration_ms,
            "prefix_padding_ms": td.prefix_padding_ms,
            "energy_awakeness_threshold": td.energy_awakeness_threshold,
        },
    }
    if tools:
        config["tools"] = tool_config(tools)
    return config


class RealtimeEngine:
    name = "realtime"

    def __init__(self, persona: Persona, stepfun: StepFunSettings, sink: EngineSink, log=None, *,
                 tools: list[FunctionSpec] | None = None, greet: bool = True) -> None:
        """``greet``: speak the persona's greeting once connected (a placed call greets later, by ``say``)."""
        self.persona = persona
        self.greet = greet
        self.tools = list(tools or ())
        self.stepfun = stepfun
        self.sink = sink
        self.log = log or structlog.get_logger("voicebot.engine")
        self._conn: RealtimeConnection | None = None
        self._reader_failed = False
        self._given_up = False           # we reported the session unusable: closing it needs no handshake
        self._upsampler = Resampler(8000, MODEL_RATE)
        self._downsamplers: dict[str, Resampler] = {}
        self._item_model_ms: dict[str, float] = {}    # audio the model generated per item
        self._active_response: str | None = None
        self._cancelled: set[str] = set()
        self._closing = False
        self.errors = 0
        self._awaiting_reply = False     # a response is due (requested, or the caller's turn ended)
        self._last_event_t = 0.0
        self._watchdog: asyncio.Task | None = None
        self._untranscribed: set[str] = set()         # committed caller items still without a transcript
        self._held_replies: list[tuple[str, str]] = []  # (item_id, text) waiting for those transcripts
        # Function calls: call_id -> [name, arguments so far, complete]; run once their response is done.
        self._calls: dict[str, list] = {}
        self._tool_tasks: set[asyncio.Task] = set()
        # Events that may only go out while no response runs (response.create, function outputs): sent in
        # order as soon as the session is idle (stepfun-api.md §1.6: "ongoing response already exists").
        self._when_idle: list[dict] = []
        self._create_sent: dict | None = None   # a response.create on its way, its response.created not seen yet
        self._idle_sent: dict[str, dict] = {}    # event_id -> such an event sent, until its response is created
        self._idle_ids = 0
        self._refused: list[dict] = []           # those refused as "ongoing response", in the order sent

    async def start(self) -> None:
        timeout = (self.stepfun.failover_connect_timeout_s if self.persona.engine == "auto"
                   else self.stepfun.connect_timeout_s)
        try:
            self._conn = await RealtimeConnection.connect(
                self.stepfun.ws_base_url, self.stepfun.api_key or "emulator", self.persona.realtime.model,
                timeout_s=timeout)
        except StepFunError as exc:
            metrics.stepfun_error(exc)
            raise EngineUnavailable(str(exc)) from exc
        try:
            first = await asyncio.wait_for(self._conn.next_event(), timeout)
        except asyncio.TimeoutError:
            first = None
        if first is None:
            metrics.stepfun_error("realtime_start")
            await self._conn.close()
            raise EngineUnavailable("realtime session did not start (no session.created)")
        if first.get("type") != "session.created":
            metrics.stepfun_error("realtime_start")
            await self._conn.close()
            raise EngineUnavailable(f"realtime session started with {first.get('type')!r}, not session.created")
        self.log.info("realtime_session_started", session_id=self._conn.session_id, model=self.persona.realtime.model)
        self._conn.send({"type": "session.update", "session": session_config(self.persona, self.tools)})
        if self.greet and self.persona.greeting:
            self._request_response({"instructions": greeting_instructions(self.persona)})
        self._last_event_t = asyncio.get_running_loop().time()
        # Events are handled as the socket delivers them, in the same loop step (no reader task).
        self._conn.listen(self._on_event, self._on_socket_closed)
        self._watchdog = asyncio.create_task(self._watch())

    @property
    def responding(self) -> bool:
        """A response is being generated (or was due and has not finished)."""
        return self._active_response is not None or self._awaiting_reply or bool(self._when_idle)

    # -- what the call asks for besides audio -----------------------------------------------------------
    def say(self, text: str) -> None:
        """Speak one fixed line (a re-prompt, a goodbye) as the next response."""
        self._request_response({"instructions": line_instructions(self.persona, text)})

    def user_text(self, text: str) -> None:
        """Something the caller said other than by voice (keypad digits): into the conversation, answered."""
        self._send_when_idle({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})
        self._request_response(None)

    def _request_response(self, response: dict | None) -> None:
        self._awaiting_reply = True
        self._send_when_idle({"type": "response.create", **({"response": response} if response else {})})

    def _send_when_idle(self, event: dict) -> None:
        self._when_idle.append(event)
        self._flush_when_idle()

    def _flush_when_idle(self) -> None:
        if self._refused:
            self._when_idle[:0], self._refused = self._refused, []
        while self._when_idle and self._active_response is None and self._create_sent is None:
            if self._conn is None or self._closing:
                return
            event = self._when_idle.pop(0)
            if "event_id" not in event:
                self._idle_ids += 1
                event["event_id"] = f"vb_idle_{self._idle_ids}"
            self._idle_sent[event["event_id"]] = event
            if event["type"] == "response.create":
                self._create_sent = event
            self._conn.send(event)

    async def _watch(self) -> None:
        """A silent socket while a reply is due means the session is stuck: report it so the call fails over."""
        loop = asyncio.get_running_loop()
        timeout = self.persona.realtime_response_timeout_s
        while not self._closing:
            await asyncio.sleep(timeout / WATCHDOG_CHECKS_PER_TIMEOUT)
            silent = loop.time() - self._last_event_t
            if self._awaiting_reply and silent > timeout:
                metrics.stepfun_error("realtime_stalled")
                self._give_up(f"no realtime events for {silent:.1f} s while a reply was due")
                return

    def feed(self, frame: np.ndarray) -> None:
        if self._conn is None or self._closing:
            return
        pcm24 = self._upsampler.process(frame)
        text = _APPEND_PREFIX + binascii.b2a_base64(pcm24, newline=False) + _APPEND_SUFFIX
        if latency.ENABLED:
            # The span starts when the carrier message reached us (Twilio stamps it), else here.
            start = latency.arrival if latency.arrival_side == "carrier" else latency.clock()
            latency.arrival_side = ""
            latency.count("frames_fed")
            self._conn.send_raw(text, start)
        else:
            self._conn.send_raw(text)

    def interrupt(self, heard: list[HeardItem]) -> None:
        if self._conn is None:
            return
        if self._active_response is not None:
            self._conn.send({"type": "response.cancel"})
            self._cancelled.add(self._active_response)
            self._active_response = None
        self._awaiting_reply = False
        for item in heard:
            model_ms = int(self._item_model_ms.get(item.item_id, 0))
            audio_end_ms = min(item.heard_ms, model_ms)
            if audio_end_ms <= 0:
                continue   # nothing of it was heard: a zero truncate is refused, so leave the item alone
            self._conn.send({"type": "conversation.item.truncate", "item_id": item.item_id,
                             "content_index": 0, "audio_end_ms": audio_end_ms})
            self.log.info("realtime_truncate", item_id=item.item_id, audio_end_ms=audio_end_ms,
                          generated_ms=model_ms)

    def heard_text(self, item_id: str, heard_ms: int, text: str) -> str:
        return heard_text(text, heard_ms, self._item_model_ms.get(item_id, 0.0))

    def _on_event(self, event: dict) -> None:
        if self._reader_failed:
            return
        problem = malformed(event)
        if problem is not None:
            self.log.warning("realtime_bad_event", problem=problem, event_type=str(event.get("type"))[:60])
            return
        try:
            self._dispatch(event)
        except Exception as exc:   # a bug here must end the call cleanly, not hang it
            self._reader_failed = True
            self.log.exception("realtime_reader_crashed")
            self._give_up(f"realtime reader crashed: {type(exc).__name__}")

    def _on_socket_closed(self) -> None:
        if not self._closing and not self._reader_failed:
            metrics.stepfun_error("realtime_dropped")
            self._give_up(f"realtime socket {self._conn.close_reason if self._conn else 'closed'}")

    def _dispatch(self, event: dict) -> None:
        kind = event.get("type")
        self._last_event_t = asyncio.get_running_loop().time()
        if kind == "response.audio.delta":
            if event.get("response_id") in self._cancelled:
                return
            item_id = event.get("item_id") or "unknown"
            try:
                # a2b_base64 strict: b64decode(validate=True) without its regex pass over the whole delta
                pcm24 = np.frombuffer(binascii.a2b_base64(event.get("delta") or "", strict_mode=True), dtype="<i2")
            except (binascii.Error, ValueError, TypeError):
                self.log.warning("realtime_bad_audio_delta", item_id=item_id)
                return
            self._item_model_ms[item_id] = self._item_model_ms.get(item_id, 0.0) + len(pcm24) / (MODEL_RATE / 1000)
            resampler = self._downsamplers.get(item_id)
            if resampler is None:
                resampler = self._downsamplers[item_id] = Resampler(MODEL_RATE, 8000)
            self.sink.bot_audio(item_id, resampler.process(pcm24))
        elif kind == "response.created":
            self._active_response = (event.get("response") or {}).get("id")
            self._create_sent = None
            self._idle_sent.clear()
        elif kind == "response.audio.done":
            item_id = event.get("item_id") or "unknown"
            resampler = self._downsamplers.pop(item_id, None)
            if event.get("response_id") in self._cancelled:
                return
            if resampler is not None:
                # Push the filter's tail out so the last syllable is not cut; a silent tail (speech that
                # already ended) would only become a stray padded frame after the playout drained.
                tail = resampler.process(np.zeros(3 * (resampler.delay_samples + 1), dtype=np.int16))
                if len(tail) and int(np.abs(tail).max()) > SILENT_TAIL:
                    self.sink.bot_audio(item_id, tail)
            self.sink.bot_audio_done(item_id)
        elif kind == "response.done":
            response = event.get("response") or {}
            if response.get("id") == self._active_response:
                self._active_response = None
                self._awaiting_reply = False
            if response.get("status") not in ("completed", "cancelled", None):
                self.log.warning("realtime_response_not_completed", status=response.get("status"),
                                 details=response.get("status_details"))
            self._run_function_calls(response)
            self._flush_when_idle()
        elif kind in ("conversation.item.created", "response.output_item.added"):
            item = event.get("item") or {}
            if item.get("type") == "function_call" and item.get("call_id"):
                self._calls.setdefault(item["call_id"], [item.get("name") or "", "", False])
        elif kind == "response.function_call_arguments.delta":
            call = self._calls.setdefault(event.get("call_id") or "", [event.get("name") or "", "", False])
            # The StepFun guide puts the fragment under "arguments", OpenAI under "delta": read both.
            piece = event.get("arguments")
            call[1] += piece if isinstance(piece, str) else (event.get("delta") or "")
        elif kind == "response.function_call_arguments.done":
            call = self._calls.setdefault(event.get("call_id") or "", [event.get("name") or "", "", False])
            call[0] = event.get("name") or call[0]
            if isinstance(event.get("arguments"), str):
                call[1] = event["arguments"]
            call[2] = True
        elif kind == "input_audio_buffer.speech_started":
            self.sink.caller_speech_started()
        elif kind == "input_audio_buffer.speech_stopped":
            self._awaiting_reply = True
        elif kind == "response.audio_transcript.done":
            reply = (event.get("item_id"), event.get("transcript") or "")
            if self._untranscribed:
                if not self._held_replies:
                    asyncio.get_running_loop().call_later(USER_TRANSCRIPT_WAIT_S, self._release_replies)
                self._held_replies.append(reply)
            else:
                self.sink.transcript("assistant", reply[1], reply[0])
        elif kind == "input_audio_buffer.committed":
            if event.get("item_id"):
                self._untranscribed.add(event["item_id"])
        elif kind == "conversation.item.input_audio_transcription.completed":
            self._untranscribed.discard(event.get("item_id"))
            self.sink.transcript("user", event.get("transcript") or "", event.get("item_id"))
            if not self._untranscribed:
                self._release_replies()
        elif kind == "error":
            self._on_error(event.get("error") or {})
            error = event.get("error") or {}
            refused = self._idle_sent.pop(str(error.get("event_id")), None)
            if refused is not None and "ongoing response" in str(error.get("message")):
                # It met a response the server started itself (caller speech): send it again after that one.
                if refused is self._create_sent:
                    self._create_sent = None
                self._refused.append(refused)
        elif kind == "session.updated":
            self.log.debug("realtime_session_updated")

    # -- function calls (stepfun-api.md §1.7) --------------------------------------------------------------
    def _run_function_calls(self, response: dict) -> None:
        """After ``response.done``: each function call it completed runs; its output goes back to the model,
        and the model speaks again when the tool says it should."""
        for item in response.get("output") or ():
            # malformed() checks the event's own fields; the output's items are checked here, one by one
            if isinstance(item, dict) and item.get("type") == "function_call" and isinstance(item.get("call_id"), str):
                name = item.get("name") if isinstance(item.get("name"), str) else ""
                call = self._calls.setdefault(item["call_id"], [name, "", False])
                call[0] = name or call[0]
                if not call[2] and response.get("status") != "cancelled":
                    # Listed as done: its arguments are the output's, else the fragments that came.
                    if isinstance(item.get("arguments"), str):
                        call[1] = item["arguments"]
                    call[2] = True
                elif not call[2]:
                    del self._calls[item["call_id"]]     # cut off with its response: never complete
        for call_id in [cid for cid, call in self._calls.items() if call[2]]:
            name, arguments, _ = self._calls.pop(call_id)
            task = asyncio.create_task(self._run_tool(call_id, name, arguments), name=f"tool-{name}")
            self._tool_tasks.add(task)
            task.add_done_callback(self._tool_tasks.discard)

    async def _run_tool(self, call_id: str, name: str, arguments: str) -> None:
        result: ToolResult = await self.sink.run_tool(call_id, name, arguments)
        if self._closing:
            return
        self._send_when_idle({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": call_id, "output": result.text}})
        if result.follow_up:
            self._request_response(None)

    def _give_up(self, reason: str) -> None:
        """The session cannot go on: the call switches engines (or ends)."""
        self._given_up = True
        self.sink.engine_failed(reason)

    def _release_replies(self) -> None:
        self._untranscribed.clear()    # a transcript that has not come by now is not coming
        held, self._held_replies = self._held_replies, []
        for item_id, text in held:
            self.sink.transcript("assistant", text, item_id)

    def _on_error(self, error: dict) -> None:
        self.errors += 1
        code = str(error.get("code") or "")
        message = str(error.get("message") or "")
        if "no ongoing response to cancel" in message or "truncat" in message.lower():
            self.log.info("realtime_error_ignored", code=code, message=message)
            return
        self.log.warning("realtime_error", code=code, type=error.get("type"), message=message,
                         param=error.get("param"), event_id=error.get("event_id"))
        metrics.stepfun_error("realtime_error")
        if code in _FATAL_ERROR_CODES or error.get("type") == "server_error":
            self._give_up(f"realtime error {code or error.get('type')}: {message}")

    async def close(self) -> None:
        self._closing = True
        self._release_replies()
        for task in list(self._tool_tasks):
            if task is not asyncio.current_task():
                task.cancel()
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
        if self._conn is None:
            return
        if self._given_up:
            # A stalled or broken session would only make the caller wait for a close handshake.
            self._conn.abort()
        else:
            await self._conn.close()
