"""StepFun TTS (``stepaudio-2.5-tts``): HTTP ``/audio/speech`` and the WebSocket ``/realtime/audio``.

Audio is always requested as headerless PCM16 mono (``response_format: "pcm"``), 8 kHz by default, and handed
out as numpy ``int16`` arrays.

HTTP, one shot::

    tts = TtsClient(session, base_url, api_key)
    speech = await tts.synthesize("你好", voice="linjiajiejie")      # Speech(pcm, sample_rate, trace_id)

HTTP, streamed (``stream_format: "sse"``)::

    async with tts.stream_http("Hello.", voice="lively-girl") as s:
        async for pcm in s: ...

WebSocket, for text that arrives in pieces (LLM tokens); one connection per synthesis job::

    stream = await tts.open_stream(voice="linjiajiejie")
    await stream.send_text("你好，"); await stream.send_text("我是客服。"); await stream.finish()
    async for pcm in stream.audio(): ...
    await stream.close()          # also the way to abort (barge-in): there is no cancel event

Local checks happen before anything is sent: ``input`` 1–1000 characters, ``instruction`` ≤ 200, speed
0.5–2.0, volume 0.1–2.0, sample rate 8000/16000/22050/24000/48000. A failed check raises
:class:`StepFunRequestError` (``status is None``, ``type="request_params_invalid"``). ``split_text`` cuts longer
text at sentence ends. StepFun notes that 2.5 can sound worse over WebSocket than over HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from dataclasses import dataclass
from typing import Any, AsyncIterator, Mapping

import aiohttp
import numpy as np
import structlog

from .. import jsoncodec, latency
from .errors import StepFunError, StepFunRequestError, StepFunUnavailable, error_for_status, http_status
from .http import (SseStream, StepFunClient, StepFunHttp, TRACE_HEADER, Timeouts, trace_id_of,
                   transport_error)
from .models import TTS_MODELS

log = structlog.get_logger("voicebot.stepfun")

TTS_MODEL = TTS_MODELS[0]
SPEECH_PATH = "audio/speech"
WS_PATH = "realtime/audio"
MAX_INPUT_CHARS = 1000
MAX_INSTRUCTION_CHARS = 200
SAMPLE_RATES = (8000, 16000, 22050, 24000, 48000)
WS_MODES = ("default", "sentence")
MAX_WS_MESSAGE = 16 * 1024 * 1024

_SENTENCE_END = re.compile(r"(?<=[。！？!?；;])|(?<=[.…])(?=\s)")


# ---------------------------------------------------------------------------------------------- checks

def _invalid(message: str) -> StepFunRequestError:
    return StepFunRequestError(f"tts: {message}", type="request_params_invalid")


def check_text(text: str, *, what: str = "input") -> None:
    if not isinstance(text, str) or not text.strip():
        raise _invalid(f"{what} is empty")
    if len(text) > MAX_INPUT_CHARS:
        raise _invalid(f"{what} is {len(text)} characters; the limit is {MAX_INPUT_CHARS} (use split_text)")


def check_params(*, speed: float, volume: float, sample_rate: int, instruction: str | None) -> None:
    if not 0.5 <= float(speed) <= 2.0:
        raise _invalid(f"speed {speed} is outside 0.5–2.0")
    if not 0.1 <= float(volume) <= 2.0:
        raise _invalid(f"volume {volume} is outside 0.1–2.0")
    if int(sample_rate) not in SAMPLE_RATES:
        raise _invalid(f"sample_rate {sample_rate} is not one of {', '.join(map(str, SAMPLE_RATES))}")
    if instruction is not None and len(instruction) > MAX_INSTRUCTION_CHARS:
        raise _invalid(f"instruction is {len(instruction)} characters; the limit is {MAX_INSTRUCTION_CHARS}")


def split_text(text: str, limit: int = MAX_INPUT_CHARS) -> list[str]:
    """Cut ``text`` into pieces of at most ``limit`` characters, at sentence ends where possible,
    else at spaces, else anywhere. Concatenating the pieces gives ``text`` back."""
    pieces: list[str] = []
    rest = text
    while len(rest) > limit:
        window = rest[:limit]
        cut = 0
        for m in _SENTENCE_END.finditer(window):
            if m.end() > 0:
                cut = m.end()
        if cut <= 0:
            cut = window.rfind(" ") + 1
        if cut <= 0:
            cut = limit
        pieces.append(rest[:cut])
        rest = rest[cut:]
    if rest:
        pieces.append(rest)
    return pieces


def _audio_bytes(value: Any) -> bytes | None:
    """The bytes of a base64 ``audio`` field (missing or empty: none); None when it is no base64 string."""
    if value is None:
        return b""
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:      # binascii.Error
        return None


class _Pcm16:
    """Bytes → int16 samples, keeping an odd trailing byte for the next chunk."""

    def __init__(self) -> None:
        self._carry = b""

    def feed(self, data: bytes) -> np.ndarray:
        if self._carry:
            data = self._carry + data
        n = len(data) & ~1
        self._carry = data[n:]
        return np.frombuffer(data[:n], dtype="<i2").astype(np.int16)


@dataclass
class Speech:
    pcm: np.ndarray          # int16 mono
    sample_rate: int
    trace_id: str | None

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / self.sample_rate


# ---------------------------------------------------------------------------------------------- HTTP SSE

class TtsHttpStream(SseStream[np.ndarray]):
    """``/audio/speech`` with ``stream_format: "sse"``: async iterator of int16 chunks."""

    _log_bad_event = "stepfun.tts_bad_event"
    _stamps_arrival = True

    def __init__(self, http: StepFunHttp, body: dict, timeouts: Timeouts) -> None:
        super().__init__(http, SPEECH_PATH, body, timeouts, "tts")
        self._pcm = _Pcm16()
        self.sample_rate = int(body["sample_rate"])
        self.completed = False
        self.samples = 0

    def _on_event(self, event: dict) -> np.ndarray | None:
        kind = event.get("type")
        if kind in ("speech.audio.delta", "speech.audio.done"):
            data = _audio_bytes(event.get("audio"))
            if data is None:     # one broken event is dropped; the stream goes on
                log.warning(self._log_bad_event, trace_id=self.trace_id, type=kind,
                            problem="'audio' is not a base64 string")
                return None
        if kind == "speech.audio.delta":
            pcm = self._pcm.feed(data)
            if len(pcm):
                self.samples += len(pcm)
                return pcm
        elif kind == "speech.audio.done":
            self.completed = True
            tail = self._pcm.feed(data)
            if len(tail) and self.samples == 0:
                self.samples += len(tail)
                return tail
        elif kind == "speech.audio.error":
            err = event.get("error") if isinstance(event.get("error"), dict) else event
            raise StepFunUnavailable(f"tts: error in stream: {err.get('message') or 'no message'}",
                                     type=err.get("type"), trace_id=self.trace_id)
        return None

    def _on_done_marker(self) -> bool:
        self.completed = True
        return True

    def _on_end(self) -> None:
        if not self.completed:
            raise StepFunUnavailable("tts: stream ended before speech.audio.done", trace_id=self.trace_id)


# ---------------------------------------------------------------------------------------------- WebSocket

@dataclass
class TtsSentence:
    """One ``tts.response.sentence.*`` pair, placed in the audio handed out so far (samples)."""

    text: str
    start_sample: int
    end_sample: int | None = None
    sentence_id: Any = None


_END = object()
_AUDIO_EVENTS = ("tts.response.audio.delta", "tts.response.audio.done")


class TtsStream:
    """One synthesis job on one ``/realtime/audio`` WebSocket. Create it with :meth:`TtsClient.open_stream`.

    ``send_text`` / ``flush`` / ``finish`` drive the job; ``audio()`` yields int16 chunks until
    ``tts.response.audio.done``; a ``tts.response.error`` (or a socket that closes first) is raised from
    ``audio()`` and from later ``send_*`` calls as a typed error whose ``trace_id`` is the TTS ``session_id``.
    ``close()`` aborts at any time.
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session_id: str, sample_rate: int,
                 read_timeout: float | None) -> None:
        self._ws = ws
        self.session_id = session_id
        self.sample_rate = sample_rate
        self._read_timeout = read_timeout
        self._queue: asyncio.Queue[Any] = asyncio.Queue()   # (int16 chunk, when its message arrived) | _END
        self._arrived = 0.0     # latency.clock() when the message being handled arrived (latency.ENABLED)
        self._pcm = _Pcm16()
        self._error: StepFunError | None = None
        self._eos = False
        self._finish_sent = False
        self._closed = False
        self.audio_done = False
        self.samples_received = 0
        self.sentences: list[TtsSentence] = []
        self._last_event = asyncio.get_running_loop().time()
        self._reader = asyncio.create_task(self._read_loop(), name=f"tts-ws-{session_id}")

    async def __aenter__(self) -> "TtsStream":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def error(self) -> StepFunError | None:
        return self._error

    # -- sending

    async def _send(self, event_type: str, **data: Any) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise StepFunUnavailable("tts: the stream is closed", trace_id=self.session_id)
        payload = json.dumps({"type": event_type, "data": {"session_id": self.session_id, **data}},
                             ensure_ascii=False)
        try:
            await self._ws.send_str(payload)
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            await asyncio.sleep(0)  # let the reader record the server's own reason, if any
            if self._error is not None:
                raise self._error from None
            raise transport_error(exc, "tts", trace_id=self.session_id) from None

    async def send_text(self, text: str) -> None:
        """Queue text for synthesis (split into ≤ 1000-character events)."""
        if self._error is not None:
            raise self._error
        if self._finish_sent:
            raise _invalid("send_text after finish()")
        for piece in split_text(text):
            await self._send("tts.text.delta", text=piece)

    async def flush(self) -> None:
        """Ask the server to speak the text buffered so far (``mode="default"`` waits for sentences)."""
        await self._send("tts.text.flush")

    async def finish(self) -> None:
        """No more text: the server speaks the rest, sends ``tts.response.audio.done`` and closes.

        Idempotent (StepFun answers a second ``tts.text.done`` with an error)."""
        if self._finish_sent:
            return
        self._finish_sent = True
        self._last_event = asyncio.get_running_loop().time()
        await self._send("tts.text.done")

    # -- receiving

    async def audio(self) -> AsyncIterator[np.ndarray]:
        """int16 chunks at ``sample_rate`` until the job is done; raises the job's error."""
        loop = asyncio.get_running_loop()
        while not self._eos:
            try:
                item = await asyncio.wait_for(self._queue.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if (self._finish_sent and self._read_timeout is not None
                        and loop.time() - self._last_event > self._read_timeout):
                    self._fail(StepFunUnavailable(
                        f"tts: nothing received for {self._read_timeout:g} s after tts.text.done",
                        trace_id=self.session_id))
                    await self.close()
                continue
            if item is _END:
                self._eos = True
                break
            pcm, arrived = item
            if latency.ENABLED:
                # What the consumer does with this chunk (the playout) starts from when it reached us.
                latency.arrival, latency.arrival_side = arrived, "model"
            yield pcm
        if self._error is not None:
            raise self._error

    async def collect(self) -> np.ndarray:
        """All remaining audio as one array (after :meth:`finish`)."""
        parts = [pcm async for pcm in self.audio()]
        return np.concatenate(parts) if parts else np.empty(0, np.int16)

    def _fail(self, err: StepFunError) -> None:
        if self._error is None and not self.audio_done:
            self._error = err
            log.warning("stepfun.tts_ws_error", session_id=self.session_id, status=err.status, code=err.code,
                        message=err.message)
        self._queue.put_nowait(_END)

    def _emit(self, pcm: np.ndarray) -> None:
        if len(pcm):
            self.samples_received += len(pcm)
            self._queue.put_nowait((pcm, self._arrived))

    async def _read_loop(self) -> None:
        try:
            while True:
                msg = await self._ws.receive()
                if latency.ENABLED:
                    self._arrived = latency.clock()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self._last_event = asyncio.get_running_loop().time()
                    try:
                        event = jsoncodec.loads(msg.data)
                    except ValueError:
                        log.warning("stepfun.tts_ws_bad_event", session_id=self.session_id, data=msg.data[:120])
                        continue
                    if not isinstance(event, dict):
                        log.warning("stepfun.tts_ws_bad_event", session_id=self.session_id,
                                    problem=f"JSON {type(event).__name__}, not an event object")
                        continue
                    if self._handle(event):
                        return
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    log.warning("stepfun.tts_ws_bad_event", session_id=self.session_id,
                                problem="binary frame", sample=bytes(msg.data[:40]).decode("utf-8", "replace"))
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                                  aiohttp.WSMsgType.ERROR):
                    break
            if not self.audio_done:
                self._fail(StepFunUnavailable("tts: connection closed before tts.response.audio.done",
                                              trace_id=self.session_id))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any transport failure ends the job
            self._fail(transport_error(exc, "tts", trace_id=self.session_id))

    def _handle(self, event: dict) -> bool:
        """Apply one server event; True when the job is over."""
        kind = event.get("type")
        data = event.get("data")
        if not isinstance(data, dict):
            data = {}
            if kind in _AUDIO_EVENTS or kind == "tts.response.error":
                log.warning("stepfun.tts_ws_bad_event", session_id=self.session_id, type=kind,
                            problem="'data' is not an object")
                if kind != "tts.response.error":
                    return False
        audio = b""
        if kind in _AUDIO_EVENTS:
            audio = _audio_bytes(data.get("audio"))
            if audio is None:       # one broken event is dropped; the job goes on
                log.warning("stepfun.tts_ws_bad_event", session_id=self.session_id, type=kind,
                            problem="'audio' is not a base64 string")
                return False
        if kind == "tts.response.audio.delta":
            self._emit(self._pcm.feed(audio))
        elif kind == "tts.response.sentence.start":
            self.sentences.append(TtsSentence(str(data.get("text") or ""), self.samples_received,
                                              sentence_id=data.get("sentence_id")))
        elif kind == "tts.response.sentence.end":
            for s in reversed(self.sentences):
                if s.end_sample is None:
                    s.end_sample = self.samples_received
                    break
        elif kind == "tts.response.audio.done":
            if self.samples_received == 0:  # "audio" may carry the whole job instead of deltas
                self._emit(self._pcm.feed(audio))
            self.audio_done = True
            log.debug("stepfun.tts_ws_done", session_id=self.session_id, samples=self.samples_received)
            self._queue.put_nowait(_END)
            return True
        elif kind == "tts.response.error":
            self._fail(ws_error(data, self.session_id))
            return True
        elif kind not in ("tts.text.flushed", "tts.response.created", "tts.connection.done"):
            log.debug("stepfun.tts_ws_unknown_event", type=kind, session_id=self.session_id)
        return False

    async def close(self) -> None:
        """Abort or tidy up: stop reading and close the socket (idempotent). A job that failed (a server
        gone silent, a broken connection) is dropped at once: no close handshake to wait for; a close
        cancelled mid-wait drops the socket too, so it never outlives the job."""
        if self._closed:
            return
        self._closed = True
        self._reader.cancel()
        self._queue.put_nowait(_END)
        try:
            # asyncio.wait: the reader's end, whatever it was, is not ours to raise; a cancellation of the task
            # closing the stream is (swallowing it here once left a chain turn running after its call ended).
            await asyncio.wait([self._reader])
            if self._error is None:
                try:
                    await self._ws.close()
                except Exception:  # noqa: BLE001 - the socket may already be gone
                    pass
        finally:
            if self._error is not None or not self._ws.closed:
                self._abort()

    def _abort(self) -> None:
        # aiohttp has no public abort for a client WebSocket: closing its HTTP response drops the connection.
        response = getattr(self._ws, "_response", None)
        if response is not None:
            response.close()


def ws_error(data: Mapping[str, Any], session_id: str | None) -> StepFunError:
    """A ``tts.response.error`` payload as a typed error (``code`` is an HTTP-like status string)."""
    message = str(data.get("message") or "tts.response.error")
    details = data.get("details")
    if isinstance(details, dict) and details.get("error") and str(details["error"]) != message:
        message += f" ({details['error']})"
    code = data.get("code")
    status = http_status(code)
    text = f"tts: {message}"
    if status is not None:
        return error_for_status(status, text, code=str(code), trace_id=session_id)
    return StepFunUnavailable(text, code=None if code is None else str(code), trace_id=session_id)


# ---------------------------------------------------------------------------------------------- client

class TtsClient(StepFunClient):
    """``stepaudio-2.5-tts`` over HTTP and WebSocket; PCM16 out, 8 kHz unless asked otherwise."""

    default_model = TTS_MODEL
    default_total_timeout = 30.0

    def speech_body(self, text: str, *, voice: str, speed: float = 1.0, volume: float = 1.0,
                    instruction: str | None = None, sample_rate: int = 8000,
                    pronunciation_map: Mapping[str, Any] | None = None, markdown_filter: bool | None = None,
                    stream: bool = False) -> dict[str, Any]:
        """The checked ``/audio/speech`` body."""
        check_text(text)
        check_params(speed=speed, volume=volume, sample_rate=sample_rate, instruction=instruction)
        if not voice:
            raise _invalid("voice is empty")
        body: dict[str, Any] = {"model": self.model, "input": text, "voice": voice, "response_format": "pcm",
                                "sample_rate": int(sample_rate), "speed": float(speed), "volume": float(volume)}
        if instruction:
            body["instruction"] = instruction
        if pronunciation_map:
            body["pronunciation_map"] = dict(pronunciation_map)
        if markdown_filter is not None:
            body["markdown_filter"] = bool(markdown_filter)
        if stream:
            body["stream_format"] = "sse"
        return body

    async def synthesize(self, text: str, *, voice: str, speed: float = 1.0, volume: float = 1.0,
                         instruction: str | None = None, sample_rate: int = 8000,
                         pronunciation_map: Mapping[str, Any] | None = None, markdown_filter: bool | None = None,
                         connect_timeout: float | None = None, total_timeout: float | None = None) -> Speech:
        """``text`` (≤ 1000 characters) as int16 PCM at ``sample_rate``."""
        body = self.speech_body(text, voice=voice, speed=speed, volume=volume, instruction=instruction,
                                sample_rate=sample_rate, pronunciation_map=pronunciation_map,
                                markdown_filter=markdown_filter)
        resp = await self._http.request("POST", SPEECH_PATH, what="tts", json_body=body,
                                        timeouts=self._http.timeouts.override(connect_timeout, total_timeout))
        trace_id = trace_id_of(resp)
        try:
            if resp.headers.get("Content-Type", "").startswith("application/json"):
                raise StepFunUnavailable(f"tts: JSON answer instead of audio: {(await resp.read())[:200]!r}",
                                         trace_id=trace_id)
            data = await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise transport_error(exc, "tts", trace_id=trace_id) from None
        finally:
            resp.release()
        if len(data) % 2:
            log.warning("stepfun.tts_odd_length", bytes=len(data), trace_id=trace_id)
        pcm = np.frombuffer(data[: len(data) & ~1], dtype="<i2").astype(np.int16)
        log.debug("stepfun.tts_done", trace_id=trace_id, samples=len(pcm), sample_rate=sample_rate)
        return Speech(pcm, int(sample_rate), trace_id)

    def stream_http(self, text: str, *, voice: str, speed: float = 1.0, volume: float = 1.0,
                    instruction: str | None = None, sample_rate: int = 8000,
                    pronunciation_map: Mapping[str, Any] | None = None, markdown_filter: bool | None = None,
                    connect_timeout: float | None = None, total_timeout: float | None = None,
                    read_timeout: float | None = None) -> TtsHttpStream:
        """``text`` over HTTP with ``stream_format: "sse"``: int16 chunks as they are produced.
        ``read_timeout`` bounds each wait for more of the stream (a server gone silent mid-speech)."""
        body = self.speech_body(text, voice=voice, speed=speed, volume=volume, instruction=instruction,
                                sample_rate=sample_rate, pronunciation_map=pronunciation_map,
                                markdown_filter=markdown_filter, stream=True)
        return TtsHttpStream(self._http, body,
                             self._http.timeouts.override(connect_timeout, total_timeout, read_timeout))

    async def open_stream(self, *, voice: str, speed: float = 1.0, volume: float = 1.0, mode: str = "default",
                          instruction: str | None = None, sample_rate: int = 8000,
                          pronunciation_map: Mapping[str, Any] | None = None,
                          markdown_filter: bool | None = None, connect_timeout: float | None = None,
                          read_timeout: float | None = 15.0) -> TtsStream:
        """Connect, wait for ``tts.connection.done``, send ``tts.create`` and wait for ``tts.response.created``.

        ``connect_timeout`` bounds that whole handshake; ``read_timeout`` is how long ``audio()`` waits for any
        server event after :meth:`TtsStream.finish` before giving up.
        """
        check_params(speed=speed, volume=volume, sample_rate=sample_rate, instruction=instruction)
        if mode not in WS_MODES:
            raise _invalid(f"mode {mode!r} is not one of {', '.join(WS_MODES)}")
        if not voice:
            raise _invalid("voice is empty")
        create: dict[str, Any] = {"voice_id": voice, "response_format": "pcm", "sample_rate": int(sample_rate),
                                  "speed_ratio": float(speed), "volume_ratio": float(volume), "mode": mode}
        if instruction:
            create["instruction"] = instruction
        if pronunciation_map:
            create["pronunciation_map"] = dict(pronunciation_map)
        if markdown_filter is not None:
            create["markdown_filter"] = bool(markdown_filter)
        url = self._http.ws_url(WS_PATH)
        timeout = connect_timeout if connect_timeout is not None else self._http.timeouts.connect
        ws: aiohttp.ClientWebSocketResponse | None = None
        try:
            async with asyncio.timeout(timeout):
                try:
                    ws = await self._http.session.ws_connect(
                        url, params={"model": self.model}, headers=self._http.headers(), autoping=True,
                        max_msg_size=MAX_WS_MESSAGE, timeout=aiohttp.ClientWSTimeout(ws_close=2.0))
                except aiohttp.WSServerHandshakeError as exc:
                    trace = exc.headers.get(TRACE_HEADER) if exc.headers else None
                    raise error_for_status(exc.status, f"tts: websocket upgrade refused (HTTP {exc.status})",
                                           trace_id=trace) from None
                session_id = await _expect(ws, "tts.connection.done", None)
                if not session_id:
                    raise StepFunUnavailable("tts: tts.connection.done without a session_id")
                await ws.send_str(json.dumps({"type": "tts.create", "data": {"session_id": session_id, **create}},
                                             ensure_ascii=False))
                await _expect(ws, "tts.response.created", session_id)
        except BaseException as exc:
            if ws is not None:
                await ws.close()
            if isinstance(exc, (aiohttp.ClientError, asyncio.TimeoutError)):
                raise transport_error(exc, "tts") from None
            raise
        log.debug("stepfun.tts_ws_created", session_id=session_id, voice=voice, mode=mode)
        return TtsStream(ws, session_id, int(sample_rate), read_timeout)


async def _expect(ws: aiohttp.ClientWebSocketResponse, wanted: str, session_id: str | None) -> str | None:
    """Read events until ``wanted``; return its ``data.session_id``. An error event or a close raises."""
    while True:
        msg = await ws.receive()
        if msg.type != aiohttp.WSMsgType.TEXT:
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.ERROR):
                raise StepFunUnavailable(f"tts: connection closed while waiting for {wanted}",
                                         trace_id=session_id)
            continue
        try:
            event = jsoncodec.loads(msg.data)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        if event.get("type") == "tts.response.error":
            raise ws_error(data, data.get("session_id") or session_id)
        if event.get("type") == wanted:
            sid = data.get("session_id")
            return str(sid) if sid else session_id
